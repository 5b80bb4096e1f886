"""Forensic figures of a protocol evaluation: verification, open-set identification, likelihood ratios.

Computed per Monte Carlo run from the query x gallery scores the evaluation already holds, then
reported as mean +- std (population) over the runs. LRs in each run come from cross-calibration by
identity (see ``crosscal``): no comparison is scored by a calibration fitted on either of its people.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..forensic.calibration import CalibrationError, cllr_figures, verbal_band, verbal_scale_rows
from ..forensic.crosscal import cross_calibrate
from ..forensic.openset import FPIR_LEVELS, RANKS, openset_metrics
from ..forensic.verification import FMR_LEVELS, ForensicMetricError, level_key, split_pairs, verification_metrics
from .intervals import evaluation_intervals, run_comparisons

VERIFICATION_KEYS = ["eer", "auc", *[f"fnmr@fmr={level_key(v)}" for v in FMR_LEVELS]]
OPENSET_KEYS = [*[f"fnir@fpir={level_key(v)}" for v in FPIR_LEVELS], *[f"fnir@rank{r}" for r in RANKS]]
LR_KEYS = ["cllr", "cllr_min", "cllr_cal", "log10_lr_min", "log10_lr_max"]
STORED_KEYS = ["stored_cllr", "stored_cllr_min", "stored_cllr_cal"]


def similarity_scores(distances: np.ndarray, options: dict) -> tuple[np.ndarray, str]:
    """Scores where higher means more alike: cosine similarity for cosine distance, else -distance."""
    if options.get("metric", "cosine") == "cosine" and not options.get("rerank"):
        return 1.0 - np.asarray(distances, dtype=np.float64), "cosine similarity"
    what = "re-ranked distance" if options.get("rerank") else f"{options.get('metric')} distance"
    return -np.asarray(distances, dtype=np.float64), f"minus the {what}"


@dataclass
class ForensicResult:
    per_run: list
    aggregate: dict
    notes: list
    score: str
    method: str
    folds: int
    curves: dict = field(default_factory=dict, repr=False)  # run -> {"roc": (fmr, fnmr), "openset": (fpir, fnir)}
    llrs: np.ndarray = field(default=None, repr=False)       # pooled over runs, for Tippett / ECE / PAV plots
    labels: np.ndarray = field(default=None, repr=False)
    # key -> identity-level bootstrap interval of the mean over the runs (evaluate.intervals); {} when not asked
    intervals: dict = field(default_factory=dict)
    interval_level: float = 0.95

    def as_dict(self) -> dict:
        return {"score": self.score, "calibration_method": self.method, "calibration_folds": self.folds,
                "aggregate": self.aggregate, "intervals": self.intervals, "per_run": self.per_run,
                "notes": self.notes, "lr_bands": self.lr_bands()}

    def lr_bands(self) -> list[dict]:
        """ENFSI's bands with the share of mated and non-mated comparisons whose LR fell in each."""
        rows = []
        have = self.llrs is not None and self.llrs.size
        bands = verbal_band(self.llrs) if have else None  # the rule verbal_equivalent words them by
        for band in verbal_scale_rows():
            row = {"lr": band["lr"], "verbal": band["verbal"]}
            if have:
                inside = bands == band["band"]
                row["mated"] = float(inside[self.labels == 1].mean()) if (self.labels == 1).any() else None
                row["nonmated"] = float(inside[self.labels == 0].mean()) if (self.labels == 0).any() else None
            rows.append(row)
        return rows


def _aggregate(per_run: list, keys: list) -> dict:
    out = {}
    for key in keys:
        values = [r["flat"][key] for r in per_run if r["flat"].get(key) is not None]
        out[key] = None if not values else {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                            "runs": len(values)}
    return out


