"""Cross-calibration by identity: LRs for comparisons among people the calibration never saw.

The identities are dealt into folds. For each fold a calibration is fitted on the comparisons whose two
sides both belong to the other folds, and applied to the comparisons whose two sides both belong to
this fold; comparisons across folds are neither fitted on nor scored, so no identity is ever both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import MIN_IDENTITIES, CalibrationError, ScoreMap, cllr_figures, fit_score_map


def identity_folds(mated_ids, other_ids, n_folds: int, seed: int = 0) -> dict:
    """identity -> fold; identities with mated comparisons are dealt first so every fold gets its share."""
    rng = np.random.default_rng(seed)
    folds = {}
    position = 0
    for group in (sorted(set(mated_ids)), sorted(set(other_ids) - set(mated_ids))):
        for index in rng.permutation(len(group)):
            folds[group[index]] = position % n_folds
            position += 1
    return folds


@dataclass
class CrossCalibration:
    """Bounded log10 LRs of the scored comparisons (``index`` into the input arrays) and, per fold,
    the identities fitted on and scored, and the map fitted."""

    llrs: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    folds: list = field(default_factory=list)

    def figures(self) -> dict:
        """Cllr, Cllr_min, Cllr_cal and the LR range the folds' bounds allow."""
        out = cllr_figures(self.llrs, self.labels)
        out["log10_lr_min"] = min(f["map"].lower for f in self.folds)
        out["log10_lr_max"] = max(f["map"].upper for f in self.folds)
        return out


def cross_calibrate(scores, labels, first_ids, second_ids, n_folds: int = 2, method: str = "logit",
                    seed: int = 0) -> CrossCalibration:
    """Identity-disjoint LRs for comparisons (score, label, identity of each side).

    ``labels`` are 1 for mated and 0 for non-mated comparisons. For a (query, gallery image) pair the
    sides are the two images' identities; for a (query, identity) score, the query's and the candidate's.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.int64).ravel()
    first, second = np.asarray(first_ids), np.asarray(second_ids)
    mated_ids = set(first[labels == 1].tolist())
    if len(mated_ids) < MIN_IDENTITIES:
        raise CalibrationError(f"calibration by identity needs at least {MIN_IDENTITIES} identities with two or "
                               f"more images (same-person comparisons); found {len(mated_ids)}")
    n_folds = max(2, min(int(n_folds), len(mated_ids) // 3))
    fold_of = identity_folds(mated_ids, set(first.tolist()) | set(second.tolist()), n_folds, seed)
    first_fold = np.array([fold_of[i] for i in first.tolist()], dtype=np.int64)
    second_fold = np.array([fold_of[i] for i in second.tolist()], dtype=np.int64)
    llrs, kept_labels, kept_index, folds = [], [], [], []
    for fold in range(n_folds):
        fit = (first_fold != fold) & (second_fold != fold)
        scored = np.flatnonzero((first_fold == fold) & (second_fold == fold))
        if not (labels[scored] == 1).any() or not (labels[scored] == 0).any():
            continue  # a fold without both kinds of comparison cannot be judged by Cllr
        score_map: ScoreMap = fit_score_map(scores[fit & (labels == 1)], scores[fit & (labels == 0)], method,
                                            seed=seed + fold)
        llrs.append(score_map.log10_lr(scores[scored]))
        kept_labels.append(labels[scored])
        kept_index.append(scored)
        folds.append({"fold": fold, "map": score_map,
                      "fitted_ids": sorted({i for i, f in fold_of.items() if f != fold}, key=str),
                      "scored_ids": sorted({i for i, f in fold_of.items() if f == fold}, key=str),
                      "n_fitted": int(fit.sum()), "n_scored": int(scored.size)})
    if not folds:
        raise CalibrationError("no fold holds both same-person and different-person comparisons to score")
    return CrossCalibration(np.concatenate(llrs), np.concatenate(kept_labels), np.concatenate(kept_index), folds)


def image_pairs(features: np.ndarray, pids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of distinct images: (cosine scores, labels, first pid, second pid)."""
    features = np.asarray(features, dtype=np.float32)
    pids = np.asarray(pids)
    first, second = np.triu_indices(len(pids), k=1)
    similarity = features @ features.T
    return (similarity[first, second].astype(np.float64), (pids[first] == pids[second]).astype(np.int64),
            pids[first], pids[second])


def identity_pairs(features: np.ndarray, pids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each image against each identity's other images, scored by the best of them (as a search by
    identity scores a gallery person): (scores, labels, the image's pid, the identity)."""
    features = np.asarray(features, dtype=np.float32)
    pids = np.asarray(pids)
    similarity = (features @ features.T).astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)  # an image is never its own gallery
    identities = np.unique(pids)
    best = np.stack([similarity[:, pids == identity].max(axis=1) for identity in identities], axis=1)
    query, candidate = np.nonzero(np.isfinite(best))  # a one-image identity has no score against itself
    return (best[query, candidate], (pids[query] == identities[candidate]).astype(np.int64),
            pids[query], identities[candidate])
