"""The validation report's graphs: Tippett, ECE and PAV, DET (the evaluation's own drawings), LLR
overestimation with its fiducial interval (lir's), and the LR distributions with the ELUB and invariance bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluate.forensic_plots import _figure, _save, plot_calibration, plot_det, plot_tippett
from ..forensic.validation_metrics import PairSet, llr_overestimation
from ..forensic.verification import roc_points

GRAPH_FILES = {"tippett": "tippett.png", "ece": "calibration.png", "pav": "calibration.png", "det": "det.png",
               "llr_overestimation": "llr_overestimation.png", "lr_distribution": "lr_distribution.png"}


def plot_overestimation(pairs: PairSet, out_png, seed: int = 0) -> Path | None:
    """log10(system LR / empirical LR) across the LR range with lir's 95% fiducial interval; None when the two
    classes' LRs do not overlap (nothing to estimate)."""
    grid, over, interval = llr_overestimation(pairs, num_fids=200, seed=seed)
    if grid is None:
        return None
    fig, (ax,) = _figure(6.4, 4.2)
    ax.plot(grid, over, color="tab:blue", label=f"overestimation (mean |.| = {np.mean(np.abs(over)):.2f})")
    ax.fill_between(grid, interval[:, 0], interval[:, 2], color="tab:blue", alpha=0.2, label="95% fiducial interval")
    ax.axhline(0, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("log$_{10}$ LR given by the method")
    ax.set_ylabel("log$_{10}$ (given LR / empirical LR)")
    ax.set_title("LLR overestimation: above 0 the LRs claim more than the data support", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(fig, out_png)


def plot_lr_distribution(pairs: PairSet, bounds: dict, out_png) -> Path:
    """Histograms of log10 LR for same-person and different-person comparisons, with the calibration's ELUB
    bounds and the invariance-verification bounds of the validation data."""
    fig, (ax,) = _figure(6.4, 4.2)
    edges = np.linspace(min(pairs.llrs.min(), bounds["elub"][0]) - 0.2, max(pairs.llrs.max(), bounds["elub"][1]) + 0.2, 60)
    for label, colour, name in ((1, "tab:blue", "same person"), (0, "tab:red", "different people")):
        values = pairs.llrs[pairs.labels == label]
        ax.hist(values, bins=edges, weights=np.full(values.size, 1.0 / values.size), alpha=0.5, color=colour,
                label=f"{name} (n={values.size})")
    for (low, high), style, name in ((bounds["elub"], "--", "ELUB (calibration)"),
                                     (bounds["invariance"], ":", "invariance bounds (validation)")):
        ax.axvline(low, color="k", linestyle=style, linewidth=1.2, label=f"{name}: {low:.2f} / {high:.2f}")
        ax.axvline(high, color="k", linestyle=style, linewidth=1.2)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("log$_{10}$ LR")
    ax.set_yscale("log")  # the tails, where misleading LRs lie, are thin
    ax.set_ylabel("share of the comparisons of each kind")
    ax.set_title("LR distributions and the bounds beyond which no LR is reported", fontsize=10)
    ax.legend(loc="upper center", fontsize=7)
    ax.grid(True, alpha=0.3)
    return _save(fig, out_png)


def draw_graphs(pairs: PairSet, bounds: dict, out: Path, seed: int = 0) -> dict[str, str]:
    """Every graph into ``out``; graph name -> file name (those that could be drawn)."""
    files = {}
    plot_tippett(pairs.llrs, pairs.labels, out / GRAPH_FILES["tippett"], title="Tippett plot (validation set)",
                 xlabel="log$_{10}$ LR (calibration fitted on other people)")
    plot_calibration(pairs.llrs, pairs.labels, out / GRAPH_FILES["ece"], title="Calibration on the validation set")
    fmr, fnmr, _ = roc_points(pairs.scores[pairs.labels == 1], pairs.scores[pairs.labels == 0])
    plot_det({"validation": {"roc": (fmr, fnmr)}}, out / GRAPH_FILES["det"], title="DET curve (validation set)")
    plot_lr_distribution(pairs, bounds, out / GRAPH_FILES["lr_distribution"])
    drawn = plot_overestimation(pairs, out / GRAPH_FILES["llr_overestimation"], seed)
    for name, file in GRAPH_FILES.items():
        if name != "llr_overestimation" or drawn is not None:
            files[name] = file
    return files


__all__ = ["GRAPH_FILES", "draw_graphs", "plot_lr_distribution", "plot_overestimation"]
