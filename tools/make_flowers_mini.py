"""Build the bundled `flowers-mini` photo set (src/imgclf/datasets/flowers_mini) from flowers5.tar.xz.

A seeded selection of flowers5's own splits (60 train and 20 test photos a class by default: no test photo was
a training photo there), each downscaled so its short side is at most 160 px (Pillow, LANCZOS, aspect kept),
re-encoded as JPEG quality 80 with no EXIF, under its own file name; plus ATTRIBUTION.txt holding flowers5's
attribution lines of exactly the photos kept (verbatim) and a README. 192 px at quality 85 made a 5.9 MB
folder; 160 px at quality 80 keeps it under 4 MB (the sizes are file bytes: `du --apparent-size`; plain `du`
adds the file system's block rounding, about 0.8 MB on 4 KiB blocks). Rerun it to rebuild the folder:

    .venv/bin/python tools/make_flowers_mini.py [--source ../shared/datasets/flowers5.tar.xz]

The output folder's train/ and test/ are replaced; the same source, seed and options give the same selection.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "flowers5.tar.xz"
DEFAULT_OUT = ROOT / "src" / "imgclf" / "datasets" / "flowers_mini"
TOP = "flowers5"
SPLITS = ("train", "test")
ARROW = "  <-  "  # ATTRIBUTION.txt: "<split>/<class>/<name>  <-  <origin>  <credit>"
LICENCE_URL = "https://creativecommons.org/licenses/by/2.0/"


def read_source(path: Path) -> tuple[dict[str, dict[str, dict[str, bytes]]], list[str]]:
    """{split: {class: {name: jpeg bytes}}} and the lines of ATTRIBUTION.txt, from the flowers5 archive."""
    photos: dict[str, dict[str, dict[str, bytes]]] = {s: {} for s in SPLITS}
    attribution: list[str] | None = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = PurePosixPath(member.name.removeprefix("./")).parts
            if parts == (TOP, "ATTRIBUTION.txt"):
                attribution = tar.extractfile(member).read().decode("utf-8").splitlines()
            elif len(parts) == 4 and parts[0] == TOP and parts[1] in SPLITS and parts[3].lower().endswith(".jpg"):
                photos[parts[1]].setdefault(parts[2], {})[parts[3]] = tar.extractfile(member).read()
    if attribution is None or not all(photos.values()):
        raise SystemExit(f"{path}: expected {TOP}/ATTRIBUTION.txt and {TOP}/{{train,test}}/<class>/*.jpg")
    if sorted(photos["train"]) != sorted(photos["test"]):
        raise SystemExit(f"{path}: train and test hold different classes")
    return photos, attribution


def select(names: list[str], count: int, seed: int, split: str, cls: str) -> list[str]:
    """`count` names drawn with a generator seeded by (seed, split, class): one class's draw does not move
    when another class changes."""
    if len(names) < count:
        raise SystemExit(f"{split}/{cls}: only {len(names)} photos, {count} asked for")
    return sorted(random.Random(f"{seed}/{split}/{cls}").sample(sorted(names), count))


def shrink(data: bytes, side: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes with the short side at most `side` (aspect kept, LANCZOS), upright, quality `quality`,
    and no EXIF or other metadata (only the pixels are written)."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")  # the orientation tag goes with the EXIF
    w, h = image.size
    if min(w, h) > side:
        scale = side / min(w, h)
        image = image.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue(), image.size


def attribution_text(header: list[str], lines: list[str], side: int, quality: int) -> str:
    """flowers5's header and its lines for the kept photos, verbatim, plus one line saying what changed here."""
    note = (f"flowers-mini: a selection of those images, downscaled again (short side <= {side} px, LANCZOS) and "
            f"re-encoded (JPEG q{quality}, metadata removed) by tools/make_flowers_mini.py.")
    return "\n".join([*header, note, "", *lines]) + "\n"


