"""The Guard: pure ASGI middleware that settles the API key and the body size before the body is parsed,
and drains the body before any early answer so the client reads the answer instead of a reset."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fastapi import HTTPException

from imgclf.inference.metrics import Metrics, Timer
from imgclf.inference.settings import DRAIN_LIMIT, ServerSettings

PROTECTED = frozenset({"/predict", "/predict/batch", "/metadata", "/metrics"})  # want the key, if set


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
    """Pure ASGI middleware: API key and body size are settled before the body is parsed; with `metrics`,
    every answer's status and time are recorded (the Guard's own refusals included)."""

    def __init__(self, app: Any, settings: ServerSettings, metrics: Metrics | None = None) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.metrics is None:
            await self.guard(scope, receive, send)
            return
        timer = Timer(send)
        try:
            await self.guard(scope, receive, timer)
        finally:
            if timer.status:  # a client that left before any answer is not counted
                self.metrics.request(scope.get("path", ""), timer.status, time.perf_counter() - timer.start)

    async def guard(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
