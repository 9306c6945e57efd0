"""Text for pretraining: arguments, built-in corpus, loaders, tokenizer, fixed-length blocks."""
