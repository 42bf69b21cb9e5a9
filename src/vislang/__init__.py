"""vislang: train, evaluate, compare and explain image, text and captioning models from one file."""

__version__ = "0.1.0"
