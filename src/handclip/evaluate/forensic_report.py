"""The forensic part of an evaluation report: tables (Markdown) and pictures for metrics.md / report.html."""

from __future__ import annotations

from pathlib import Path

from ..forensic.calibration import verbal_equivalent
from .forensic import ForensicResult
from ..forensic.openset import FPIR_LEVELS, RANKS
from ..forensic.verification import FMR_LEVELS, level_key, needed_pairs

FORENSIC_FILES = ("det.png", "fnir_fpir.png", "tippett.png", "lr_calibration.png")


def _mean_std(entry, percent: bool = True, digits: int = 2) -> str:
    if entry is None:
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{scale * entry['mean']:.{digits}f} ± {scale * entry['std']:.{digits}f}"
    return text


def _runs(entry, total: int) -> str:
    return "0" if entry is None else (str(entry["runs"]) if entry["runs"] == total else f"{entry['runs']} of {total}")


def _min_count(forensic: ForensicResult, part: str, key: str) -> int:
    counts = [r[part][key] for r in forensic.per_run if part in r]
    return min(counts) if counts else 0


def _interval_cell(forensic: ForensicResult, key: str, percent: bool = True, digits: int = 2) -> str:
    """`` | low to high`` (the identity-level bootstrap interval), marked when the sample cannot support it;
    nothing when the evaluation computed no intervals."""
    if not forensic.intervals:
        return ""
    entry = forensic.intervals.get(key)
    if entry is None or entry["low"] is None:
        return " | – |"
    scale = 100.0 if percent else 1.0
    text = f"{scale * entry['low']:.{digits}f} to {scale * entry['high']:.{digits}f}"
    return f" | {text}{'' if entry['supported'] else ' (not supported: ' + entry['note'] + ')'} |"


def _header(forensic: ForensicResult, first: str) -> list[str]:
    if not forensic.intervals:
        return [f"| {first} | mean ± std | runs |", "|---|---:|---:|"]
    level = f"{100 * forensic.interval_level:g}%"
    return [f"| {first} | mean ± std | runs | {level} interval (identity bootstrap) |", "|---|---:|---:|---:|"]


def _rate_row(forensic: ForensicResult, label: str, key: str, available: int, need: int | None) -> str:
    entry = forensic.aggregate.get(key)
    total = len(forensic.per_run)
    if entry is None and need is not None and available < need:
        value = f"too few non-mated {'pairs' if 'fmr' in key else 'searches'} ({available:,}; {need:,} needed)"
    else:
        value = _mean_std(entry)
    return f"| {label} | {value} | {_runs(entry, total)} |" + _interval_cell(forensic, key)[2:]


def verification_table(forensic: ForensicResult) -> str:
    pairs = _min_count(forensic, "verification", "n_nonmated")
    searches = _min_count(forensic, "openset", "n_nonmated_searches")
    lines = [*_header(forensic, "figure (%)"), _rate_row(forensic, "EER", "eer", pairs, None)]
    for level in FMR_LEVELS:
        key = level_key(level)
        lines.append(_rate_row(forensic, f"FNMR at FMR = {key}", f"fnmr@fmr={key}", pairs, needed_pairs(level)))
    auc = forensic.aggregate.get("auc")
    blank = " |" if forensic.intervals else ""  # AUC and the ranks have no interval
    lines.append(f"| AUC (×100) | {_mean_std(auc)} | {_runs(auc, len(forensic.per_run))} |{blank}")
    for level in FPIR_LEVELS:
        key = level_key(level)
        lines.append(_rate_row(forensic, f"FNIR at FPIR = {key} (identification, rank 1)", f"fnir@fpir={key}",
                               searches, needed_pairs(level)))
    for rank in RANKS:
        entry = forensic.aggregate.get(f"fnir@rank{rank}")
        if entry is not None:
            lines.append(f"| FNIR at rank {rank} (investigation, no threshold) | {_mean_std(entry)} | "
                         f"{_runs(entry, len(forensic.per_run))} |{blank}")
    return "\n".join(lines) + "\n"


