"""The Python API through `import imgclf` only: the README's example is run as written (read from README.md, so
the two cannot drift), then its classifier is checked on every kind of input, and mistakes are one-line
UserErrors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import imgclf

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first ```python block of the README's "The Python API" section."""
    section = README.read_text().split("\n## The Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The README example's names after it ran in an empty folder (it trains once for this module)."""
    cwd = tmp_path_factory.mktemp("readme_example")
    here = Path.cwd()
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    try:
        os.chdir(cwd)
        exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    finally:
        os.chdir(here)
    return namespace


def test_readme_example_is_short_and_uses_tiny_data() -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    assert 'data="digits"' in code and 'model="tiny"' in code and "epochs=2" in code and "subset=" in code


def test_readme_example_trains_something(example: dict[str, Any]) -> None:
    run, clf = example["run"], example["clf"]
    assert isinstance(run, imgclf.Run) and isinstance(clf, imgclf.Classifier)
    assert run.metrics["test_accuracy"] > 0.2  # 10 classes: chance is 0.1; 2 epochs of the tiny net reach 0.4+
    assert (Path(run.run_dir) / "checkpoints" / "best.pt").is_file()
    assert clf.classes == [str(d) for d in range(10)]
    assert abs(clf.evaluate()["accuracy"] - run.metrics["test_accuracy"]) < 1e-6
    assert run.classifier().classes == clf.classes


def test_predict_takes_a_path_an_array_and_a_pil_image(example: dict[str, Any], tmp_path: Path) -> None:
    clf = example["clf"]
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    by_path = clf.predict(tmp_path / "x.png", top_k=3)
    by_str = clf.predict(str(tmp_path / "x.png"), top_k=3)
    by_array = clf.predict(pixels, top_k=3)
    by_pil = clf.predict(Image.fromarray(pixels), top_k=3)
    assert by_path == by_str == by_array == by_pil
    assert len(by_path) == 1 and len(by_path[0]["top_k"]) == 3
    assert set(by_path[0]) == {"label", "probability", "top_k"}
    several = clf.predict([tmp_path / "x.png", pixels, Image.fromarray(pixels)])
    assert [r["label"] for r in several] == [by_path[0]["label"]] * 3


def test_predict_refuses_what_is_no_image(example: dict[str, Any], tmp_path: Path) -> None:
    clf = example["clf"]
    (tmp_path / "no.png").write_text("not an image")
    for bad in (tmp_path / "missing.png", tmp_path / "no.png", np.zeros((8, 8, 3), np.float32)):
        with pytest.raises(imgclf.UserError) as info:
            clf.predict(bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(("options", "named"), [({"lr": -1}, "lr"), ({"learning_rat": 0.1}, "learning_rat"),
                                                ({"epochs": "2"}, "epochs")])
def test_bad_options_are_one_line_user_errors(options: dict[str, Any], named: str, tmp_path: Path) -> None:
    for call in (imgclf.train, imgclf.compare):
        with pytest.raises(imgclf.UserError) as info:
            call(data="digits", model="tiny", out=str(tmp_path / "out"), **options)
        assert named in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_load_refuses_a_missing_path(tmp_path: Path) -> None:
    for path in (tmp_path / "nothing", tmp_path / "nothing.pt", tmp_path / "nothing.onnx", tmp_path):
        with pytest.raises(imgclf.UserError) as info:
            imgclf.load(path)
        assert "\n" not in str(info.value)


def test_onnx_agrees_with_torch(example: dict[str, Any]) -> None:
    clf, onnx = example["clf"], example["onnx"]
    assert onnx.classes == clf.classes
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(16)]
    for a, b in zip(clf.predict(images), onnx.predict(images), strict=True):
        assert abs(a["probability"] - b["probability"]) < 1e-3
        if a["top_k"][0]["probability"] - a["top_k"][1]["probability"] > 1e-3:  # not a near-tie
            assert a["label"] == b["label"]
    with pytest.raises(imgclf.UserError):
        onnx.evaluate()


def test_import_is_light() -> None:
    """torch is loaded by the first call, not by `import imgclf` (the CLI's startup and UserError users)."""
    code = "import sys, imgclf; assert imgclf.__version__ and imgclf.UserError; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
