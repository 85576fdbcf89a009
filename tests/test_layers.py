"""The layers' arrows: serving and evaluation read checkpoints without importing the training stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_serving_a_checkpoint_imports_no_training_code(checkpoint: Path) -> None:
    code = (
        "import sys\n"
        "from imgclf.inference.server import create_app\n"
        "from imgclf.inference.predictor import Predictor\n"
        f"create_app(Predictor.load({str(checkpoint)!r}, device='cpu'))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('imgclf.training'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


class _Payload:
    """Pickles to a call that writes a marker file: what a hostile .pt would run on a full unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "ran"))


def test_checkpoints_load_without_running_pickled_code(tmp_path: Path, checkpoint: Path) -> None:
    import pytest
    import torch

    from imgclf.errors import UserError
    from imgclf.models.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint

    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": FORMAT, "model": {}, "payload": _Payload(marker)}, hostile)
    with pytest.raises(UserError, match="not an imgclf checkpoint"):
        load_checkpoint(hostile)
    assert not marker.exists()

    ckpt = load_checkpoint(checkpoint)  # a real one loads with weights_only=True, RNG states included
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    torch.save({k: v for k, v in ckpt.items() if k != "model"}, tmp_path / "no-model.pt")
    with pytest.raises(UserError, match="without model"):
        load_checkpoint(tmp_path / "no-model.pt")
    with pytest.raises(UserError, match="do not fit"):
        model_from_checkpoint({**ckpt, "classes": ckpt["classes"] + ["extra"]})
