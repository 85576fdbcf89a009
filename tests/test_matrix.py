"""Every data kind x every way to run, at tiny scale: each cell ends with exit 0, or exit 2 and stderr one line
`imgclf: error: ...`; never a traceback, never another exit code.

The matrix is the product of two registries; each cell's id is KIND-WAY (`pytest tests/test_matrix.py -k photos-`):

- KINDS: name -> factory(folder) -> Data. A factory writes its data, tiny, into the folder it is given and
  says what to pass as --data, a few image files for predict and /predict, and a --subset if the data is big.
  **Add a data kind**: one entry in KINDS (an archive of a folder kind: a name in the `archived(...)` line).
- WAYS: name -> steps(data, folder) -> a list of steps run in order: an argv list for `imgclf` (run in this
  process through imgclf.cli.main, with COMMON's flags where the command takes them) or a function returning
  a Result (the in-process /predict request). A way that needs a trained model takes it from
  `shared_checkpoint(data)`: one tiny run per data kind for the whole module (it is also the `train` cell).
  **Add a way to run** (a flag, a verb, a recipe): one entry in WAYS; every shipped recipe is one already.

Each step's result goes through `check`. SLOW names the cells left to `pytest -m slow tests/test_matrix.py`
(compare, fine-tuning, the recipes that train, the archives beyond train/evaluate/predict); the default run
keeps a core of about a minute. KNOWN_BUGS names the cells that fail today because of a bug in imgclf: they
are xfail(strict=True), so the fix makes them XPASS, which fails the suite until the entry is removed.
compare runs with `--seeds 1` (its default of 3 seeds triples the time and is tested in test_compare_seeds).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import shlex
import tarfile
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import class_image, make_folder, make_photo_folder
from imgclf.cli import main

# ---------------------------------------------------------------------------------------------------- results


@dataclass
class Result:
    code: int | str  # the exit code, or "traceback" when an exception escaped
    out: str
    err: str


Step = list[str] | Callable[[], Result]

_SHARED: dict[tuple[str, ...], Result | None] = {}  # argv of a run the module shares -> its result once run


def run_imgclf(argv: list[str]) -> Result:
    """imgclf.cli.main(argv) in this process, stdout and stderr captured; an exception that escapes main is
    what a user would see as a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - the point is to see it
            err.write(traceback.format_exc())
            code = "traceback"
    return Result(code, out.getvalue(), err.getvalue())


def run_step(step: Step) -> Result:
    if callable(step):
        try:
            return step()
        except Exception:  # noqa: BLE001
            return Result("traceback", "", traceback.format_exc())
    key = tuple(step)
    if key not in _SHARED:
        return run_imgclf(step)
    if _SHARED[key] is None:
        _SHARED[key] = run_imgclf(step)
    return _SHARED[key]


def show(step: Step) -> str:
    return "imgclf " + shlex.join(step) if isinstance(step, list) else getattr(step, "__doc__", None) or repr(step)


def check(step: Step, result: Result) -> None:
    """Exit 0, or exit 2 with stderr exactly one line, `imgclf: error: ...`; never a traceback."""
    where = f"{show(step)}\nexit {result.code}; stderr (last 1500 chars):\n{result.err[-1500:]}"
    assert "Traceback" not in result.err, where
    if result.code == 0:
        return
    assert result.code == 2, where
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgclf: error: "), where


# ---------------------------------------------------------------------------------------------------- data kinds


@dataclass
class Data:
    data: str  # what --data gets
    images: list[Path]  # a few image files for predict and /predict
    subset: int | None = None  # --subset for data too big for a tiny run
    home: Path = field(default=Path())  # the kind's folder (shared runs go here)

    def flags(self) -> list[str]:
        return ["--data", self.data, *(["--subset", str(self.subset)] if self.subset else [])]


def _split_folder(root: Path, save: Callable[[np.ndarray, Path], None], suffix: str, size: int = 32) -> Data:
    """root/{train,test}/class_<c>/<i>.<suffix>: 3 classes, 12 train and 4 test images a class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for c in range(3):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                save(class_image(c, rng, size), folder / f"{i}.{suffix}")
    return Data(str(root), [root / "test" / f"class_{c}" / f"0.{suffix}" for c in range(3)])


def digits(root: Path) -> Data:
    """scikit-learn's 8x8 grey digits (built in); predict gets three of them as PNG files."""
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    images = load_digits().images[:3]
    files = [root / f"digit{i}.png" for i in range(3)]
    for image, file in zip(images, files, strict=True):
        Image.fromarray((image * 255 / 16).astype(np.uint8), "L").save(file)
    return Data("digits", files, subset=40)


