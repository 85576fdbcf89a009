"""The HTTP routes and error handlers, added to a FastAPI app in the order the OpenAPI document lists them
(no `from __future__ import annotations` here: FastAPI reads the route functions' annotations at runtime).

Every client mistake is a 4xx with a JSON body {"detail": ...}; a 5xx means a bug.
"""

import asyncio
import base64
import hashlib
import logging
import re
import secrets
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any

import fastapi_offline
from fastapi import FastAPI, File, HTTPException, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from imgclf.inference.limits import ClientError, check_file_count, check_uploads
from imgclf.inference.metrics import CONTENT_TYPE, Metrics
from imgclf.inference.pipeline import Pipeline
from imgclf.inference.schemas import Explain, FilePrediction, Health, Prediction, RejectBelow, TopK, error_responses
from imgclf.inference.settings import ServerSettings

log = logging.getLogger("imgclf.server")

DOCS_ASSETS = "/docs-assets"  # Swagger UI 5 (reads OpenAPI 3.1), served from the fastapi-offline package
Responses = dict[int | str, dict[str, Any]]


def add_routes(app: FastAPI, pipeline: Pipeline, settings: ServerSettings, metrics: Metrics) -> None:
    """Error handlers, the API (/predict, /predict/batch, /health, /metadata, /metrics), then /docs and the
    page."""
    errors = error_responses(with_key=bool(settings.api_key))
    protected = key_dependencies(settings)
    add_error_handlers(app)
    add_prediction_routes(app, pipeline, settings, errors, protected)
    add_info_routes(app, pipeline, settings, errors, protected)
    add_metrics_route(app, metrics, errors, protected)
    add_docs_and_page(app)


def key_dependencies(settings: ServerSettings) -> list[Any]:
    """With an API key: the dependency that documents the X-API-Key scheme in OpenAPI (the Guard has
    already refused a wrong key; this backs it up). Without one: none."""
    if not settings.api_key:
        return []
    expected = settings.api_key.encode()
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the server has a key")

    def require_key(key: Annotated[str | None, Security(header)]) -> None:
        if key is None or not secrets.compare_digest(key.encode(), expected):
            raise HTTPException(401, "missing or wrong X-API-Key header")

    return [Security(require_key)]


def add_error_handlers(app: FastAPI) -> None:
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


def add_prediction_routes(app: FastAPI, pipeline: Pipeline, settings: ServerSettings, errors: Responses,
                          protected: list[Any]) -> None:
    """Uploads are checked (size, header, the request's pixel budget) before any is decoded."""

    # exclude_unset: "explanation" appears only when asked for, and every other answer stays as it was
    @app.post("/predict", response_model=Prediction, response_model_exclude_unset=True, responses=errors,
              dependencies=protected, summary="Classify one image")
    async def predict(file: Annotated[UploadFile, File(description="one image (PNG, JPEG, ...)")],
                      top_k: TopK = 5, explain: Explain = False, reject_below: RejectBelow = None) -> dict[str, Any]:
        pipeline.check_explain(explain)
        pipeline.check_reject(reject_below)
        [pixels] = await check_uploads([(file, "file")], settings)
        x = await pipeline.read_and_decode(file, "file", pixels)
        return await pipeline.batcher.submit((x, top_k, explain, reject_below))

    @app.post("/predict/batch", response_model=list[FilePrediction], response_model_exclude_unset=True,
              responses=errors, dependencies=protected, summary="Classify several images; results in upload order")
    async def predict_batch(files: Annotated[list[UploadFile], File(description="images, one per part")],
                            top_k: TopK = 5, explain: Explain = False,
                            reject_below: RejectBelow = None) -> list[dict[str, Any]]:
        pipeline.check_explain(explain)
        pipeline.check_reject(reject_below)
        check_file_count(len(files), settings)
        labelled = [(f, f"files[{i}] ({f.filename or 'unnamed'})") for i, f in enumerate(files)]
        pixels = await check_uploads(labelled, settings)
        tensors = await asyncio.gather(*(pipeline.read_and_decode(f, label, n)
                                         for (f, label), n in zip(labelled, pixels, strict=True)))
        results = await pipeline.batcher.submit_many([(x, top_k, explain, reject_below) for x in tensors])
        return [{"file": f.filename, **r} for f, r in zip(files, results, strict=True)]


def add_info_routes(app: FastAPI, pipeline: Pipeline, settings: ServerSettings, errors: Responses,
                    protected: list[Any]) -> None:
    predictor, batcher = pipeline.predictor, pipeline.batcher
    limits = {k: v for k, v in asdict(settings).items()
              if k not in ("api_key", "decode_threads", "tta", "reject_below", "target_accuracy")}

    @app.get("/health", response_model=Health, summary="Liveness: the model is loaded and serving")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/metadata", responses={k: v for k, v in errors.items() if k == 401}, dependencies=protected,
             summary="The model, its classes and input size, whether it uses test-time augmentation, and "
                     "the serving limits")
    async def metadata() -> dict[str, Any]:
        meta = predictor.metadata
        return {"model": meta.get("model"), "backend": meta.get("backend"), "classes": predictor.classes,
                "num_classes": len(predictor.classes), "input_size": predictor.input_size,
                "input": "RGB, resized (short side) and center-cropped to input_size; normalized in the model",
                "checkpoint_sha256": meta.get("checkpoint_sha256"), "onnx_sha256": meta.get("onnx_sha256"),
                "tta": predictor.tta, "temperature": predictor.temperature,
                "task": "multilabel" if predictor.multilabel else "multiclass",
                "thresholds": predictor.thresholds.tolist() if predictor.multilabel else None,
                "reject_below": predictor.reject_below, "target_accuracy": settings.target_accuracy, "limits": limits,
                "batching": {**batcher.stats.as_dict(), "queued": batcher.queued}}


def add_metrics_route(app: FastAPI, metrics: Metrics, errors: Responses, protected: list[Any]) -> None:
    text = {"description": "Prometheus text format",
            "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}
    responses: Responses = {200: text, **{k: v for k, v in errors.items() if k == 401}}

    @app.get("/metrics", response_class=Response, responses=responses, dependencies=protected,
             summary="Prometheus metrics: requests, latency, batch sizes, queue depth, images per second")
    def prometheus() -> Response:  # a plain def: rendering runs on a thread, never holding up the event loop
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def add_docs_and_page(app: FastAPI) -> None:
    """/docs and the web page at /, both working offline."""
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
