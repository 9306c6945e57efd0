"""Datasets: text corpora and tokenizers for pretraining (`text`, `tokenizer`), tabular and
image datasets for the MLP studies (`tabular`)."""
