"""DATA spec -> Splits: cifar10, digits, an image folder, or an archive of one; decoded once and cached."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgclf.data.csvlabels import LABEL_SEPARATOR, CsvListing, label_names, multi_hot
from imgclf.data.decode import CACHE_VERSION, decode_image, opens_as_image, printable_name
from imgclf.data.imageset import FileSet, ImageSet, Splits, check_usable, stratified_split, thin_train
from imgclf.data.listing import ARCHIVE_SUFFIXES, FolderTree, single_label, train_classes, walk_files
from imgclf.data.photos import PhotoSet, is_small_square_set, working_side
from imgclf.defaults import PHOTO_INPUT_SIZE
from imgclf.errors import UserError
from imgclf.fileio import write_text, write_with

SHOWN_NAMES = 5  # a warning names this many skipped files; Splits.skipped holds all of them
BUNDLED = {"flowers-mini": "flowers_mini"}  # DATA name -> photo folder shipped under imgclf/datasets


def cache_dir() -> Path:
    """Where decoded arrays are kept: $IMGCLF_CACHE, else ~/.cache/imgclf."""
    return Path(os.environ.get("IMGCLF_CACHE") or Path.home() / ".cache" / "imgclf")


def bundled_path(name: str) -> Path | None:
    """The folder of a photo set shipped inside the package (a BUNDLED name), else None."""
    folder = BUNDLED.get(name)
    if folder is None:
        return None
    resource = importlib.resources.files("imgclf") / "datasets" / folder
    if not isinstance(resource, Path):  # imported from a zip: nothing on disk to list and cache
        raise UserError(f"{name}: the bundled photos are not on disk ({resource}); install imgclf unzipped")
    return resource


def load_splits(data: str, *, data_dir: str | None = None, image_size: int | None = None,
                val_fraction: float = 0.1, seed: int = 0, subset: int | None = None,
                train_fraction: float = 1.0, stream: bool | None = False) -> Splits:
    """Resolve a DATA spec to train/val/test; val is the source's own or a seeded per-class split of train.

    `stream`: True keeps a folder on disk (paths only, decoded batch by batch), False decodes everything
    into memory, None decides: stream a folder whose decoded images would not fit comfortably in RAM.

    `subset` / `train_fraction` thin the training split only (seeded, per class), after val is carved,
    so every variant of a comparison is scored on the same val and test images.
    """
    if data == "digits":
        splits = _digits(val_fraction, seed)
    elif data == "cifar10":
        splits = _cifar10(data_dir, val_fraction, seed)
    else:
        path = bundled_path(data) or Path(data).expanduser()  # a bundled name: its folder, handled as any folder
        if not path.exists():
            raise UserError(f"data not found: {data} (expected cifar10, digits, flowers-mini, an image folder, an "
                            "archive or a labels CSV)")
        if path.is_dir() and (stream or (stream is None and _too_big_for_memory(path, image_size))):
            splits = _folder_files(path, image_size, val_fraction, seed)
        elif path.is_dir() or path.name.lower().endswith(ARCHIVE_SUFFIXES):
            splits = _cached_tree(path, image_size, val_fraction, seed)
        elif path.suffix.lower() == ".csv":  # file,label[,split] rows: decoded and cached like a folder
            splits = _cached_tree(path, image_size, val_fraction, seed, CsvListing(path))
        else:
            raise UserError(f"{data}: not a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)}), nor a labels .csv")
    return check_usable(thin_train(splits, subset, train_fraction, seed))


# -- built-in sets -------------------------------------------------------------------------------------------

def _digits(val_fraction: float, seed: int) -> Splits:
    """scikit-learn's bundled 8x8 digits as RGB uint8; a seeded 20 % test split stands in for a test set."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    full = ImageSet(np.repeat(grey[..., None], 3, axis=3), bunch.target.astype(np.int64),
                    [str(c) for c in bunch.target_names])
    rest, test = stratified_split(full.labels, 0.2, seed=1234)  # fixed: the test set must not move with --seed
    return _with_val(full.take(rest), full.take(test), val_fraction, seed, "digits")


