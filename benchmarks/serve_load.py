"""Serving throughput and latency: `imgclf serve` (micro-batched) against a naive FastAPI endpoint.

Both servers are uvicorn subprocesses on loopback with the same model, the same Predictor (decode,
preprocessing, ranking) and the same uvicorn settings; they differ only in how requests reach the model:
  batched   imgclf's server: decoding on a small thread pool, one worker thread running micro-batches;
  baseline  a plain `def` FastAPI endpoint calling the eager torch model per request (FastAPI runs it
            on its thread pool, so concurrent requests each run their own forward pass).
The model is trained on the spot for one epoch on a synthetic folder (fastcnn at 32x32 by default).
The load: `--concurrency` keep-alive connections sending `--requests` POST /predict requests in all,
from a small asyncio HTTP/1.1 client written to cost little CPU (it shares the machine with the servers).
Prints ONE JSON object: requests/s and p50/p95/p99 latency of each, medians over `--runs` alternating runs.
`--smoke`: one run of 16 requests (4 warm-up) over 4 connections at 16 px: checks it works, in seconds (most
of them the two servers' start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, smoke_threads  # noqa: E402
from imgclf.inference.settings import DEFAULTS  # noqa: E402


def make_folder(root: Path, classes: int, per_class: int, size: int) -> Path:
    """root/<class>/<i>.png: a class-specific colour and stripe direction plus noise, so one epoch learns
    something (the benchmark needs a real checkpoint, not a good one)."""
    rng = np.random.default_rng(0)
    stripes = (np.arange(size) // 2 % 2) * 80
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), dtype=np.float32)
        base[..., c % 3] = 160
        base += stripes[:, None, None] if c % 2 else stripes[None, :, None]
        for i in range(per_class):
            noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_checkpoint(work: Path, model: str, size: int, width: float) -> Path:
    """One epoch on a synthetic folder: a real checkpoint in the Trainer's format, quickly."""
    from imgclf.config import TrainConfig
    from imgclf.training.run import train

    data = make_folder(work / "imgs", classes=10, per_class=24, size=size)
    train(TrainConfig(data=str(data), model=model, width=width, epochs=1, batch_size=32, quiet=True, device="cpu",
                      out=str(work / "run"), val_fraction=0.2))
    return work / "run" / "checkpoints" / "last.pt"


def baseline_app(checkpoint: str, kind: str) -> FastAPI:
    """The naive server: one request, one forward pass, in FastAPI's thread pool.

    kind "plain": the checkpoint's eager model as `model_from_checkpoint` returns it (what one writes by
    hand); kind "predictor": imgclf's Predictor backend (channels_last), still one request per pass.
    Both decode and rank with the Predictor, exactly as the batched server does.
    """
    import torch

    from imgclf.inference.predictor import Predictor
    from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint

    predictor = Predictor.load(checkpoint=checkpoint, device="cpu")
    if kind == "plain":
        model = model_from_checkpoint(load_checkpoint(checkpoint))

        @torch.inference_mode()
        def forward(x: torch.Tensor) -> np.ndarray:
            return model(x).numpy()

        predictor.backend = forward
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(file: UploadFile = File()) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        return predictor.predict([file.file.read()], top_k=5)[0]

    return app


