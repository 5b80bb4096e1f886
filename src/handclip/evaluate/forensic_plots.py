"""Pictures of the forensic figures: DET, FNIR vs FPIR, Tippett, and ECE / PAV calibration plots.

Figures are built without pyplot (Agg canvas) and written atomically, like the other report pictures.
The Tippett, ECE and PAV panels are drawn by lir's own plotting functions onto those axes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..forensic.calibration import VERBAL_BANDS
from ..forensic.openset import FPIR_LEVELS
from ..forensic.verification import FMR_LEVELS, equal_error_rate

_DET_TICKS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95]


def _figure(width: float, height: float, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _save(fig, out_png) -> Path:
    from .plots import _save_figure

    return _save_figure(fig, out_png)


def _tick_label(value: float) -> str:
    return f"{100 * value:g}%"


def plot_det(curves: dict, out_png: str | os.PathLike, title: str = "DET curve") -> Path:
    """FNMR against FMR on probit (normal deviate) axes, one line per run, EER marked."""
    from scipy.stats import norm

    runs = {run: c["roc"] for run, c in curves.items() if c.get("roc") is not None}
    if not runs:
        raise ValueError("no ROC curve to draw")
    fig, (ax,) = _figure(6.0, 5.4)
    low, high = 1e-4, 0.95
    eers = []
    for i, (run, (fmr, fnmr)) in enumerate(sorted(runs.items())):
        # Rates of exactly 0 lie at minus infinity on a probit axis: the curve stops where they begin.
        keep = (fmr > 0) & (fnmr > 0)
        x = norm.ppf(np.clip(fmr[keep], low / 2, 1 - low / 2))
        y = norm.ppf(np.clip(fnmr[keep], low / 2, 1 - low / 2))
        ax.step(x, y, where="post", color="tab:blue", alpha=0.35 if len(runs) > 1 else 1.0, linewidth=1.2,
                label="one line per Monte Carlo run" if i == 0 and len(runs) > 1 else None)
        eers.append(equal_error_rate(fmr, fnmr))
    eer = float(np.mean(eers))
    ax.plot([norm.ppf(low), norm.ppf(high)], [norm.ppf(low), norm.ppf(high)], color="grey", linestyle=":",
            linewidth=1, label="FMR = FNMR")
    ax.plot([norm.ppf(max(eer, low))], [norm.ppf(max(eer, low))], marker="o", color="tab:red", linestyle="none",
            label=f"mean EER {100 * eer:.2f}%")
    for level in FMR_LEVELS:
        ax.axvline(norm.ppf(level), color="tab:green", alpha=0.3, linewidth=0.8)
    ticks = [t for t in _DET_TICKS if low <= t <= high]
    ax.set_xticks(norm.ppf(ticks), [_tick_label(t) for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [_tick_label(t) for t in ticks])
    ax.set_xlim(norm.ppf(low / 2), norm.ppf(high))
    ax.set_ylim(norm.ppf(low / 2), norm.ppf(high))
    ax.set_xlabel("FMR (false match rate, probit scale)")
    ax.set_ylabel("FNMR (false non-match rate, probit scale)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, out_png)


def plot_fnir_fpir(curves: dict, out_png: str | os.PathLike, title: str = "Open-set identification") -> Path:
    """Identification-mode FNIR (rank 1, thresholded) against FPIR on a log axis, one line per run."""
    runs = {run: c["openset"] for run, c in curves.items() if c.get("openset") is not None}
    if not runs:
        raise ValueError("no FNIR/FPIR curve to draw")
    fig, (ax,) = _figure(6.4, 4.6)
    smallest = 1.0
    for i, (run, (fpir, fnir)) in enumerate(sorted(runs.items())):
        keep = fpir > 0
        smallest = min(smallest, float(fpir[keep].min()) if keep.any() else 1.0)
        # A step: FNIR holds until FPIR reaches the next point.
        ax.step(fpir[keep], fnir[keep], where="post", color="tab:purple", alpha=0.35 if len(runs) > 1 else 1.0,
                linewidth=1.2, label="one line per Monte Carlo run" if i == 0 and len(runs) > 1 else None)
    for level in FPIR_LEVELS:
        ax.axvline(level, color="tab:green", alpha=0.4, linewidth=0.8)
        ax.text(level, 1.0, f" FPIR {level:g}", rotation=90, va="top", ha="right", fontsize=7, color="tab:green",
                transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_xlim(min(smallest, min(FPIR_LEVELS)) / 1.5, 1.0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("FPIR (non-mated searches whose top candidate passes the threshold)")
    ax.set_ylabel("FNIR (mated searches not found at rank 1)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if len(runs) > 1:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out_png)


def _llr_data(llrs, labels):
    from lir.data.models import LLRData

    return LLRData(features=np.asarray(llrs, dtype=np.float64), labels=np.asarray(labels, dtype=np.int64))


def plot_tippett(llrs, labels, out_png: str | os.PathLike, title: str = "Tippett plot",
                 xlabel: str = "log$_{10}$ LR (cross-calibrated by identity)") -> Path:
    """lir's Tippett plot (share of LRs at or above each value, per proposition) with ENFSI band edges."""
    from lir.plotting import tippett

    fig, (ax,) = _figure(6.4, 4.6)
    tippett(_llr_data(llrs, labels), ax=ax)
    low, high = float(np.min(llrs)), float(np.max(llrs))
    for edge, name in VERBAL_BANDS:
        for side in (edge, -edge):
            if low <= side <= high:
                ax.axvline(side, color="grey", alpha=0.35, linewidth=0.8)
                ax.text(side, 50, f" {name} ", rotation=90, fontsize=7, va="center",
                        ha="left" if side > 0 else "right", color="dimgrey")  # inside the band it names
    lines = ax.get_lines()
    lines[0].set_label(f"same person (n={int(np.sum(labels))})")
    lines[1].set_label(f"different people (n={int(np.sum(np.asarray(labels) == 0))})")
    ax.set_ylabel("LRs at or above the value (%)")
    ax.set_xlabel(xlabel)
    ax.set_title(title + "\n(grey lines: edges of ENFSI's verbal bands, each named inside its band)", fontsize=10)
    ax.legend(loc="center", bbox_to_anchor=(0.3, 0.25), fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(fig, out_png)


def plot_calibration(llrs, labels, out_png: str | os.PathLike, title: str = "Calibration") -> Path:
    """lir's ECE plot and PAV plot side by side: how much of Cllr is lost to calibration."""
    from lir.plotting import pav
    from lir.plotting.expected_calibration_error import plot_ece

    data = _llr_data(llrs, labels)
    fig, (ece_ax, pav_ax) = _figure(12.0, 4.6, cols=2)
    plot_ece(data, ax=ece_ax)
    ece_ax.set_title("Empirical cross-entropy (lower is better; reference = LR 1 everywhere)", fontsize=10)
    pav(data, ax=pav_ax)
    pav_ax.set_title("PAV: LRs against their best monotone recalibration", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)
