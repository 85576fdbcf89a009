"""`imgclf report RUN_DIR`: learning curves, a diagnosis in words, errors, top losses, Grad-CAM heatmaps and
calibration.

The report reads only what the run directory holds (`rundir.load_run`), names whatever it lacks instead
of failing, and is written as a `Document`: RUN_DIR/report.md with figures under RUN_DIR/figures, and a
self-contained RUN_DIR/report.html. A comparison's folder (it holds comparison.json) gets the
comparison report instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from imgclf.defaults import REPORT_TARGET_ACCURACIES
from imgclf.evaluation import calibration as cal
from imgclf.evaluation import selective as sel
from imgclf.evaluation.diagnosis import Diagnosis, diagnose
from imgclf.evaluation.multilabel import DEFAULT_THRESHOLD, multilabel_scores, positives
from imgclf.evaluation.scores import class_scores, confused_pairs, per_sample_loss
from imgclf.mathutil import sigmoid, softmax
from imgclf.reporting import figures as figs
from imgclf.reporting.document import Document
from imgclf.reporting.rundir import RunArtifacts, load_run, split_images


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def write_report(run_dir: str | Path, top_k: int = 18) -> Path:
    """Write RUN_DIR/report.html (self-contained), RUN_DIR/report.md and RUN_DIR/figures/*.png; the
    comparison report where RUN_DIR is a comparison's folder."""
    if (Path(run_dir) / "comparison.json").is_file():
        from imgclf.reporting.comparison import write_comparison_report

        return write_comparison_report(run_dir)
    run = load_run(run_dir)
    m, cfg = run.metrics, run.config
    model = m.get("model") or cfg.get("model") or "model"
    data = str(cfg.get("data", "data"))
    subtitle = [f"{model} on {Path(data).name or data}"]
    if m.get("epochs_run") is not None or run.history:
        subtitle.append(f"{m.get('epochs_run', len(run.history))} epochs")
    if m.get("num_params"):
        subtitle.append(f"{m['num_params']:,} parameters")
    if m.get("device"):
        subtitle.append(str(m["device"]))
    doc = Document(f"Training report: {run.run_dir.resolve().name}", run.run_dir, " · ".join(subtitle))

    cards = [("test accuracy", _pct(m.get("test_accuracy"))), ("val accuracy", _pct(m.get("val_accuracy")))]
    if m.get("task") == "multilabel":  # accuracy is the exact-match ratio there: the strictest of its scores
        cards = [(f"{split} mAP", f"{m[f'{split}_map']:.3f}") for split in ("test", "val") if m.get(f"{split}_map")]
        cards.append(("test exact match", _pct(m.get("test_accuracy"))))
    if m.get("best_epoch"):
        cards.append(("best epoch", f"{m['best_epoch']} of {m.get('epochs_run', len(run.history))}"))
    if m.get("train_seconds") is not None:
        cards.append(("training time", _seconds(m["train_seconds"])))
    if m.get("images_per_second"):
        cards.append(("throughput", f"{m['images_per_second']:,.0f} img/s"))
    doc.cards([c for c in cards if c[1] != "n/a"] or [("status", "no metrics")])

    multilabel = m.get("task") == "multilabel"
    diagnosis = diagnose(run.history, cfg) if run.history and not multilabel else None
    _diagnosis_section(doc, diagnosis, multilabel)
    _curves_section(doc, run, diagnosis)
    split = "test" if "test" in run.predictions else "val" if "val" in run.predictions else None
    if split is not None:
        logits, labels = run.predictions[split]
        classes = _class_names(run.classes, logits.shape[1])
        if labels.ndim == 2:  # multi-label: its scores, thresholds and precision-recall curves instead
            _multilabel_section(doc, run, logits, labels, classes, split)
        else:
            _errors_section(doc, logits, labels, classes, split)
            _top_losses_section(doc, run, logits, labels, classes, split, top_k)
            _gradcam_section(doc, run, logits, labels, classes, split)
            _calibration_section(doc, run, logits, labels, split)
            _reject_section(doc, run, logits, labels, split)
    skipped = m.get("skipped_files") or {}
    if skipped.get("count"):
        doc.heading("Files left out")
        doc.paragraph(f"{skipped['count']} file(s) in the data were not readable images and were skipped; "
                      f"the first {len(skipped['first'])}:")
        doc.bullets([f"`{name}`" for name in skipped["first"]])
    if run.missing:
        doc.heading("What this run directory lacks")
        doc.paragraph("The report shows what it can; these parts were not found:")
        doc.bullets(run.missing)
    if cfg:
        doc.heading("Configuration")
        doc.code(yaml.safe_dump(cfg, sort_keys=False), summary="config.yaml (everything needed to rerun)")
    return doc.write()


def _class_names(classes: list[str] | None, k: int) -> list[str]:
    if classes and len(classes) == k:
        return [str(c) for c in classes]
    return [f"class {i}" for i in range(k)]


def _diagnosis_section(doc: Document, diagnosis: Diagnosis | None, multilabel: bool = False) -> None:
    doc.heading("Diagnosis")
    if multilabel:  # the rules read train and val accuracy, which for multi-label is the exact-match ratio at 0.5
        doc.callout("Over- or underfitting is not judged for a multi-label run: the rules read train and validation "
                    "accuracy, and here accuracy is the exact-match ratio at 0.5, which stays near 0 long after the "
                    "model has learned. Read the loss curves below and the mAP and per-class scores.", "missing")
        return
    if diagnosis is None:
        doc.callout("No history.csv, so over- or underfitting cannot be judged.", "missing")
        return
    kind = diagnosis.verdict.replace(" ", "-")
    doc.callout(f"**{diagnosis.verdict.capitalize()}.** {diagnosis.headline}", kind)
    if diagnosis.evidence:
        doc.heading("Why", 3)
        doc.bullets(diagnosis.evidence)
    if diagnosis.next_steps:
        doc.heading("What to try next", 3)
        doc.bullets(diagnosis.next_steps)


def _curves_section(doc: Document, run: RunArtifacts, diagnosis: Diagnosis | None) -> None:
    if not run.history:
        return
    doc.heading("Learning curves")
    best = run.metrics.get("best_epoch")
    if not best:
        val = [r.get("val_acc", float("nan")) for r in run.history]
        best = int(run.history[int(np.nanargmax(val))].get("epoch", 0)) if np.isfinite(val).any() else None
    smoothing = float(run.config.get("label_smoothing", 0) or 0)
    fig = figs.learning_curves(run.history, best_epoch=best, turn_epoch=diagnosis.turn_epoch if diagnosis else None,
                               label_smoothing=smoothing)
    caption = ("Blue is the training data, orange the validation data. The red band between the accuracy curves "
               "is the generalization gap: the wider it grows, the more the model memorizes instead of "
               "learning what carries over.")
    if diagnosis and diagnosis.turn_epoch:
        caption += f" The dashed line marks epoch {diagnosis.turn_epoch}, after which validation loss rose."
    if smoothing:
        caption += (" Train loss includes label smoothing, so it sits above validation loss even on a "
                    "well-fit run; compare the accuracies for the gap.")
    doc.figure("learning_curves", fig, caption)
    epochs = len(run.history)
    if run.lr_steps is not None:
        steps, lrs = run.lr_steps
        per_epoch = (steps[-1] / epochs) if epochs and len(steps) else None
        doc.figure("lr_schedule", figs.lr_schedule(steps, lrs, per_epoch),
                   f"The learning rate at each of the {len(steps):,} optimizer steps "
                   f"(peak {max(lrs):.3g}, final {lrs[-1]:.3g}).")
    elif "lr" in run.history[0]:
        epoch_axis = [r["epoch"] for r in run.history]
        lrs = [r["lr"] for r in run.history]
        doc.figure("lr_schedule", figs.lr_schedule(epoch_axis, lrs, None, xlabel="epoch"),
                   "The learning rate at the end of each epoch (no per-step record in this run).")


def _errors_section(doc: Document, logits: np.ndarray, labels: np.ndarray, classes: list[str], split: str) -> None:
    k = len(classes)
    pred = logits.argmax(axis=1)
    scores = class_scores(labels, pred, k)
    confusion = scores.confusion
    accuracy = float((pred == labels).mean())
    doc.heading(f"Where the model errs ({split} split)")
    doc.paragraph(f"On the {len(labels):,} {split} images the model is right {_pct(accuracy)} of the time "
                  f"({int((pred != labels).sum()):,} mistakes).")
    pairs = confused_pairs(confusion)
    caption = "Each row is a true class; the cells say where its images went. Off-diagonal numbers are mistakes."
    if pairs:
        i, j, count, share = pairs[0]
        caption += (f" The largest confusion: {_pct(share, 0)} of **{classes[i]}** images ({count}) were called "
                    f"**{classes[j]}**.")
    doc.figure("confusion_matrix", figs.confusion_matrix(confusion, classes), caption)

    precision, recall, f1, support = scores.precision, scores.recall, scores.f1, scores.support
    order = np.argsort(f1)
    if f1[order[-1]] - f1[order[0]] < 0.005:
        text = f"Every class scores about the same (F1 {f1.mean():.2f})."
    else:
        text = (f"The hardest class is **{classes[order[0]]}** (F1 {f1[order[0]]:.2f}), the easiest "
                f"**{classes[order[-1]]}** (F1 {f1[order[-1]]:.2f}).")
    text += (" Precision: of the images called this class, the share that were; recall: of the images of "
             "this class, the share found; F1 combines the two.")
    doc.figure("per_class_scores", figs.per_class_scores(classes, precision, recall, f1), text)
    rows = [[classes[c], f"{precision[c]:.3f}", f"{recall[c]:.3f}", f"{f1[c]:.3f}", int(support[c])]
            for c in range(k)]
    macro = [f"{np.mean(precision):.3f}", f"{np.mean(recall):.3f}", f"{np.mean(f1):.3f}", int(np.sum(support))]
    doc.table(["class", "precision", "recall", "F1", "images"], rows + [["**macro average**", *macro]],
              numeric={1, 2, 3, 4})
    if pairs:
        doc.heading("Most-confused class pairs", 3)
        symmetric = _symmetric_note(pairs, confusion, classes)
        doc.table(["true class", "predicted as", "images", "share of the true class"],
                  [[classes[i], classes[j], count, _pct(share)] for i, j, count, share in pairs],
                  numeric={2, 3})
        if symmetric:
            doc.paragraph(symmetric)


def _multilabel_section(doc: Document, run: RunArtifacts, logits: np.ndarray, labels: np.ndarray,
                        classes: list[str], split: str) -> None:
    """A multi-label run: mAP and F1 at each class's threshold (chosen on validation; metrics.json keeps them), the
    threshold table and each class's precision-recall curve with the point its threshold picks."""
    from sklearn.metrics import precision_recall_curve

    probs, y = sigmoid(logits), positives(labels)
    kept = run.metrics.get("thresholds") or {}
    thresholds = np.asarray([kept.get(c, DEFAULT_THRESHOLD) for c in classes], dtype=np.float64)
    found = multilabel_scores(probs, labels, classes, thresholds)
    doc.heading(f"Multi-label scores ({split} split)")
    doc.paragraph(
        f"On the {len(labels):,} {split} images ({y.sum(1).mean():.2f} labels an image): mAP "
        f"{found['map'] or 0:.3f}, micro-F1 {found['micro_f1']:.3f}, macro-F1 {found['macro_f1'] or 0:.3f}, and "
        f"{_pct(found['exact_match'])} of the images get exactly their labels. A class is answered where its "
        "probability reaches its threshold, chosen on the validation split to give that class its best F1"
        + ("." if kept else "; this run kept none, so every class uses 0.5."))
    rows = [[c, f"{s['threshold']:.3f}", "n/a" if s["ap"] is None else f"{s['ap']:.3f}", f"{s['precision']:.3f}",
             f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"]] for c, s in found["per_class"].items()]
    doc.table(["class", "threshold", "AP", "precision", "recall", "F1", "images"], rows, numeric={1, 2, 3, 4, 5, 6})
    curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]] = {}
    for i, c in enumerate(classes):
        precision, recall, _ = precision_recall_curve(y[:, i], probs[:, i]) if y[:, i].any() else ([], [], [])
        curves[c] = (np.asarray(recall), np.asarray(precision), found["per_class"][c]["ap"])
    points = {c: (s["recall"], s["precision"]) for c, s in found["per_class"].items()}
    doc.figure("precision_recall", figs.precision_recall_curves(curves, points, split),
               "Each class's precision against its recall as its threshold sweeps from 1 down to 0; the dot is the "
               "threshold chosen on validation. Area under the curve is the class's average precision (AP).")


def _symmetric_note(pairs: list[tuple[int, int, int, float]], confusion: np.ndarray, classes: list[str]) -> str:
    i, j, count, _ = pairs[0]
    back = int(confusion[j, i])
    if back >= 0.5 * count and back > 0:
        return (f"**{classes[i]}** and **{classes[j]}** are confused both ways ({count} and {back} images): the "
                "model has not found what tells them apart. More images of both, or a pretrained backbone, "
                "usually helps more than tuning.")
    return ""


def _top_losses_section(doc: Document, run: RunArtifacts, logits: np.ndarray, labels: np.ndarray,
                        classes: list[str], split: str, top_k: int) -> None:
    losses = per_sample_loss(logits, labels)
    index = np.argsort(losses)[::-1][:top_k]
    doc.heading(f"Highest-loss {split} images")
    images, why_not = split_images(run.config, split, labels, index)
    probs = softmax(logits[index])
    preds = probs.argmax(axis=1)
    if images is None:
        doc.note(f"Not shown: {why_not}.")
        rows = [[int(i), classes[labels[i]], classes[p], _pct(float(pr.max()), 0), f"{losses[i]:.2f}"]
                for i, p, pr in zip(index[:10], preds, probs, strict=False)]
        doc.table(["index", "true", "predicted", "confidence", "loss"], rows, numeric={0, 3, 4})
        return
    titles = [(classes[labels[i]], classes[p], float(pr.max()), float(losses[i]))
              for i, p, pr in zip(index, preds, probs, strict=True)]
    wrong = [(labels[i], p) for i, p in zip(index, preds, strict=True) if labels[i] != p]
    caption = (f"The {len(index)} {split} images with the highest loss: confident mistakes first. "
               "Look for wrong labels, ambiguous images and a confusion that repeats.")
    if wrong:
        pair, count = max(((pr, wrong.count(pr)) for pr in set(wrong)), key=lambda t: t[1])
        if count >= 3:
            caption += (f" {count} of them are **{classes[pair[0]]}** taken for **{classes[pair[1]]}**.")
    doc.figure("top_losses", figs.top_losses(images, titles, title=f"Highest-loss {split} images"), caption)


GRADCAM_LOSSES = 12  # highest-loss images explained
GRADCAM_CORRECT = 6  # and a seeded sample of correctly classified ones, for contrast


def _gradcam_section(doc: Document, run: RunArtifacts, logits: np.ndarray, labels: np.ndarray,
                     classes: list[str], split: str) -> None:
    """Grad-CAM overlays of the predicted class on the highest-loss images and on a few right ones, from
    checkpoints/last.pt: the weights that made the saved predictions."""
    checkpoint = run.run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        return  # named under "What this run directory lacks" (a NumPy-network run has none to explain)
    doc.heading("What the model looked at")
    losses = per_sample_loss(logits, labels)
    preds = logits.argmax(axis=1)
    worst = np.argsort(losses, kind="stable")[::-1][:GRADCAM_LOSSES]
    right = np.flatnonzero(preds == labels)
    right = np.sort(np.random.default_rng(0).choice(right, min(GRADCAM_CORRECT, len(right)), replace=False))
    overlays, why_not = _gradcam_overlays(run.config, checkpoint, split, labels, np.concatenate([worst, right]),
                                          preds)
    if overlays is None:
        doc.note(f"Not shown: {why_not}.")
        return
    probs = softmax(logits)
    titles = [(classes[labels[i]], classes[preds[i]], float(probs[i].max()), float(losses[i]))
              for i in np.concatenate([worst, right])]
    explain = ("Grad-CAM: red marks the regions that raised the score of the **predicted** class most, blue "
               "those that did not. ")
    doc.figure("gradcam_top_losses", figs.top_losses(overlays[:len(worst)], titles[:len(worst)],
                                                     title=f"Grad-CAM: highest-loss {split} images"),
               explain + "On a mistake it shows what the wrong class was seen in: a background, a part shared "
                         "with another class, or a second object.")
    if len(right):
        doc.figure("gradcam_correct", figs.top_losses(overlays[len(worst):], titles[len(worst):],
                                                      title=f"Grad-CAM: correctly classified {split} images"),
                   explain + f"{len(right)} correctly classified images picked at random: the heat should sit on "
                             "the object, not on its surroundings.")


def _gradcam_overlays(config: dict[str, Any], checkpoint: Path, split: str, labels: np.ndarray, index: np.ndarray,
                      preds: np.ndarray) -> tuple[list[np.ndarray] | None, str | None]:
    """Overlays (uint8 RGB) of the images at `index`, each explaining its saved prediction; or (None, why)."""
    import torch

    from imgclf.data.photos import Preprocess
    from imgclf.errors import UserError
    from imgclf.evaluation.gradcam import GradCAM, overlay
    from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint

    images, why_not = split_images(config, split, labels, index)
    if images is None:
        return None, why_not
    try:
        ckpt = load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt)
        preprocess = Preprocess.from_checkpoint(ckpt)
        views = torch.stack([preprocess.view(image) for image in images])
        maps, _ = GradCAM(model, preprocess.input_size)(views, preds[index].tolist())
    except UserError as exc:
        return None, f"the checkpoint could not be used ({exc})"
    return [overlay(view, heat) for view, heat in zip(views, maps, strict=True)], None


def _calibration_section(doc: Document, run: RunArtifacts, logits: np.ndarray, labels: np.ndarray,
                         split: str) -> None:
    doc.heading("Calibration")
    rel = cal.reliability(softmax(logits), labels)
    text = cal.describe(rel)
    smoothing = float(run.config.get("label_smoothing", 0) or 0)
    if smoothing and rel.mean_confidence < rel.accuracy_overall - 0.02:
        text += (f" Part of this is by design: label smoothing ({smoothing:g}) trains the model never to be "
                 "fully sure.")
    temperature = _temperature(run, logits.shape[1])
    ece_after = None
    if temperature is not None:
        ece_after = cal.expected_calibration_error(logits, labels, temperature=temperature)
        same = " (fitted and measured on the same split, so optimistic)" if split == "val" else ""
        direction = ("softening the probabilities" if temperature > 1 else "sharpening the probabilities"
                     if temperature < 1 else "the probabilities as they were")
        effect = f"the ECE to {100 * ece_after:.1f} points{same} without changing a single prediction"
        if "temperature" in run.metrics:  # fitted by training: the model applies it
            text += (f" Training fitted a temperature on the validation logits (T = {temperature:.2f}, "
                     f"{direction}), which predict, serve and the exported model apply: it brings {effect}.")
        else:
            text += (f" Temperature scaling fitted on the validation logits (T = {temperature:.2f}, {direction}) "
                     f"would bring {effect}.")
        if run.metrics.get("temperature_note"):
            text += f" ({run.metrics['temperature_note']}.)"
    doc.figure("reliability", figs.reliability_diagram(rel.edges, rel.confidence, rel.accuracy, rel.counts, rel.ece,
                                                       ece_after, temperature),
               "Bars: the accuracy of the predictions in each confidence bin; on the dashed diagonal, confidence "
               "would equal accuracy. Red hatching is the gap. Below: how many predictions fall in each bin.")
    doc.paragraph(text)


def _temperature(run: RunArtifacts, num_classes: int) -> float | None:
    """The temperature training stored (metrics.json), else one fitted on the saved validation logits (runs
    from before training fitted one), else None."""
    if run.metrics.get("temperature"):
        return float(run.metrics["temperature"])
    if "val" in run.predictions and run.predictions["val"][0].shape[1] == num_classes:
        return cal.fit_temperature(*run.predictions["val"])
    return None


def _reject_section(doc: Document, run: RunArtifacts, logits: np.ndarray, labels: np.ndarray, split: str) -> None:
    """Coverage against accuracy on the report's split, with the thresholds `--target-accuracy` would choose on
    the validation split for REPORT_TARGET_ACCURACIES marked, and what each gives on this split."""
    temperature = _temperature(run, logits.shape[1]) or 1.0
    doc.heading("Reject option: coverage against accuracy")
    probs = softmax(logits, temperature)
    curve = sel.selective_curve(probs.max(axis=1), probs.argmax(axis=1) == labels, points=None)
    marks: list[tuple[float, float, str]] = []
    rows: list[list[Any]] = []
    val_curve = None
    if split != "val" and "val" in run.predictions and run.predictions["val"][0].shape[1] == logits.shape[1]:
        val_logits, val_labels = run.predictions["val"]
        val_probs = softmax(val_logits, temperature)
        val = sel.selective_curve(val_probs.max(axis=1), val_probs.argmax(axis=1) == val_labels, points=None)
        val_curve = (val.coverage, val.accuracy)
        for target in REPORT_TARGET_ACCURACIES:
            if target <= val.accuracy[-1]:
                continue  # answering every image already reaches it
            try:
                threshold = sel.threshold_for_accuracy(val, target)
            except ValueError:
                rows.append([_pct(target, 0), "not reached on validation", "", "", ""])
                continue
            coverage, accuracy = sel.kept_at(curve, threshold)
            marks.append((coverage, accuracy, f"--target-accuracy {target:g} (P = {threshold:.3f})"))
            rows.append([_pct(target, 0), f"{threshold:.3f}", _pct(sel.kept_at(val, threshold)[0]), _pct(coverage),
                         _pct(accuracy)])
    text = (f"Answering only when the top probability (at T = {temperature:.2f}) is high enough trades coverage for "
            f"accuracy: answering all {len(labels):,} {split} images, the model is right {_pct(curve.accuracy[-1])} "
            "of the time; moving left, the least confident images are left unanswered (`predict --reject-below P`, "
            "`serve --reject-below P`, or `--target-accuracy A` to choose P on the validation split).")
    if val_curve is None:
        text += " No validation predictions beside these, so no threshold is chosen here."
    doc.figure("coverage_accuracy", figs.coverage_accuracy(curve.coverage, curve.accuracy, split, marks, val_curve),
               text)
    if rows:
        doc.table(["target accuracy", "threshold P (chosen on val)", "val answered", f"{split} answered",
                   f"{split} accuracy when answered"], rows, numeric={1, 2, 3, 4})
        doc.paragraph(f"The thresholds are chosen on the validation split, where the temperature was fitted and the "
                      f"best epoch picked, so the {split} split is the honest check. Images of classes the model "
                      "never saw are not measured here: a threshold rejects them only as far as the model is unsure "
                      "of them.")
