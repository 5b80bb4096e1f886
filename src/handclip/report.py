"""Pictures and reports: CMC curves, ranked-list sheets, training curves, metric tables, HTML.

Everything is rendered in memory first with matplotlib's Agg canvas (no display needed; figures are
built without pyplot, so importing this module never changes a notebook's backend) and written with
:mod:`handclip.atomic`, so a failure while drawing leaves no file behind, not even a partial one.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .atomic import atomic_write_bytes, atomic_write_text
from .errors import DataError, HandCLIPError

__all__ = [
    "plot_cmc",
    "ranked_list_sheet",
    "plot_training_curves",
    "markdown_table",
    "html_report",
]

CORRECT = "#1a9850"  # green
WRONG = "#d73027"  # red
QUERY = "#4575b4"  # blue
_DPI = 110

_PRETTY = {
    "rank1": "Rank-1",
    "rank5": "Rank-5",
    "rank10": "Rank-10",
    "rank20": "Rank-20",
    "mAP": "mAP",
    "mINP": "mINP",
    "num_valid_queries": "valid queries",
    "num_skipped_queries": "skipped queries",
}


def _subplots(rows: int, cols: int, figsize: tuple[float, float]):
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save_figure(fig, out_png: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)


# ----------------------------------------------------------------------------------------------
# CMC


def plot_cmc(curves: Mapping[str, Any], out_png: str | os.PathLike, max_rank: int = 20, title: str = "CMC curve") -> Path:
    """One line per label: matching rate (%) against rank 1..max_rank. Values are fractions in [0, 1]."""
    if not curves:
        raise HandCLIPError("plot_cmc needs at least one curve")
    fig, axes = _subplots(1, 1, (6.4, 4.4))
    ax = axes[0, 0]
    ranks = np.arange(1, max_rank + 1)
    for label, cmc in curves.items():
        values = np.asarray(cmc, dtype=np.float64).ravel()
        if values.size == 0:
            raise HandCLIPError(f"CMC curve {label!r} is empty")
        if values.size < max_rank:  # a curve stays at its last value past its end
            values = np.concatenate([values, np.full(max_rank - values.size, values[-1])])
        values = 100.0 * values[:max_rank]
        ax.plot(ranks, values, marker="o", markersize=3.5, linewidth=1.8, label=f"{label} (R-1 {values[0]:.1f}%)")
    ax.set_xlabel("Rank")
    ax.set_ylabel("Matching rate (%)")
    ax.set_title(title)
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.set_xticks(ranks if max_rank <= 20 else np.unique(np.linspace(1, max_rank, 11).astype(int)))
    low = min(line.get_ydata().min() for line in ax.get_lines())
    ax.set_ylim(max(0.0, math.floor(low / 10.0) * 10.0 - 2.0), 101.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save_figure(fig, out_png)


# ----------------------------------------------------------------------------------------------
# Ranked lists


def _thumbnail(path: str | os.PathLike, size: int) -> np.ndarray:
    """The image letterboxed into a size x size square (aspect kept), as an RGB array."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"image {path} does not exist") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"image {path} could not be read ({exc})") from exc
    # Fit the long side to the box, enlarging small images too (64 px synthetic hands stay legible).
    scale = size / max(rgb.width, rgb.height)
    rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (245, 245, 245))
    canvas.paste(rgb, ((size - rgb.width) // 2, (size - rgb.height) // 2))
    return np.asarray(canvas)


def _distance_text(distance: float) -> str:
    """Three decimals; four below 0.01; scientific below 1e-4 (an untrained model's distances are tiny)."""
    distance = float(distance)
    if abs(distance) >= 0.01 or distance == 0:
        return f"{distance:.3f}"
    return f"{distance:.4f}" if abs(distance) >= 1e-4 else f"{distance:.1e}"


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, so always present; it has the check and cross marks)."""
    from matplotlib import font_manager

    prop = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    return ImageFont.truetype(font_manager.findfont(prop, fallback_to_default=True), size)


def ranked_list_sheet(
    queries: Sequence[tuple[str | os.PathLike, int]],
    rankings: Sequence[Sequence[tuple[str | os.PathLike, int, float]]],
    out_png: str | os.PathLike,
    top_k: int = 10,
    thumb: int = 128,
) -> Path:
    """One row per query: the query (blue frame) then its top-k gallery images, nearest first.

    Each gallery image gets a green frame and a check mark when its identity matches the query's,
    a red frame and a cross when not, and its rank and distance underneath.
    """
    if len(queries) != len(rankings):
        raise HandCLIPError(f"ranked_list_sheet got {len(queries)} queries but {len(rankings)} rankings")
    if not queries:
        raise HandCLIPError("ranked_list_sheet needs at least one query")
    if top_k < 1:
        raise HandCLIPError(f"top_k must be at least 1, got {top_k}")
    # Drawn with PIL on one canvas: a matplotlib grid of 1 + top_k axes per query took seconds per sheet.
    border, gap, pad, query_gap = 5, 12, 16, 14
    tile = thumb + 2 * border
    title_font, text_font, head_font = _font(15, bold=True), _font(14), _font(17)
    title_h, caption_h, header_h = 22, 42, 42
    row_h = title_h + tile + caption_h + gap
    cols = 1 + top_k
    width = 2 * pad + cols * tile + (cols - 1) * gap + query_gap
    height = header_h + len(queries) * row_h + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((width / 2, pad), "Ranked lists: query (blue), then nearest gallery images; "
              "green = same identity, red = different", font=head_font, fill="black", anchor="mt")

    def cell(x: int, y: int, path, colour: str, title: str, lines: list[str], text_colour: str) -> None:
        draw.text((x + tile / 2, y + title_h - 4), title, font=title_font, fill=colour, anchor="ms")
        draw.rectangle([x, y + title_h, x + tile - 1, y + title_h + tile - 1], fill=colour)
        sheet.paste(Image.fromarray(_thumbnail(path, thumb)), (x + border, y + title_h + border))
        for i, line in enumerate(lines):
            draw.text((x + tile / 2, y + title_h + tile + 4 + 17 * i), line, font=text_font, fill=text_colour, anchor="mt")

    for r, ((q_path, q_pid), ranking) in enumerate(zip(queries, rankings)):
        y = header_h + r * row_h
        cell(pad, y, q_path, QUERY, f"query {r + 1}", [f"id {q_pid}"], "black")
        for c, (g_path, g_pid, distance) in enumerate(ranking[:top_k]):
            right = g_pid == q_pid
            colour = CORRECT if right else WRONG
            x = pad + (c + 1) * (tile + gap) + query_gap
            cell(x, y, g_path, colour, f"#{c + 1} {'✓' if right else '✗'}",
                 [f"id {g_pid}", f"d={_distance_text(distance)}"], "black" if right else colour)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=1)  # photos barely compress; level 6+ only costs time
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)


# ----------------------------------------------------------------------------------------------
# Training curves


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _stage_name(stage: Any) -> str:
    text = str(stage)
    return f"stage {text}" if text.isdigit() else text.replace("stage", "stage ").replace("  ", " ").strip()


def plot_training_curves(history: Sequence[Mapping[str, Any]], out_png: str | os.PathLike) -> Path:
    """Per-epoch history -> one row per stage with three panels: losses, learning rate, validation.

    Recognised keys: ``epoch``, ``stage`` (1/2 or "stage1"/"stage2"; missing = one stage), ``lr``,
    any key containing ``loss`` (``loss`` itself is drawn thicker as the total), and ``val_*`` metrics
    (fractions, drawn in percent). Missing or non-finite values are skipped.
    """
    if not history:
        raise HandCLIPError("plot_training_curves needs at least one epoch of history")
    stages: dict[str, list[Mapping[str, Any]]] = {}
    for entry in history:
        stages.setdefault(_stage_name(entry.get("stage", "training")), []).append(entry)
    fig, axes = _subplots(len(stages), 3, (13, 3.4 * len(stages)))
    for row, (stage, entries) in enumerate(stages.items()):
        epochs = [e.get("epoch", i + 1) for i, e in enumerate(entries)]
        keys: list[str] = []
        for e in entries:
            keys += [k for k in e if k not in keys]
        loss_ax, lr_ax, val_ax = axes[row]

        def series(key: str):
            xs = [x for x, e in zip(epochs, entries) if _finite(e.get(key))]
            ys = [float(e[key]) for e in entries if _finite(e.get(key))]
            return xs, ys

        losses = [k for k in keys if "loss" in k]
        for k in losses:
            xs, ys = series(k)
            if xs:
                loss_ax.plot(xs, ys, marker=".", linewidth=2.6 if k == "loss" else 1.4, label=k)
        loss_ax.set_title(f"{stage}: losses")
        if loss_ax.get_lines():
            loss_ax.legend(fontsize=8)
        else:
            loss_ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=loss_ax.transAxes, color="grey")

        xs, ys = series("lr")
        if xs:
            lr_ax.plot(xs, ys, color="tab:purple", marker=".")
            if min(ys) > 0 and max(ys) / min(ys) > 50:
                lr_ax.set_yscale("log")
        else:
            lr_ax.text(0.5, 0.5, "no learning rate recorded", ha="center", va="center", transform=lr_ax.transAxes, color="grey")
        lr_ax.set_title(f"{stage}: learning rate")

        # Rank-1 (what picks the best checkpoint) and mAP; five overlapping curves were unreadable.
        val_keys = [k for k in ("val_rank1", "val_mAP") if k in keys] or [k for k in keys if k.startswith("val_")]
        for k in val_keys:
            xs, ys = series(k)
            if xs:
                label = _PRETTY.get(k[4:], k[4:])
                line, = val_ax.plot(xs, [100.0 * y for y in ys], marker="o", markersize=3.5, label=label)
                if k == val_keys[0]:
                    best = int(np.argmax(ys))
                    val_ax.plot([xs[best]], [100 * ys[best]], marker="*", markersize=12, color=line.get_color(),
                                linestyle="none")
                    # Keep the label inside the panel when the best epoch is the first or last one.
                    align = "right" if xs[best] == max(xs) else "left" if xs[best] == min(xs) else "center"
                    val_ax.annotate(f"best {label} {100 * ys[best]:.1f}", (xs[best], 100 * ys[best]), fontsize=8,
                                    textcoords="offset points", xytext=(0, 7), ha=align)
        val_ax.set_title(f"{stage}: validation (%)")
        if val_ax.get_lines():
            val_ax.legend(fontsize=8, loc="best")
            val_ax.margins(y=0.15)
        else:
            val_ax.text(0.5, 0.5, "no validation in this stage", ha="center", va="center",
                        transform=val_ax.transAxes, color="grey")
        numeric_epochs = [float(x) for x in epochs if _finite(x)]
        for ax in (loss_ax, lr_ax, val_ax):
            if ax.get_lines():
                ax.set_xlabel("epoch")
                ax.grid(True, alpha=0.3)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if numeric_epochs:  # same epoch axis in a stage's three panels, even with one validation point
                    ax.set_xlim(min(numeric_epochs) - 0.5, max(numeric_epochs) + 0.5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    return _save_figure(fig, out_png)


# ----------------------------------------------------------------------------------------------
# Tables and HTML


def _cell(value: Any, percent: bool) -> str:
    if isinstance(value, Mapping) and "mean" in value:
        mean, std = float(value["mean"]), float(value.get("std", 0.0))
        scale = 100.0 if percent else 1.0
        return f"{scale * mean:.2f} ± {scale * std:.2f}"
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{100.0 * float(value):.2f}" if percent else f"{float(value):.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, percent: bool = True) -> str:
    """A Markdown table from a list of dicts (column order: ``columns`` or first-seen key order).

    Floats are fractions shown in percent with two decimals, ``{"mean", "std"}`` dicts (as from
    :func:`handclip.metrics.aggregate_runs`) become ``mean ± std`` in percent, ints and strings stay
    as they are. Known metric keys get readable headers (rank1 -> Rank-1).
    """
    if not rows:
        raise HandCLIPError("markdown_table needs at least one row")
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    header = [_PRETTY.get(c, c) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), percent) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _markdown_to_html_table(markdown: str) -> str:
    lines = [ln.strip() for ln in markdown.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(markdown)}</pre>"

    def cells(line: str) -> list[str]:
        parts, current, escaped = [], "", False
        for ch in line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]:
            if ch == "|" and not escaped:
                parts.append(current.strip())
                current = ""
            else:
                current += ch
            escaped = ch == "\\"
        parts.append(current.strip())
        return [p.replace("\\|", "|") for p in parts]

    head = cells(lines[0])
    body = [cells(ln) for ln in lines[2:]]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1200px;margin:0 auto;padding:28px 32px 48px}
h1{font-size:26px;margin:0 0 4px}
.meta{color:#5b6475;font-size:13px;margin-bottom:22px}
h2{font-size:18px;margin:30px 0 10px;border-bottom:2px solid #dfe3ea;padding-bottom:4px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin-bottom:18px}
table{border-collapse:collapse;font-size:14px;width:auto;font-variant-numeric:tabular-nums}
th,td{padding:6px 14px;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#eef1f6;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
figure{margin:0 0 10px}
figure img{max-width:100%;height:auto;border:1px solid #e6e9ef;border-radius:4px}
figcaption{color:#5b6475;font-size:13px;margin-top:4px}
p,pre{font-size:14px;line-height:1.5}
pre{background:#f6f8fa;padding:10px;border-radius:4px;overflow:auto}
"""


def html_report(
    out_html: str | os.PathLike,
    title: str,
    metrics_table: str | Sequence[Mapping[str, Any]],
    images: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]] = (),
    sections: Mapping[str, str] | None = None,
    subtitle: str = "",
    tables: Mapping[str, str] | None = None,
) -> Path:
    """A single self-contained HTML file: title, metrics table, embedded PNGs, extra text sections.

    ``metrics_table`` is Markdown (e.g. from :func:`markdown_table`) or the rows to build it from.
    ``images`` are PNG paths or ``(caption, path)`` pairs; they are embedded as base64 so the file
    can be mailed or archived on its own. ``sections`` maps a heading to plain text (escaped);
    ``tables`` maps a heading to a further Markdown table, shown after the metrics table.
    """
    table_md = metrics_table if isinstance(metrics_table, str) else markdown_table(metrics_table)
    figures = []
    for item in images:
        caption, path = item if isinstance(item, tuple) else (Path(item).stem.replace("_", " "), item)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"report image {path} could not be read ({exc.strerror or exc})") from exc
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise DataError(f"report image {path} is not a PNG file")
        encoded = base64.b64encode(data).decode("ascii")
        figures.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="meta">{html.escape(subtitle)}</div>' if subtitle else "",
        "<h2>Metrics</h2>",
        f"<section>{_markdown_to_html_table(table_md)}</section>",
    ]
    for heading, extra in (tables or {}).items():
        parts += [f"<h2>{html.escape(heading)}</h2>", f"<section>{_markdown_to_html_table(extra)}</section>"]
    if figures:
        parts += ["<h2>Figures</h2>", "<section>" + "\n".join(figures) + "</section>"]
    for heading, text in (sections or {}).items():
        paragraphs = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in str(text).split("\n\n"))
        parts += [f"<h2>{html.escape(heading)}</h2>", f"<section>{paragraphs}</section>"]
    parts.append("</main></body></html>\n")
    atomic_write_text(out_html, "\n".join(p for p in parts if p))
    return Path(out_html)
