"""Server metrics in Prometheus text format, served at /metrics (behind the API key, like /predict).

Each app has a registry of its own (not prometheus_client's global one), so several apps in one process
(the tests) never clash. What is recorded, and where:

- imgclf_requests_total{route,status} and imgclf_request_seconds{route}: every HTTP request, in the Guard
  (bodyguard.py), so the Guard's own refusals (401, 413) count too; from the request's first byte to the
  end of its answer. A path the app does not serve counts as route="other" (scanners cannot grow the
  label set); a request whose client left before any answer is not counted.
- imgclf_batch_size and imgclf_images_total: each forward pass of the MicroBatcher that returned
  (pipeline.py, on the worker thread); rate(imgclf_images_total[1m]) is images classified per second.
- imgclf_queue_depth: images waiting for a forward pass, read when /metrics is scraped.
- imgclf_model_load_seconds and imgclf_build_info{version,model}: set once.

Recording costs two clock reads, a set and a dict look-up a request (the labelled children are cached).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

import imgclf

ROUTES = frozenset({"/predict", "/predict/batch", "/health", "/metadata", "/metrics", "/", "/docs", "/openapi.json"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    return "/docs-assets" if path.startswith("/docs-assets/") else "other"


class Metrics:
    """The metrics of one app and the calls that record them."""

    def __init__(self, model: str, load_seconds: float, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("imgclf_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("imgclf_request_seconds", "Time from a request's arrival to the end of its answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("imgclf_batch_size", "Images in each forward pass of the micro-batcher",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("imgclf_images", "Images classified (rate() gives images per second)",
                              registry=self.registry)
        queued = Gauge("imgclf_queue_depth", "Images waiting for a forward pass", registry=self.registry)
        queued.set_function(queue_depth)
        Gauge("imgclf_model_load_seconds", "Seconds the model took to load",
              registry=self.registry).set(load_seconds)
        Gauge("imgclf_build_info", "The imgclf version and the served model (always 1)", ["version", "model"],
              registry=self.registry).labels(imgclf.__version__, model).set(1)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def request(self, path: str, status: int, seconds: float) -> None:
        """One answered request (on the event loop)."""
        route = route_label(path)
        children = self._children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, size: int) -> None:
        """One forward pass that returned (on a worker thread)."""
        self.batch_size.observe(size)
        self.images.inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Timer:
    """The status of one request's answer and when the request arrived (the Guard wraps `send` with it)."""

    __slots__ = ("send", "start", "status")

    def __init__(self, send: Any) -> None:
        self.send, self.start, self.status = send, time.perf_counter(), 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
