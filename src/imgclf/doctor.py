"""`imgclf doctor`: what this machine offers imgclf, in one screen, for a user's first look or a bug report.

How fast a run is and which defaults it gets depend on the CPU (bf16 and AVX-512 make the from-scratch nets
several times faster), on CUDA, on which pretrained weights are installed and on which extras are present;
this gathers them without importing the heavy optional packages.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# distribution -> what it gives imgclf (and the extra that installs it)
EXTRAS = {
    "fastapi": "the HTTP server (imgclf[serve])",
    "uvicorn": "the HTTP server (imgclf[serve])",
    "python-multipart": "image uploads to the server (imgclf[serve])",
    "fastapi-offline": "the server's offline /docs page, Swagger UI 5 (imgclf[serve])",
    "onnx": "ONNX export (imgclf[onnx])",
    "onnxruntime": "ONNX inference and export checks (imgclf[onnx])",
    "onnxscript": "ONNX export (imgclf[onnx])",
    "timm": "pretrained backbones and --model timm:NAME",
    "matplotlib": "report figures",
    "safetensors": "--weights FILE.safetensors",
    "scikit-learn": "the bundled digits data",
    "pytest": "the test suite (imgclf[dev])",
}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """Model name and the instruction-set flags that decide training speed (Linux; elsewhere what platform says)."""
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's; all cores are alike
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def directory_size(folder: Path) -> int:
    """Bytes under `folder` (0 when it does not exist); files that vanish meanwhile are skipped."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def collect() -> dict[str, Any]:
    """Every fact `imgclf doctor` shows, as plain data (also its --json)."""
    import torch

    from imgclf.data.sources import cache_dir
    from imgclf.models import list_models, model_entry
    from imgclf.runtime import cpu_has_bf16

    cpu = cpu_info()
    cpu["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    cpu["native_bf16"] = cpu_has_bf16()
    cpu["torch_threads"] = torch.get_num_threads()
    cuda = [{"name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    weights = {}
    for name in list_models():
        status = model_entry(name).weights_status
        if status is not None:
            weights[name] = status()
    cache = cache_dir()
    return {
        "imgclf": _version("imgclf"),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": {"version": torch.__version__, "torchvision": _version("torchvision"),
                  "cuda_build": torch.version.cuda},
        "cpu": cpu,
        "cuda_devices": cuda,
        "pretrained_weights": weights,
        "cache": {"path": str(cache), "bytes": directory_size(cache),
                  "set_by": "IMGCLF_CACHE" if os.environ.get("IMGCLF_CACHE") else "default"},
        "extras": {dist: _version(dist) for dist in EXTRAS},
    }


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render(facts: dict[str, Any]) -> str:
    """The facts as one screen of text, with what each means for a run."""
    cpu, flags = facts["cpu"], facts["cpu"]["flags"]
    speed = ("native bf16: from-scratch training runs in bf16 autocast" if cpu["native_bf16"] else
             "no native bf16: training runs in fp32, expect each step 3-10x slower than on a CPU with AVX-512 bf16")
    cuda = facts["cuda_devices"]
    lines = [
        f"imgclf      {facts['imgclf'] or 'not installed'}",
        f"python      {facts['python']['version']} ({facts['python']['executable']})",
        f"torch       {facts['torch']['version']}, torchvision {facts['torch']['torchvision']}, "
        f"CUDA build {facts['torch']['cuda_build'] or 'none (CPU-only)'}",
        f"cpu         {cpu['model']}, {cpu['cores']} cores, torch uses {cpu['torch_threads']} threads",
        f"            AVX2 {_yes(flags['avx2'])}, AVX-512 {_yes(flags['avx512f'])}, "
        f"AVX-512 bf16 {_yes(flags['avx512_bf16'])}, AMX bf16 {_yes(flags['amx_bf16'])}; "
        f"torch kernels: {cpu['torch_capability']}",
        f"            {speed}",
        "cuda        " + ("; ".join(f"cuda:{i} {d['name']} ({d['memory_gb']} GB)" for i, d in enumerate(cuda))
                          if cuda else "no CUDA device (training runs on the CPU)"),
        "weights     " + ("; ".join(f"{name}: {status}" for name, status in facts["pretrained_weights"].items())
                          or "no model with ImageNet weights registered"),
        f"cache       {facts['cache']['path']} ({_size(facts['cache']['bytes'])}; "
        + ("$IMGCLF_CACHE)" if facts["cache"]["set_by"] == "IMGCLF_CACHE" else "set $IMGCLF_CACHE to move it)"),
        "extras",
    ]
    for dist, purpose in EXTRAS.items():
        version = facts["extras"][dist]
        lines.append(f"  {dist:18s} {version or 'missing':10s} {purpose}")
    return "\n".join(lines)