def _lr_text(log10_lr: float) -> str:
    value = 10.0 ** log10_lr
    return f"{value:,.1f}" if value >= 1 else f"1/{1 / value:,.1f}"


def lr_table(forensic: ForensicResult) -> str | None:
    agg = forensic.aggregate
    if agg.get("cllr") is None:
        return None
    total = len(forensic.per_run)
    low, high = agg["log10_lr_min"], agg["log10_lr_max"]
    lines = _header(forensic, "figure")
    blank = " |" if forensic.intervals else ""
    for key, label in (("cllr", "Cllr (1 = uninformative, 0 = perfect)"), ("cllr_min", "Cllr_min (discrimination)"),
                       ("cllr_cal", "Cllr_cal = Cllr − Cllr_min (calibration loss)")):
        cell = _interval_cell(forensic, key, percent=False, digits=3)[2:] if key == "cllr" else blank
        lines.append(f"| {label} | {_mean_std(agg[key], percent=False, digits=3)} | {_runs(agg[key], total)} |{cell}")
    lines.append(f"| lowest log10 LR the bounds allow | {_mean_std(low, percent=False)} | {_runs(low, total)} |{blank}")
    lines.append(f"| highest log10 LR the bounds allow | {_mean_std(high, percent=False)} | {_runs(high, total)} |{blank}")
    lines.append(f"| LR range (mean bounds) | {_lr_text(low['mean'])} to {_lr_text(high['mean'])} | |{blank}")
    for key, label in (("stored_cllr", "stored calibration: Cllr"), ("stored_cllr_min", "stored calibration: Cllr_min"),
                       ("stored_cllr_cal", "stored calibration: Cllr_cal")):
        if agg.get(key) is not None:
            lines.append(f"| {label} | {_mean_std(agg[key], percent=False, digits=3)} | {_runs(agg[key], total)} |{blank}")
    return "\n".join(lines) + "\n"


def bands_table(forensic: ForensicResult) -> str:
    lines = ["| LR | verbal equivalent (ENFSI) | same person (%) | different people (%) |", "|---|---|---:|---:|"]
    for row in forensic.lr_bands():
        mated = "–" if row.get("mated") is None else f"{100 * row['mated']:.1f}"
        nonmated = "–" if row.get("nonmated") is None else f"{100 * row['nonmated']:.1f}"
        lines.append(f"| {row['lr']} | {row['verbal']} | {mated} | {nonmated} |")
    return "\n".join(lines) + "\n"


def notes_text(forensic: ForensicResult) -> str:
    parts = [
        f"Verification: every (query, gallery image) pair of each run, scored by {forensic.score}; a pair is "
        f"accepted when its score reaches the threshold. FNMR at an FMR level needs at least 1/level non-mated "
        f"pairs. Open-set identification: each query searched with its identity enrolled (mated) and with its "
        f"identity's gallery images removed (non-mated), gallery ranked by identity (best image); ties count "
        f"against the mate.",
        f"Likelihood ratios: within each run the identities are split into {forensic.folds} folds; each fold's "
        f"comparisons get LRs from a {forensic.method} calibration (lir) fitted on the other folds' identities "
        f"only and bounded by ELUB; comparisons across folds are not scored. Cllr, Cllr_min and Cllr_cal are "
        f"lir's, over the scored comparisons of the run.",
    ]
    if forensic.intervals:
        parts.append(f"Intervals: {100 * forensic.interval_level:g}% percentile intervals of an identity-level "
                     f"bootstrap ({next(iter(forensic.intervals.values()))['replicates']} replicates): each replicate "
                     f"draws the people with replacement and applies the draw to every run; the figure is the mean "
                     f"over the runs. The cross-calibrated LRs are resampled as they are (not refitted). A figure is "
                     f"marked 'not supported' when it rests on fewer people than its level needs (FNMR at FMR = L: "
                     f"1/L different-person pairs of people; FNIR at FPIR = L: 1/L people searched without their "
                     f"mate) or when more than 5% of the replicates could not compute it.")
    high = forensic.aggregate.get("log10_lr_max")
    if high is not None:
        parts.append(f"At the mean upper bound (LR {_lr_text(high['mean'])}): {verbal_equivalent(high['mean'])}.")
    if forensic.notes:
        parts.append("Not computed: " + "; ".join(forensic.notes) + ".")
    return "\n\n".join(parts)


