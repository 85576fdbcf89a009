"""imgclf: train, fine-tune, compare, analyse and serve image classifiers."""

__version__ = "0.1.0"
