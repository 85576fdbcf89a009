"""A report as a list of blocks, rendered twice: Markdown with the figures as PNG files beside it, and one
self-contained HTML file with every PNG embedded as a data URI (so it can be mailed or archived alone).

Text in blocks may use the two Markdown inline forms `code` and **bold**; both renderings honour them.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

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
    """Blocks of a report; `figure` saves PNGs under `folder/figures/` as it goes.

    A new document first removes the PNGs a previous report left there: this one may draw fewer, and the
    folder must hold only the figures its report shows.
    """

    title: str
    folder: Path
    subtitle: str = ""
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        figure_dir = self.folder / "figures"
        if figure_dir.is_dir():
            for old in figure_dir.glob("*.png"):
                old.unlink()

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
