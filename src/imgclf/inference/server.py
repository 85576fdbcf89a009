"""HTTP inference service: FastAPI + uvicorn, micro-batched, hardened against bad input.

Request path: a pure-ASGI guard (API key, body size) refuses before any byte of the body is parsed,
though it reads and drops the body before answering, so the client gets the answer and not a reset;
FastAPI parses the multipart form; the image header is checked (format, pixel count, the request's pixel
budget) and the image decoded on a small thread pool, large images in a lane of their own so a flood of
them cannot hold up small ones; the decoded tensors join a MicroBatcher whose worker thread(s) run the
model on whole batches (see `inference_plan`). Every client mistake is a 4xx with a JSON body
{"detail": ...}; a 5xx means a bug.
"""

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Annotated, Any, BinaryIO

import torch
from PIL import Image, UnidentifiedImageError

from imgclf.errors import UserError
from imgclf.evaluation.gradcam import GradCAM, overlays_base64

try:
    import fastapi_offline
    import uvicorn
    from fastapi import FastAPI, File, HTTPException, Query, Request, Security, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.security import APIKeyHeader
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
except ImportError as exc:  # the CLI turns this into one line, exit 2
    raise UserError(f"the server needs the serve extra ({exc.name} is missing): pip install 'imgclf[serve]'") from None

from imgclf.inference.batching import MicroBatcher
from imgclf.inference.predictor import Predictor

log = logging.getLogger("imgclf.server")

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")  # never EPS (runs Ghostscript) & co.
PROTECTED = frozenset({"/predict", "/predict/batch", "/metadata"})
DOCS_ASSETS = "/docs-assets"  # Swagger UI 5 (reads OpenAPI 3.1), served from the fastapi-offline package
MULTIPART_SLACK = 16 * 1024  # part headers and boundaries on top of the file bytes
OTHER_BODY_LIMIT = 64 * 1024  # nothing else takes a body
DRAIN_LIMIT = 256 * 1024 * 1024  # a refused body up to this size is read and dropped; a larger one is cut off
LARGE_IMAGE_PIXELS = 4_000_000  # above this (2000 x 2000) decoding takes tens of ms or more: the large lane
MAX_TOP_K = 1000


class Ranked(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    probability: float
    top_k: list[Ranked]
    explanation: str | None = Field(None, description="with explain=true: a Grad-CAM overlay of the image as "
                                    "the model saw it (base64 PNG), showing where it found the predicted class")


class FilePrediction(Prediction):
    file: str | None = None


class Health(BaseModel):
    status: str


class Error(BaseModel):
    detail: Any


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="how many ranked classes to return")]
Explain = Annotated[bool, Query(description="add a Grad-CAM overlay of each image (needs a torch checkpoint, "
                                            "not ONNX; costs a backward pass)")]


