"""Pictures of an evaluation: CMC curves, ranked-list sheets, training curves.

Everything is rendered in memory first with matplotlib's Agg canvas (no display needed; figures are
built without pyplot, so importing this module never changes a notebook's backend) and written with
:mod:`handclip.atomic`, so a failure while drawing leaves no file behind, not even a partial one.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_write_bytes
from ..data.images import thumbnail
from ..errors import HandCLIPError

__all__ = ["plot_cmc", "ranked_list_sheet", "plot_training_curves"]

CORRECT = "#1a9850"  # green
WRONG = "#d73027"  # red
QUERY = "#4575b4"  # blue
_DPI = 110

# Readable names of metric keys, in figures and tables.
METRIC_LABELS = {
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
    names: Mapping[int, str] | None = None,
) -> Path:
    """One row per query: the query (blue frame) then its top-k gallery images, nearest first.

    Each gallery image gets a green frame and a check mark when its identity matches the query's,
    a red frame and a cross when not, and its rank and distance underneath. ``names`` (pid -> the
    person's original id or folder name) labels each image; a pid without one shows as ``id N``.
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

    def person(pid: int) -> str:
        name = (names or {}).get(pid) or f"id {pid}"
        return name if len(name) <= 16 else name[:15] + "…"

    def cell(x: int, y: int, path, colour: str, title: str, lines: list[str], text_colour: str) -> None:
        draw.text((x + tile / 2, y + title_h - 4), title, font=title_font, fill=colour, anchor="ms")
        draw.rectangle([x, y + title_h, x + tile - 1, y + title_h + tile - 1], fill=colour)
        sheet.paste(thumbnail(path, thumb, letterbox=True), (x + border, y + title_h + border))
        for i, line in enumerate(lines):
            draw.text((x + tile / 2, y + title_h + tile + 4 + 17 * i), line, font=text_font, fill=text_colour, anchor="mt")

    for r, ((q_path, q_pid), ranking) in enumerate(zip(queries, rankings)):
        y = header_h + r * row_h
        cell(pad, y, q_path, QUERY, f"query {r + 1}", [person(q_pid)], "black")
        for c, (g_path, g_pid, distance) in enumerate(ranking[:top_k]):
            right = g_pid == q_pid
            colour = CORRECT if right else WRONG
            x = pad + (c + 1) * (tile + gap) + query_gap
            cell(x, y, g_path, colour, f"#{c + 1} {'✓' if right else '✗'}",
                 [person(g_pid), f"d={_distance_text(distance)}"], "black" if right else colour)
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


def _series(entries: Sequence[Mapping[str, Any]], epochs: list, key: str) -> tuple[list, list[float]]:
    """(epochs, values) of ``key`` where its value is a finite number."""
    xs = [x for x, e in zip(epochs, entries) if _finite(e.get(key))]
    ys = [float(e[key]) for e in entries if _finite(e.get(key))]
    return xs, ys


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _loss_panel(ax, stage: str, entries, epochs: list, keys: list[str]) -> None:
    for k in [k for k in keys if "loss" in k]:
        xs, ys = _series(entries, epochs, k)
        if xs:
            ax.plot(xs, ys, marker=".", linewidth=2.6 if k == "loss" else 1.4, label=k)
    ax.set_title(f"{stage}: losses")
    if ax.get_lines():
        ax.legend(fontsize=8)
    else:
        _empty_note(ax, "no loss recorded")


def _lr_panel(ax, stage: str, entries, epochs: list) -> None:
    xs, ys = _series(entries, epochs, "lr")
    if xs:
        ax.plot(xs, ys, color="tab:purple", marker=".")
        if min(ys) > 0 and max(ys) / min(ys) > 50:
            ax.set_yscale("log")
    else:
        _empty_note(ax, "no learning rate recorded")
    ax.set_title(f"{stage}: learning rate")


def _validation_panel(ax, stage: str, entries, epochs: list, keys: list[str]) -> None:
    # Rank-1 (what picks the best checkpoint) and mAP; five overlapping curves were unreadable.
    val_keys = [k for k in ("val_rank1", "val_mAP") if k in keys] or [k for k in keys if k.startswith("val_")]
    for k in val_keys:
        xs, ys = _series(entries, epochs, k)
        if xs:
            label = METRIC_LABELS.get(k[4:], k[4:])
            line, = ax.plot(xs, [100.0 * y for y in ys], marker="o", markersize=3.5, label=label)
            if k == val_keys[0]:
                best = int(np.argmax(ys))
                ax.plot([xs[best]], [100 * ys[best]], marker="*", markersize=12, color=line.get_color(),
                        linestyle="none")
                # Keep the label inside the panel when the best epoch is the first or last one.
                align = "right" if xs[best] == max(xs) else "left" if xs[best] == min(xs) else "center"
                ax.annotate(f"best {label} {100 * ys[best]:.1f}", (xs[best], 100 * ys[best]), fontsize=8,
                            textcoords="offset points", xytext=(0, 7), ha=align)
    ax.set_title(f"{stage}: validation (%)")
    if ax.get_lines():
        ax.legend(fontsize=8, loc="best")
        ax.margins(y=0.15)
    else:
        _empty_note(ax, "no validation in this stage")


def _epoch_axes(panels, epochs: list) -> None:
    """One epoch axis for a stage's panels (even with one validation point); no ticks on an empty panel."""
    numeric_epochs = [float(x) for x in epochs if _finite(x)]
    for ax in panels:
        if ax.get_lines():
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if numeric_epochs:
                ax.set_xlim(min(numeric_epochs) - 0.5, max(numeric_epochs) + 0.5)
        else:
            ax.set_xticks([])
            ax.set_yticks([])


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
        _loss_panel(loss_ax, stage, entries, epochs, keys)
        _lr_panel(lr_ax, stage, entries, epochs)
        _validation_panel(val_ax, stage, entries, epochs, keys)
        _epoch_axes((loss_ax, lr_ax, val_ax), epochs)
    fig.tight_layout()
    return _save_figure(fig, out_png)
