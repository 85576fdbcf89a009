"""HTTP inference service: FastAPI + uvicorn, micro-batched, hardened against bad input.

Request path: a pure-ASGI guard (API key, body size) answers before any byte of the body is parsed;
FastAPI parses the multipart form; the image header is checked (format, pixel count) and the image decoded
on a small thread pool; the decoded tensors join a MicroBatcher whose worker thread(s) run the model on
whole batches (see `inference_plan`). Every client mistake is a 4xx with a JSON body {"detail": ...};
a 5xx means a bug.
"""

import asyncio
import base64
import hashlib
import io
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
from typing import Annotated, Any

import torch
from PIL import Image, UnidentifiedImageError

from imgclf.errors import UserError

try:
    import uvicorn
    from fastapi import FastAPI, File, HTTPException, Query, Request, Security, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.security import APIKeyHeader
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel
    from swagger_ui_bundle import swagger_ui_path
except ImportError as exc:  # the CLI turns this into one line, exit 2
    raise UserError(f"the server needs the serve extra ({exc.name} is missing): pip install 'imgclf[serve]'") from None

from imgclf.inference.batching import MicroBatcher
from imgclf.inference.predictor import Predictor

log = logging.getLogger("imgclf.server")

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")  # never EPS (runs Ghostscript) & co.
PROTECTED = frozenset({"/predict", "/predict/batch", "/metadata"})
DOCS_ASSETS = "/docs-assets"  # Swagger UI files, served from the swagger-ui-bundle package
MULTIPART_SLACK = 16 * 1024  # part headers and boundaries on top of the file bytes
OTHER_BODY_LIMIT = 64 * 1024  # nothing else takes a body
MAX_TOP_K = 1000


class Ranked(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    probability: float
    top_k: list[Ranked]


class FilePrediction(Prediction):
    file: str | None = None


class Health(BaseModel):
    status: str


class Error(BaseModel):
    detail: Any


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="how many ranked classes to return")]


@dataclass(frozen=True)
class ServerSettings:
    """Serving options; the limits bound what one request may cost."""

    api_key: str | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 10.0  # serve_load on 2 cores: 3.3x the naive server's throughput at 10 ms, 2.7-2.9x at 5
    max_upload_bytes: int = 10 * 1024 * 1024  # per file
    max_pixels: int = 40_000_000  # width x height, read from the header before decoding
    max_files: int = 64  # per /predict/batch request
    decode_threads: int = 0  # 0: min(4, cores)
    workers: int = 1  # inference threads, each running whole batches

    def check(self) -> None:
        for name in ("max_batch_size", "max_upload_bytes", "max_pixels", "max_files", "workers"):
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


class ClientError(Exception):
    """A bad upload: becomes a JSON 4xx."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def check_image_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Format and size from the header alone (nothing decoded yet): refuse what we will not decode."""
    if not data:
        raise ClientError(422, "empty file")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
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


class Guard:
    """Pure ASGI middleware: API key and body size are settled before the body is read."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings
        self.key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.key is not None and path in PROTECTED:
            given = headers.get(b"x-api-key", b"")
            if not secrets.compare_digest(given, self.key):
                await _send_json(send, 401, "missing or wrong X-API-Key header", {b"www-authenticate": b"ApiKey"})
                return
        limit = self.settings.body_limit(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, "bad Content-Length header")
                return
            if size > limit:
                await _send_json(send, 413, f"request body of {size} bytes is over the limit of {limit}")
                return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Any, status: int, detail: str, extra: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
    decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="imgclf-decode")
    # Uploads wait spooled (Starlette keeps at most 1 MB of each in memory) until a slot frees, so however
    # many requests are open, only this many files are held whole in memory for decoding.
    decode_slots = asyncio.Semaphore(2 * decode_threads)

    def run_batch(items: list[tuple[torch.Tensor, int]]) -> list[dict[str, Any]]:
        probs = predictor.probabilities(torch.cat([x for x, _ in items]))
        return [predictor.rank(row[None], k)[0] for row, (_, k) in zip(probs, items, strict=True)]

    batcher: MicroBatcher[tuple[torch.Tensor, int], dict[str, Any]] = MicroBatcher(
        run_batch, settings.max_batch_size, settings.max_wait_ms, workers=settings.workers)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": Error, "description": "a malformed request body"},
        413: {"model": Error, "description": "upload, image or file count over a limit"},
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

    def decode(data: bytes) -> torch.Tensor:
        check_image_header(data, settings.max_pixels)
        try:
            return predictor.preprocess([data])
        except ValueError:
            raise ClientError(422, "the image could not be decoded (corrupt or truncated)") from None

    async def read_and_decode(upload: UploadFile, label: str) -> torch.Tensor:
        async with decode_slots:
            data = await upload.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise ClientError(413, f"{label} is over the limit of {settings.max_upload_bytes} bytes")
            try:
                return await asyncio.get_running_loop().run_in_executor(decode_pool, decode, data)
            except ClientError as exc:
                raise ClientError(exc.status, f"{label}: {exc.detail}") from None

    @app.post("/predict", response_model=Prediction, responses=errors, dependencies=protected,
              summary="Classify one image")
    async def predict(file: Annotated[UploadFile, File(description="one image (PNG, JPEG, ...)")],
                      top_k: TopK = 5) -> dict[str, Any]:
        x = await read_and_decode(file, "file")
        return await batcher.submit((x, top_k))

    @app.post("/predict/batch", response_model=list[FilePrediction], responses=errors, dependencies=protected,
              summary="Classify several images; results in upload order")
    async def predict_batch(files: Annotated[list[UploadFile], File(description="images, one per part")],
                            top_k: TopK = 5) -> list[dict[str, Any]]:
        if len(files) > settings.max_files:
            raise ClientError(413, f"{len(files)} files; the limit is {settings.max_files} a request")
        tensors = await asyncio.gather(*(read_and_decode(f, f"files[{i}] ({f.filename or 'unnamed'})")
                                         for i, f in enumerate(files)))
        results = await batcher.submit_many([(x, top_k) for x in tensors])
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

    # Swagger UI from the swagger-ui-bundle wheel, not FastAPI's default CDN: the docs work offline.
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="imgclf API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

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
          max_upload_bytes: int = 10 * 1024 * 1024, max_pixels: int = 40_000_000, max_files: int = 64,
          device: str = "auto") -> None:
    """Load the model, then serve it until interrupted (uvicorn, one process, access log off for speed).

    The port is bound first, so a taken port fails fast; the thread plan is set before the model loads
    (ONNX Runtime takes its thread count from torch's). See `inference_plan` for the worker threads.
    """
    settings = ServerSettings(api_key=api_key or None, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                              max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_files=max_files)
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
