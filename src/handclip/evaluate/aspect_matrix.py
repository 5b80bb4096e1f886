"""Matching across hand aspects: every query aspect against every gallery aspect (docs/method.md,
"Aspects of a hand").

For a manifest holding several aspects (``prepare synthetic --aspects ...``, ``prepare 11k --aspect all``),
cell (A, B) ranks each Monte Carlo run's query images of aspect A against the run's gallery of aspect B:
rank-1 and mAP (``evaluate_rank``), and the verification EER over every (query, gallery image) pair of
the cell. The diagonal is the same-aspect protocol. With ``mirror_query`` a query is mirrored left-right
in the cells whose query and gallery sides differ (a left hand against right hands), the way an examiner
prepares such an exhibit; same-side cells are never mirrored. Every image is encoded once (the mirrored
queries once more). Figures are mean and std (population) over the runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..aspects import aspects_of, is_left, pair_key, record_aspect
from ..config import EvalConfig
from ..data.images import check_images_exist, unusable_images, warn_left_out
from ..errors import DataError
from ..forensic.verification import ForensicMetricError, split_pairs, verification_metrics
from .forensic import similarity_scores
from .metrics import MetricInputError, aggregate_runs
from .protocol import _unique_paths, evaluate_records, of_aspect, select_runs

MATRIX_METRICS = ("rank1", "mAP", "eer")


@dataclass
class AspectMatrix:
    """The cells of a query-aspect x gallery-aspect evaluation: ``cells[(A, B)]`` maps each of
    ``MATRIX_METRICS`` to ``{"mean", "std", "values"}`` (None when no run of the cell could be scored),
    plus ``mirrored`` and the query / gallery image counts per run."""

    aspects: list[str]
    cells: dict
    options: dict = field(default_factory=dict)

    def means(self, metric: str) -> np.ndarray:
        """[len(aspects), len(aspects)] of the metric's mean (NaN where the cell has none); rows = query aspect."""
        out = np.full((len(self.aspects), len(self.aspects)), np.nan)
        for i, qa in enumerate(self.aspects):
            for j, ga in enumerate(self.aspects):
                value = self.cells[(qa, ga)].get(metric)
                if value is not None:
                    out[i, j] = value["mean"]
        return out

    def as_dict(self) -> dict:
        return {"aspects": list(self.aspects), "options": dict(self.options),
                "cells": {pair_key(qa, ga): cell for (qa, ga), cell in self.cells.items()}}


def _cell_run(table, mirrored_table, query, gallery, eval_cfg, what: str) -> dict | None:
    """rank-1, mAP and EER of one cell in one run, or None when no query has its identity in the gallery."""
    try:
        metrics, dist = evaluate_records(table, query, gallery, eval_cfg, what=what, query_features=mirrored_table)
    except MetricInputError:
        return None
    scores, _ = similarity_scores(dist, {"metric": eval_cfg.metric, "rerank": eval_cfg.rerank})
    mated, nonmated = split_pairs(scores, [r.pid for r in query], [r.pid for r in gallery])
    try:
        eer = verification_metrics(mated, nonmated, levels=()).eer
    except ForensicMetricError:
        return None
    return {"rank1": metrics["rank1"], "mAP": metrics["mAP"], "eer": eer}


def aspect_matrix(encoder, manifest, eval_cfg: EvalConfig | None = None, runs=None, mirror_query: bool = False,
                  aspects=None, progress: bool = False, skip_bad: bool = False) -> AspectMatrix:
    """Every query aspect against every gallery aspect of ``manifest`` (distractors left out). An unusable
    image stops it, naming the file, unless ``skip_bad``: then each is named and left out of every cell."""
    eval_cfg = eval_cfg or EvalConfig()
    chosen = select_runs(manifest, runs)
    test = [r for r in manifest.records if r.split in ("query", "gallery") and r.run in chosen and not r.is_distractor]
    found = aspects_of(test)
    asked = aspects
    aspects = [a for a in found if asked is None or a in asked]
    if not aspects or (asked is None and len(found) < 2):
        raise DataError(f"an aspect matrix needs a manifest with several aspects; this one holds "
                        f"{', '.join(found) or 'no aspect labels'} (prepare it with --aspects / --aspect all)")
    test = [r for r in test if record_aspect(r) in aspects]
    check_images_exist(_unique_paths(test))
    problems = unusable_images([rec.path for rec in _unique_paths(test)], skip_bad, "query/gallery ")
    left_out = {problem.path for problem in problems}
    if left_out:
        warn_left_out(problems, "the aspect matrix")
    test = [r for r in test if r.path not in left_out]
    needed = _unique_paths(test)
    feats = encoder.features(needed, batch_size=eval_cfg.batch_size, flip=eval_cfg.flip, progress=progress)
    table = {rec.path: feats[i] for i, rec in enumerate(needed)}
    mirrored_table = None
    if mirror_query:
        queries = _unique_paths(r for r in test if r.split == "query")
        flipped = encoder.features(queries, batch_size=eval_cfg.batch_size, flip=eval_cfg.flip, progress=progress,
                                   mirror=True)
        mirrored_table = {rec.path: flipped[i] for i, rec in enumerate(queries)}
    cells = {}
    for qa in aspects:
        for ga in aspects:
            mirror = mirror_query and is_left(qa) != is_left(ga)
            per_run, sizes = [], []
            for run in chosen:
                query = [r for r in of_aspect(manifest.split("query", run), qa)
                         if not r.is_distractor and r.path not in left_out]
                gallery = [r for r in of_aspect(manifest.split("gallery", run), ga)
                           if not r.is_distractor and r.path not in left_out]
                sizes.append((len(query), len(gallery)))
                scored = _cell_run(table, mirrored_table if mirror else None, query, gallery, eval_cfg,
                                   f"run {run}, {pair_key(qa, ga)}")
                if scored is not None:
                    per_run.append(scored)
            summary = aggregate_runs(per_run) if per_run else {}
            cells[(qa, ga)] = {**{m: summary.get(m) for m in MATRIX_METRICS}, "mirrored": mirror,
                               "runs_scored": len(per_run), "queries": sizes[0][0], "gallery": sizes[0][1]}
    options = {"runs": chosen, "mirror_query": bool(mirror_query), "flip": eval_cfg.flip, "rerank": eval_cfg.rerank,
               "metric": eval_cfg.metric, "images_encoded": len(needed) + (len(mirrored_table or {})),
               "images_left_out": sorted(left_out)}
    return AspectMatrix(aspects, cells, options)


__all__ = ["AspectMatrix", "MATRIX_METRICS", "aspect_matrix"]
