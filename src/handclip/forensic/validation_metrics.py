"""The figures a validation of the LR method reports, over one set of scored comparisons.

A ``PairSet`` holds every comparison of a validation: its similarity score, its calibrated log10 LR, whether
the two sides are the same person, and the identity on each side (the identity-level bootstrap resamples
people, never pairs: docs/method.md, "Validating the LR method"). ``METRICS`` names each figure a validation
plan may set a criterion on; each is computed by the NFI's ``lir`` where lir has it (Cllr, Cllr_min, devPAV,
LLR overestimation, invariance-verification bounds) and by its definition otherwise (rates of misleading
evidence, EER and AUC from the verification module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .calibration import cllr_figures
from .verification import ForensicMetricError, equal_error_rate, fnmr_at_fmr, needed_pairs, roc_points

# Strongly misleading evidence: an LR beyond 100 (or below 1/100) pointing the wrong way.
STRONG_LOG10 = 2.0


@dataclass(frozen=True)
class PairSet:
    """Scored comparisons: ``scores`` (cosine similarity), ``llrs`` (calibrated log10 LR), ``labels`` (1 same
    person, 0 different people), and ``first`` / ``second``, the identity on each side."""

    scores: np.ndarray
    llrs: np.ndarray
    labels: np.ndarray
    first: np.ndarray
    second: np.ndarray
    # Figures computed once per pair set and shared by the metrics that read them (Cllr, Cllr_min, Cllr_cal).
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        sizes = {len(self.scores), len(self.llrs), len(self.labels), len(self.first), len(self.second)}
        if len(sizes) != 1:
            raise ForensicMetricError(f"a pair set needs one score, LR, label and two identities per pair (got sizes {sorted(sizes)})")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "PairSet":
        """The pairs at ``index`` (repeats allowed: a bootstrap sample)."""
        return PairSet(self.scores[index], self.llrs[index], self.labels[index], self.first[index], self.second[index])

    @property
    def n_mated(self) -> int:
        return int(np.sum(self.labels == 1))

    @property
    def n_nonmated(self) -> int:
        return int(np.sum(self.labels == 0))


def make_pair_set(scores, llrs, labels, first, second) -> PairSet:
    return PairSet(np.asarray(scores, np.float64).ravel(), np.asarray(llrs, np.float64).ravel(),
                   np.asarray(labels, np.int64).ravel(), np.asarray(first).ravel(), np.asarray(second).ravel())


def _classes(pairs: PairSet) -> tuple[np.ndarray, np.ndarray]:
    mated, nonmated = pairs.llrs[pairs.labels == 1], pairs.llrs[pairs.labels == 0]
    if mated.size == 0 or nonmated.size == 0:
        raise ForensicMetricError(f"the figure needs same-person and different-person comparisons "
                                  f"(got {mated.size} and {nonmated.size})")
    return mated, nonmated


def misleading_rates(pairs: PairSet) -> dict:
    """Rates of misleading evidence: RMEP, the share of same-person comparisons with LR < 1; RMED, the share of
    different-person comparisons with LR > 1; and the strongly misleading ones (LR < 1/100 for the same
    person, LR > 100 for different people), with the counts they come from."""
    mated, nonmated = _classes(pairs)
    counts = {"rmep": int(np.sum(mated < 0)), "rmed": int(np.sum(nonmated > 0)),
              "rmep_strong": int(np.sum(mated < -STRONG_LOG10)), "rmed_strong": int(np.sum(nonmated > STRONG_LOG10))}
    rates = {key: count / (mated.size if key.startswith("rmep") else nonmated.size) for key, count in counts.items()}
    return {**rates, "counts": counts, "n_mated": int(mated.size), "n_nonmated": int(nonmated.size)}


def devpav(pairs: PairSet) -> float:
    """lir's devPAV: the mean distance, in log10 LR, between the LRs and their PAV-recalibrated values (the area
    between the PAV curve and the identity line over the LR range, divided by that range); 0 is perfect."""
    from lir.metrics.devpav import devpav as lir_devpav

    _classes(pairs)
    return float(lir_devpav(pairs.llrs.copy(), pairs.labels.copy()))


class _LirGrid(np.ndarray):
    """An array ``float()`` accepts at one element: lir 1.3.1's fiducial densities take ``float(np.diff(grid[:2]))``,
    which NumPy 2 refuses for a one-element 1-d array. lir's grid is built from the LLRs, so they are passed
    as this view."""

    def __float__(self):
        return float(np.asarray(self).reshape(-1)[0]) if self.size == 1 else float(np.asarray(self))


def llr_overestimation(pairs: PairSet, num_fids: int = 200, seed: int = 0, alpha: float = 0.05):
    """lir's LLR overestimation: log10 of system LR / empirical LR on a grid of LLRs, with its 95% fiducial
    interval. Returns (grid, overestimation, interval of shape (n, 3): low, median, high) or Nones when the two
    classes' LLRs do not overlap (nothing to compare).

    The curve is lir's ``calc_llr_overestimation``; the interval is taken from lir's fiducial densities of the
    two classes the way lir takes it (percentiles of their ratio, a grid point left blank where more than 5% of
    the ratios are undefined), called here on the grid as ``_LirGrid`` because lir 1.3.1 passes the grid to
    ``float`` in a form NumPy 2 refuses."""
    from lir.algorithms.llr_overestimation import calc_fiducial_density_functions, calc_llr_overestimation

    _classes(pairs)
    llrs, labels = pairs.llrs.copy(), pairs.labels.copy()
    grid, over, _ = calc_llr_overestimation(llrs, labels, num_fids=0)
    if grid is None or num_fids == 0:
        return grid, over, None if grid is None else np.full((len(grid), 3), np.nan)
    view = grid.view(_LirGrid)
    densities = [np.asarray(calc_fiducial_density_functions(llrs[labels == label], view, "pdf", num_fids, seed=seed))
                 for label in (1, 0)]
    for density in densities:
        density[density == 0] = np.nan
    ratios = densities[0] / densities[1]
    interval = np.nanpercentile(ratios, (100 * alpha / 2, 50, 100 * (1 - alpha / 2)), axis=1, method="hazen").T
    interval[np.sum(np.isnan(ratios), axis=1) > 0.05 * num_fids, :] = np.nan
    return grid, over, np.log10(np.power(10.0, grid)[:, None] / interval)


def mean_llr_overestimation(pairs: PairSet) -> float:
    """The mean absolute LLR overestimation over lir's grid (NaN when the classes do not overlap)."""
    grid, over, _ = llr_overestimation(pairs, num_fids=0)
    return float(np.mean(np.abs(over))) if over is not None else math.nan


