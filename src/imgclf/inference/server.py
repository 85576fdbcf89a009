"""HTTP inference service: FastAPI + uvicorn, micro-batched, hardened against bad input.

Request path: a pure-ASGI guard (bodyguard.py: API key, body size) refuses before any byte of the body is
parsed, though it reads and drops the body before answering, so the client gets the answer and not a reset;
FastAPI parses the multipart form (routes.py); the image header is checked (limits.py: format, pixel count,
the request's pixel budget) and the image decoded on a small thread pool, large images in a lane of their
own so a flood of them cannot hold up small ones; the decoded tensors join a MicroBatcher whose worker
thread(s) run the model on whole batches (pipeline.py, and see `inference_plan`). Every limit is a field of
ServerSettings (settings.py). Every client mistake is a 4xx with a JSON body {"detail": ...}; a 5xx means a
bug.

The modules import downwards only: server -> bodyguard, routes; bodyguard, routes -> metrics; routes ->
pipeline, schemas; pipeline -> batching, limits; and each of these -> settings, which imports no web
framework (the CLI reads it). /metrics (metrics.py) is Prometheus text, behind the API key like /predict.
"""

import ipaddress
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import torch

from imgclf.errors import UserError

try:  # the serve extra, checked once here; the modules below import from it freely
    import fastapi_offline  # noqa: F401 - routes.py serves /docs from it
    import prometheus_client  # noqa: F401 - metrics.py
    import uvicorn
    from fastapi import FastAPI
except ImportError as exc:  # the CLI turns this into one line, exit 2
    raise UserError(f"the server needs the serve extra ({exc.name} is missing): pip install 'imgclf[serve]'") from None

from imgclf.inference.bodyguard import Guard
from imgclf.inference.metrics import Metrics
from imgclf.inference.pipeline import Pipeline
from imgclf.inference.predictor import Predictor
from imgclf.inference.routes import add_routes
from imgclf.inference.settings import ServerSettings


def create_app(predictor: Predictor, settings: ServerSettings | None = None) -> Guard:
    """The FastAPI app around a loaded Predictor (wrapped in the Guard middleware, which also records the
    requests in the app's metrics)."""
    settings = settings or ServerSettings()
    settings.check()
    predictor.tta = predictor.tta or settings.tta
    if settings.reject_below is not None or settings.target_accuracy is not None:
        predictor.reject_below = predictor.reject_threshold(settings.reject_below, settings.target_accuracy)
    metrics = Metrics(str(predictor.metadata.get("model")), predictor.metadata.get("load_seconds", 0.0),
                      queue_depth=lambda: pipeline.batcher.queued)
    pipeline = Pipeline(predictor, settings, on_batch=metrics.batch)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await pipeline.start()
        try:
            yield
        finally:
            await pipeline.close()

    app = FastAPI(title="imgclf", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Image classification with {predictor.metadata.get('model')} "
                              f"({len(predictor.classes)} classes). Upload images as multipart form data.")
    app.state.batcher, app.state.settings, app.state.predictor = pipeline.batcher, settings, predictor
    app.state.metrics = metrics
    add_routes(app, pipeline, settings, metrics)
    return Guard(app, settings, metrics)


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
          device: str = "auto", **options: Any) -> None:
    """Load the model, then serve it until interrupted (uvicorn, one process, access log off for speed).

    The port is bound first, so a taken port fails fast; the thread plan is set before the model loads
    (ONNX Runtime takes its thread count from torch's). See `inference_plan` for the worker threads.
    `options` are ServerSettings fields (api_key, max_batch_size, ...); the rest keep their defaults.
    """
    settings = ServerSettings(**{**options, "api_key": options.get("api_key") or None})
    settings.check()
    sock = _bind(host, port)
    try:
        workers, threads = inference_plan(device)
        settings = replace(settings, workers=workers)
        predictor = Predictor.load(checkpoint=checkpoint, onnx=onnx, device=device, tta=settings.tta)
        if settings.tta:  # a timed warm-up: what the views cost, said once
            warmup = torch.rand(settings.max_batch_size, 3, predictor.input_size, predictor.input_size,
                                generator=torch.Generator().manual_seed(0))
            print(predictor.tta_cost(warmup, "measured on a warm-up batch at start-up")[1], file=sys.stderr,
                  flush=True)
        app = create_app(predictor, settings)  # a reject threshold the model cannot give is refused here
    except BaseException:
        sock.close()
        raise
    if not _is_loopback(host) and not settings.api_key:
        print(f"imgclf: warning: serving on {host} without --api-key; anyone who can reach it can use it",
              file=sys.stderr)
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=5,
                            server_header=False)
    shown = f"[{host}]" if ":" in host else host
    print(f"imgclf: serving {predictor.metadata.get('model')} ({predictor.metadata.get('backend')}"
          f"{', TTA' if predictor.tta else ''}, temperature {predictor.temperature:.3f}"
          f"{f', answering above top probability {predictor.reject_below:.3f}' if predictor.reject_below else ''}, "
          f"{workers} "
          f"worker(s) x {threads} thread(s)) on http://{shown}:{sock.getsockname()[1]}  (docs: /docs, page: /)",
          file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