def run_figures(scores: np.ndarray, query_pids, gallery_pids, method: str = "logit", folds: int = 2,
                seed: int = 0, calibration=None, pair: str | None = None) -> dict:
    """Every forensic figure of one run; a part that cannot be computed leaves a note instead. ``pair``:
    the aspect pair whose map of ``calibration`` is judged (None: its own maps)."""
    figures = {"notes": []}
    flat = {}
    try:
        verification = verification_metrics(*split_pairs(scores, query_pids, gallery_pids))
        figures["verification"] = verification.as_dict()
        figures["roc"] = (verification.fmr, verification.fnmr)
        flat.update({"eer": verification.eer, "auc": verification.auc,
                     **{f"fnmr@fmr={k}": v for k, v in verification.fnmr_at_fmr.items()}})
        figures["notes"] += verification.notes
    except ForensicMetricError as exc:
        figures["notes"].append(f"verification not computed: {exc}")
    try:
        openset = openset_metrics(scores, query_pids, gallery_pids)
        figures["openset"] = openset.as_dict()
        figures["fpir_fnir"] = openset.curve
        flat.update({f"fnir@fpir={k}": v for k, v in openset.fnir_at_fpir.items()})
        flat.update({f"fnir@rank{r}": v for r, v in openset.fnir_by_rank.items()})
        figures["notes"] += openset.notes
    except ForensicMetricError as exc:
        figures["notes"].append(f"open-set identification not computed: {exc}")
    q, g = np.asarray(query_pids), np.asarray(gallery_pids)
    first, second = np.repeat(q, g.size), np.tile(g, q.size)
    labels = (first == second).astype(np.int64)
    try:
        crossed = cross_calibrate(np.asarray(scores, np.float64).ravel(), labels, first, second, n_folds=folds,
                                  method=method, seed=seed)
        lr = crossed.figures()
        figures["calibration"] = {**lr, "folds": [{k: v for k, v in f.items() if k not in ("map", "fitted_ids",
                                                                                           "scored_ids")}
                                                  for f in crossed.folds]}
        figures["llrs"], figures["labels"], figures["lr_index"] = crossed.llrs, crossed.labels, crossed.index
        flat.update({k: lr[k] for k in LR_KEYS})
    except CalibrationError as exc:
        figures["notes"].append(f"likelihood ratios not computed: {exc}")
    if calibration is not None:  # a stored calibration, judged on this run's pairs
        try:
            stored = cllr_figures(calibration.log10_lr(np.asarray(scores).ravel(), "image", pair), labels)
            figures["stored_calibration"] = stored
            flat.update({f"stored_{k}": stored[k] for k in ("cllr", "cllr_min", "cllr_cal")})
        except CalibrationError as exc:
            figures["notes"].append(f"stored calibration not judged: {exc}")
    figures["flat"] = flat
    return figures


def forensic_evaluation(result, method: str = "logit", folds: int = 2, seed: int = 0,
                        progress: bool = False, calibration=None, intervals=None) -> ForensicResult:
    """Forensic figures for an ``EvalResult`` evaluated with ``keep_distances=True``.

    ``calibration`` (a ``ScoreCalibration`` of the same model) is also applied to every pair and judged
    by Cllr: the check that a stored calibration holds on identities it was not fitted on. ``intervals`` (an
    ``IntervalConfig``): identity-level bootstrap intervals of the headline figures (``evaluate.intervals``).
    """
    if calibration is not None and (result.options.get("flip") or result.options.get("rerank")
                                    or result.options.get("metric", "cosine") != "cosine"):
        raise CalibrationError("a stored calibration maps plain cosine scores (no flip, no re-ranking); "
                               "evaluate without --flip / --rerank / --metric euclidean to judge it")
    if not result.distances:
        raise ForensicMetricError("the evaluation kept no distances; evaluate with keep_distances=True")
    options = result.options
    # An evaluation of one aspect pair judges that pair's map only (docs/method.md, "Aspects of a hand").
    pair = calibration.pair_for(options.get("query_aspect"), options.get("gallery_aspect"),
                                options.get("mirror_query", False)) if calibration is not None else None
    runs = list(result.distances)
    iterator = runs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(runs, desc="forensic", unit="run", leave=False, disable=None)
    per_run, curves, notes, llrs, labels, score_name, compared = [], {}, [], [], [], "", []
    for run in iterator:
        query, gallery = result.splits[run]
        scores, score_name = similarity_scores(result.distances[run], result.options)
        query_pids, gallery_pids = [r.pid for r in query], [r.pid for r in gallery]
        figures = run_figures(scores, query_pids, gallery_pids, method, folds, seed + run, calibration, pair)
        curves[run] = {"roc": figures.pop("roc", None), "openset": figures.pop("fpir_fnir", None)}
        if intervals is not None and intervals.replicates > 0:
            compared.append(run_comparisons(scores, query_pids, gallery_pids, figures.get("lr_index"),
                                            figures.get("llrs")))
        figures.pop("lr_index", None)
        if "llrs" in figures:
            llrs.append(figures.pop("llrs"))
            labels.append(figures.pop("labels"))
        notes += [f"run {run}: {n}" for n in figures["notes"]]
        per_run.append({"run": run, **figures})
    aggregate = _aggregate(per_run, VERIFICATION_KEYS + OPENSET_KEYS + LR_KEYS
                           + (STORED_KEYS if calibration is not None else []))
    for entry in per_run:
        entry.pop("flat")
    found = ForensicResult(per_run, aggregate, _dedupe(notes), score_name, method, folds, curves,
                           np.concatenate(llrs) if llrs else None, np.concatenate(labels) if labels else None)
    if compared:
        found.intervals = evaluation_intervals(compared, aggregate, intervals.replicates, intervals.level,
                                               intervals.seed)
        found.interval_level = intervals.level
    return found


def _dedupe(notes: list) -> list:
    """Collapse a note repeated for every run into one line naming the runs."""
    by_text: dict[str, list] = {}
    for note in notes:
        run, _, text = note.partition(": ")
        by_text.setdefault(text, []).append(run.removeprefix("run "))
    return [f"run{'s' if len(r) > 1 else ''} {', '.join(r)}: {text}" for text, r in by_text.items()]
