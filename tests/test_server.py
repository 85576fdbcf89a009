"""The HTTP service over real HTTP: `imgclf serve` in a subprocess on a free loopback port.

Real photos get the same top-1 as `imgclf predict`; every kind of bad input gets its 4xx with a JSON body;
300 async clients refused early (401, 413) all read their answer, none sees a reset; 200 concurrent
requests all succeed (and share forward passes); a schemathesis fuzz from the server's own OpenAPI schema
finds no 5xx, and the server still answers afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import free_port, imgclf, stop_process

API_KEY = "s3cret-key"
MAX_UPLOAD = 1_000_000
MAX_PIXELS = 1_000_000
MAX_FILES = 4
AUTH = {"X-API-Key": API_KEY}


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`imgclf serve ARGS` on a free port; returns once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
                            env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"server did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The key comes from IMGCLF_API_KEY (the CLI's fallback for --api-key); small limits to test."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    proc, base = start_server(["--checkpoint", str(checkpoint), "--device", "cpu", "--max-upload-bytes",
                               str(MAX_UPLOAD), "--max-pixels", str(MAX_PIXELS), "--max-files", str(MAX_FILES),
                               "--max-wait-ms", "10"], log, env={"IMGCLF_API_KEY": API_KEY})
    yield base
    stop_process(proc)
    assert "Traceback" not in log.read_text(), log.read_text()  # no request ever crashed a handler


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
        yield c


def upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return {"file": (path.name, path.read_bytes(), mime)}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data: a decompression bomb's header."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_png_and_jpeg_match_the_cli(client: httpx.Client, checkpoint: Path, photos: dict[str, Path]) -> None:
    files = [photos["png"], photos["jpeg"], photos["gray"]]
    cli = imgclf("predict", "--checkpoint", str(checkpoint), "--device", "cpu", *map(str, files))
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    for path, want in zip(files, expected, strict=True):
        r = client.post("/predict", files=upload(path))
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["label"] == want["label"] and got["top_k"][0]["label"] == want["label"]
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-4)
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]

    r = client.post("/predict/batch?top_k=2", files=[("files", (p.name, p.read_bytes(), "image/*")) for p in files])
    assert r.status_code == 200, r.text
    assert [x["file"] for x in r.json()] == [p.name for p in files]
    assert [x["label"] for x in r.json()] == [w["label"] for w in expected]
    assert all(len(x["top_k"]) == 2 for x in r.json())


def test_health_metadata_docs(server: str, client: httpx.Client, checkpoint: Path) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}  # no key needed to check liveness
    meta = client.get("/metadata").json()
    assert meta["model"] == "tiny" and meta["classes"] == ["class_0", "class_1", "class_2"]
    assert meta["input_size"] == 16 and meta["backend"] == "torch"
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["limits"]["max_files"] == MAX_FILES and "api_key" not in meta["limits"]
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn." not in docs.text  # the docs page must work offline: its scripts come from this server
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in docs.text
        served = httpx.get(f"{server}/docs-assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/metadata"} <= set(schema["paths"])
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "<input id=\"file\"" in page.text
    assert "script-src 'sha256-" in page.headers["content-security-policy"]


def test_api_key_required(server: str, photos: dict[str, Path]) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}):
        r = httpx.post(f"{server}/predict", files=upload(photos["png"]), headers=headers)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert httpx.get(f"{server}/metadata", headers=headers).status_code == 401


def _multipart(fields: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
             for name, filename, data in fields]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _bad_requests(photos: dict[str, Path]) -> dict[str, tuple[dict, int | tuple[int, ...]]]:
    """name -> (httpx request kwargs, expected status or statuses)."""
    png = photos["png"].read_bytes()
    big_body, big_type = _multipart([("file", "big.png", b"\0" * (MAX_UPLOAD + 50_000))])

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(big_body), 65536):
            yield big_body[i:i + 65536]

    many = [("files", (f"{i}.png", png, "image/png")) for i in range(MAX_FILES + 1)]
    return {
        "upload over max bytes (Content-Length)": (
            {"url": "/predict", "content": big_body, "headers": {"content-type": big_type}}, 413),
        "upload over max bytes (chunked, no length)": (
            {"url": "/predict", "content": chunked(), "headers": {"content-type": big_type}}, 413),
        "decompression bomb header (100k x 100k)": (
            {"url": "/predict", "files": {"file": ("bomb.png", png_header(100_000, 100_000), "image/png")}}, 413),
        "header over max pixels (5000 x 5000)": (
            {"url": "/predict", "files": {"file": ("big.png", png_header(5000, 5000), "image/png")}}, 413),
        "real image over max pixels": (
            {"url": "/predict", "files": {"file": ("wide.png", png_bytes(Image.new("L", (1100, 1000))), "image/png")}},
            413),
        "too many files": ({"url": "/predict/batch", "files": many}, 413),
        "text, not an image": ({"url": "/predict", "files": {"file": ("a.png", b"hello, world", "image/png")}}, 415),
        "pdf": ({"url": "/predict", "files": {"file": ("a.pdf", b"%PDF-1.4\n1 0 obj<<>>", "application/pdf")}}, 415),
        "eps (never handed to Ghostscript)": (
            {"url": "/predict", "files": {"file": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
                                                   "application/postscript")}}, 415),
        "one bad file in a batch": (
            {"url": "/predict/batch", "files": [("files", ("ok.png", png, "image/png")),
                                                ("files", ("bad.png", b"nope", "image/png"))]}, 415),
        "empty file": ({"url": "/predict", "files": {"file": ("e.png", b"", "image/png")}}, 422),
        "truncated png": ({"url": "/predict", "files": {"file": ("t.png", png[: len(png) // 3], "image/png")}}, 422),
        "missing file field": ({"url": "/predict", "files": {"other": ("a.png", png, "image/png")}}, 422),
        "file field as text": ({"url": "/predict", "data": {"file": "not a file"}}, 422),
        "json body": ({"url": "/predict", "json": {"file": "x"}}, 422),
        "top_k zero": ({"url": "/predict?top_k=0", "files": {"file": ("a.png", png, "image/png")}}, 422),
        "top_k not a number": ({"url": "/predict?top_k=lots", "files": {"file": ("a.png", png, "image/png")}}, 422),
        "broken multipart": ({"url": "/predict", "content": b"--x\r\ngarbage",
                              "headers": {"content-type": "multipart/form-data; boundary=x"}}, (400, 422)),
        "multipart without boundary": ({"url": "/predict", "content": b"abc",
                                        "headers": {"content-type": "multipart/form-data"}}, (400, 422)),
    }


def test_bad_inputs_get_json_4xx(client: httpx.Client, photos: dict[str, Path]) -> None:
    wrong = {}
    for name, (kwargs, status) in _bad_requests(photos).items():
        r = client.post(**kwargs)
        body = r.json()  # always JSON
        if r.status_code not in (status if isinstance(status, tuple) else (status,)) or "detail" not in body:
            wrong[name] = (r.status_code, r.text[:200])
    assert not wrong, wrong
    assert client.post("/predict", files=upload(photos["png"])).status_code == 200  # still serving


def test_early_errors_reach_async_clients_without_resets(server: str, photos: dict[str, Path]) -> None:
    """Refused before the body is read (wrong key, declared or streamed size over the limit), yet each of 300
    concurrent httpx.AsyncClient requests gets its 4xx JSON: the body is drained first, so the server never
    closes a socket with unread bytes (which the kernel answers with a reset)."""
    png = photos["png"].read_bytes()
    big = b"\0" * (MAX_UPLOAD + 50_000)
    big_body, big_type = _multipart([("file", "big.png", big)])

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: refused mid-stream by the running count
        for i in range(0, len(big_body), 65536):
            yield big_body[i:i + 65536]

    async def one(c: httpx.AsyncClient, i: int) -> tuple[int | str, bool]:
        try:
            if i % 3 == 0:
                r = await c.post("/predict", files={"file": ("a.png", png, "image/png")}, headers={"X-API-Key": "no"})
            elif i % 3 == 1:
                r = await c.post("/predict", files={"file": ("big.png", big, "image/png")})
            else:
                r = await c.post("/predict", content=streamed(), headers={"content-type": big_type})
        except httpx.TransportError as exc:
            return exc.__class__.__name__, False
        return r.status_code, "detail" in r.json() and r.headers.get("connection") != "close"

    async def main() -> list[tuple[int | str, bool]]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(one(c, i) for i in range(300)))

    results = asyncio.run(main())
    expected = [(401 if i % 3 == 0 else 413, True) for i in range(300)]
    wrong = {i: got for i, (got, want) in enumerate(zip(results, expected, strict=True)) if got != want}
    assert not wrong, f"{len(wrong)} of 300 wrong, e.g. {list(wrong.items())[:5]}"


def test_unknown_paths_and_methods_are_json(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["detail"]
    r = client.get("/predict")
    assert r.status_code == 405 and r.json()["detail"]


def test_200_concurrent_requests(server: str, photos: dict[str, Path], client: httpx.Client) -> None:
    images = [photos["png"], photos["jpeg"], photos["gray"]]
    single = [client.post("/predict", files=upload(p)).json()["label"] for p in images]
    before = client.get("/metadata").json()["batching"]

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(c.post("/predict", files=upload(images[i % 3])) for i in range(200)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 200
    assert [r.json()["label"] for r in responses] == [single[i % 3] for i in range(200)]
    after = client.get("/metadata").json()["batching"]
    assert after["items"] - before["items"] == 200
    assert after["batches"] - before["batches"] < 200 and after["largest_batch"] > 1  # forward passes were shared


def test_schemathesis_fuzz_finds_no_5xx(server: str, photos: dict[str, Path]) -> None:
    """Property-based requests generated from /openapi.json, valid and invalid, with and without the key."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures: list[str] = []

    def fuzz(op: schemathesis.APIOperation, mode: GenerationMode, headers: dict[str, str], examples: int) -> None:
        label = f"{op.method.upper()} {op.path} ({mode.value}, {'with' if headers else 'no'} key)"

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=server, headers=headers, timeout=60)
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, label  # nothing to make invalid (GET /health: no inputs)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/metadata", "/health"}
    for op in operations:
        fuzz(op, GenerationMode.POSITIVE, AUTH, 25)
        fuzz(op, GenerationMode.NEGATIVE, AUTH, 25)
        fuzz(op, GenerationMode.POSITIVE, {}, 5)
    assert not failures, "\n".join(failures[:10])
    r = httpx.post(f"{server}/predict", files=upload(photos["jpeg"]), headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["label"]


def test_mutated_images_never_5xx(client: httpx.Client, photos: dict[str, Path]) -> None:
    """Real images in every accepted format with bytes flipped, cut or spliced: a 4xx or a 200, never a 5xx."""
    import io

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    small = Image.open(photos["png"]).resize((48, 32))
    samples = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"):
        buffer = io.BytesIO()
        small.save(buffer, format=fmt)
        samples.append(buffer.getvalue())

    @given(st.sampled_from(samples), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                              max_size=6), st.floats(0.05, 1.0), st.booleans())
    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(data: bytes, flips: list[tuple[float, int]], keep: float, double: bool) -> None:
        mutated = bytearray(data)
        for where, value in flips:
            mutated[int(where * len(mutated))] = value
        body = bytes(mutated[: max(1, int(len(mutated) * keep))])
        body = body + body if double else body
        r = client.post("/predict", files={"file": ("m.bin", body, "application/octet-stream")})
        assert r.status_code in (200, 413, 415, 422), (r.status_code, r.text[:200])
        assert "label" in r.json() if r.status_code == 200 else "detail" in r.json()

    run()