def readme_text(counts: dict[str, dict[str, int]], photo_bytes: int, total_bytes: int, sizes: list[tuple[int, int]],
                args: argparse.Namespace) -> str:
    classes = sorted(counts["train"])
    per_class = "\n".join(f"| {c} | {counts['train'][c]} | {counts['test'][c]} |" for c in classes)
    n_train, n_test = (sum(counts[s].values()) for s in SPLITS)
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    ratios = [w / h for w, h in sizes]
    return f"""# flowers-mini

A small set of real photos shipped inside the package, so that the photo path (images of any size and aspect
ratio, in an image folder with train/ and test/) can be tried offline, with nothing to download:

    imgclf train --data flowers-mini

Five flower classes ({", ".join(classes)}): {n_train} training and {n_test} test photos
({n_train // len(classes)} and {n_test // len(classes)} a class). Validation is carved from train/ as for any folder.
The test photos come from the source's own test split, so none of them was a training photo there.

| class | train | test |
| --- | --- | --- |
{per_class}

Sizes: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px, aspect ratios (w/h)
{min(ratios):.2f} to {max(ratios):.2f}. The photos take {photo_bytes / 1e6:.2f} MB, the whole folder
{total_bytes / 1e6:.2f} MB ({total_bytes / 2**20:.2f} MiB) of file bytes.

## Source and licence

The photos are Flickr photos from TensorFlow's `flower_photos` set
(http://download.tensorflow.org/example_images/flower_photos.tgz), licensed under the Creative Commons
Attribution 2.0 Generic licence (CC BY 2.0, {LICENCE_URL}).
`ATTRIBUTION.txt`, which must stay with the images, names the photographer and the Flickr page of each photo
kept here.

They were taken from the project's `flowers5` set (a de-duplicated 80/20 split of five classes of
`flower_photos`, already downscaled to a short side of at most 320 px and re-encoded at JPEG quality 90).

Changes made (as the licence asks to indicate): a seeded selection (seed {args.seed}) of {args.train} training and
{args.test} test photos a class was kept; each was downscaled so that its short side is at most {args.side} px
(aspect ratio kept, Lanczos filter) and re-encoded as JPEG at quality {args.quality}, without EXIF or other
metadata. File names are the original ones.

## Rebuilding

    .venv/bin/python tools/make_flowers_mini.py --source ../shared/datasets/flowers5.tar.xz
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="flowers5.tar.xz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the folder to (re)write")
    parser.add_argument("--train", type=int, default=60, help="training photos a class")
    parser.add_argument("--test", type=int, default=20, help="test photos a class")
    parser.add_argument("--side", type=int, default=160, help="the short side at most, px")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-mb", type=float, default=4.0, help="refuse a folder larger than this (MB of file bytes)")
    args = parser.parse_args(argv)

    photos, attribution = read_source(args.source)
    blank = attribution.index("")  # the header ends at the first empty line
    header, credits = attribution[:blank], [line for line in attribution[blank + 1:] if line]
    credit = {line.split(ARROW, 1)[0]: line for line in credits}

    out: Path = args.out
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    kept: set[str] = set()
    sizes: list[tuple[int, int]] = []
    for split in SPLITS:
        for cls in sorted(photos[split]):
            chosen = select(list(photos[split][cls]), getattr(args, split), args.seed, split, cls)
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name in chosen:
                relative = f"{split}/{cls}/{name}"
                if relative not in credit:
                    raise SystemExit(f"{relative}: no line in ATTRIBUTION.txt; it cannot be shipped without one")
                data, size = shrink(photos[split][cls][name], args.side, args.quality)
                (folder / name).write_bytes(data)
                kept.add(relative)
                sizes.append(size)
            counts[split][cls] = len(chosen)

    lines = [line for line in credits if line.split(ARROW, 1)[0] in kept]  # the source's order
    (out / "ATTRIBUTION.txt").write_text(attribution_text(header, lines, args.side, args.quality), encoding="utf-8")
    photo_bytes = sum((out / r).stat().st_size for r in kept)
    readme = out / "README.md"
    total = folder_bytes(out) - (readme.stat().st_size if readme.is_file() else 0)
    text = readme_text(counts, photo_bytes, total, sizes, args)
    for _ in range(3):  # the README counts itself in the folder's size
        text = readme_text(counts, photo_bytes, total + len(text.encode()), sizes, args)
    readme.write_text(text, encoding="utf-8")

    total = folder_bytes(out)
    print(f"{out}: {len(kept)} photos ({', '.join(f'{s} {sum(counts[s].values())}' for s in SPLITS)}), "
          f"photos {photo_bytes / 1e6:.2f} MB, folder {total / 1e6:.2f} MB")
    if total > args.max_mb * 1e6:
        print(f"the folder is over {args.max_mb} MB: rerun with a lower --quality or --side 160", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
