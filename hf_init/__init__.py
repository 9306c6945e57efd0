"""hf-init: weight initialization and variance dynamics, in the Hugging Face ecosystem."""

__version__ = "0.1.0"