def _cifar10(data_dir: str | None, val_fraction: float, seed: int) -> Splits:
    """The official python batches under data_dir; downloaded through torchvision when absent and online."""
    root = Path(data_dir or Path.home() / ".cache" / "imgclf" / "cifar10").expanduser()
    batches = root / "cifar-10-batches-py"
    if not (batches / "test_batch").is_file():
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
        except Exception:  # noqa: BLE001 - offline or blocked: tell the user the way out
            raise UserError(f"CIFAR-10 not found under {root} and could not be downloaded (offline?); pass "
                            "--data PATH to an image folder or archive (for example "
                            "--data ../shared/datasets/cifar10-jpeg.tar.xz) or --data-dir DIR holding "
                            "cifar-10-batches-py") from None

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            with open(batches / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    with open(batches / "batches.meta", "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")["label_names"])
    train = ImageSet(*read([f"data_batch_{i}" for i in range(1, 6)]), classes)
    test = ImageSet(*read(["test_batch"]), classes)
    return _with_val(train, test, val_fraction, seed, "cifar10")


def _with_val(train: ImageSet | PhotoSet | FileSet, test: ImageSet | PhotoSet | FileSet | None, val_fraction: float,
              seed: int, source: str, skipped: list[str] | None = None) -> Splits:
    kept, held = stratified_split(train.labels, val_fraction, seed, train.classes)
    return Splits(train.take(kept), train.take(held), test, source=source, skipped=skipped or [])


# -- folders and archives (listed by imgclf.data.listing), decoded and cached ---------------------------------