def test_serve_user_errors(checkpoint: Path) -> None:
    """A taken port or a bad option is a one-line user error before anything loads (the CLI exits 2)."""
    from imgclf.errors import UserError
    from imgclf.inference.server import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            serve(checkpoint=str(checkpoint), port=taken.getsockname()[1])
    with pytest.raises(UserError, match="--max-batch-size must be at least 1"):
        serve(checkpoint=str(checkpoint), port=0, max_batch_size=0)
    with pytest.raises(UserError, match="--max-wait-ms must not be negative"):
        serve(checkpoint=str(checkpoint), port=0, max_wait_ms=-1)


def test_serve_flags_default_to_the_server_settings(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`imgclf serve`'s limit flags take their defaults and help from ServerSettings: they cannot drift."""
    from dataclasses import asdict, fields

    from imgclf.cli import build_parser
    from imgclf.inference.settings import ServerSettings

    args = build_parser().parse_args(["serve", "--checkpoint", str(checkpoint)])
    defaults = asdict(ServerSettings())
    flags = ("api_key", "max_batch_size", "max_wait_ms", "max_upload_bytes", "max_pixels", "max_request_pixels",
             "max_files")
    assert {name: getattr(args, name) for name in flags} == {name: defaults[name] for name in flags}
    assert (defaults["max_pixels"], defaults["max_request_pixels"]) == (4096 * 4096, 8192 * 8192)  # README: 16.7, 67 MP

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for option in fields(ServerSettings):
        if option.metadata.get("help"):
            assert f"{option.metadata['help']} (default: {option.default})" in shown