@dataclass(frozen=True)
class ServerSettings:
    """Serving options; the limits bound what one request may cost."""

    api_key: str | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 10.0  # serve_load on 2 cores: 3.3x the naive server's throughput at 10 ms, 2.7-2.9x at 5
    max_upload_bytes: int = 10 * 1024 * 1024  # per file
    max_pixels: int = 4096 * 4096  # per image, width x height, read from the header before decoding
    max_request_pixels: int = 8192 * 8192  # all images of one request: about 1 s of decoding
    max_files: int = 64  # per /predict/batch request
    decode_threads: int = 0  # 0: min(4, cores)
    workers: int = 1  # inference threads, each running whole batches

    def check(self) -> None:
        for name in ("max_batch_size", "max_upload_bytes", "max_pixels", "max_request_pixels", "max_files",
                     "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_wait_ms < 0:
            raise UserError("--max-wait-ms must not be negative")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key is empty")

    def body_limit(self, path: str) -> int:
        if path == "/predict":
            return self.max_upload_bytes + MULTIPART_SLACK
        if path == "/predict/batch":
            return self.max_files * (self.max_upload_bytes + MULTIPART_SLACK)
        return OTHER_BODY_LIMIT


class _Lane:
    """Decode threads and the slots that bound how many uploads are held in memory waiting for them."""

    def __init__(self, threads: int, name: str) -> None:
        # Uploads wait spooled (Starlette keeps at most 1 MB of each in memory) until a slot frees.
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.slots = asyncio.Semaphore(2 * threads)


class ClientError(Exception):
    """A bad upload: becomes a JSON 4xx."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


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


class _Body:
    """The request body as the Guard sees it: counted, and drained before any early answer.

    An answer sent while the client is still sending makes the server close a socket with unread bytes,
    which the kernel turns into a reset: HTTP clients that read only after sending (httpx's async client)
    then see a connection error instead of the 401 or 413. So the rest of the body is read and dropped
    first, up to DRAIN_LIMIT bytes; past that the answer goes out with `connection: close`.
    """

    def __init__(self, receive: Any, headers: dict[bytes, bytes]) -> None:
        self.receive = receive
        self.received = 0
        self.done = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers
        # A client that waits for 100-continue has not sent the body yet; asking for it only to drop it
        # would be a waste, so such a request is answered and the connection closed.
        self.awaiting_continue = not self.done and headers.get(b"expect", b"").lower() == b"100-continue"

    async def next(self) -> dict[str, Any]:
        self.awaiting_continue = False
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        else:  # http.disconnect
            self.done = True
        return message

    async def drain(self) -> bool:
        """Read the rest of the body; False when the connection must close instead (over DRAIN_LIMIT, or
        the client still waits for 100-continue)."""
        if self.awaiting_continue:
            return False
        while not self.done:
            if self.received > DRAIN_LIMIT:
                return False
            await self.next()
        return True


class Guard:
    """Pure ASGI middleware: API key and body size are settled before the body is parsed."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings
        self.key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        body = _Body(receive, headers)
        path = scope.get("path", "")
        if self.key is not None and path in PROTECTED:
            given = headers.get(b"x-api-key", b"")
            if not secrets.compare_digest(given, self.key):
                await _refuse(body, send, 401, "missing or wrong X-API-Key header", {b"www-authenticate": b"ApiKey"})
                return
        limit = self.settings.body_limit(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _refuse(body, send, 400, "bad Content-Length header")
                return
            if size > limit:
                await _refuse(body, send, 413, f"request body of {size} bytes is over the limit of {limit}",
                              drain=size <= DRAIN_LIMIT)
                return

        async def limited_receive() -> dict[str, Any]:
            message = await body.next()
            if body.received > limit:
                raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        async def send_after_body(message: dict[str, Any]) -> None:
            # The app may answer before reading everything (a 404, a 405, a 413 mid-stream): drain first.
            if message["type"] == "http.response.start" and not await body.drain():
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, send_after_body)


async def _refuse(body: _Body, send: Any, status: int, detail: str, extra: dict[bytes, bytes] | None = None,
                  drain: bool = True) -> None:
    """A JSON error sent by the Guard, after the request body is read and dropped (see `_Body`)."""
    keep = drain and await body.drain()
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               *(() if keep else ((b"connection", b"close"),)), *(extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _page() -> tuple[str, str]:
    """The web page and a Content-Security-Policy that allows exactly its own inline script and style."""
    html = resources.files("imgclf.inference").joinpath("static/index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                        for s in found)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


def create_app(predictor: Predictor, settings: ServerSettings | None = None) -> Guard:
    """The FastAPI app around a loaded Predictor (wrapped in the Guard middleware)."""
    settings = settings or ServerSettings()
    settings.check()
    decode_threads = settings.decode_threads or min(4, os.cpu_count() or 1)
    # Two lanes, each with its own threads: decoding costs about its pixel count (a 16 MP PNG about 0.3 s,
    # a photo-sized one a few ms), so a flood of large images queues behind itself, never in front of small
    # images. Both lanes may use every core; the OS shares them, and its scheduler favours the short decodes
    # that wake up over the long ones that keep running.
    lanes = {large: _Lane(decode_threads, f"imgclf-decode-{'large' if large else 'small'}") for large in (False, True)}

    cam = GradCAM(predictor.model, predictor.input_size) if predictor.model is not None else None

    def run_batch(items: list[tuple[torch.Tensor, int, bool]]) -> list[dict[str, Any]]:
        batch = torch.cat([x for x, _, _ in items])
        probs = predictor.probabilities(batch)
        results = [predictor.rank(row[None], k)[0] for row, (_, k, _) in zip(probs, items, strict=True)]
        wanted = [i for i, (_, _, explain) in enumerate(items) if explain]
        if wanted and cam is not None:  # the routes refuse explain=true without a torch model
            pngs = overlays_base64(cam, batch[wanted], probs[wanted].argmax(axis=1).tolist())
            for i, png in zip(wanted, pngs, strict=True):
                results[i]["explanation"] = png
        return results

    batcher: MicroBatcher[tuple[torch.Tensor, int, bool], dict[str, Any]] = MicroBatcher(
        run_batch, settings.max_batch_size, settings.max_wait_ms, workers=settings.workers)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()
            for lane in lanes.values():
                lane.pool.shutdown(wait=False, cancel_futures=True)

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Error, "description": "a malformed request body"},
        413: {"model": Error, "description": "upload, image pixels, request pixels or file count over a limit"},
        415: {"model": Error, "description": "not an image in a supported format"},
        422: {"model": Error, "description": "a missing field, bad parameter or unreadable image"},
    }
    protected: list[Any] = []
    if settings.api_key:
        errors[401] = {"model": Error, "description": "missing or wrong X-API-Key"}
        header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the server has a key")

        def require_key(key: Annotated[str | None, Security(header)]) -> None:
            # The Guard already refused; this documents the scheme in OpenAPI and backs the Guard up.
            if key is None or not secrets.compare_digest(key.encode(), settings.api_key.encode()):
                raise HTTPException(401, "missing or wrong X-API-Key header")

        protected = [Security(require_key)]

    app = FastAPI(title="imgclf", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Image classification with {predictor.metadata.get('model')} "
                              f"({len(predictor.classes)} classes). Upload images as multipart form data.")
    app.state.batcher, app.state.settings, app.state.predictor = batcher, settings, predictor

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The default echoes the input back, which for an upload can be a whole file.
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in exc.errors()]
        return JSONResponse({"detail": details}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    def check_upload(upload: UploadFile) -> int:
        """Size and header of a spooled upload (nothing decoded); its pixel count."""
        upload.file.seek(0, os.SEEK_END)
        if upload.file.tell() > settings.max_upload_bytes:
            raise ClientError(413, f"over the limit of {settings.max_upload_bytes} bytes")
        _, width, height = check_image_header(upload.file, settings.max_pixels)
        return width * height

    async def check_uploads(uploads: list[tuple[UploadFile, str]]) -> list[int]:
        """Every file's pixel count, checked against the per-request budget before any decoding starts."""
        pixels = []
        for upload, label in uploads:
            try:
                pixels.append(await asyncio.to_thread(check_upload, upload))
            except ClientError as exc:
                raise ClientError(exc.status, f"{label}: {exc.detail}") from None
        if sum(pixels) > settings.max_request_pixels:
            raise ClientError(413, f"the images hold {sum(pixels)} pixels in all; the limit is "
                                   f"{settings.max_request_pixels} a request (send fewer or smaller images)")
        return pixels

    def decode(data: bytes) -> torch.Tensor:
        try:
            return predictor.preprocess([data])
        except ValueError:
            raise ClientError(422, "the image could not be decoded (corrupt or truncated)") from None

    async def read_and_decode(upload: UploadFile, label: str, pixels: int) -> torch.Tensor:
        lane = lanes[pixels > LARGE_IMAGE_PIXELS]
        async with lane.slots:  # only now is the upload read into memory
            await upload.seek(0)
            data = await upload.read()
            try:
                return await asyncio.get_running_loop().run_in_executor(lane.pool, decode, data)
            except ClientError as exc:
                raise ClientError(exc.status, f"{label}: {exc.detail}") from None

    def check_explain(explain: bool) -> None:
        if explain and cam is None:
            raise ClientError(422, "explain=true needs a torch checkpoint: this server runs an ONNX model, "
                                   "which has no gradients (serve --checkpoint instead)")

    # exclude_unset: "explanation" appears only when asked for, and every other answer stays as it was
    @app.post("/predict", response_model=Prediction, response_model_exclude_unset=True, responses=errors,
              dependencies=protected, summary="Classify one image")
    async def predict(file: Annotated[UploadFile, File(description="one image (PNG, JPEG, ...)")],
                      top_k: TopK = 5, explain: Explain = False) -> dict[str, Any]:
        check_explain(explain)
        [pixels] = await check_uploads([(file, "file")])
        x = await read_and_decode(file, "file", pixels)
        return await batcher.submit((x, top_k, explain))

    @app.post("/predict/batch", response_model=list[FilePrediction], response_model_exclude_unset=True,
              responses=errors, dependencies=protected, summary="Classify several images; results in upload order")
    async def predict_batch(files: Annotated[list[UploadFile], File(description="images, one per part")],
                            top_k: TopK = 5, explain: Explain = False) -> list[dict[str, Any]]:
        check_explain(explain)
        if len(files) > settings.max_files:
            raise ClientError(413, f"{len(files)} files; the limit is {settings.max_files} a request")
        labelled = [(f, f"files[{i}] ({f.filename or 'unnamed'})") for i, f in enumerate(files)]
        pixels = await check_uploads(labelled)
        tensors = await asyncio.gather(*(read_and_decode(f, label, n)
                                         for (f, label), n in zip(labelled, pixels, strict=True)))
        results = await batcher.submit_many([(x, top_k, explain) for x in tensors])
        return [{"file": f.filename, **r} for f, r in zip(files, results, strict=True)]

    @app.get("/health", response_model=Health, summary="Liveness: the model is loaded and serving")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/metadata", responses={k: v for k, v in errors.items() if k == 401}, dependencies=protected,
             summary="The model, its classes and input size, and the serving limits")
    async def metadata() -> dict[str, Any]:
        meta = predictor.metadata
        return {"model": meta.get("model"), "backend": meta.get("backend"), "classes": predictor.classes,
                "num_classes": len(predictor.classes), "input_size": predictor.input_size,
                "input": "RGB, resized (short side) and center-cropped to input_size; normalized in the model",
                "checkpoint_sha256": meta.get("checkpoint_sha256"), "onnx_sha256": meta.get("onnx_sha256"),
                "limits": {k: v for k, v in asdict(settings).items() if k not in ("api_key", "decode_threads")},
                "batching": {**batcher.stats.as_dict(), "queued": batcher.queued}}

    # Swagger UI 5 from the fastapi-offline wheel, not FastAPI's default CDN: the docs work offline. (The
    # swagger-ui-bundle wheel ships Swagger UI 4, which cannot read FastAPI's OpenAPI 3.1.)
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(resources.files(fastapi_offline) / "static")),
              name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="imgclf API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    page, csp = _page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer"})

    return Guard(app, settings)


