"""Model registry and the networks it builds (importing registers them)."""

from imgclf.models import cnn, pretrained, speednet  # noqa: F401  (register the builders)
from imgclf.models.base import ImageClassifier
from imgclf.models.registry import build_model, list_models, model_entry

__all__ = ["ImageClassifier", "build_model", "list_models", "model_entry"]
