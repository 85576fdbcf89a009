"""What one upload may cost, settled before anything is decoded: its size, its format and pixel count
from the image header (a decompression bomb declares its size there), and the request's pixel budget."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, UnidentifiedImageError

from imgclf.inference.settings import ServerSettings

if TYPE_CHECKING:
    from fastapi import UploadFile

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")  # never EPS (runs Ghostscript) & co.


class ClientError(Exception):
    """A bad upload: becomes a JSON 4xx."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail

    def about(self, label: str) -> ClientError:
        """The same error, its detail prefixed with which upload it is about."""
        return ClientError(self.status, f"{label}: {self.detail}")


def check_image_header(file: BinaryIO, max_pixels: int) -> tuple[str, int, int]:
    """Format and size from the header alone (nothing decoded yet): refuse what we will not decode."""
    file.seek(0)
    if not file.read(1):
        raise ClientError(422, "empty file")
    file.seek(0)
    try:
        with Image.open(file, formats=ALLOWED_FORMATS) as image:
            fmt, (width, height) = image.format or "?", image.size
    except Image.DecompressionBombError:
        raise ClientError(413, f"image has too many pixels (limit {max_pixels})") from None
    except UnidentifiedImageError:
        raise ClientError(415, f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed header, whatever PIL calls it
        raise ClientError(422, f"unreadable image header ({exc.__class__.__name__})") from None
    if width < 1 or height < 1:
        raise ClientError(422, "image has no pixels")
    if width * height > max_pixels:
        raise ClientError(413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return fmt, width, height


def check_upload(upload: UploadFile, settings: ServerSettings) -> int:
    """Size and header of a spooled upload (nothing decoded); its pixel count."""
    upload.file.seek(0, os.SEEK_END)
    if upload.file.tell() > settings.max_upload_bytes:
        raise ClientError(413, f"over the limit of {settings.max_upload_bytes} bytes")
    _, width, height = check_image_header(upload.file, settings.max_pixels)
    return width * height


async def check_uploads(uploads: list[tuple[UploadFile, str]], settings: ServerSettings) -> list[int]:
    """Every file's pixel count, checked against the per-request budget before any decoding starts."""
    pixels = []
    for upload, label in uploads:
        try:
            pixels.append(await asyncio.to_thread(check_upload, upload, settings))
        except ClientError as exc:
            raise exc.about(label) from None
    if sum(pixels) > settings.max_request_pixels:
        raise ClientError(413, f"the images hold {sum(pixels)} pixels in all; the limit is "
                               f"{settings.max_request_pixels} a request (send fewer or smaller images)")
    return pixels


def check_file_count(count: int, settings: ServerSettings) -> None:
    if count > settings.max_files:
        raise ClientError(413, f"{count} files; the limit is {settings.max_files} a request")
