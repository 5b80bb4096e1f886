"""Verification figures (ISO/IEC 19795-1) over every mated and non-mated (query, gallery image) pair.

A comparison is accepted when its score is at least the threshold. FMR is the share of non-mated
pairs accepted, FNMR the share of mated pairs rejected. The ROC points come from scikit-learn's
``roc_curve`` (every distinct score is a threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import HandCLIPError

FMR_LEVELS = (1e-2, 1e-3, 1e-4)


class ForensicMetricError(HandCLIPError):
    """Verification or open-set figures cannot be computed from these comparisons."""


def level_key(level: float) -> str:
    """1e-3 -> "0.001": the key under which a level's figure is stored."""
    return f"{level:g}" if level >= 1e-3 else f"{level:.0e}".replace("e-0", "e-")


def split_pairs(scores: np.ndarray, query_pids, gallery_pids) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the mated (same pid) and non-mated pairs of a query x gallery score matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(query_pids)[:, None] == np.asarray(gallery_pids)[None, :]
    return scores[same], scores[~same]


def needed_pairs(level: float) -> int:
    """Comparisons needed before a rate of ``level`` means more than zero errors (1 / level)."""
    return int(math.ceil(1.0 / level - 1e-9))


def roc_points(mated, nonmated) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FMR, FNMR, threshold) for every distinct score from high to low threshold; the first point is
    (0, 1) at threshold +inf."""
    from sklearn.metrics import roc_curve

    mated, nonmated = np.asarray(mated, np.float64), np.asarray(nonmated, np.float64)
    labels = np.concatenate([np.ones(mated.size, np.int8), np.zeros(nonmated.size, np.int8)])
    fmr, tmr, thresholds = roc_curve(labels, np.concatenate([mated, nonmated]), drop_intermediate=False)
    return fmr, 1.0 - tmr, thresholds


def equal_error_rate(fmr: np.ndarray, fnmr: np.ndarray) -> float:
    """Where FMR = FNMR, linearly interpolated between the two ROC points that straddle it."""
    gap = fnmr - fmr  # falls from 1 (threshold +inf) to -1 (threshold below every score)
    crossed = np.flatnonzero(gap <= 0)
    if crossed.size == 0:
        return float(fnmr[-1])
    i = int(crossed[0])
    if gap[i] == 0 or i == 0:
        return float(fmr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fmr[i - 1] + t * (fmr[i] - fmr[i - 1]))


def fnmr_at_fmr(fmr: np.ndarray, fnmr: np.ndarray, level: float) -> tuple[float, float]:
    """Lowest FNMR of any threshold whose FMR is at most ``level``, and that point's index."""
    allowed = np.flatnonzero(fmr <= level + 1e-12)
    best = int(allowed[np.argmin(fnmr[allowed])])
    return float(fnmr[best]), best


@dataclass
class VerificationResult:
    n_mated: int
    n_nonmated: int
    eer: float
    auc: float
    fnmr_at_fmr: dict  # level key -> FNMR, or None when there are too few non-mated pairs
    thresholds_at_fmr: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    fmr: np.ndarray = field(default=None, repr=False)
    fnmr: np.ndarray = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"n_mated": self.n_mated, "n_nonmated": self.n_nonmated, "eer": self.eer, "auc": self.auc,
                "fnmr_at_fmr": dict(self.fnmr_at_fmr), "thresholds_at_fmr": dict(self.thresholds_at_fmr),
                "notes": list(self.notes)}


def verification_metrics(mated, nonmated, levels=FMR_LEVELS) -> VerificationResult:
    """EER, AUC and FNMR at each FMR level; a level is left out (None, with a note) when fewer than
    1 / level non-mated pairs exist, since no error rate that small can be observed."""
    from sklearn.metrics import roc_auc_score

    mated, nonmated = np.asarray(mated, np.float64).ravel(), np.asarray(nonmated, np.float64).ravel()
    if mated.size == 0:
        raise ForensicMetricError("no mated pairs (no query has a gallery image of its own identity)")
    if nonmated.size == 0:
        raise ForensicMetricError("no non-mated pairs (the gallery holds only the queries' own identities)")
    if not (np.all(np.isfinite(mated)) and np.all(np.isfinite(nonmated))):
        raise ForensicMetricError("comparison scores contain NaN or infinite values")
    fmr, fnmr, thresholds = roc_points(mated, nonmated)
    labels = np.concatenate([np.ones(mated.size), np.zeros(nonmated.size)])
    auc = float(roc_auc_score(labels, np.concatenate([mated, nonmated])))
    at, where, notes = {}, {}, []
    for level in levels:
        key = level_key(level)
        if nonmated.size < needed_pairs(level):
            at[key] = where[key] = None
            notes.append(f"FNMR at FMR {key}: too few non-mated pairs ({nonmated.size}; "
                         f"at least {needed_pairs(level)} needed)")
            continue
        at[key], index = fnmr_at_fmr(fmr, fnmr, level)
        where[key] = float(thresholds[index])
    return VerificationResult(int(mated.size), int(nonmated.size), equal_error_rate(fmr, fnmr), auc, at, where,
                              notes, fmr, fnmr)