def _fingerprint(path: Path, image_size: int | None) -> str:
    """Cache key: a changed archive (size, mtime) or folder listing (names, sizes, mtimes) is re-read.
    Names are hashed as bytes (a name need not be UTF-8), and a link to nothing by the link itself."""
    h = hashlib.sha256(os.fsencode(f"{CACHE_VERSION}|{path.resolve()}|{image_size}"))
    if path.is_dir():
        for p in walk_files(path):
            try:
                st = p.stat()
            except OSError:  # dangling or looping link
                st = p.lstat()
            h.update(os.fsencode(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n"))
    else:
        st = path.stat()
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _cached_tree(path: Path, image_size: int | None, val_fraction: float, seed: int,
                 listing: CsvListing | None = None) -> Splits:
    """A folder or archive (or the rows of a labels CSV: `listing`) decoded once and cached by fingerprint."""
    key = listing.fingerprint(image_size) if listing else _fingerprint(path, image_size)
    cache = cache_dir() / f"{path.name}-{key}.npz"
    if cache.is_file():
        parts, skipped, dropped = _read_cache(cache)
    else:
        parts, skipped, dropped = _decode_tree(path, image_size, listing)
        _write_cache(cache, parts, skipped, dropped)
    warn_unreadable(skipped, dropped)  # on a cache hit too: the data still lacks them
    train = parts.get("train", parts.get(""))
    if "val" in parts:
        return Splits(train, parts["val"], parts.get("test"), source=str(path), skipped=skipped)
    return _with_val(train, parts.get("test"), val_fraction, seed, str(path), skipped)


def warn_unreadable(skipped: list[str], dropped: list[str]) -> None:
    """One line for the files left out, one for classes left without a readable training image."""
    if skipped:
        shown = ", ".join(skipped[:SHOWN_NAMES]) + (f" and {len(skipped) - SHOWN_NAMES} more"
                                                    if len(skipped) > SHOWN_NAMES else "")
        print(f"imgclf: warning: skipped {len(skipped)} file(s) that are not readable images: {shown}",
              file=sys.stderr)
    if dropped:
        print(f"imgclf: warning: dropped class(es) {', '.join(map(repr, dropped))}: none of their training "
              "files is a readable image", file=sys.stderr)


def _write_cache(cache: Path, parts: dict[str, ImageSet | PhotoSet], skipped: list[str], dropped: list[str]) -> None:
    first = next(iter(parts.values()))
    meta = {"classes": first.classes, "splits": list(parts), "skipped": skipped, "dropped": dropped,
            "photos": isinstance(first, PhotoSet), "image_size": first.image_size}
    arrays = {}
    for split, part in parts.items():
        fields = part.packed() if isinstance(part, PhotoSet) else {"images": part.images, "labels": part.labels}
        arrays.update({f"{split}_{k}": v for k, v in fields.items()})
    write_with(cache, lambda f: np.savez(f, meta=json.dumps(meta), **arrays))  # per-pid temp: ranks may race


def _read_cache(cache: Path) -> tuple[dict[str, ImageSet | PhotoSet], list[str], list[str]]:
    stored = np.load(cache, allow_pickle=False)
    meta = json.loads(str(stored["meta"]))
    if meta["photos"]:
        parts = {s: PhotoSet.unpack(stored[f"{s}_pixels"], stored[f"{s}_shapes"], stored[f"{s}_labels"],
                                    meta["classes"], meta["image_size"]) for s in meta["splits"]}
    else:
        parts = {s: ImageSet(stored[f"{s}_images"], stored[f"{s}_labels"], meta["classes"]) for s in meta["splits"]}
    return parts, meta["skipped"], meta["dropped"]


def _without_unreadable(path: Path, groups: dict[str, list[tuple[str, str]]], unreadable: set[str],
                        multilabel: bool = False) -> tuple[dict[str, list[tuple[str, str]]], list[str], list[str]]:
    """The groups less their unreadable members, the classes still holding a readable training image, and
    the classes that lost all of theirs: those are dropped from every split (a class the model never sees
    cannot be learned or scored), and fewer than two left is refused. A multi-label image keeps its other
    labels when one of them is dropped."""
    names = label_names if multilabel else single_label
    train_key, listed = train_classes(path, groups, names)
    kept = {s: [(c, m) for c, m in items if m not in unreadable] for s, items in groups.items()}
    classes = sorted({n for c, _ in kept[train_key] for n in names(c)})
    dropped = [c for c in listed if c not in classes]
    if dropped and len(classes) < 2:
        raise UserError(f"{path}: need at least 2 classes with readable images; no training file of "
                        f"{', '.join(map(repr, dropped))} is a readable image")
    if dropped and multilabel:
        kept = {s: [(LABEL_SEPARATOR.join(n for n in names(c) if n in classes), m) for c, m in items]
                for s, items in kept.items()}
    elif dropped:
        kept = {s: [(c, m) for c, m in items if c in classes] for s, items in kept.items()}
    return kept, classes, dropped


def _decode_tree(path: Path, image_size: int | None, listing: CsvListing | None = None,
                 ) -> tuple[dict[str, ImageSet | PhotoSet], list[str], list[str]]:
    """Decode every image in parallel threads (Pillow releases the GIL while decoding); small squares of
    one size become ImageSets, anything else PhotoSets at the working size of `image_size`. Also returns
    the skipped (unreadable) members and the dropped classes. `listing`: a CSV's rows instead of the tree."""
    tree = listing or FolderTree(path)
    groups = tree.layout()
    input_size = image_size or PHOTO_INPUT_SIZE
    side = working_side(input_size)
    members = [m for items in groups.values() for _, m in items]
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(workers) as pool:
        arrays = dict(zip(members, pool.map(lambda m: _try_decode(tree.read(m), side), members, chunksize=64),
                          strict=True))
    unreadable = [m for m in members if arrays[m] is None]
    multilabel = bool(listing and listing.multilabel)
    groups, classes, dropped = _without_unreadable(path, groups, set(unreadable), multilabel)
    index = {c: i for i, c in enumerate(classes)}
    small = is_small_square_set([arrays[m].shape for items in groups.values() for _, m in items])
    parts: dict[str, ImageSet | PhotoSet] = {}
    for split, items in groups.items():
        images = [arrays[m] for _, m in items]
        y = (multi_hot([c for c, _ in items], classes) if multilabel  # float32 (N, C): a multi-label set
             else np.asarray([index[c] for c, _ in items], dtype=np.int64))
        if small:
            stacked = np.stack(images) if images else np.zeros((0, 8, 8, 3), np.uint8)
            parts[split] = ImageSet(stacked, y, classes)
        else:
            parts[split] = PhotoSet(images, y, classes, input_size)
    return parts, [printable_name(m) for m in unreadable], dropped


def _try_decode(source: bytes | Path, short_side: int | None) -> np.ndarray | None:
    try:
        return decode_image(source, short_side)
    except Exception:  # noqa: BLE001 - a corrupt or non-image file is skipped and counted, whatever the cause
        return None


MEMORY_SHARE = 0.25  # the auto loader decodes into memory while the uint8 images take at most this share of RAM


def _too_big_for_memory(path: Path, image_size: int | None) -> bool:
    """Estimated from the file count and the input side (the default side for mixed sizes), before decoding."""
    count = sum(len(items) for items in FolderTree(path).layout().values())
    side = working_side(image_size or PHOTO_INPUT_SIZE)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return count * side * side * 3 > MEMORY_SHARE * ram


def _folder_files(path: Path, image_size: int | None, val_fraction: float, seed: int) -> Splits:
    """The streaming form: paths and labels only, decoded batch by batch by the streaming loader. Files
    whose header does not open are left out (skipped and named) here, as the memory form leaves them out."""
    groups = FolderTree(path).layout()
    unreadable = _unopenable(path, [m for items in groups.values() for _, m in items])
    groups, classes, dropped = _without_unreadable(path, groups, set(unreadable))
    skipped = [printable_name(m) for m in unreadable]
    warn_unreadable(skipped, dropped)
    train_key = "train" if "train" in groups else ""
    index = {c: i for i, c in enumerate(classes)}
    size = image_size or PHOTO_INPUT_SIZE
    parts = {s: FileSet([path / m for _, m in items], np.asarray([index[c] for c, _ in items], dtype=np.int64),
                        classes, size) for s, items in groups.items()}
    if "val" in parts:
        return Splits(parts[train_key], parts["val"], parts.get("test"), source=str(path), skipped=skipped)
    return _with_val(parts[train_key], parts.get("test"), val_fraction, seed, str(path), skipped)


def _unopenable(path: Path, members: list[str]) -> list[str]:
    """Members of a folder whose image header does not open (in threads: it is file I/O); the answer is
    kept in the cache under the folder's fingerprint, since a folder worth streaming is a large one."""
    cache = cache_dir() / f"{path.name}-{_fingerprint(path, None)}.unreadable.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        opens = list(pool.map(lambda m: opens_as_image(path / m), members, chunksize=256))
    bad = [m for m, ok in zip(members, opens, strict=True) if not ok]
    write_text(cache, json.dumps(bad))
    return bad


def load_part(data: str, split: str, classes: list[str], image_size: int | None) -> FileSet | None:
    """One split of an image folder ("all": every image of every split), listed and not decoded, labelled by
    `classes` (a checkpoint's): evaluation streams it once, so scoring test/ never decodes train/ beside it.
    None where scoring takes the whole source as training loaded it: an archive, a CSV, or val carved out
    of train (the seeded carve of the readable training images)."""
    path = Path(data).expanduser()
    if not path.is_dir():
        return None
    groups = FolderTree(path).layout(need_train=False)
    if split == "all":
        items = [item for group in groups.values() for item in group]
    elif split in groups:
        items = groups[split]
    elif split == "test":
        raise UserError(f"{data} has no test split (no test/ folder): --split all scores every image, --split val "
                        "the validation images")
    else:
        return None
    unknown = sorted({c for c, _ in items} - set(classes))
    if unknown:
        raise UserError(f"{data}: class folder(s) {', '.join(map(repr, unknown[:3]))} are not among the "
                        f"checkpoint's {len(classes)} classes ({', '.join(classes[:5])}...)")
    index = {c: i for i, c in enumerate(classes)}
    return FileSet([path / m for _, m in items], np.asarray([index[c] for c, _ in items], dtype=np.int64), classes,
                   image_size or PHOTO_INPUT_SIZE)
