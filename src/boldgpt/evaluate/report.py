"""Reports: a Markdown file and a self-contained HTML page (figures embedded) built
from headings, text, tables and figures.

Numbers go in tables that put every result beside its baselines
(:meth:`Report.comparison`), so nobody reads a loss without knowing what it beats.

    report = Report("boldgpt demo")
    report.text("A micro boldGPT trained for 5 minutes on 2 CPU cores.")
    report.comparison("Validation next-patch loss", {"fixed order": {"model": 0.41,
        "mean map": 0.93, "MaskedPCA": 0.55}}, reference="model")
    report.figure("figures/samples.png", "Samples beside real maps")
    md_path, html_path = report.write("runs/demo")
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boldgpt.utils.io import atomic_write


def format_number(value: Any, digits: int = 4) -> str:
    """Numbers for people: 4 significant digits, ints with thousands separators."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


@dataclass
class Report:
    """An ordered list of blocks rendered to Markdown and HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> Report:
        self.blocks.append(("heading", text))
        return self

    def text(self, markdown: str) -> Report:
        """A paragraph; ``**bold**`` and ```code``` are rendered in HTML too."""
        self.blocks.append(("text", markdown))
        return self

    def bullets(self, items: Sequence[str]) -> Report:
        self.blocks.append(("bullets", list(items)))
        return self

    def code(self, text: str) -> Report:
        """A preformatted block (e.g. a YAML config), shown verbatim."""
        self.blocks.append(("code", text))
        return self

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None
    ) -> Report:
        """A table; numbers are formatted by :func:`format_number`."""
        rows = [[format_number(v) for v in row] for row in rows]
        self.blocks.append(("table", (list(headers), rows, caption)))
        return self

    def comparison(
        self,
        caption: str,
        results: Mapping[str, Mapping[str, float]],
        reference: str,
        relation: str = "ratio",
    ) -> Report:
        """A table with one row per condition (e.g. ``fixed order``) and one column per
        method (the ``reference`` first, then its baselines), plus, for each baseline,
        how it compares with the reference: ``ratio`` (baseline / reference, for losses:
        above 1 means the reference is better) or ``difference`` (reference - baseline,
        for scores such as R^2 that can be near zero or negative)."""
        if relation not in ("ratio", "difference"):
            raise ValueError(f"relation must be 'ratio' or 'difference'; got {relation!r}")
        methods: list[str] = [reference]
        for row in results.values():
            methods += [m for m in row if m not in methods]
        baselines = methods[1:]
        symbol = "/" if relation == "ratio" else "-"
        headers = ["", *methods] + (
            [f"{b} / {reference}" for b in baselines]
            if relation == "ratio"
            else [f"{reference} {symbol} {b}" for b in baselines]
        )
        rows = []
        for condition, row in results.items():
            ref = row.get(reference)
            cells: list[Any] = [condition] + [row.get(m) for m in methods]
            for b in baselines:
                v = row.get(b)
                if v is None or ref is None or (relation == "ratio" and ref == 0):
                    cells.append(None)
                elif relation == "ratio":
                    cells.append(f"{v / ref:.2f}x")
                else:
                    cells.append(f"{ref - v:+.3f}")
            rows.append(cells)
        return self.table(headers, rows, caption)

    def figure(self, path: str | os.PathLike, caption: str) -> Report:
        self.blocks.append(("figure", (Path(path), caption)))
        return self

    # ---------------------------------------------------------------- rendering

    def to_markdown(self, base: Path | None = None) -> str:
        """Markdown; figure paths relative to ``base`` (the report's folder)."""
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                out += [f"## {value}", ""]
            elif kind == "text":
                out += [value, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "code":
                out += ["```", value.rstrip("\n"), "```", ""]
            elif kind == "table":
                headers, rows, caption = value
                if caption:
                    out += [f"**{caption}**", ""]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join(" --- " for _ in headers) + "|")
                out += ["| " + " | ".join(row) + " |" for row in rows]
                out.append("")
            elif kind == "figure":
                path, caption = value
                out += [f"![{caption}]({_relative(path, base)})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def to_html(self, base: Path | None = None) -> str:
        """A single self-contained HTML page (PNG figures embedded as data URIs)."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "text":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "bullets":
                items = "".join(f"<li>{_inline(v)}</li>" for v in value)
                body.append(f"<ul>{items}</ul>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(value)}</pre>")
            elif kind == "table":
                headers, rows, caption = value
                cap = f"<caption>{_inline(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                body.append(
                    f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"
                )
            elif kind == "figure":
                path, caption = value
                src = _data_uri(path, base)
                body.append(
                    f'<figure><img src="{src}" alt="{html.escape(caption)}">'
                    f"<figcaption>{_inline(caption)}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, out_dir: str | os.PathLike, name: str = "report") -> tuple[Path, Path]:
        """Write ``out_dir/name.md`` and ``out_dir/name.html`` atomically."""
        out_dir = Path(out_dir)
        md, page = out_dir / f"{name}.md", out_dir / f"{name}.html"
        with atomic_write(md, "w") as f:
            f.write(self.to_markdown(out_dir))
        with atomic_write(page, "w") as f:
            f.write(self.to_html(out_dir))
        return md, page


def _relative(path: Path, base: Path | None) -> str:
    if base is None:
        return path.as_posix()
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.as_posix()


def _data_uri(path: Path, base: Path | None) -> str:
    full = path if path.is_absolute() or base is None else base / path
    if not full.exists():
        return html.escape(_relative(path, base))
    kind = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "svg": "svg+xml"}.get(
        full.suffix.lower().lstrip("."), "png"
    )
    data = base64.b64encode(full.read_bytes()).decode("ascii")
    return f"data:image/{kind};base64,{data}"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return text


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
caption {{ text-align: left; font-weight: 600; padding-bottom: 0.3em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead {{ background: #f2f2f2; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9em; color: #555; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
pre {{ background: #f4f4f4; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
{body}
</body></html>
"""
