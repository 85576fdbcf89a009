"""Data: DATA spec -> Splits of ImageSets (decoded, cached) -> loaders that feed the Trainer."""

from imgclf.data.imageset import FileSet, ImageSet, Splits
from imgclf.data.sources import load_splits

__all__ = ["FileSet", "ImageSet", "Splits", "load_splits"]