def render_forensic(forensic: ForensicResult, folder, title: str) -> tuple[str, dict, list]:
    """(Markdown for metrics.md, heading -> Markdown table for the HTML page, (caption, png) pictures)."""
    from .forensic_plots import plot_calibration, plot_det, plot_fnir_fpir, plot_tippett

    folder = Path(folder)
    tables = {"Verification and open-set identification": verification_table(forensic)}
    lr = lr_table(forensic)
    if lr is not None:
        tables["Likelihood ratios (cross-calibrated by identity)"] = lr
        tables["LR bands and ENFSI's verbal scale (all runs pooled)"] = bands_table(forensic)
    images = []
    runs = len(forensic.per_run)
    if any(c.get("roc") is not None for c in forensic.curves.values()):
        plot_det(forensic.curves, folder / "det.png", title=f"DET, {title} ({runs} run{'s' * (runs > 1)})")
        images.append(("DET curve: FNMR against FMR on probit axes, one line per Monte Carlo run; green lines at "
                       "FMR 1e-2, 1e-3, 1e-4", folder / "det.png"))
    if any(c.get("openset") is not None for c in forensic.curves.values()):
        plot_fnir_fpir(forensic.curves, folder / "fnir_fpir.png", title=f"Open-set identification, {title}")
        images.append(("Open-set identification: FNIR (mate not at rank 1 above the threshold) against FPIR "
                       "(a non-mated search's top candidate above it)", folder / "fnir_fpir.png"))
    if forensic.llrs is not None and forensic.llrs.size and len(set(forensic.labels.tolist())) == 2:
        plot_tippett(forensic.llrs, forensic.labels, folder / "tippett.png", title=f"Tippett plot, {title}")
        images.append(("Tippett plot of the cross-calibrated, ELUB-bounded LRs (all runs pooled), with ENFSI's "
                       "band edges", folder / "tippett.png"))
        plot_calibration(forensic.llrs, forensic.labels, folder / "lr_calibration.png",
                         title=f"Calibration of the LRs, {title}")
        images.append(("ECE plot (left) and PAV plot (right) of the same LRs", folder / "lr_calibration.png"))
    markdown = "\n".join(f"## {heading}\n\n{table}" for heading, table in tables.items())
    markdown += "\n" + notes_text(forensic) + "\n"
    return markdown, tables, images


def forensic_benchmark_table(rows: list) -> str:
    """Rows = (method, {subset: forensic aggregate}); columns per subset: EER and FNIR at FPIR 0.01 (in %)."""
    from .references import SUBSET_TITLES, SUBSETS

    subsets = [s for s in SUBSETS if any(s in by_subset for _, by_subset in rows)]
    header = "| method | " + " | ".join(f"{SUBSET_TITLES[s]} EER | {SUBSET_TITLES[s]} FNIR@FPIR=0.01"
                                       for s in subsets) + " | Cllr (per subset) |"
    lines = [header, "|" + "---|" * (2 * len(subsets) + 2)]
    for label, by_subset in rows:
        cells, cllrs = [], []
        for subset in subsets:
            agg = by_subset.get(subset) or {}
            cells += [_mean_std(agg.get("eer")), _mean_std(agg.get("fnir@fpir=0.01"))]
            cllr = agg.get("cllr")
            cllrs.append("–" if cllr is None else f"{cllr['mean']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {' / '.join(cllrs)} |")
    note = ("\n- Measured here, mean ± std over each subset's Monte Carlo runs, in %; – = not computable (too few "
            "non-mated searches for FPIR 0.01: at least 100 needed). Cllr: identity-disjoint cross-calibration, "
            "2 folds per run. No published figures are quoted for these.\n")
    return "\n".join(lines) + "\n" + note


__all__ = ["forensic_benchmark_table", "render_forensic", "FORENSIC_FILES", "verification_table", "lr_table", "bands_table"]
