"""`imgclf report RUN_DIR`: learning curves, a diagnosis in words, errors, top losses and calibration.

The report is written once as a list of blocks (`Document`) and rendered twice: Markdown with the
figures as files under RUN_DIR/figures, and one self-contained HTML file with every PNG embedded as a
data URI (so it can be mailed or archived alone). Whatever the run directory lacks (a NumPy-network
run has no checkpoints or LR schedule) is named in the report instead of failing it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from imgclf.errors import UserError
from imgclf.evaluation import calibration as cal
from imgclf.evaluation.diagnosis import Diagnosis, diagnose, read_history
from imgclf.fileio import write_text
from imgclf.reporting import figures as figs

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")

CSS = """
:root { --ink:#1f2328; --muted:#656d76; --line:#d8dee4; --bg:#f6f8fa; --accent:#3563a8; }
* { box-sizing: border-box; }
body { font-family: -apple-system, 'Segoe UI', 'DejaVu Sans', Helvetica, Arial, sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 28px 24px 60px; line-height: 1.5; font-size: 15px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.subtitle { color: var(--muted); margin: 0 0 18px; }
p.note { color: var(--muted); font-size: 13.5px; }
code { background: var(--bg); padding: 1px 5px; border-radius: 4px; font-size: 13px; }
pre { background: var(--bg); padding: 12px; border-radius: 6px; overflow-x: auto; font-size: 12.5px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 140px; background: #fff; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; }
.callout { border-left: 5px solid var(--accent); background: var(--bg); padding: 12px 16px; border-radius: 4px;
           margin: 12px 0; }
.callout.overfitting { border-color: #c0392b; background: #fdf1f0; }
.callout.underfitting { border-color: #b8860b; background: #fdf8ec; }
.callout.well-fit, .callout.good { border-color: #2e8b57; background: #eff8f2; }
.callout.missing { border-color: #8c8c8c; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 4px; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px; text-align: left; }
th { background: var(--bg); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
ul { padding-left: 22px; }
details summary { cursor: pointer; color: var(--accent); }
"""


def inline_html(text: str) -> str:
    """Escape, then allow the two Markdown inline forms reports use: `code` and **bold**."""
    out = html.escape(text, quote=False)
    out = _INLINE_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def _cell(tag: str, numeric: bool, content: Any) -> str:
    cls = ' class="num"' if numeric else ""
    return f"<{tag}{cls}>{inline_html(str(content))}</{tag}>"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class Document:
    """Blocks of a report; `figure` saves PNGs under `folder/figures/` as it goes."""

    title: str
    folder: Path
    subtitle: str = ""
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figure_paths: list[Path] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def callout(self, text: str, kind: str = "") -> None:
        """A highlighted box (kind: overfitting | underfitting | well-fit | good | missing)."""
        self.blocks.append(("callout", (kind, text)))

    def cards(self, items: list[tuple[str, str]]) -> None:
        """Key numbers shown big at the top (label, value)."""
        self.blocks.append(("cards", list(items)))

    def table(self, header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> None:
        """`numeric`: column indexes to right-align."""
        self.blocks.append(("table", (header, rows, numeric or set())))

    def code(self, text: str, summary: str | None = None) -> None:
        self.blocks.append(("code", (summary, text)))

    def figure(self, name: str, fig: Figure, caption: str) -> Path:
        path = figs.save(fig, self.folder / "figures" / f"{name}.png")
        self.figure_paths.append(path)
        self.blocks.append(("figure", (path, caption)))
        return path

    # -- rendering -----------------------------------------------------------------------------------------

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.subtitle:
            lines += [f"_{self.subtitle}_", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                lines += ["#" * level + " " + text, ""]
            elif kind in ("paragraph", "note"):
                lines += [value if kind == "paragraph" else f"_{value}_", ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in value] + [""]
            elif kind == "callout":
                lines += [f"> {line}" if line else ">" for line in value[1].splitlines()] + [""]
            elif kind == "cards":
                lines += [" · ".join(f"**{label}:** {val}" for label, val in value), ""]
            elif kind == "table":
                header, rows, numeric = value
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif kind == "code":
                summary, text = value
                if summary:
                    lines += [f"**{summary}**", ""]
                lines += ["```", text.rstrip(), "```", ""]
            elif kind == "figure":
                path, caption = value
                rel = path.relative_to(self.folder).as_posix()
                lines += [f"![{path.stem.replace('_', ' ')}]({rel})", "", caption, ""]
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self) -> str:
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{html.escape(self.title)}</title>", f"<style>{CSS}</style>", "</head><body>",
                 f"<h1>{inline_html(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{inline_html(self.subtitle)}</p>')
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                anchor = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
                parts.append(f'<h{level} id="{anchor}">{inline_html(text)}</h{level}>')
            elif kind == "paragraph":
                parts.append(f"<p>{inline_html(value)}</p>")
            elif kind == "note":
                parts.append(f'<p class="note">{inline_html(value)}</p>')
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in value) + "</ul>")
            elif kind == "callout":
                css_kind, text = value
                body = "<br>".join(inline_html(line) for line in text.splitlines())
                parts.append(f'<div class="callout {html.escape(css_kind)}">{body}</div>')
            elif kind == "cards":
                cards = "".join(f'<div class="card"><div class="label">{inline_html(label)}</div>'
                                f'<div class="value">{inline_html(val)}</div></div>' for label, val in value)
                parts.append(f'<div class="cards">{cards}</div>')
            elif kind == "table":
                header, rows, numeric = value

                head = "".join(_cell("th", i in numeric, h) for i, h in enumerate(header))
                body = "".join("<tr>" + "".join(_cell("td", i in numeric, c) for i, c in enumerate(row)) + "</tr>"
                               for row in rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "code":
                summary, text = value
                pre = f"<pre>{html.escape(text)}</pre>"
                parts.append(f"<details><summary>{html.escape(summary)}</summary>{pre}</details>" if summary else pre)
            elif kind == "figure":
                path, caption = value
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(path.stem.replace("_", " "))}" '
                             f'src="data:image/png;base64,{data}"><figcaption>{inline_html(caption)}</figcaption>'
                             "</figure>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, stem: str = "report") -> Path:
        """Write `stem`.md and `stem`.html into the folder; returns the HTML path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.folder / f"{stem}.md", self.to_markdown())
        out = self.folder / f"{stem}.html"
        write_text(out, self.to_html())
        return out


# -- reading a run directory -------------------------------------------------------------------------------

@dataclass
class RunArtifacts:
    """What a run directory holds; absent parts are None (or empty) and named in `missing`."""

    run_dir: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    classes: list[str] | None
    lr_steps: tuple[np.ndarray, np.ndarray] | None
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]
    missing: list[str]


def _read_json(path: Path, missing: list[str], why: str) -> Any:
    if not path.is_file():
        missing.append(f"`{path.name}` ({why})")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        missing.append(f"`{path.name}` is unreadable ({why})")
        return None


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as data:
            logits, labels = np.asarray(data["logits"], dtype=np.float32), np.asarray(data["labels"]).astype(np.int64)
    except (OSError, KeyError, ValueError):
        return None
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels) or len(labels) == 0:
        return None
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        return None
    return logits, labels


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read everything the report can use; refuse only a folder that is not a run at all."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"run directory not found: {root}")
    if not (root / "history.csv").is_file() and not (root / "metrics.json").is_file():
        raise UserError(f"{root} is not a run directory (no history.csv or metrics.json)")
    missing: list[str] = []
    config: dict[str, Any] = {}
    if (root / "config.yaml").is_file():
        try:
            config = yaml.safe_load((root / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            missing.append("`config.yaml` is unreadable (advice stays generic)")
        if not isinstance(config, dict):
            config = {}
    else:
        missing.append("`config.yaml` (advice stays generic)")
    history: list[dict[str, Any]] = []
    if (root / "history.csv").is_file():
        history = read_history(root / "history.csv")
    else:
        missing.append("`history.csv` (no learning curves and no diagnosis)")
    metrics = _read_json(root / "metrics.json", missing, "no summary numbers") or {}
    classes = _read_json(root / "classes.json", missing, "classes are shown by number")
    lr_steps = None
    lr_path = root / "lr_schedule.csv"
    if lr_path.is_file():
        try:
            table = np.loadtxt(lr_path, delimiter=",", skiprows=1, ndmin=2)
            if table.size:
                lr_steps = (table[:, 0], table[:, 1])
        except ValueError:
            pass
    if lr_steps is None:
        missing.append("`lr_schedule.csv` (the schedule is shown per epoch from history.csv)"
                       if history and "lr" in history[0] else "`lr_schedule.csv` (no learning-rate plot)")
    predictions = {}
    for split in ("test", "val"):
        path = root / f"predictions_{split}.npz"
        if path.is_file():
            got = _read_predictions(path)
            if got is None:
                missing.append(f"`{path.name}` is unreadable or inconsistent")
            else:
                predictions[split] = got
    if not predictions:
        missing.append("`predictions_test.npz` / `predictions_val.npz` (no confusion matrix, per-class scores, "
                       "top losses or calibration)")
    elif "test" not in predictions:
        missing.append("`predictions_test.npz` (errors and calibration are shown on the validation split)")
    if (root / "model.npz").is_file():
        pass  # a NumPy-network run: its weights live in model.npz, and torch checkpoints do not apply
    elif not (root / "checkpoints" / "last.pt").is_file():
        missing.append("`checkpoints/last.pt` (this run cannot be resumed, evaluated or exported)")
    if classes is not None and not isinstance(classes, list):
        classes = None
    return RunArtifacts(root, config, history, metrics, classes, lr_steps, predictions, missing)


def split_images(config: dict[str, Any], split: str, labels: np.ndarray,
                 index: np.ndarray) -> tuple[list[np.ndarray] | None, str | None]:
    """The images at `index` of the run's `split`, re-read through the decode cache; or (None, why not).

    The saved labels must match the split exactly, so a changed dataset can never put wrong images
    beside the predictions.
    """
    from imgclf.config import FIELD_NAMES, from_dict
    from imgclf.data.decode import decode_image
    from imgclf.data.imageset import FileSet
    from imgclf.data.photos import working_side
    from imgclf.models import model_entry
    from imgclf.training.run import load_data

    values = {k: v for k, v in config.items() if k in FIELD_NAMES}
    if "data" not in values:
        return None, "config.yaml does not name the data, so the images cannot be shown"
    try:
        cfg = from_dict(values).replace(subset=None, train_fraction=1.0)
        try:
            model_entry(cfg.model)
        except UserError:
            cfg = cfg.replace(model="tiny", pretrained=False, weights=None)
        splits = load_data(cfg)
    except UserError as exc:
        return None, f"the images could not be re-read ({exc})"
    except Exception as exc:  # noqa: BLE001 - the report must not die on a moved or broken dataset
        return None, f"the images could not be re-read ({exc.__class__.__name__}: {exc})"
    part = getattr(splits, split, None)
    if part is None:
        return None, f"the data has no {split} split any more"
    if len(part) != len(labels) or not np.array_equal(np.asarray(part.labels), labels):
        return None, f"the {split} split of {cfg.data} no longer matches the saved predictions"
    if isinstance(part, FileSet):
        return [decode_image(part.paths[i], working_side(part.image_size)) for i in index], None
    return [part.images[i] for i in index], None


# -- the report --------------------------------------------------------------------------------------------

def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def per_sample_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of every sample (float64, stable log-softmax)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def per_class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows true); 0 where undefined."""
    cm = np.asarray(confusion, dtype=float)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1, actual.astype(int)


def confused_pairs(confusion: np.ndarray, top: int = 8) -> list[tuple[int, int, int, float]]:
    """Off-diagonal cells, largest first: (true, predicted, count, share of the true class)."""
    cm = np.asarray(confusion)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1]
    pairs = []
    for flat in order[:top]:
        i, j = np.unravel_index(flat, cm.shape)
        if off[i, j] == 0:
            break
        pairs.append((int(i), int(j), int(off[i, j]), float(off[i, j] / max(cm[i].sum(), 1))))
    return pairs


def write_report(run_dir: str | Path, top_k: int = 18) -> Path:
    """Write RUN_DIR/report.html (self-contained), RUN_DIR/report.md and RUN_DIR/figures/*.png."""
    run = load_run(run_dir)
    figure_dir = run.run_dir / "figures"
    if figure_dir.is_dir():
        for old in figure_dir.glob("*.png"):  # a previous report's figures; this one may draw fewer
            old.unlink()
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
    if m.get("best_epoch"):
        cards.append(("best epoch", f"{m['best_epoch']} of {m.get('epochs_run', len(run.history))}"))
    if m.get("train_seconds") is not None:
        cards.append(("training time", _seconds(m["train_seconds"])))
    if m.get("images_per_second"):
        cards.append(("throughput", f"{m['images_per_second']:,.0f} img/s"))
    doc.cards([c for c in cards if c[1] != "n/a"] or [("status", "no metrics")])

    diagnosis = diagnose(run.history, cfg) if run.history else None
    _diagnosis_section(doc, diagnosis)
    _curves_section(doc, run, diagnosis)
    split = "test" if "test" in run.predictions else "val" if "val" in run.predictions else None
    if split is not None:
        logits, labels = run.predictions[split]
        classes = _class_names(run.classes, logits.shape[1])
        _errors_section(doc, logits, labels, classes, split)
        _top_losses_section(doc, run, logits, labels, classes, split, top_k)
        _calibration_section(doc, run, logits, labels, split)
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


def _diagnosis_section(doc: Document, diagnosis: Diagnosis | None) -> None:
    doc.heading("Diagnosis")
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
    confusion = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
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

    precision, recall, f1, support = per_class_scores(confusion)
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
    probs = cal.softmax(logits[index])
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


def _calibration_section(doc: Document, run: RunArtifacts, logits: np.ndarray, labels: np.ndarray,
                         split: str) -> None:
    doc.heading("Calibration")
    rel = cal.reliability(cal.softmax(logits), labels)
    text = cal.describe(rel)
    smoothing = float(run.config.get("label_smoothing", 0) or 0)
    if smoothing and rel.mean_confidence < rel.accuracy_overall - 0.02:
        text += (f" Part of this is by design: label smoothing ({smoothing:g}) trains the model never to be "
                 "fully sure.")
    temperature = ece_after = None
    if "val" in run.predictions:
        val_logits, val_labels = run.predictions["val"]
        if val_logits.shape[1] == logits.shape[1]:
            temperature = cal.fit_temperature(val_logits, val_labels)
            ece_after = cal.expected_calibration_error(logits, labels, temperature=temperature)
            same = " (fitted and measured on the same split, so optimistic)" if split == "val" else ""
            direction = "softening" if temperature > 1 else "sharpening"
            text += (f" Temperature scaling fitted on the validation logits (T = {temperature:.2f}, "
                     f"{direction} the probabilities) would bring the ECE to {100 * ece_after:.1f} points{same}"
                     " without changing a single prediction.")
    doc.figure("reliability", figs.reliability_diagram(rel.edges, rel.confidence, rel.accuracy, rel.counts, rel.ece,
                                                       ece_after, temperature),
               "Bars: the accuracy of the predictions in each confidence bin; on the dashed diagonal, confidence "
               "would equal accuracy. Red hatching is the gap. Below: how many predictions fall in each bin.")
    doc.paragraph(text)