def inference_plan(device: str) -> tuple[int, int]:
    """(worker threads, intra-op threads each) for the model; sets torch's thread count.

    On a CPU: a core is left to the event loop and decoding where there are more than two, and the rest
    split over two workers, so one batch's Python overhead overlaps another's kernels. Single-threaded
    workers on a small machine also avoid intra-op thread teams, which spin at every barrier while one
    member waits for a core. IMGCLF_SERVE_WORKERS and IMGCLF_SERVE_THREADS override.
    """
    cores = os.cpu_count() or 1
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    compute = cores if cores <= 2 else cores - 1
    workers = 1 if on_gpu else min(2, compute)
    threads = max(1, compute // workers)
    try:
        workers = int(os.environ.get("IMGCLF_SERVE_WORKERS") or workers)
        threads = int(os.environ.get("IMGCLF_SERVE_THREADS") or os.environ.get("OMP_NUM_THREADS") or threads)
    except ValueError:
        workers = threads = 0
    if workers < 1 or threads < 1:
        raise UserError("IMGCLF_SERVE_WORKERS, IMGCLF_SERVE_THREADS and OMP_NUM_THREADS must be positive integers")
    torch.set_num_threads(threads)
    return workers, threads


def _bind(host: str, port: int) -> socket.socket:
    """Bind before loading uvicorn so a taken port is a one-line user error, not a log and exit 1."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve --host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(checkpoint: str | None = None, onnx: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_batch_size: int = 32, max_wait_ms: float = 10.0,
          max_upload_bytes: int = 10 * 1024 * 1024, max_pixels: int = 4096 * 4096,
          max_request_pixels: int = 8192 * 8192, max_files: int = 64, device: str = "auto") -> None:
    """Load the model, then serve it until interrupted (uvicorn, one process, access log off for speed).

    The port is bound first, so a taken port fails fast; the thread plan is set before the model loads
    (ONNX Runtime takes its thread count from torch's). See `inference_plan` for the worker threads.
    """
    settings = ServerSettings(api_key=api_key or None, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                              max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                              max_request_pixels=max_request_pixels, max_files=max_files)
    settings.check()
    sock = _bind(host, port)
    try:
        workers, threads = inference_plan(device)
        settings = replace(settings, workers=workers)
        predictor = Predictor.load(checkpoint=checkpoint, onnx=onnx, device=device)
    except BaseException:
        sock.close()
        raise
    if not _is_loopback(host) and not settings.api_key:
        print(f"imgclf: warning: serving on {host} without --api-key; anyone who can reach it can use it",
              file=sys.stderr)
    app = create_app(predictor, settings)
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=5,
                            server_header=False)
    shown = f"[{host}]" if ":" in host else host
    print(f"imgclf: serving {predictor.metadata.get('model')} ({predictor.metadata.get('backend')}, {workers} "
          f"worker(s) x {threads} thread(s)) on http://{shown}:{sock.getsockname()[1]}  (docs: /docs, page: /)",
          file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
