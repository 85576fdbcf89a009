"""Image decoding shared by training data, streaming loader and inference: RGB uint8, square, sized."""

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


def fit_to_size(image: Image.Image, size: int | None) -> Image.Image:
    """Resize the short side to `size` and center-crop a square; small squares are left for the loader.

    A square image no larger than `size` is kept as is: the loader upsamples whole batches on the
    device, so 32x32 CIFAR cached once serves every input size.
    """
    w, h = image.size
    if size is None or (w == h and w <= size):
        return image
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def decode_image(source: bytes | str | Path, size: int | None = None) -> np.ndarray:
    """Decode one image file or byte string to uint8 (H, W, 3); raises on anything not an image."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with stream, Image.open(stream) as image:
        if size:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when that is still large enough
        return np.array(fit_to_size(to_rgb(image), size), dtype=np.uint8)  # a writable copy


def resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """Resize a square uint8 image to size x size (used to unify a folder's stragglers)."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
