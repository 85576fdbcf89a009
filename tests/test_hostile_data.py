"""Hostile data (issue 18): undecodable files, damaged archives, odd links and names, 16-bit images, thin
classes. Every bad file is made here; a bad file is skipped, counted and named by every loader and on every
cache hit, and a damaged archive is refused with one line, never half-read or cached."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_folder
from imgclf.data import load_splits
from imgclf.data.decode import decode_image
from imgclf.data.loaders import make_loader
from imgclf.data.photos import Preprocess
from imgclf.errors import UserError


def _pixels(part: object) -> bytes:
    images = part.images  # type: ignore[attr-defined]
    return b"".join(a.tobytes() for a in images) if isinstance(images, list) else images.tobytes()


def _snapshot(splits: object) -> tuple:
    """Everything a run would see of the data, for exact comparison."""
    parts = [splits.train, splits.val]  # type: ignore[attr-defined]
    return (splits.classes, splits.skipped,  # type: ignore[attr-defined]
            [(_pixels(p), p.labels.tolist()) for p in parts])


@pytest.mark.parametrize("stream", [False, True])
def test_an_undecodable_file_is_skipped_named_and_counted_on_every_load(
        tmp_path: Path, stream: bool, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=12)
    (root / "class_0" / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for _ in range(2):  # the second load is a cache hit: the warning and the count come back with it
        splits = load_splits(str(root), val_fraction=0.2, stream=stream)
        err = capsys.readouterr().err
        assert splits.skipped == ["class_0/junk.jpg"]
        assert "skipped 1 file(s)" in err and "class_0/junk.jpg" in err and err.count("\n") == 1
        assert len(splits.train) + len(splits.val) == 12


def test_a_streamed_file_that_fails_past_its_header_is_named_once(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=40)
    good = (root / "class_1" / "0.png").read_bytes()
    cut = root / "class_1" / "cut.png"
    cut.write_bytes(good[:len(good) // 2])  # the header opens, the pixels do not
    splits = load_splits(str(root), val_fraction=0.2, stream=True)
    assert splits.skipped == [] and cut in splits.train.paths + splits.val.paths
    part = splits.train if cut in splits.train.paths else splits.val
    loader = make_loader(part, 4, "cpu", train=False, input_size=16, num_workers=1)
    seen = sum(len(y) for _ in range(2) for _, y in loader)  # two passes, one worker process each
    err = capsys.readouterr().err
    assert loader.unreadable == [str(cut)]
    assert err.count("cut.png") == 1 and "Traceback" not in err  # named once, not once an epoch
    assert seen == 2 * (len(part) - 1)  # every other image arrived


def _archive(tmp_path: Path, kind: str) -> Path:
    """~21 tiny PNGs in 3 class folders under one top folder, packed as `kind`."""
    src = make_folder(tmp_path / "src" / "mydata", classes=3, per_class=7, size=8)
    out = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(src.rglob("*.png")):
                z.write(p, f"mydata/{p.relative_to(src).as_posix()}")
    else:
        with tarfile.open(out, "w:" + kind.removeprefix("tar").lstrip(".")) as t:
            t.add(src, arcname="mydata")
    return out


@pytest.mark.parametrize("kind", ["tar.xz", "tar.gz", "zip"])
def test_a_damaged_archive_loads_whole_or_is_refused_in_one_line(tmp_path: Path, kind: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _archive(tmp_path, kind)
    reference = _snapshot(load_splits(str(archive), val_fraction=0.3))
    blob = archive.read_bytes()
    outcomes = []
    for k in range(10):
        offset = k * (len(blob) - 16) // 9
        damaged = bytearray(blob)
        damaged[offset:offset + 16] = bytes(b ^ 0xA5 for b in damaged[offset:offset + 16])
        bad = tmp_path / f"bad{k}.{kind}"
        bad.write_bytes(damaged)
        cache = tmp_path / f"cache{k}"
        monkeypatch.setenv("IMGCLF_CACHE", str(cache))
        try:
            got = _snapshot(load_splits(str(bad), val_fraction=0.3))
        except UserError as exc:
            assert "\n" not in str(exc) and str(bad) in str(exc)
            assert not list(cache.glob("*.npz")), "a refused archive must not be cached"
            outcomes.append("refused")
            continue
        assert got == reference, f"offset {offset}: a damaged {kind} loaded partly"
        outcomes.append("whole")
    assert outcomes.count("refused") >= 5  # nearly all damage is detectable in a compressed archive


def test_a_tar_whose_listing_stops_at_a_broken_header_is_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path, "tar")
    with tarfile.open(archive) as t:
        header = [m.offset for m in t.getmembers() if m.isfile()][10]
    damaged = bytearray(archive.read_bytes())
    damaged[header + 100:header + 116] = b"\xa5" * 16  # tarfile would quietly end the listing here
    archive.write_bytes(damaged)
    with pytest.raises(UserError, match="damaged or unreadable archive.*broken member header"):
        load_splits(str(archive))


@pytest.mark.parametrize("stream", [False, True])
def test_dangling_and_looping_links_are_skipped_and_named(tmp_path: Path, stream: bool,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=12)
    os.symlink(root / "class_0" / "nowhere.png", root / "class_0" / "dangling.png")
    os.symlink(root / "class_1" / "b.png", root / "class_1" / "a.png")
    os.symlink(root / "class_1" / "a.png", root / "class_1" / "b.png")
    for _ in range(2):
        splits = load_splits(str(root), val_fraction=0.2, stream=stream)
        assert splits.skipped == ["class_0/dangling.png", "class_1/a.png", "class_1/b.png"]
        assert "skipped 3 file(s)" in capsys.readouterr().err
        assert len(splits.train) + len(splits.val) == 12


@pytest.mark.parametrize("stream", [False, True])
def test_file_names_that_are_not_utf8_are_read(tmp_path: Path, stream: bool,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=12)
    folder = os.fsencode(root / "class_0")
    try:
        shutil.copy(root / "class_0" / "0.png", os.fsdecode(folder + b"/good\xff.png"))
        Path(os.fsdecode(folder + b"/bad\xfe.png")).write_bytes(b"not an image")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    for _ in range(2):
        splits = load_splits(str(root), val_fraction=0.2, stream=stream)
        assert len(splits.train) + len(splits.val) == 13
        assert splits.skipped == ["class_0/bad\\xfe.png"]  # printable: the byte that is not UTF-8 escaped
        assert "skipped 1 file(s)" in capsys.readouterr().err


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.round(np.linspace(0, 65535, 256)).astype(np.uint16)[None].repeat(4, axis=0)
    png, ppm = tmp_path / "ramp16.png", tmp_path / "ramp16.ppm"
    Image.fromarray(ramp).save(png)  # Pillow reads it back as mode I;16
    Image.fromarray(ramp).save(ppm)  # ... and this one as mode I
    for path in (png, ppm):
        image = decode_image(path)
        assert np.array_equal(image[0, :, 0], np.arange(256)), path
        assert np.array_equal(image[..., 0], image[..., 2])
    # predict and the server decode through Preprocess.decode, which is decode_image at the cached size
    assert np.array_equal(Preprocess(64, "squash").decode(png), decode_image(png, Preprocess(64).decode_side))


def test_a_class_with_one_image_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=12)
    (root / "bird").mkdir()
    shutil.copy(root / "class_0" / "0.png", root / "bird" / "only.png")
    for stream in (False, True):
        with pytest.raises(UserError, match="class 'bird' has 1 image; each class needs at least 2"):
            load_splits(str(root), stream=stream)


@pytest.mark.parametrize("stream", [False, True])
def test_a_class_whose_files_are_all_corrupt_is_dropped_and_named(tmp_path: Path, stream: bool,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=6, size=12, splits=True)
    for part in ("train", "test"):
        for p in (root / part / "class_2").iterdir():
            p.write_bytes(b"garbage")
    for _ in range(2):
        splits = load_splits(str(root), val_fraction=0.25, stream=stream)
        err = capsys.readouterr().err
        assert splits.classes == ["class_0", "class_1"]
        assert "dropped class(es) 'class_2'" in err and "skipped 8 file(s)" in err
        assert len(splits.train) + len(splits.val) == 12 and len(splits.test) == 4


def test_data_left_with_one_readable_class_is_refused_in_one_line(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=2, per_class=6, size=12)
    for p in (root / "class_1").iterdir():
        p.write_bytes(b"garbage")
    for stream in (False, True):
        with pytest.raises(UserError, match="need at least 2 classes with readable images.*'class_1'"):
            load_splits(str(root), stream=stream)
