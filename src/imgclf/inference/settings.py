"""The server's settings: one frozen dataclass whose field defaults are the documented limits.

The server, `imgclf serve`'s flags (their defaults, help and lower bounds, see `serve_options` and
`switch_options`) and the micro-batcher's defaults all read them here. This module imports no web framework,
so the CLI can build its parser without the serve extra installed.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any

from imgclf.errors import UserError

MULTIPART_SLACK = 16 * 1024  # part headers and boundaries on top of the file bytes
OTHER_BODY_LIMIT = 64 * 1024  # nothing else takes a body
DRAIN_LIMIT = 256 * 1024 * 1024  # a refused body up to this size is read and dropped; a larger one is cut off
LARGE_IMAGE_PIXELS = 4_000_000  # above this (2000 x 2000) decoding takes tens of ms or more: the large lane
MAX_TOP_K = 1000  # how many ranked classes one answer may hold


def _option(default: Any, minimum: int, flag_help: str | None = None) -> Any:
    """A field with its lower bound; with `flag_help`, also an `imgclf serve` flag of that name."""
    return field(default=default, metadata={"minimum": minimum, "help": flag_help})


@dataclass(frozen=True)
class ServerSettings:
    """Serving options; the limits bound what one request may cost."""

    api_key: str | None = None
    # One forward pass over 32 images pays the per-op overhead once (see batching.py); a larger batch only
    # makes the last request in it wait longer.
    max_batch_size: int = _option(32, 1, "most images in one forward pass")
    # serve_load on 2 cores: 3.3x the naive server's throughput at 10 ms, 2.7-2.9x at 5.
    max_wait_ms: float = _option(10.0, 0, "how long a request may wait for others to share its forward pass")
    # Per file. A camera JPEG is a few MB; the cap bounds what one upload spools before its header is read.
    max_upload_bytes: int = _option(10 * 1024 * 1024, 1, "larger uploads are refused with 413")
    # Per image, width x height read from the header before decoding: 4096 x 4096 = 16.7 MP, above a phone
    # photo and far below a decompression bomb's claim; a 16 MP PNG takes about 0.3 s to decode.
    max_pixels: int = _option(4096 * 4096, 1, "larger images (decompression bombs, floods of costly decodes) are "
                              "refused with 413")
    # All images of one request together: 8192 x 8192 = 67 MP, about 1 s of decoding.
    max_request_pixels: int = _option(8192 * 8192, 1, "the most pixels all images of one request may hold "
                                      "together; more is refused with 413")
    # Per /predict/batch request: two batches of the default size; bulk jobs belong to `imgclf predict`.
    max_files: int = _option(64, 1, "most files in one /predict/batch request")
    # Test-time augmentation: each image's logits averaged over 6 views (mirror, 1-px shifts), 6x the compute.
    tta: bool = field(default=False, metadata={"switch": "test-time augmentation: average each image over its "
                                                       "mirrored and 1-px shifted views (6 views: about 6x the "
                                                       "compute; the cost is printed at start-up)"})
    # "I don't know": answer label null under this top probability (serve --reject-below), or under the one
    # the model's validation curve picks for this kept accuracy (serve --target-accuracy); a request's own
    # reject_below wins. Checked against the model when the app is made (Predictor.reject_threshold).
    reject_below: float | None = None
    target_accuracy: float | None = None
    decode_threads: int = 0  # 0: min(4, cores)
    workers: int = _option(1, 1)  # inference threads, each running whole batches; serve sets it (inference_plan)

    def check(self) -> None:
        for option in fields(self):
            minimum = option.metadata.get("minimum")
            if minimum is not None and getattr(self, option.name) < minimum:
                flag = f"--{option.name.replace('_', '-')}"
                raise UserError(f"{flag} must be at least {minimum}" if minimum else f"{flag} must not be negative")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key is empty")

    def body_limit(self, path: str) -> int:
        if path == "/predict":
            return self.max_upload_bytes + MULTIPART_SLACK
        if path == "/predict/batch":
            return self.max_files * (self.max_upload_bytes + MULTIPART_SLACK)
        return OTHER_BODY_LIMIT


DEFAULTS = ServerSettings()


def serve_options() -> list[Field[Any]]:
    """The settings that `imgclf serve` takes as flags (--max-batch-size ...): each has a help text, a
    default and a minimum here."""
    return [option for option in fields(ServerSettings) if option.metadata.get("help")]


def switch_options() -> list[Field[Any]]:
    """The on/off settings that `imgclf serve` takes as flags without a value (--tta): off by default, their
    help text is metadata["switch"]."""
    return [option for option in fields(ServerSettings) if option.metadata.get("switch")]
