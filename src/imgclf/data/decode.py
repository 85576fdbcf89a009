"""Image decoding shared by the data layer, the loaders and inference: RGB uint8, aspect kept, shrunk."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# the decode cache (imgclf.data.sources) re-reads data cached by another version of what decoding gives:
# 2: photos keep their aspect ratio; 3: 16-bit images scaled, skipped files named
CACHE_VERSION = 3


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB always: grayscale, 16-bit grayscale (scaled), palette and RGBA (composited on white) are converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # I;16 (16-bit PNG, TIFF), I (16-bit PGM/PPM)
        return Image.fromarray(scale_16bit(np.asarray(image)), "L").convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def scale_16bit(grey: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 (round(v / 257)); Pillow's own conversion clips at 255, which turns a
    16-bit image almost entirely white."""
    wide = np.clip(grey, 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def shrink_to_short_side(image: Image.Image, side: int | None) -> Image.Image:
    """Resize (down only) so the short side is `side`, keeping the aspect ratio; small squares (CIFAR's
    32x32) and photos already smaller are kept as they are, and the loaders bring them to the input size."""
    w, h = image.size
    if side is None or min(w, h) <= side:
        return image
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def decode_image(source: bytes | str | Path, short_side: int | None = None) -> np.ndarray:
    """Decode one image file or byte string to uint8 (H, W, 3) with its aspect ratio, the short side at
    most `short_side`; raises on anything not an image."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with stream, Image.open(stream) as image:
        if short_side:
            w, h = image.size
            scale = short_side / max(1, min(w, h))
            image.draft("RGB", (round(w * scale), round(h * scale)))  # JPEG: decode at a reduced scale
        return np.array(shrink_to_short_side(to_rgb(image), short_side), dtype=np.uint8)  # a writable copy


def opens_as_image(path: str | Path) -> bool:
    """True when Pillow reads the file's header (nothing is decoded): the cheap check that keeps files
    which are no images, or links to nothing, out of streamed data before training starts."""
    try:
        with Image.open(path) as image:
            return min(image.size) > 0
    except Exception:  # noqa: BLE001 - missing, looping, unreadable or not an image: all the same to a caller
        return False


def printable_name(name: str | Path) -> str:
    """A file name as warnings, metrics and caches can hold it: bytes that are not UTF-8 (a name read from
    disk carries them as surrogates) are written as \\xNN, so the name still says which file it was."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
