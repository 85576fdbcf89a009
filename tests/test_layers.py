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
