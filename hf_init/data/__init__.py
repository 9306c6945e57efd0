"""Datasets: text for pretraining (`args`, `builtin_corpus`, `loaders`, `tokenizer`, `blocks`), tabular and
image datasets for the MLP studies (`tabular`)."""
