"""`imgclf compare --seeds N` and the time curves: repeats that repeat exactly on one split, the spread and the
verdict's standard error from known inputs, the default number of seeds, and the saturating-curve estimator on
curves with a known answer."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import make_folder
from imgclf import config
from imgclf.cli import main
from imgclf.evaluation.diagnosis import read_history
from imgclf.experiments import verdict
from imgclf.reporting import curves
from imgclf.reporting.comparison import summarize_seeds
from imgclf.reporting.curves import SaturatingFit, crossing, crossing_text, extrapolate, fit_saturating


def _truth(a: float, b: float, c: float, t: np.ndarray | float) -> np.ndarray:
    return np.minimum(a - b * np.asarray(t, dtype=float) ** (-c), 1.0)


@pytest.mark.parametrize(("a", "b", "c"), [(0.9, 0.6, 0.5), (0.75, 3.0, 1.0), (0.97, 0.4, 0.3)])
def test_the_fit_recovers_a_known_curve(a: float, b: float, c: float) -> None:
    t = np.geomspace(1.0, 60.0, 25)
    fit = fit_saturating(t, _truth(a, b, c, t))
    assert fit is not None and fit.method == "power"
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-3)
    estimate = extrapolate(fit, 60.0)
    assert estimate["2x"] == pytest.approx(float(_truth(a, b, c, 120.0)), abs=1e-3)
    assert estimate["4x"] == pytest.approx(float(_truth(a, b, c, 240.0)), abs=1e-3)
    # anchored at a measured end 1 point above the curve (a schedule's final lift): the same gain on top of it
    lifted = extrapolate(fit, 60.0, anchor=float(_truth(a, b, c, 60.0)) + 0.01)
    assert lifted["2x"] == pytest.approx(min(1.0, float(_truth(a, b, c, 120.0)) + 0.01), abs=1e-3)
    # with the noise of a small validation set the 2x estimate stays within a couple of points
    noisy = _truth(a, b, c, t) + np.random.default_rng(0).normal(0, 0.01, len(t))
    rough = fit_saturating(t, noisy)
    assert rough is not None and extrapolate(rough, 60.0)["2x"] == pytest.approx(float(_truth(a, b, c, 120.0)),
                                                                                  abs=0.02)


def test_the_estimate_is_capped_and_needs_enough_points(monkeypatch: pytest.MonkeyPatch) -> None:
    t = np.geomspace(1.0, 30.0, 10)
    assert fit_saturating(t[:3], [0.2, 0.4, 0.5]) is None  # fewer points than MIN_POINTS
    assert fit_saturating(np.linspace(10, 15, 6), np.linspace(0.5, 0.6, 6)) is None  # spread under 2x in time
    assert fit_saturating([1, 2, 4, 8, float("nan")], [0.5, 0.6, float("nan"), 0.7, 0.8]) is None  # 3 usable
    # without scipy: acc = a + b ln t, which the fallback recovers exactly, capped at 100 %
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    line = 0.3 + 0.15 * np.log(t)
    fit = fit_saturating(t, line)
    assert fit is not None and fit.method == "log-linear"
    assert (fit.a, fit.b) == pytest.approx((0.3, 0.15))
    assert extrapolate(fit, 30.0) == {"2x": pytest.approx(0.3 + 0.15 * math.log(60.0)), "4x": 1.0}


def test_where_the_curves_cross() -> None:
    fast = SaturatingFit(0.6, 0.3, 1.0, "power", 10)  # ahead early, low ceiling
    slow = SaturatingFit(0.9, 0.9, 1.0, "power", 10)  # 0.9 - 0.9/t = 0.6 - 0.3/t at t = 2
    assert crossing(slow, fast, 0.5, 100.0) == pytest.approx(2.0, rel=1e-6)
    assert crossing(slow, slow, 0.5, 100.0) is None  # level: nothing to cross
    assert crossing(slow, 0.85, 1.0, 100.0) == pytest.approx(18.0, rel=1e-6)  # a fixed level, too

    def entry(fit: SaturatingFit | None, budget: float, measured: float | None = None) -> dict[str, Any]:
        measured = float(fit(budget)) if measured is None and fit else measured
        return {"fit": fit.to_dict() if fit else None, "budget_seconds": budget, "first_seconds": 0.5,
                "measured_val_accuracy": measured}

    text = crossing_text({"fast": entry(fast, 10.0), "slow": entry(slow, 10.0)})
    assert "cross at about 2 s, within the measured budget" in text and "slow stays ahead" in text
    assert crossing_text({"fast": entry(fast, 1.0), "slow": entry(slow, 1.0)}) == (
        "With more time they would cross at about 2 s (an estimate); after that slow leads.")
    flat = crossing_text({"scratch": entry(fast, 60.0, measured=0.5), "finetune": entry(None, 60.0, measured=0.8)})
    assert "do not cross" in flat and "finetune leads throughout" in flat
    assert "taken as flat at its measured 80%" in flat
    # how long the one behind would need: here its curve levels off below the leader's (50 % vs 80 %) ...
    assert "scratch would not overtake finetune even with 32x the budget (1920 s: about 50% vs 80%" in flat
    level = crossing_text({"ahead": entry(SaturatingFit(0.8, 0.1, 1.0, "power", 10), 60.0),
                           "behind": entry(SaturatingFit(0.8, 0.15, 0.5, "power", 10), 60.0)})
    assert "behind would at most draw level with ahead by 32x the budget (1920 s: about 80% vs 80%, within 0.5" in level
    # on few validation images a gap within their noise is not read as a crossing, nor as a lead past it: two
    # curves 8 points apart at 4x the budget, measured level at the budget on 30 images (19 points of noise)
    fit_a, fit_b = SaturatingFit(0.83, 0.0, 1.0, "power", 10), SaturatingFit(1.0, 0.76, 0.28, "power", 10)
    noisy = {"finetune": {**entry(fit_a, 60.0, 25 / 30), "val_images": 30, "first_seconds": 24.0},
             "scratch": {**entry(fit_b, 60.0, 25 / 30), "val_images": 30, "first_seconds": 24.0}}
    assert crossing_text(noisy).startswith("The curves run level (within 19.2 points, the noise of 30 validation")
    assert "would cross" in crossing_text({k: {**e, "val_images": 5000} for k, e in noisy.items()})
    # ... and here it rises past it at 0.95 - 3 / sqrt(t) = 0.8 - 0.1 / t, t = 398.7 s, beyond 4x a 60 s budget
    late = crossing_text({"ahead": entry(SaturatingFit(0.8, 0.1, 1.0, "power", 10), 60.0),
                          "behind": entry(SaturatingFit(0.95, 3.0, 0.5, "power", 10), 60.0)})
    assert "ahead leads throughout" in late
    assert "behind would need about 399 s of training (7x the budget) to overtake ahead" in late
    # a variant with too few points to fit is taken as flat: nothing is said about when it would catch up
    assert "overtake" not in crossing_text({"scratch": entry(None, 60.0, 0.5), "finetune": entry(fast, 60.0, 0.8)})
    # past the budget each estimate starts from what was measured there: a run that ended above its curve (the
    # end of its schedule) keeps that lift. Fits alone cross at 14 s; lifted 3 and 2 points, at 0.7 / 0.06 s
    lifted = crossing_text({"scratch": entry(slow, 10.0, measured=float(slow(10.0)) + 0.03),
                            "other": entry(SaturatingFit(0.85, 0.2, 1.0, "power", 10), 10.0, measured=0.85)})
    assert lifted == "With more time they would cross at about 12 s (an estimate); after that scratch leads."


def _run(variant: str, value: float, seed: int, seconds: float = 10.0) -> dict[str, Any]:
    return {"name": f"{variant}_s{seed}", "group": variant, "variant": variant, "approach": "scratch", "seed": seed,
            "model": "fastcnn", "train_fraction": 1.0, "train_images": 500, "val_accuracy": value - 0.05,
            "test_accuracy": value, "train_seconds": seconds, "images_per_second": 100.0}


def test_the_spread_over_seeds_and_the_standard_error() -> None:
    records = [_run("a", 0.80, 0), _run("a", 0.90, 1), _run("a", 1.00, 2, seconds=16.0),
               _run("b", 0.60, 0), {**_run("b", 0.0, 1), "error": "diverged"}]
    summary = summarize_seeds(records, "test")
    a, b = summary["a"], summary["b"]
    assert a["runs"] == 3 and a["seeds"] == [0, 1, 2] and a["run_names"] == ["a_s0", "a_s1", "a_s2"]
    assert (a["mean"], a["std"], a["min"], a["max"]) == pytest.approx((0.9, 0.1, 0.8, 1.0))
    assert a["test_accuracy"] == pytest.approx(0.9) and a["val_accuracy"] == pytest.approx(0.85)
    assert a["train_seconds"] == pytest.approx(12.0)
    assert b["runs"] == 1 and b["std"] is None and b["mean"] == b["min"] == b["max"] == pytest.approx(0.6)
    assert summarize_seeds(records, "val")["a"]["mean"] == pytest.approx(0.85)
    # the standard error: each mean's variance over its seeds plus the binomial noise of 200 test images
    binomial = verdict._noise(0.9, 0.6, 200)
    assert verdict.difference_se(a, b, "test", 200) == pytest.approx(math.sqrt(0.1 ** 2 / 3 + binomial ** 2))
    text = verdict.verdict_text(records[:4] + [_run("b", 0.62, 1)], "ranking", "b", "test", 200)
    assert "means over 3 and 2 seeds" in text and "counting seed variance and the noise of 200 test images" in text
    assert verdict.verdict_text([_run("a", 0.9, 0), _run("b", 0.6, 0)], "ranking", "b", "test", 200).endswith(
        "1 seed each: the spread over seeds is not measured (--seeds 3 measures it).")


def test_the_default_number_of_seeds() -> None:
    assert config.default_seeds(300, 2, 20.0)[0] == 3  # small data, 6 runs at 20 s fit in 8 minutes
    # flowers-mini: its derived budget is the 60 s floor; 6 runs would take 8.5 minutes, 4 take 5.7
    assert config.default_seeds(270, 2, 60.0, pass_seconds=5.0)[0] == 2
    seeds, why = config.default_seeds(900, 2, 153.0, pass_seconds=21.0)  # flowers5 at its unshrunk budget
    assert seeds == 1 and "--seeds 2" in why
    assert config.default_seeds(40_000, 2, 20.0)[0] == 1  # large data
    assert config.default_seeds(300, 2, None)[0] == 1  # --epochs or until the plateau: time unknown
    # the passes over every image beside the budget count: digits through Lite2 at 260 px at --budget 3 ran
    # 6 runs past a 2-minute limit when only the budget and a fixed overhead were reckoned
    assert config.default_seeds(1293, 2, 3.0)[0] == 3
    assert config.default_seeds(1293, 2, 3.0, pass_seconds=40.0)[0] == 1
    # ... and passes that outlast the budget are not repeated however much room the wall leaves (digits through
    # Lite2 at --budget 3: 6 runs went on for minutes)
    seeds, why = config.default_seeds(1293, 2, 3.0, pass_seconds=5.0)
    assert seeds == 1 and "a repeat would measure mostly that" in why


def test_a_derived_budget_shrinks_so_that_a_spread_fits() -> None:
    """On small data the budget gives way to MIN_SPREAD_SEEDS seeds in SEEDS_WALL_SECONDS, never below the
    floor; large data, and a budget that already leaves room, keep theirs."""
    from imgclf.defaults import MIN_SPREAD_SEEDS, RUN_OVERHEAD_SECONDS, SEEDS_WALL_SECONDS

    shrunk = config.room_for_seeds(153.0, 900, 2, 21.0)  # flowers5: 10 passes at 59 img/s
    assert shrunk == round(SEEDS_WALL_SECONDS / (2 * MIN_SPREAD_SEEDS) - RUN_OVERHEAD_SECONDS - 21.0) < 153.0
    assert config.default_seeds(900, 2, shrunk, pass_seconds=21.0)[0] == MIN_SPREAD_SEEDS
    assert config.room_for_seeds(153.0, 45_000, 2, 21.0) == 153.0  # large data: 1 seed, the whole budget
    assert config.room_for_seeds(60.0, 270, 2, 5.0) == 60.0  # already fits
    assert config.room_for_seeds(200.0, 900, 2, 90.0) == 200.0  # room only below the floor: 1 seed, all of it
    assert config.room_for_seeds(200.0, 900, 1, 120.0) == 200.0  # room (100 s) only below the passes (120 s)


def test_compare_plan_measures_only_what_it_decides() -> None:
    """The plan times the machine only when a budget or seed count is left open, derives the budget from the
    measured rate within BUDGET_RANGE, and never repeats an unbudgeted run."""
    from imgclf.config import TrainConfig, plan_compare
    from imgclf.defaults import BUDGET_RANGE

    calls: list[int] = []

    def measure() -> tuple[int, int, float]:
        calls.append(1)
        return 300, 400, 20.0  # 300 training images at 20 img/s: 10 passes = 150 s

    base = TrainConfig(data="digits")
    given = plan_compare(base, 30.0, 2, 2, 300, measure)
    assert (given.budget, given.seeds, given.budget_derived, calls) == (30.0, 2, False, [])
    derived = plan_compare(base, None, None, 2, 300, measure)
    # 10 passes = 150 s, shrunk so that 2 seeds of both runs fit beside a 20 s pass over the 400 images
    assert derived.budget == 80.0 and derived.seeds == 2 and derived.budget_derived and derived.stopping == "budget"
    assert calls == [1]
    assert plan_compare(base, None, 1, 2, 300, measure).budget == 150.0  # --seeds given: the budget stands
    assert plan_compare(base, None, None, 2, 30, lambda: (30, 40, 1e6)).budget == BUDGET_RANGE[0]
    plateau = plan_compare(base.replace(early_stop_patience=3), None, None, 2, 300, measure)
    assert (plateau.stopping, plateau.budget, plateau.seeds) == ("plateau", None, 1)
    assert plan_compare(base.replace(epochs=3), None, 5, 2, 300, measure).stopping == "epochs"


def test_seeds_repeat_exactly_on_one_split(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=12, splits=True)
    variants = tmp_path / "v.yaml"
    variants.write_text("plain: {}\nsmooth:\n  label_smoothing: 0.3\n")

    def run(out: Path) -> dict[str, Any]:
        assert main(["compare", "--data", str(data), "--model", "tiny", "--epochs", "2", "--batch-size", "16",
                     "--lr", "0.05", "--device", "cpu", "--quiet", "--out", str(out), "--variants", str(variants),
                     "--seeds", "2", "--seed", "5"]) == 0
        return json.loads((out / "comparison.json").read_text())

    first, again = run(tmp_path / "one"), run(tmp_path / "two")
    assert [r["name"] for r in first["runs"]] == ["plain_s5", "plain_s6", "smooth_s5", "smooth_s6"]
    assert first["seeds"] == [5, 6] and first["split_seed"] == 5
    for key in ("val_accuracy", "test_accuracy", "epochs_run"):
        assert [r[key] for r in first["runs"]] == [r[key] for r in again["runs"]], key
    runs = {r["name"]: Path(r["run_dir"]) for r in first["runs"]}
    # the training seed changes training, not the images: same split, different losses
    losses = [[row["train_loss"] for row in read_history(runs[n] / "history.csv")] for n in ("plain_s5", "plain_s6")]
    assert losses[0] != losses[1]
    labels = [np.load(runs[n] / "predictions_val.npz")["labels"] for n in ("plain_s5", "plain_s6")]
    assert np.array_equal(*labels) and len({r["train_images"] for r in first["runs"]}) == 1
    config = (runs["plain_s6"] / "config.yaml").read_text()
    assert "seed: 6" in config and "split_seed: 5" in config

    summary = first["summary"]["plain"]
    assert summary["runs"] == 2 and summary["values"] == [r["test_accuracy"] for r in first["runs"][:2]]
    assert summary["std"] == pytest.approx(float(np.std(summary["values"], ddof=1)))
    assert set(first["estimates"]) == {"plain", "smooth"}
    assert all({"2x", "4x", "note"} <= set(e) for e in first["estimates"].values())
    assert "2 seeds each" in first["verdict"]
    report = (tmp_path / "one" / "report.md").read_text()
    assert "2 seeds each" in report and "## How sure" in report and "## What more time buys" in report
    assert "![time curves](figures/time_curves.png)" in report and "estimate" in report
    assert (tmp_path / "one" / "figures" / "time_curves.png").is_file()
    assert "figures/time_curves.png" not in (tmp_path / "one" / "report.html").read_text()  # embedded, not linked


def test_estimates_from_a_run_directory(tmp_path: Path) -> None:
    """A staged fine-tuning run's history starts after its head phase; the points count that phase's seconds."""
    run = tmp_path / "runs" / "finetune"
    run.mkdir(parents=True)
    t = np.geomspace(2.0, 40.0, 8)
    acc = _truth(0.9, 0.5, 0.7, t + 20.0)
    rows = "\n".join(f"{i + 1},{s:.4f},{v:.6f}" for i, (s, v) in enumerate(zip(t, acc, strict=True)))
    (run / "history.csv").write_text(f"epoch,seconds,val_acc\n{rows}\n")
    (run / "metrics.json").write_text(json.dumps({"staged": {"seconds": 20.0}}))
    points = curves.run_points(run)
    assert [p[0] for p in points] == pytest.approx(list(t + 20.0), abs=1e-3)
    rows = curves.history_rows(run)  # what the learning-curve panel draws: the same clock, the other columns kept
    assert [r["seconds"] for r in rows] == [p[0] for p in points]
    assert [r["epoch"] for r in rows] == list(range(1, 9)) and [r["val_acc"] for r in rows] == [p[1] for p in points]
    summary = {"variant": "finetune", "run_names": ["finetune"], "train_seconds": 60.0, "val_accuracy": acc[-1]}
    est = curves.time_estimates(tmp_path, [summary], 60.0)["finetune"]
    assert est["points"] == 8 and est["fit"]["method"] == "power"
    assert est["2x"] == pytest.approx(float(_truth(0.9, 0.5, 0.7, 120.0)), abs=2e-3)
    assert "floor" not in est
    # a plan that left layer groups frozen: more time would unfreeze more, so its estimate is a floor
    (run / "metrics.json").write_text(json.dumps({"staged": {"seconds": 20.0, "unfreeze_groups": 0, "groups": 5}}))
    floor = curves.time_estimates(tmp_path, [summary], 60.0)["finetune"]
    assert floor["floor"] and "unfroze 0 of 5 layer groups" in floor["note"]
    assert floor["2x"] == pytest.approx(est["2x"])
    assert "finetune's estimate is a floor" in curves.crossing_text(
        {"finetune": floor, "scratch": {**est, "measured_val_accuracy": 0.5}})
    # head-phase points in metrics.json do not enter a curve the epochs alone can fit ...
    head = {"head": {"curve": [[2.0, 0.5], [4.0, 0.6], [8.0, 0.65], [16.0, 0.7]]}}
    (run / "metrics.json").write_text(json.dumps({"staged": {"seconds": 20.0, **head}}))
    assert curves.time_estimates(tmp_path, [summary], 60.0)["finetune"]["points"] == 8
    (run / "history.csv").write_text("epoch,seconds,val_acc\n1,24.6,0.73\n")  # what a 60 s Lite2 run logs
    # ... and carry one that has too few epochs (CIFAR-10 fine-tuned on a CPU: one)
    with_head = curves.time_estimates(tmp_path, [summary], 60.0)["finetune"]
    assert with_head["points"] == 5 and with_head["fit"] is not None and with_head["first_seconds"] == 2.0
    (run / "metrics.json").write_text(json.dumps({"staged": {"seconds": 20.0}}))
    one = curves.time_estimates(tmp_path, [summary], 60.0)["finetune"]
    assert one["2x"] is None and one["fit"] is None and "1 epoch per run" in one["note"]