def invariance_bounds(pairs: PairSet, step: float = 0.01) -> tuple[float, float]:
    """lir's invariance-verification bounds (Alberink et al.) as log10 LR: (lower, upper)."""
    from lir.algorithms.invariance_bounds import calculate_invariance_bounds

    _classes(pairs)
    lrs = np.power(10.0, pairs.llrs)  # lir replaces extremes in place: a fresh array
    low, high = calculate_invariance_bounds(lrs, pairs.labels, step_size=step)[:2]
    return float(np.log10(low)), float(np.log10(high))


def _verification(pairs: PairSet):
    _classes(pairs)
    return roc_points(pairs.scores[pairs.labels == 1], pairs.scores[pairs.labels == 0])


def eer(pairs: PairSet) -> float:
    """Equal error rate of the similarity scores (ISO/IEC 19795-1)."""
    return equal_error_rate(*_verification(pairs)[:2])


def auc(pairs: PairSet) -> float:
    from sklearn.metrics import roc_auc_score

    _classes(pairs)
    return float(roc_auc_score(pairs.labels, pairs.scores))


def _fnmr_at(level: float) -> Callable[[PairSet], float]:
    def figure(pairs: PairSet) -> float:
        if pairs.n_nonmated < needed_pairs(level):
            return math.nan  # no error rate that small can be observed (as evaluate marks it)
        fmr, fnmr, _ = _verification(pairs)
        return fnmr_at_fmr(fmr, fnmr, level)[0]
    return figure


def _cllr(key: str) -> Callable[[PairSet], float]:
    def figure(pairs: PairSet) -> float:
        if "cllr" not in pairs.cache:
            pairs.cache["cllr"] = cllr_figures(pairs.llrs, pairs.labels)
        return pairs.cache["cllr"][key]
    return figure


def _rate(key: str) -> Callable[[PairSet], float]:
    return lambda pairs: misleading_rates(pairs)[key]


@dataclass(frozen=True)
class Metric:
    """A figure a criterion can be set on: what it means, and how it is computed from a PairSet."""

    name: str
    meaning: str
    compute: Callable[[PairSet], float]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("cllr", "log-likelihood-ratio cost: 0 perfect, 1 uninformative (lir)", _cllr("cllr")),
    Metric("cllr_min", "Cllr after PAV recalibration: the discrimination alone (lir)", _cllr("cllr_min")),
    Metric("cllr_cal", "Cllr - Cllr_min: the loss from calibration", _cllr("cllr_cal")),
    Metric("devpav", "mean log10 distance of the LRs from their PAV recalibration (lir)", devpav),
    Metric("eer", "equal error rate of the similarity scores", eer),
    Metric("auc", "area under the ROC curve of the similarity scores", auc),
    Metric("fnmr@fmr=0.01", "share of same-person pairs rejected at the threshold accepting 1% of others",
           _fnmr_at(1e-2)),
    Metric("fnmr@fmr=0.001", "share of same-person pairs rejected at the threshold accepting 0.1% of others",
           _fnmr_at(1e-3)),
    Metric("rmep", "same-person comparisons with LR < 1 (misleading towards different people)", _rate("rmep")),
    Metric("rmed", "different-person comparisons with LR > 1 (misleading towards the same person)", _rate("rmed")),
    Metric("rmep_strong", "same-person comparisons with LR < 1/100", _rate("rmep_strong")),
    Metric("rmed_strong", "different-person comparisons with LR > 100", _rate("rmed_strong")),
    Metric("llr_overestimation", "mean |log10(system LR / empirical LR)| over the LR range (lir)",
           mean_llr_overestimation),
)}

__all__ = ["METRICS", "STRONG_LOG10", "Metric", "PairSet", "auc", "devpav", "eer", "invariance_bounds",
           "llr_overestimation", "make_pair_set", "mean_llr_overestimation", "misleading_rates"]
