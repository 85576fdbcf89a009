"""A dataset's health before training, the library of `imgclf inspect` (imgclf.commands.inspect, which adds
the counts, sizes and a checkpoint's scores): every image read and hashed, exact and near duplicates
(within a class, across classes, across splits), and confident learning, which finds suspected label
errors in out-of-sample probabilities; `imgclf train` runs the cheap exact-copy check.

Every file is read once (threads: Pillow releases the GIL while decoding) into a `Scan`: per image a
digest of its decoded pixels (exact duplicates, whatever the file format), a 64-bit perceptual hash (the
DCT hash: near duplicates survive resizing and re-encoding) and its size. Near-duplicate candidates are
pairs within `max_distance` bits, found by XOR and popcount on the packed hashes in numpy chunks (N^2/2
comparisons, about 5 s for 60,000 images on one core, no Python loop over pairs); a candidate is kept when
the grey thumbnails also correlate: the hash alone pairs a small plane and a small bird on one plain sky.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from imgclf.data import Splits, load_splits
from imgclf.data.csvlabels import CsvListing, label_names
from imgclf.data.decode import decode_image, printable_name
from imgclf.data.imageset import ImageSet, stratified_split
from imgclf.data.listing import ARCHIVE_SUFFIXES, FolderTree, single_label, train_classes
from imgclf.data.photos import PhotoSet
from imgclf.errors import UserError

HASH_SIDE = 32  # the perceptual hash's DCT runs on a 32x32 grey thumbnail and keeps its 8x8 lowest frequencies
NEAR_DISTANCE = 8  # default: pairs whose 64-bit hashes differ in at most this many bits are candidates
# ... kept when their grey thumbnails correlate at least this much. On CIFAR-10 (JPEG) every candidate pair
# across classes stayed below 0.73 and the pairs checked by eye at 0.85 and above were one picture
NEAR_CORRELATION = 0.9
PAIR_BLOCK = 1 << 24  # hash comparisons per numpy chunk (128 MB of uint64 at a time)

Source = bytes | Path | np.ndarray  # an archive member, a file, or a built-in set's decoded image


@dataclass
class Scan:
    """Every image of a dataset as columns; `sources` can be decoded again (thumbnails, the model's view)."""

    data: str
    classes: list[str]
    names: list[str]
    splits: list[str]  # as the data has them: train / val / test, or "all" for one <class>/<image> folder
    labels: np.ndarray
    sizes: np.ndarray  # (N, 2) width, height of the decoded image
    digests: list[bytes]
    grey: np.ndarray  # (N, 32, 32) uint8 thumbnails the hashes were taken from (to confirm near pairs)
    codes: np.ndarray  # (N,) uint64 perceptual hashes
    sources: list[Source]
    unreadable: list[str]
    multilabel: bool = False  # a multi-label CSV: each of `classes` is a set of labels (`a;b`), see label_names

    def label_names(self, label: int) -> list[str]:
        """The labels class number `label` stands for: itself, or each of a multi-label set's."""
        return (label_names if self.multilabel else single_label)(self.classes[label])

    def __len__(self) -> int:
        return len(self.names)

    def item(self, i: int) -> dict[str, Any]:
        return {"name": self.names[i], "split": self.splits[i], "class": self.classes[self.labels[i]]}


def pixel_digest(rgb: np.ndarray) -> bytes:
    """Identity of an image's content: its shape and pixels (a PNG and a BMP of the same picture agree)."""
    h = hashlib.blake2b(np.asarray(rgb.shape, np.int64).tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(rgb))
    return h.digest()


def decode(source: Source, short_side: int | None = None) -> np.ndarray:
    return source if isinstance(source, np.ndarray) else decode_image(source, short_side)


def _look(source: Source) -> tuple[int, int, bytes, np.ndarray] | None:
    """(width, height, pixel digest, 32x32 grey thumbnail) of one image; None when it does not decode."""
    try:
        rgb = decode(source)
    except Exception:  # noqa: BLE001 - a corrupt or non-image file is named in the report, whatever the cause
        return None
    grey = Image.fromarray(rgb).convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    return rgb.shape[1], rgb.shape[0], pixel_digest(rgb), np.asarray(grey)


def perceptual_hashes(grey: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grey thumbnails -> (N,) uint64 DCT hashes: bit set where a low frequency is above the
    median of the 8x8 lowest ones (the pHash of the imagehash package, vectorised over all images)."""
    low = dctn(grey.astype(np.float32), type=2, axes=(1, 2))[:, :8, :8].reshape(len(grey), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def near_pairs(codes: np.ndarray, max_distance: int) -> np.ndarray:
    """(i, j, distance) rows with i < j for every pair of hashes within `max_distance` bits."""
    n = len(codes)
    found = []
    rows = max(1, PAIR_BLOCK // max(n, 1))
    for start in range(0, n, rows):
        distance = np.bitwise_count(codes[start:start + rows, None] ^ codes[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i  # column j is image start + j, row i is image start + i: the upper triangle only
        found.append(np.stack([i[keep] + start, j[keep] + start, distance[i[keep], j[keep]]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 3), np.int64)


def thumbnail_correlation(grey: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the grey thumbnails of each pair (a[k], b[k])."""
    x = grey[a].reshape(len(a), HASH_SIDE * HASH_SIDE).astype(np.float32)
    y = grey[b].reshape(len(b), HASH_SIDE * HASH_SIDE).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    return (x * y).sum(axis=1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-6)


# -- reading a dataset ---------------------------------------------------------------------------------------

def _listing(data: str, data_dir: str | None, seed: int, val_fraction: float,
             ) -> tuple[list[str], list[tuple[str, str, str, Callable[[], Source]]], bool]:
    """(classes, [(name, split, class, read)], multi-label?) in the data layer's order, so a checkpoint's val
    carve-out can be reproduced; built-in sets come as imgclf would split them (val carved with `seed`). A
    multi-label CSV's classes are its label sets (`a;b`): a duplicate across two of them is a label conflict."""
    if data in ("digits", "cifar10"):
        splits = load_splits(data, data_dir=data_dir, val_fraction=val_fraction, seed=seed)
        items = []
        for split in ("train", "val", "test"):
            part = getattr(splits, split)
            if part is not None:
                assert isinstance(part, ImageSet)  # built-in sets are small squares in memory
                items += [(f"{split}/{i}", split, splits.classes[y], (lambda a=a: a))
                          for i, (a, y) in enumerate(zip(part.images, part.labels, strict=True))]
        return splits.classes, items, False
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"data not found: {data} (expected cifar10, digits, an image folder, an archive or a "
                        "labels CSV)")
    if path.is_dir() or path.name.lower().endswith(ARCHIVE_SUFFIXES):
        tree: Any = FolderTree(path)
    elif path.suffix.lower() == ".csv":  # file,label[,split] rows, listed as the data layer lists them
        tree = CsvListing(path)
    else:
        raise UserError(f"{data}: not a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)}), nor a labels .csv")
    groups = tree.layout()
    _, classes = train_classes(path, groups)
    return classes, [(printable_name(m), split or "all", c, (lambda m=m: tree.read(m)))
                     for split, members in groups.items() for c, m in members], getattr(tree, "multilabel", False)


def scan(data: str, data_dir: str | None, seed: int, val_fraction: float) -> Scan:
    """Read and hash every image of DATA (see `_listing`: built-in sets split by `seed` and `val_fraction`);
    unreadable files are named, never fatal."""
    classes, items, multilabel = _listing(data, data_dir, seed, val_fraction)
    sources = [read() for _, _, _, read in items]
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        looks = list(pool.map(_look, sources, chunksize=64))
    ok = [i for i, look in enumerate(looks) if look is not None]
    index = {c: i for i, c in enumerate(classes)}
    grey = np.stack([looks[i][3] for i in ok]) if ok else np.zeros((0, HASH_SIDE, HASH_SIDE), np.uint8)
    return Scan(
        data=data, classes=classes, names=[items[i][0] for i in ok], splits=[items[i][1] for i in ok],
        labels=np.asarray([index[items[i][2]] for i in ok], dtype=np.int64),
        sizes=np.asarray([looks[i][:2] for i in ok], dtype=np.int64).reshape(-1, 2),
        digests=[looks[i][2] for i in ok],
        grey=grey, codes=perceptual_hashes(grey),
        sources=[sources[i] for i in ok], unreadable=[items[i][0] for i, look in enumerate(looks) if look is None],
        multilabel=multilabel)


# -- duplicates -------------------------------------------------------------------------------------------

def _kinds(scan: Scan, members: Iterable[int]) -> list[str]:
    """What a duplicate group means: a label conflict (across classes), leakage (across splits), or
    plain redundancy (within one class of one split)."""
    members = list(members)
    kinds = []
    if len({int(scan.labels[i]) for i in members}) > 1:
        kinds.append("across_classes")
    if len({scan.splits[i] for i in members}) > 1:
        kinds.append("across_splits")
    return kinds or ["within_class"]


def exact_groups(digests: list[bytes]) -> list[list[int]]:
    """Indexes of the images sharing one digest, for every digest held by more than one image."""
    by_digest: dict[bytes, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        by_digest[digest].append(i)
    return [g for g in by_digest.values() if len(g) > 1]


def _tally(kinds: list[list[str]]) -> dict[str, int]:
    return {k: sum(k in ks for ks in kinds) for k in ("within_class", "across_classes", "across_splits")}


def duplicates(scan: Scan, max_distance: int) -> dict[str, Any]:
    """Exact duplicate groups, and near-duplicate pairs among distinct images (one per exact group) with
    their connected groups; each counted by kind."""
    groups = exact_groups(scan.digests)
    exact_kinds = [_kinds(scan, g) for g in groups]
    copies = {i for g in groups for i in g[1:]}
    distinct = np.asarray([i for i in range(len(scan)) if i not in copies], dtype=np.int64)
    pairs = near_pairs(scan.codes[distinct], max_distance)
    pairs[:, :2] = distinct[pairs[:, :2]]
    correlation = thumbnail_correlation(scan.grey, pairs[:, 0], pairs[:, 1])
    pairs, correlation = pairs[correlation >= NEAR_CORRELATION], correlation[correlation >= NEAR_CORRELATION]
    pair_kinds = [_kinds(scan, p[:2]) for p in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(scan), len(scan)))
    component = connected_components(graph, directed=False)[1]
    near_groups = len(np.unique(component[np.unique(pairs[:, :2])]))  # groups of images joined by pairs
    return {
        "exact": {"groups": len(groups), "images": sum(map(len, groups)),
                  "extra_copies": sum(len(g) - 1 for g in groups), **_tally(exact_kinds),
                  "list": [{"kinds": k, "images": [scan.item(i) for i in g]}
                           for g, k in zip(groups, exact_kinds, strict=True)]},
        "near": {"max_distance": max_distance, "pairs": len(pairs), "groups": near_groups,
                 **_tally(pair_kinds),
                 "min_correlation": NEAR_CORRELATION,
                 "list": [{"kinds": k, "distance": int(d), "correlation": round(float(c), 3), "a": scan.item(int(i)),
                           "b": scan.item(int(j))}
                          for (i, j, d), c, k in zip(pairs, correlation, pair_kinds, strict=True)]},
        # indexes for the report's thumbnails (not written to the JSON)
        "_exact_groups": groups, "_near_pairs": pairs,
    }


# -- label issues ------------------------------------------------------------------------------------------

def confident_label_issues(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident learning (Northcutt et al. 2021, cleanlab's find_label_issues): a class's threshold is the
    mean probability the model gives that class on the samples labelled with it; a sample is suspect when
    the likeliest class among those it clears the threshold of is not its given label.

    Returns (suspect indexes, least self-confident first; the likely label of every sample; thresholds).
    """
    n, k = probs.shape
    self_confidence = probs[np.arange(n), labels]
    thresholds = np.array([self_confidence[labels == c].mean() if (labels == c).any() else np.inf
                           for c in range(k)])
    confident = probs >= thresholds
    likely = np.where(confident, probs, -1.0).argmax(axis=1)
    suspect = np.flatnonzero(confident.any(axis=1) & (likely != labels))
    return suspect[np.argsort(self_confidence[suspect], kind="stable")], likely, thresholds


def out_of_sample(scan: Scan, seed: int, val_fraction: float) -> np.ndarray:
    """Indexes of the images the checkpoint did not train on: val and test as the data has them; where the
    data has no val split, the val the training run carved from train (same fraction, seed and order as
    the data layer, so the same images)."""
    splits = np.asarray(scan.splits)
    held = np.flatnonzero((splits == "val") | (splits == "test"))
    if "val" in scan.splits:
        return held
    train = np.flatnonzero((splits == "train") | (splits == "all"))
    _, carved = stratified_split(scan.labels[train], val_fraction, seed, scan.classes)
    return np.sort(np.concatenate([held, train[carved]]))


def public(result: Any) -> Any:
    """The result without its `_`-keys (indexes for the report): what inspection.json holds."""
    if isinstance(result, dict):
        return {k: public(v) for k, v in result.items() if not str(k).startswith("_")}
    if isinstance(result, list):
        return [public(v) for v in result]
    return result


# -- the cheap check `imgclf train` runs -------------------------------------------------------------------

def _split_digests(splits: Splits) -> Iterable[tuple[str, bytes, bytes]]:
    """(split, label as bytes: a class index or a multi-hot row, pixel digest) of every decoded image."""
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if isinstance(part, ImageSet | PhotoSet):  # streamed data (FileSet) is too large to hash on every run
            for image, label in zip(part.images, part.labels, strict=True):
                yield name, np.asarray(label).tobytes(), pixel_digest(image)


def warn_exact_duplicates(splits: Splits, data: str) -> None:
    """One warning line when identical images sit in two splits (the scores would be optimistic) or carry
    two labels: digests of the arrays already decoded (about 0.3 s for CIFAR-10's 60,000)."""
    seen: dict[bytes, tuple[str, bytes]] = {}
    leaked = conflicts = 0
    for split, label, digest in _split_digests(splits):
        first = seen.setdefault(digest, (split, label))
        leaked += first[0] != split
        conflicts += first[1] != label
    problems = []
    if leaked:
        problems.append(f"{leaked} image(s) in one split are exact copies of images in another (scores will be "
                        "optimistic)")
    if conflicts:
        problems.append(f"{conflicts} image(s) are exact copies of images labelled with another class (or set "
                        "of classes)")
    if problems:
        print(f"imgclf: warning: {'; '.join(problems)}; `imgclf inspect --data {data}` lists them",
              file=sys.stderr)
