"""Every script in benchmarks/ has a --smoke run (made-up data or a tiny subset, seconds) that prints one JSON
object with `"smoke": true` and at least one positive figure, so no benchmark rots unnoticed between real runs.

The scripts are found by glob: a new benchmark without --smoke fails here. The few whose smoke run is already
part of another test are skipped below, each with the test that runs it (not to pay for the same seconds twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import benchmark_json

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))

# script -> (test file, why its smoke run is not repeated here)
SMOKED_ELSEWHERE: dict[str, tuple[str, str]] = {
    "cpu_recipe": ("test_defaults.py", "~12 s, in the default suite"),
    "imbalance": ("test_imbalance.py", "~7 s, in the default suite"),
    "regularizers": ("test_mixup_ema.py", "~7 s, in the default suite"),
    "reject_unseen": ("test_reject.py", "~7 s, in the default suite"),
    **{gpu: ("test_speedrun.py", "slow: decodes the whole CIFAR-10-JPEG archive, then 10-20 s a script")
       for gpu in ("gpu_speedrun", "gpu_finetune", "gpu_precision")},
}
FIGURES = ("ratio", "per_s", "per_second", "accuracy")  # what a benchmark measures, wherever it sits in the JSON


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key path, number) for every number in a JSON value (booleans are not numbers here)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def _param(script: str) -> Any:
    if script in SMOKED_ELSEWHERE:
        where, why = SMOKED_ELSEWHERE[script]
        return pytest.param(script, marks=pytest.mark.skip(reason=f"--smoke runs in tests/{where} ({why})"))
    return script


def test_scripts_are_found() -> None:
    assert {"train_throughput", "serve_load", "photo_finetune"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_benchmark_smoke(script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         one_torch_thread: None) -> None:
    """`python benchmarks/SCRIPT.py --smoke` in-process: one JSON object, marked as a smoke run, with a positive
    ratio, rate or accuracy (one intra-op thread: on 2 busy cores libgomp's spin-waits made a 4 s smoke 14 s)."""
    printed = benchmark_json(monkeypatch, capsys, script, "--smoke")
    assert printed["benchmark"] == script and printed["smoke"] is True
    figures = {path: v for path, v in numbers(printed) if any(f in path for f in FIGURES)}
    assert any(v > 0 for v in figures.values()), figures


@pytest.mark.parametrize("script", sorted(SMOKED_ELSEWHERE))
def test_skipped_smokes_do_run_elsewhere(script: str) -> None:
    """A skip above stays honest: the test file it names runs that script with --smoke."""
    text = (Path(__file__).parent / SMOKED_ELSEWHERE[script][0]).read_text()
    assert "--smoke" in text and (f'"{script}"' in text), script
