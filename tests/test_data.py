"""DATA forms: folders, archives (one top folder), odd image modes and sizes, corrupt files, cifar10, digits."""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_folder
from imgclf.data import load_splits
from imgclf.data.photos import PhotoSet
from imgclf.errors import UserError


def test_folder_without_splits_gets_seeded_per_class_val(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=20)
    a = load_splits(str(root), val_fraction=0.25, seed=1)
    b = load_splits(str(root), val_fraction=0.25, seed=1)
    assert a.classes == ["class_0", "class_1", "class_2"]
    assert len(a.train) == 45 and len(a.val) == 15 and a.test is None
    assert np.bincount(a.val.labels).tolist() == [5, 5, 5]
    assert np.array_equal(a.val.images, b.val.images)
    assert a.train.images.dtype == np.uint8 and a.train.images.shape[1:] == (16, 16, 3)


def test_folder_with_own_val_and_test_splits(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", per_class=9, splits=True)
    (root / "test").rename(root / "valid")
    make_folder(tmp_path / "t", per_class=9, splits=True)
    (tmp_path / "t" / "test").rename(root / "test")
    splits = load_splits(str(root))
    assert len(splits.train) == 27 and len(splits.val) == 9 and len(splits.test) == 9


def test_modes_sizes_and_corrupt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=16)
    Image.new("L", (40, 20), 128).save(root / "class_0" / "grey.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(root / "class_0" / "alpha.png")
    Image.new("P", (30, 30), 3).save(root / "class_1" / "palette.gif")
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "class_1" / "notes.txt").write_text("hello")
    splits = load_splits(str(root), image_size=16, val_fraction=0.2)
    assert len(splits.train) + len(splits.val) == 15
    assert isinstance(splits.train, PhotoSet)  # mixed sizes: the photo path, each image with its own shape
    assert {a.shape for a in splits.train.images + splits.val.images} >= {(16, 16, 3), (19, 38, 3)}
    err = capsys.readouterr().err
    assert "skipped 2 file(s)" in err and err.count("\n") == 1
    # transparent red on white composites to white, not black or red
    images = splits.train.images + splits.val.images
    assert any((a == 255).all() for a in images)


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "tar"])
def test_archive_with_one_top_folder(tmp_path: Path, kind: str) -> None:
    root = make_folder(tmp_path / "src" / "mydata", per_class=8, splits=True)
    archive = tmp_path / f"mydata.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted(root.rglob("*.png")):
                z.write(p, p.relative_to(root.parent).as_posix())
    else:
        with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as t:
            t.add(root, arcname="mydata")
    splits = load_splits(str(archive), val_fraction=0.25)
    assert splits.classes == ["class_0", "class_1", "class_2"]
    assert len(splits.train) + len(splits.val) == 24 and len(splits.test) == 6


def test_cache_is_rebuilt_when_the_source_changes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=10)
    assert len(load_splits(str(root)).train) == 18
    Image.new("RGB", (16, 16)).save(root / "class_0" / "extra.png")
    splits = load_splits(str(root))
    assert len(splits.train) + len(splits.val) == 21


def test_bad_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_splits(str(tmp_path / "missing"))
    one = make_folder(tmp_path / "one", classes=1, per_class=5)
    with pytest.raises(UserError, match="at least 2 classes"):
        load_splits(str(one))
    empty = make_folder(tmp_path / "e", classes=2, per_class=6, splits=True)
    for p in (empty / "test").rglob("*.png"):
        p.write_bytes(b"garbage")
    with pytest.raises(UserError, match="test split has no readable images"):
        load_splits(str(empty))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not a folder or an archive"):
        load_splits(str(tmp_path / "x.txt"))


def test_digits_and_subset() -> None:
    splits = load_splits("digits", subset=200)
    assert len(splits.train) == 200 and splits.test is not None and len(splits.test) == 360
    assert splits.train.images.shape[1:] == (8, 8, 3) and splits.train.images.max() == 255


def test_cifar10_official_batches(tmp_path: Path) -> None:
    """The official python-batch layout, made here (no download): labels and pixel order preserved."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*[(f"data_batch_{i}", 20) for i in range(1, 6)], ("test_batch", 20)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(np.arange(n) % 10)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    splits = load_splits("cifar10", data_dir=str(tmp_path), val_fraction=0.2)
    assert len(splits.train) == 80 and len(splits.val) == 20 and len(splits.test) == 20
    with open(folder / "test_batch", "rb") as f:
        first = pickle.load(f)["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(splits.test.images[0], first)


def test_cifar10_offline_names_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="--data PATH"):
        load_splits("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize("stream", [False, True])
def test_test_class_missing_from_train_is_a_user_error(tmp_path: Path, stream: bool) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, splits=True)
    (root / "test" / "class_1").rename(root / "test" / "class_9")
    with pytest.raises(UserError, match="appear in val/test but not in train"):
        load_splits(str(root), stream=stream)


def test_auto_loader_streams_a_folder_too_big_for_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf.data import sources
    from imgclf.data.imageset import FileSet, ImageSet

    root = make_folder(tmp_path / "f", classes=2, per_class=6)
    assert isinstance(load_splits(str(root), stream=None).train, ImageSet)  # 12 tiny images: decoded in memory
    monkeypatch.setattr(sources, "MEMORY_SHARE", 1e-12)  # as if the machine had almost no RAM
    streamed = load_splits(str(root), stream=None)
    assert isinstance(streamed.train, FileSet) and len(streamed.train) + len(streamed.val) == 12
    assert isinstance(load_splits(str(root), stream=False).train, ImageSet)  # --loader memory still decodes


def test_eval_batches_hold_the_pixels_of_256_small_images_on_a_cpu() -> None:
    from imgclf.data.loaders import eval_batch_size

    assert [eval_batch_size(s, "cpu") for s in (None, 8, 32, 64, 128, 224, 512)] == [256, 256, 256, 64, 16, 8, 8]
    assert eval_batch_size(224, "cuda") == 256