def run_baseline_server(checkpoint: str, port: int, kind: str) -> None:
    import uvicorn

    uvicorn.run(baseline_app(checkpoint, kind), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {' '.join(cmd)}\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def multipart_request(port: int, image: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status and whether the server keeps the connection; the body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


async def load(port: int, requests: list[bytes], total: int, concurrency: int) -> dict[str, Any]:
    """`concurrency` keep-alive clients share `total` requests; latency is send-to-last-byte."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def client() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_index < total:
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, keep = await read_response(reader)
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": errors, "seconds": round(elapsed, 2)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, cmd: list[str], port: int, images: list[bytes], args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    proc = start(cmd, port, work / f"{name}.log")
    try:
        requests = [multipart_request(port, img) for img in images]
        asyncio.run(load(port, requests, args.warmup, args.concurrency))
        cpu_before = cpu_seconds(proc.pid)
        result = asyncio.run(load(port, requests, args.requests, args.concurrency))
        # CPU per request: what the server spends, whatever share of a busy machine it was given.
        result["server_cpu_ms_per_request"] = round((cpu_seconds(proc.pid) - cpu_before) * 1000 / args.requests, 2)
        if name.startswith("batched"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=10) as r:
                result["mean_batch"] = json.load(r)["batching"]["mean_batch"]
        return result
    finally:
        stop_process(proc, grace=10)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["requests_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_request"]
    keys += ["mean_batch"] if "mean_batch" in runs[0] else []
    out: dict[str, Any] = {k: round(median([r[k] for r in runs]), 2) for k in keys}
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fastcnn")
    p.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each server; medians reported")
    p.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                   help=f"default: {DEFAULTS.max_batch_size}, the server's")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULTS.max_wait_ms,
                   help=f"default: {DEFAULTS.max_wait_ms}, the server's")
    p.add_argument("--checkpoint", help="use this checkpoint instead of training one")
    p.add_argument("--baseline-server", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--baseline-kind", choices=["plain", "predictor"], default="plain", help=argparse.SUPPRESS)
    p.add_argument("--onnx", action="store_true", help="also serve the exported ONNX file, micro-batched")
    p.add_argument("--also-predictor-baseline", action="store_true",
                   help="also run the naive server on the Predictor's backend, to separate batching from layout")
    p.add_argument("--smoke", action="store_true", help="one short run of each server at 16 px: checks it works")
    args = p.parse_args(argv)
    if args.baseline_server:
        run_baseline_server(args.baseline_server, args.port, args.baseline_kind)
        return None
    if args.smoke:
        args.requests, args.warmup, args.concurrency = min(args.requests, 16), min(args.warmup, 4), min(
            args.concurrency, 4)
        args.runs, args.image_size = 1, min(args.image_size, 16)

    with smoke_threads(args.smoke), tempfile.TemporaryDirectory(prefix="imgclf-serve-load-") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(
            work, args.model, args.image_size, args.width)
        images = [f.read_bytes() for f in sorted((work / "imgs").rglob("*.png"))[:50]] if not args.checkpoint else []
        if not images:
            folder = make_folder(work / "imgs", classes=10, per_class=5, size=args.image_size)
            images = [f.read_bytes() for f in sorted(folder.rglob("*.png"))]
        servers = {
            "batched": [sys.executable, "-m", "imgclf", "serve", "--checkpoint", str(checkpoint), "--device", "cpu",
                        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
            "baseline": [sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(checkpoint)],
        }
        if args.onnx:
            from imgclf.inference.export import export_onnx

            export_onnx(checkpoint, work / "model.onnx")
            servers["batched_onnx"] = [*servers["batched"][:4], "--onnx", str(work / "model.onnx"),
                                       *servers["batched"][6:]]
        if args.also_predictor_baseline:
            servers["baseline_predictor"] = servers["baseline"] + ["--baseline-kind", "predictor"]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for _ in range(args.runs):
            for name, cmd in servers.items():
                port = free_port()
                runs[name].append(measure(name, [*cmd, "--port", str(port)], port, images, args, work))

    summaries = {name: summarize(r) for name, r in runs.items()}
    batched, baseline = summaries["batched"], summaries["baseline"]
    result = {
        "benchmark": "serve_load", "smoke": args.smoke,
        "model": args.model, "width": args.width, "image_size": args.image_size,
        "requests": args.requests, "concurrency": args.concurrency, "runs": args.runs,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "cpu_count": os.cpu_count(), "torch_threads_default": _torch_threads(),
        "batched": batched, "baseline": baseline,
        **{name: summary for name, summary in summaries.items() if name not in ("batched", "baseline")},
        "throughput_ratio": round(batched["requests_per_s"] / baseline["requests_per_s"], 2),
        "p99_ratio_baseline_over_batched": round(baseline["p99_ms"] / batched["p99_ms"], 2),
        **({"throughput_ratio_onnx": round(summaries["batched_onnx"]["requests_per_s"]
                                           / baseline["requests_per_s"], 2)} if "batched_onnx" in summaries else {}),
        # CPU time comes in clock ticks (10 ms): a short run may see none, and then there is no ratio
        "cpu_per_request_ratio_baseline_over_batched": round(
            baseline["server_cpu_ms_per_request"] / batched["server_cpu_ms_per_request"], 2)
        if batched["server_cpu_ms_per_request"] else None,
        "per_run": runs,
    }
    print(json.dumps(result, indent=2))
    return result


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
