"""Decode work is bounded: images over the per-image pixel limit and requests over the per-request pixel
budget are refused (413 JSON) from their headers alone, and a flood of small files that decode large cannot
hold up small images, which have decode threads of their own. The app runs in-process under uvicorn
(a thread), so the test can set limits the CLI does not expose.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import free_port
from imgclf.inference.predictor import Predictor
from imgclf.inference.server import ServerSettings, create_app


def flat_png(width: int, height: int) -> bytes:
    """A real PNG of one colour: a few kB on the wire, width x height pixels to decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.load(checkpoint=str(checkpoint), device="cpu")


@pytest.fixture
def serve(predictor: Predictor) -> Iterator[Callable[[ServerSettings], str]]:
    """serve(settings) -> base URL of the app on a free loopback port, stopped at the end of the test."""
    servers: list[tuple[object, threading.Thread]] = []

    def start(settings: ServerSettings) -> str:
        import uvicorn

        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(predictor, settings), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "server did not start"
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(10)


def test_pixel_limits_are_413_json(serve: Callable[[ServerSettings], str]) -> None:
    base = serve(ServerSettings(max_request_pixels=3_000_000))
    one_mp = flat_png(1000, 1000)
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/predict", files={"file": ("huge.png", flat_png(6000, 6000), "image/png")})
        assert r.status_code == 413 and "36000000 pixels; the limit is 16777216" in r.json()["detail"]
        r = client.post("/predict/batch", files=[("files", (f"{i}.png", one_mp, "image/png")) for i in range(4)])
        assert r.status_code == 413 and "4000000 pixels in all; the limit is 3000000" in r.json()["detail"]
        r = client.post("/predict/batch", files=[("files", (f"{i}.png", one_mp, "image/png")) for i in range(3)])
        assert r.status_code == 200 and len(r.json()) == 3
        assert client.get("/metadata").json()["limits"]["max_request_pixels"] == 3_000_000


def test_flood_of_large_images_does_not_hold_up_small_ones(serve: Callable[[ServerSettings], str],
                                                           photos: dict[str, Path]) -> None:
    """24 small files that decode to 9 MP each are queued first; 8 ordinary photos sent after them finish
    long before the flood does (before the lanes, they queued behind it: p99 of minutes at 300 clients)."""
    base = serve(ServerSettings(decode_threads=2))
    large, small = flat_png(3000, 3000), photos["png"].read_bytes()

    async def post(c: httpx.AsyncClient, data: bytes) -> tuple[int, float]:
        t0 = time.perf_counter()
        r = await c.post("/predict", files={"file": ("x.png", data, "image/png")})
        return r.status_code, time.perf_counter() - t0

    async def main() -> tuple[list[tuple[int, float]], list[tuple[int, float]], float]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
            await post(c, small)  # warm up
            t0 = time.perf_counter()
            flood = [asyncio.create_task(post(c, large)) for _ in range(24)]
            await asyncio.sleep(0.3)  # the flood is queued first
            smalls = await asyncio.gather(*(post(c, small) for _ in range(8)))
            floods = await asyncio.gather(*flood)
            return smalls, floods, time.perf_counter() - t0

    smalls, floods, flood_seconds = asyncio.run(main())
    assert {s for s, _ in smalls + floods} == {200}
    slowest_small = max(t for _, t in smalls)
    assert slowest_small < 0.3 * flood_seconds, (slowest_small, flood_seconds)