def colour32(root: Path) -> Data:
    make_folder(root, classes=3, per_class=12, size=32, splits=True)
    return Data(str(root), [root / "test" / f"class_{c}" / "0.png" for c in range(3)])


def photos(root: Path) -> Data:
    """JPEG photos of several sizes and aspect ratios (helpers.PHOTO_SHAPES)."""
    make_photo_folder(root, per_class=8)
    return Data(str(root), [root / "test" / f"class_{c}" / f"{c}.jpg" for c in range(3)])


def grey(root: Path) -> Data:
    return _split_folder(root, lambda a, p: Image.fromarray(a).convert("L").save(p), "png")


def grey16(root: Path) -> Data:
    def save(a: np.ndarray, path: Path) -> None:
        grey = np.asarray(Image.fromarray(a).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path)  # Pillow writes a 16-bit PNG, read back as mode I;16

    made = _split_folder(root, save, "png")
    with Image.open(made.images[0]) as image:
        assert image.mode == "I;16"
    return made


def csv_labels(root: Path) -> Data:
    """labels.csv (file,label,split) over flat image files: train rows (some with an empty split) and test."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["file,label,split"]
    for c, label in enumerate(("cat", "dog", "fox")):
        for i in range(14):
            name = f"img/{label}_{i}.png"
            Image.fromarray(class_image(c, rng, 32)).save(root / name)
            rows.append(f"{name},{label},{'test' if i >= 11 else ('' if i % 3 else 'train')}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return Data(str(root / "labels.csv"), [root / f"img/{label}_12.png" for label in ("cat", "dog", "fox")])


def flowers_mini(root: Path) -> Data:
    """The bundled photo set, by name; predict gets three of its test photos."""
    test = Path(str(resources.files("imgclf") / "datasets" / "flowers_mini" / "test"))
    return Data("flowers-mini", [sorted(folder.iterdir())[0] for folder in sorted(test.iterdir())[:3]], subset=15)


ARCHIVES = ("tar.gz", "zip")


def archived(kind: str, fmt: str) -> Callable[[Path], Data]:
    """An archive of a folder kind: .tar.gz holding one top folder, .zip holding train/ and test/ at its root."""

    def factory(root: Path) -> Data:
        source = KINDS[kind](root / "source")
        folder = Path(source.data)
        archive = root / f"{kind}.{fmt}"
        if fmt == "tar.gz":
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(folder, arcname=kind)
        else:
            with zipfile.ZipFile(archive, "w") as zf:
                for file in sorted(folder.rglob("*")):
                    zf.write(file, file.relative_to(folder).as_posix())
        return Data(str(archive), source.images, source.subset)

    return factory


KINDS: dict[str, Callable[[Path], Data]] = {
    "digits": digits,
    "colour32": colour32,
    "photos": photos,
    "grey": grey,
    "grey16": grey16,
    "csv": csv_labels,
    "flowers-mini": flowers_mini,
    **{f"{kind}.{fmt}": archived(kind, fmt) for kind in ("colour32", "photos", "grey", "grey16")
       for fmt in ARCHIVES},
}

# ---------------------------------------------------------------------------------------------------- ways to run

COMMON = ["--quiet", "--device", "cpu", "--num-workers", "0", "--batch-size", "8"]  # train, compare


def shared_run(data: Data) -> list[str]:
    """The one tiny run per data kind that evaluate, predict, export, /predict and --resume reuse (run once)."""
    argv = ["train", *data.flags(), "--model", "tiny", "--epochs", "1", "--out", str(data.home / "run"), *COMMON]
    _SHARED.setdefault(tuple(argv), None)
    return argv


def shared_checkpoint(data: Data) -> Path:
    argv = shared_run(data)
    result = run_step(argv)
    if result.code != 0:
        pytest.fail(f"the shared tiny run failed, so this cell cannot run:\n{show(argv)}\nexit {result.code}\n"
                    f"{result.err[-1500:]}")
    return data.home / "run" / "checkpoints" / "last.pt"


def serve_request(data: Data) -> Callable[[], Result]:
    def request() -> Result:
        """POST /predict to the FastAPI app of the shared checkpoint (in process, TestClient)"""
        from fastapi.testclient import TestClient

        from imgclf.inference.predictor import Predictor
        from imgclf.inference.server import create_app

        image = data.images[0]
        mime = "image/jpeg" if image.suffix == ".jpg" else "image/png"
        with TestClient(create_app(Predictor.load(str(shared_checkpoint(data)), device="cpu"))) as client:
            answer = client.post("/predict", files={"file": (image.name, image.read_bytes(), mime)})
        ok = answer.status_code == 200 and "label" in answer.json()
        return Result(0 if ok else f"HTTP {answer.status_code}", answer.text, "" if ok else answer.text)

    return request


def recipe(name: str) -> Callable[[Data, Path], list[Step]]:
    return lambda data, tmp: [["train", *data.flags(), "--recipe", name, "--epochs", "1", "--out", str(tmp / "run"),
                               *COMMON]]


def _recipes() -> list[str]:
    from imgclf.config import list_recipes

    return list(list_recipes())


WAYS: dict[str, Callable[[Data, Path], list[Step]]] = {
    "train": lambda data, tmp: [shared_run(data)],
    "time-budget": lambda data, tmp: [["train", *data.flags(), "--model", "tiny", "--time-budget", "2",
                                       "--out", str(tmp / "run"), *COMMON]],
    "compare": lambda data, tmp: [["compare", *data.flags(), "--budget", "2", "--seeds", "1", "--out", str(tmp / "cmp"),
                                   *COMMON]],
    **{f"recipe-{name}": recipe(name) for name in _recipes()},
    "pretrained": lambda data, tmp: [["train", *data.flags(), "--pretrained", "--image-size", "32", "--epochs", "1",
                                      "--out", str(tmp / "run"), *COMMON]],
    "pretrained-budget": lambda data, tmp: [["train", *data.flags(), "--pretrained", "--image-size", "32",
                                             "--time-budget", "3", "--out", str(tmp / "run"), *COMMON]],
    "resume": lambda data, tmp: [["train", "--resume", str(shared_checkpoint(data)), "--epochs", "2",
                                  "--out", str(tmp / "resumed"), "--quiet", "--device", "cpu", "--num-workers", "0"]],
    "evaluate": lambda data, tmp: [["evaluate", "--checkpoint", str(shared_checkpoint(data)), "--data", data.data,
                                    "--device", "cpu"]],
    "predict": lambda data, tmp: [["predict", "--checkpoint", str(shared_checkpoint(data)), *map(str, data.images),
                                   "--top-k", "2", "--device", "cpu"]],
    "export": lambda data, tmp: [["export", "--checkpoint", str(shared_checkpoint(data)),
                                  "--out", str(tmp / "model.onnx")]],
    "serve": lambda data, tmp: [serve_request(data)],
}

# ---------------------------------------------------------------------------------------------------- the matrix

# (kind pattern, way pattern), fnmatch: the cells left to `-m slow`, each 5-140 s on a busy 2-core machine (the
# default run keeps the rest, about a second each). The speed runs refuse digits and photos at once (exit 2).
SLOW: list[tuple[str, str]] = [
    ("*", "compare"), ("*", "pretrained*"), ("*", "recipe-finetune*"), ("*", "recipe-photos-scratch"),
    *((kind, "recipe-speedrun*") for kind in ("colour32*", "grey*", "csv")),
    *((f"*.{fmt}", way) for fmt in ARCHIVES for way in ("time-budget", "resume", "export", "serve")),
]

# (kind pattern, way pattern) -> the one-line symptom of a bug in imgclf that fails those cells today
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _cell(kind: str, way: str) -> pytest.param:
    marks = [pytest.mark.slow] if any(fnmatch.fnmatch(kind, k) and fnmatch.fnmatch(way, w) for k, w in SLOW) else []
    marks += [pytest.mark.xfail(strict=True, reason=reason) for (k, w), reason in KNOWN_BUGS.items()
              if fnmatch.fnmatch(kind, k) and fnmatch.fnmatch(way, w)][:1]
    return pytest.param(kind, way, id=f"{kind}-{way}", marks=marks)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Data]:
    """Each kind's data, made once for the module on first use."""
    made: dict[str, Data] = {}

    def get(kind: str) -> Data:
        if kind not in made:
            home = tmp_path_factory.mktemp(kind.replace(".", "-"))
            made[kind] = KINDS[kind](home / "data")
            made[kind].home = home
        return made[kind]

    return get


@pytest.mark.parametrize(("kind", "way"), [_cell(kind, way) for kind in KINDS for way in WAYS])
def test_cell(kind: str, way: str, kinds: Callable[[str], Data], tmp_path: Path) -> None:
    data = kinds(kind)
    for step in WAYS[way](data, tmp_path):
        check(step, run_step(step))
