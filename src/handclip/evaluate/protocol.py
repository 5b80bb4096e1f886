"""Protocol evaluation: features once per image, metrics per Monte Carlo run, mean and std.

Identities are matched by the manifest's ``pid`` and nothing else (matching by folder order lines up
the wrong people; docs/method.md, "Pitfalls"). Every image needed by any requested run is encoded
exactly once, through the model's ``Encoder``; the runs then only index into that feature table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..aspects import aspects_of, normalise_aspect, record_aspect
from ..config import EvalConfig
from ..data.images import check_images_exist, unusable_images, warn_left_out
from ..errors import DataError
from .distances import cosine_distance, euclidean_distance
from .metrics import METRIC_KEYS, aggregate_runs, evaluate_rank
from .rerank import re_ranking


@dataclass
class RunMetrics:
    run: int
    metrics: dict
    num_query: int
    num_gallery: int
    num_gallery_ids: int
    cmc: list = field(default_factory=list, repr=False)


@dataclass
class EvalResult:
    per_run: list[RunMetrics]
    aggregate: dict
    feature_dim: int
    num_images_encoded: int
    options: dict = field(default_factory=dict)
    # path -> L2-normalised feature, and per-run query/gallery records and distances (for pictures)
    features: dict = field(default_factory=dict, repr=False)
    splits: dict = field(default_factory=dict, repr=False)
    distances: dict = field(default_factory=dict, repr=False)

    def mean_cmc(self) -> np.ndarray:
        return np.mean([r.cmc for r in self.per_run], axis=0)

    def as_dict(self) -> dict:
        return {
            "aggregate": self.aggregate,
            "per_run": [
                {"run": r.run, **r.metrics, "num_query": r.num_query, "num_gallery": r.num_gallery,
                 "num_gallery_ids": r.num_gallery_ids}
                for r in self.per_run
            ],
            "feature_dim": self.feature_dim,
            "num_images_encoded": self.num_images_encoded,
            "options": self.options,
        }


def _unique_paths(records: Iterable) -> list:
    seen: dict[str, object] = {}
    for rec in records:
        seen.setdefault(rec.path, rec)
    return list(seen.values())


def distance_matrix(q: np.ndarray, g: np.ndarray, eval_cfg: EvalConfig) -> np.ndarray:
    if eval_cfg.rerank:
        return re_ranking(q, g, k1=eval_cfg.k1, k2=eval_cfg.k2, lambda_value=eval_cfg.lambda_value)
    if eval_cfg.metric == "euclidean":
        return euclidean_distance(q, g)
    return cosine_distance(q, g)


def select_runs(manifest, runs) -> list[int]:
    available = manifest.runs
    if not available:
        raise DataError("the manifest has no query/gallery runs to evaluate")
    if runs is None or runs == "all":
        return list(available)
    chosen = list(dict.fromkeys(int(r) for r in ([runs] if isinstance(runs, (int, str)) else runs)))
    if not chosen:
        raise DataError("no runs were chosen to evaluate")
    missing = [r for r in chosen if r not in available]
    if missing:
        raise DataError(f"run {missing[0]} does not exist in the manifest (runs are {available[0]}..{available[-1]})")
    return chosen


def evaluate_records(features: dict[str, np.ndarray], query, gallery, eval_cfg: EvalConfig,
                     what: str = "this run", query_features: dict[str, np.ndarray] | None = None
                     ) -> tuple[dict, np.ndarray]:
    """Metrics for one query/gallery split, given a path -> feature table (``query_features`` for the
    queries when they were encoded otherwise, e.g. mirrored)."""
    if not query:
        raise DataError(f"no query images in {what}")
    if not gallery:
        raise DataError(f"no gallery images in {what}")
    q = np.stack([(query_features or features)[r.path] for r in query])
    g = np.stack([features[r.path] for r in gallery])
    dist = distance_matrix(q, g, eval_cfg)
    # A hand aspect's index in the camid column is not a camera: same-aspect matches are never dropped.
    camids_known = all(r.camid is not None and record_aspect(r) is None for r in (*query, *gallery))
    result = evaluate_rank(
        dist,
        np.array([r.pid for r in query]),
        np.array([r.pid for r in gallery]),
        np.array([r.camid for r in query]) if camids_known else None,
        np.array([r.camid for r in gallery]) if camids_known else None,
        max_rank=eval_cfg.max_rank,
    )
    metrics = result.as_dict()
    metrics["cmc"] = [float(v) for v in result.cmc]
    return metrics, dist


def evaluate_manifest(encoder, manifest, eval_cfg: EvalConfig | None = None, runs=None,
                      distractors: bool = True, progress: bool = False,
                      keep_distances: bool = False, skip_bad: bool = False, query_aspect: str | None = None,
                      gallery_aspect: str | None = None, mirror_query: bool = False) -> EvalResult:
    """Evaluate every requested run of ``manifest`` with ``encoder`` (a ``handclip.model.inference.Encoder``);
    each image is encoded once for all runs.

    ``distractors=False`` drops the manifest's distractor gallery images (11k gallery_all, HD 502-712).
    ``query_aspect`` / ``gallery_aspect``: each run's queries of one aspect against its gallery of another
    (or the same) aspect (a manifest holding several aspects needs both); ``mirror_query`` encodes the
    queries mirrored left-right (docs/method.md, "Aspects of a hand").
    Every image is checked before any is encoded: an unusable one stops the evaluation, naming it, unless
    ``skip_bad`` (``--skip-bad``): then each is named in a warning, left out of every run and listed in
    ``options["images_left_out"]``.
    """
    eval_cfg = eval_cfg or EvalConfig()
    chosen = select_runs(manifest, runs)
    query_aspect, gallery_aspect = choose_aspects(manifest, query_aspect, gallery_aspect)
    splits = {}
    for run in chosen:
        gallery = of_aspect(manifest.split("gallery", run), gallery_aspect)
        if not distractors:
            gallery = [r for r in gallery if not r.is_distractor]
        splits[run] = (of_aspect(manifest.split("query", run), query_aspect), gallery)
    every = _unique_paths(rec for q, g in splits.values() for rec in (*q, *g))
    check_images_exist(every)
    problems = unusable_images([rec.path for rec in every], skip_bad, "query/gallery ")
    left_out = {problem.path for problem in problems}
    if left_out:
        warn_left_out(problems, "the evaluation")
        splits = {run: ([r for r in q if r.path not in left_out], [r for r in g if r.path not in left_out])
                  for run, (q, g) in splits.items()}
    # Mirrored queries are encoded only mirrored.
    needed = _unique_paths(rec for q, g in splits.values() for rec in ((*g,) if mirror_query else (*q, *g)))
    feats = encoder.features(needed, batch_size=eval_cfg.batch_size, flip=eval_cfg.flip, progress=progress)
    table = {rec.path: feats[i] for i, rec in enumerate(needed)}
    query_table = None
    if mirror_query:
        queries = _unique_paths(rec for q, _ in splits.values() for rec in q)
        mirrored_feats = encoder.features(queries, batch_size=eval_cfg.batch_size, flip=eval_cfg.flip,
                                          progress=progress, mirror=True)
        query_table = {rec.path: mirrored_feats[i] for i, rec in enumerate(queries)}
    per_run = []
    distances = {}
    for run, (query, gallery) in splits.items():
        metrics, dist = evaluate_records(table, query, gallery, eval_cfg, what=f"run {run} of the manifest",
                                         query_features=query_table)
        if keep_distances:
            distances[run] = dist
        cmc = metrics.pop("cmc")
        per_run.append(RunMetrics(run, metrics, len(query), len(gallery), len({r.pid for r in gallery}), cmc))
    aggregate = aggregate_runs([{k: r.metrics[k] for k in METRIC_KEYS} for r in per_run])
    options = {"flip": eval_cfg.flip, "rerank": eval_cfg.rerank, "metric": eval_cfg.metric,
               "runs": chosen, "distractors": distractors,
               "distractor_images": max(sum(r.is_distractor for r in g) for _, g in splits.values()),
               "images_left_out": sorted(left_out)}
    if query_aspect is not None:
        options.update(query_aspect=query_aspect, gallery_aspect=gallery_aspect, mirror_query=bool(mirror_query))
    encoded = len(needed) + (len(query_table) if query_table is not None else 0)
    return EvalResult(per_run, aggregate, int(feats.shape[1]), encoded, options,
                      features=table, splits=splits, distances=distances)


def choose_aspects(manifest, query_aspect: str | None, gallery_aspect: str | None) -> tuple:
    """The (query, gallery) aspects to evaluate: both given, both None for a one-aspect manifest, or a
    DataError naming what is missing (a manifest with several aspects has no single meaning otherwise)."""
    if (query_aspect is None) != (gallery_aspect is None):
        raise DataError("give both --query-aspect and --gallery-aspect (the same one for a same-aspect evaluation)")
    found = aspects_of(r for r in manifest.records if r.split in ("query", "gallery") and not r.is_distractor)
    if query_aspect is None:
        if len(found) > 1:
            raise DataError(f"the manifest holds {len(found)} aspects ({', '.join(found)}); choose the queries' and "
                            f"the gallery's with --query-aspect and --gallery-aspect, or give --aspect-matrix")
        return None, None
    chosen = normalise_aspect(query_aspect, "query aspect"), normalise_aspect(gallery_aspect, "gallery aspect")
    for aspect, side in zip(chosen, ("query", "gallery")):
        if aspect not in found:
            raise DataError(f"the manifest has no {side} images of aspect {aspect} (it holds "
                            f"{', '.join(found) or 'no aspect labels'})")
    return chosen


def of_aspect(records: list, aspect: str | None) -> list:
    """The records of one aspect (all when ``aspect`` is None); distractors are kept whatever their aspect."""
    if aspect is None:
        return records
    return [r for r in records if r.is_distractor or record_aspect(r) == aspect]


def evaluate_validation(encoder, manifest, eval_cfg: EvalConfig | None = None) -> dict:
    """Model-selection score: held-out val images (one per training identity) ranked against the train images.

    Test identities are never looked at here: choosing the best epoch on them would report a
    selected, not a measured, result (docs/method.md, "Pitfalls"). With several aspects, each aspect's
    val images are ranked against its own train images and the metrics averaged over the aspects.
    """
    eval_cfg = eval_cfg or EvalConfig()
    eval_cfg = eval_cfg.model_copy(update={"rerank": False, "flip": False})
    query = manifest.split("val")
    gallery = manifest.split("train")
    if not query:
        raise DataError("the manifest has no val split to choose the best checkpoint on")
    needed = _unique_paths([*query, *gallery])
    check_images_exist(needed)
    feats = encoder.features(needed, batch_size=eval_cfg.batch_size)
    table = {rec.path: feats[i] for i, rec in enumerate(needed)}
    aspects = aspects_of(query)
    if len(aspects) <= 1:
        metrics, _ = evaluate_records(table, query, gallery, eval_cfg)
        return {k: metrics[k] for k in METRIC_KEYS}
    per_aspect = [evaluate_records(table, of_aspect(query, a), of_aspect(gallery, a), eval_cfg,
                                   what=f"the {a} validation split")[0] for a in aspects]
    return {k: float(np.mean([m[k] for m in per_aspect])) for k in METRIC_KEYS}
