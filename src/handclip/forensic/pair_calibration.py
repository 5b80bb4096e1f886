"""Likelihood ratios per aspect pair (docs/method.md, "Aspects of a hand").

Scores of a left-hand exhibit against right-hand photos, or of a palm against backs of hands, are
distributed otherwise than same-aspect scores: an LR map fitted on one pair of aspects says nothing
reliable about another. ``calibrate --aspect-pairs`` therefore fits one map per ordered pair
(query aspect, gallery aspect), and one more per pair whose sides differ with the query mirrored
(``dorsal_l(mirrored)->dorsal_r``), each on the comparisons of that pair only, with its own Cllr
cross-validated by identity. A search uses the map of its own pair and refuses when the calibration
has none (``ScoreCalibration.pair_maps``), never borrowing another pair's.

Comparisons of a pair: for a same-aspect pair every unordered pair of distinct images of that aspect
(as ``handclip calibrate`` always did); for two aspects, every (image of the query aspect, image of the
gallery aspect) pair. The ``identity`` kind scores an image against each person's images of the
gallery aspect by the best of them, as a search by identity does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..aspects import ASPECTS, is_left, pair_key
from .calibration import MIN_IDENTITIES, CalibrationError, fit_score_map
from .crosscal import cross_calibrate, identity_pairs, image_pairs


@dataclass(frozen=True)
class AspectImages:
    """The L2-normalised features of one aspect's images (and mirrored, when fitted) with their identities."""

    features: np.ndarray
    pids: np.ndarray
    mirrored: np.ndarray | None = None


def cross_image_pairs(query: np.ndarray, query_pids, gallery: np.ndarray, gallery_pids):
    """Every (query image, gallery image) pair of two disjoint image sets: (scores, labels, pids, pids)."""
    scores = (np.asarray(query, np.float32) @ np.asarray(gallery, np.float32).T).astype(np.float64)
    q, g = np.asarray(query_pids), np.asarray(gallery_pids)
    qi, gi = np.indices(scores.shape).reshape(2, -1)
    return scores.reshape(-1), (q[qi] == g[gi]).astype(np.int64), q[qi], g[gi]


def cross_identity_pairs(query: np.ndarray, query_pids, gallery: np.ndarray, gallery_pids):
    """Each query image against each person's gallery images, scored by the best of them."""
    similarity = (np.asarray(query, np.float32) @ np.asarray(gallery, np.float32).T).astype(np.float64)
    q, g = np.asarray(query_pids), np.asarray(gallery_pids)
    people = np.unique(g)
    best = np.stack([similarity[:, g == person].max(axis=1) for person in people], axis=1)
    qi, pi = np.indices(best.shape).reshape(2, -1)
    return best.reshape(-1), (q[qi] == people[pi]).astype(np.int64), q[qi], people[pi]


def pair_comparisons(query: AspectImages, gallery: AspectImages | None, kind: str, mirror: bool):
    """(scores, labels, first ids, second ids) of one pair; ``gallery`` None: a same-aspect pair."""
    if gallery is None:
        return (image_pairs if kind == "image" else identity_pairs)(query.features, query.pids)
    features = query.mirrored if mirror else query.features
    build = cross_image_pairs if kind == "image" else cross_identity_pairs
    return build(features, query.pids, gallery.features, gallery.pids)


def _subsample(pairs, limit: int, rng: np.random.Generator):
    scores, labels, first, second = pairs
    nonmated = np.flatnonzero(labels == 0)
    if nonmated.size <= limit:
        return pairs
    keep = np.sort(np.concatenate([np.flatnonzero(labels == 1), rng.choice(nonmated, limit, replace=False)]))
    return scores[keep], labels[keep], first[keep], second[keep]


def fit_pair(query: AspectImages, gallery: AspectImages | None, mirror: bool = False, method: str = "logit",
             folds: int = 5, seed: int = 0, max_nonmated: int = 200_000) -> tuple[dict, dict]:
    """(kind -> ScoreMap fitted on all the pair's comparisons, kind -> cross-validated figures)."""
    rng = np.random.default_rng(seed)
    maps, figures = {}, {}
    for kind in ("image", "identity"):
        scores, labels, first, second = _subsample(pair_comparisons(query, gallery, kind, mirror), max_nonmated, rng)
        crossed = cross_calibrate(scores, labels, first, second, n_folds=folds, method=method, seed=seed)
        maps[kind] = fit_score_map(scores[labels == 1], scores[labels == 0], method, seed=seed)
        figures[kind] = {**crossed.figures(), "n_mated": int(labels.sum()), "n_nonmated": int((labels == 0).sum()),
                         "folds": len(crossed.folds), "n_cross_validated": int(crossed.index.size)}
    return maps, figures


def aspect_pairs(aspects, mirror: bool = True) -> list[tuple[str, str, bool]]:
    """Every ordered (query aspect, gallery aspect, mirrored) pair to fit: all pairs unmirrored, and the pairs
    whose sides differ once more with the query mirrored (when ``mirror``)."""
    aspects = [a for a in ASPECTS if a in set(aspects)]
    pairs = [(q, g, False) for q in aspects for g in aspects]
    if mirror:
        pairs += [(q, g, True) for q in aspects for g in aspects if is_left(q) != is_left(g)]
    return pairs


def fit_aspect_pairs(images: dict[str, AspectImages], method: str = "logit", folds: int = 5, seed: int = 0,
                     mirror: bool = True, progress=None) -> tuple[dict, dict]:
    """(pair key -> kind -> ScoreMap, pair key -> kind -> figures) for every pair of the aspects in
    ``images``; a pair whose comparisons cannot be calibrated is left out and named in the figures."""
    maps, figures = {}, {}
    for q, g, mirrored in aspect_pairs(images, mirror and all(i.mirrored is not None for i in images.values())):
        key = pair_key(q, g, mirrored)
        people = len(set(images[q].pids.tolist()) & set(images[g].pids.tolist()))
        if people < MIN_IDENTITIES:
            figures[key] = {"skipped": f"{people} identities photographed in both aspects (need {MIN_IDENTITIES})"}
            continue
        try:
            maps[key], figures[key] = fit_pair(images[q], None if q == g else images[g], mirrored, method, folds,
                                               seed)
        except CalibrationError as exc:
            figures[key] = {"skipped": str(exc)}
        if progress is not None:
            progress(key)
    if not maps:
        raise CalibrationError("no aspect pair could be calibrated (too few identities photographed in both aspects)")
    return maps, figures


__all__ = ["AspectImages", "aspect_pairs", "cross_identity_pairs", "cross_image_pairs", "fit_aspect_pairs",
           "fit_pair", "pair_comparisons"]
