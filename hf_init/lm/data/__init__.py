"""Text for pretraining: arguments, the built-in corpus, loaders, the tokenizer, fixed-length
blocks."""
