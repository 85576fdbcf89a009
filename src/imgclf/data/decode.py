"""Image decoding shared by the data layer, the loaders and inference: RGB uint8, aspect kept, shrunk."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB always: grayscale, palette and RGBA (composited on white) are converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


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
