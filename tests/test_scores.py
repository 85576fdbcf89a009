"""Per-class precision, recall and F1, macro-F1, balanced accuracy and top-5 accuracy, checked by hand, in
`evaluate`'s summary and in a run's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.evaluation.metrics import SCORE_KEYS, summarize
from imgclf.evaluation.scores import class_report, top_k_accuracy

# true a a a b b c, predicted a a b b c c; class d neither present nor predicted
LABELS, PRED, CLASSES = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c", "d"]


def test_class_report_by_hand() -> None:
    report = class_report(LABELS, PRED, CLASSES)
    # a: 2 of 3 found, nothing wrongly called a; b: 1 of 2 found, 1 of 2 calls right; c: 1 of 1, 1 of 2 calls
    expected = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1), "d": (0, 0, 0, 0)}
    for name, (precision, recall, f1, support) in expected.items():
        got = report["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1))
        assert got["support"] == support
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # d, absent from this split, is left out
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_top5_accuracy_by_hand() -> None:
    logits = np.tile(np.arange(7, 0, -1, dtype=np.float32), (3, 1))  # class 0 ranks first, class 6 last
    assert top_k_accuracy(np.array([0, 4, 5]), logits) == pytest.approx(2 / 3)  # ranks 1 and 5 in, 6 out
    assert top_k_accuracy(np.array([0, 1]), logits[:2, :5]) is None  # five classes: every label is in the top 5


def test_summarize_carries_the_scores() -> None:
    logits = torch.nn.functional.one_hot(torch.from_numpy(PRED), 4).float()
    result = summarize(logits, torch.from_numpy(LABELS), CLASSES)
    assert result["accuracy"] == pytest.approx(4 / 6) and result["top5_accuracy"] is None
    assert result["macro_f1"] == pytest.approx(class_report(LABELS, PRED, CLASSES)["macro_f1"])
    assert result["per_class_accuracy"] == {c: s["recall"] for c, s in result["per_class"].items()}
    assert result["confusion_matrix"][1] == [0, 1, 1, 0]
    json.dumps(result)  # plain JSON types throughout


def test_metrics_json_has_the_scores_of_each_split(checkpoint: Path) -> None:
    metrics = json.loads((checkpoint.parent.parent / "metrics.json").read_text())
    for split in ("val", "test"):
        assert {f"{split}_{key}" for key in SCORE_KEYS} <= set(metrics)
        assert 0 <= metrics[f"{split}_macro_f1"] <= 1 and 0 <= metrics[f"{split}_balanced_accuracy"] <= 1
        assert metrics[f"{split}_top5_accuracy"] is None  # three classes
    per_class = metrics["test_per_class"]
    assert list(per_class) == ["class_0", "class_1", "class_2"]
    assert {c: s["recall"] for c, s in per_class.items()} == pytest.approx(metrics["per_class_test_accuracy"])
