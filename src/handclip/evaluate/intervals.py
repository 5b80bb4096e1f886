"""Identity-level bootstrap intervals for an evaluation's headline figures: EER, FNMR at each FMR level, FNIR
at each FPIR level and the cross-calibrated Cllr (docs/method.md, "Validating the LR method").

The runs of a manifest share their people, so one replicate draws the people once (as many draws as there are
people, with replacement) and applies the draw to every run: in each run a same-person pair of person i counts
c_i times, a different-person pair of i and j c_i * c_j times (``forensic.bootstrap``), a search by an image of
person i c_i times, and a gallery person drawn 0 times is absent from that replicate's searches. The replicate's
figure is the mean over the runs, as the point figure is; the interval is the percentile interval of the
replicates. The cross-calibrated LRs are resampled as they are (the calibrations are not refitted).

A figure is marked as one its sample size cannot support when (a) it rests on fewer people than its level
needs, since errors come by people rather than by images: FNMR at FMR = L needs 1/L different-person pairs of
people, FNIR at FPIR = L needs 1/L people searched without their mate; or (b) more than 5% of the replicates
could not compute it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..forensic.bootstrap import Interval, draw_identities, pair_weights, percentile_interval
from ..forensic.openset import FPIR_LEVELS, fnir_at_fpir, identity_scores, outcomes_of_identity_scores
from ..forensic.verification import FMR_LEVELS, equal_error_rate, fnmr_at_fmr, level_key, needed_pairs, roc_points

INTERVAL_KEYS = ["eer", *[f"fnmr@fmr={level_key(v)}" for v in FMR_LEVELS],
                 *[f"fnir@fpir={level_key(v)}" for v in FPIR_LEVELS], "cllr"]
MAX_FAILED_SHARE = 0.05


@dataclass
class RunComparisons:
    """One run's comparisons as the bootstrap resamples them (identities as codes into the evaluation's people)."""

    scores: np.ndarray        # every (query, gallery image) pair
    first: np.ndarray         # the query's person
    second: np.ndarray        # the gallery image's person
    by_identity: np.ndarray   # query x gallery person: the best image score (open-set searches)
    identities: np.ndarray    # the gallery people (columns of by_identity)
    query_pids: np.ndarray
    llrs: np.ndarray | None = None      # cross-calibrated log10 LRs of the pairs at lr_index
    lr_index: np.ndarray | None = None


def run_comparisons(scores, query_pids, gallery_pids, lr_index=None, llrs=None) -> RunComparisons:
    scores = np.asarray(scores, dtype=np.float64)
    q, g = np.asarray(query_pids), np.asarray(gallery_pids)
    identities, by_identity = identity_scores(scores, g)
    return RunComparisons(scores.ravel(), np.repeat(q, g.size), np.tile(g, q.size), by_identity, identities, q,
                          None if llrs is None else np.asarray(llrs, np.float64), lr_index)


def _encode(runs: list[RunComparisons]) -> tuple[int, list[dict]]:
    """The number of people over all runs, and each run's identities as codes 0..n-1."""
    people = np.unique(np.concatenate([np.concatenate([r.first, r.second]) for r in runs]))
    code = lambda ids: np.searchsorted(people, ids)  # noqa: E731
    return people.size, [{"first": code(r.first), "second": code(r.second), "query": code(r.query_pids),
                          "identities": code(r.identities)} for r in runs]


def _verification(run: RunComparisons, weights: np.ndarray) -> dict:
    index = np.repeat(np.arange(weights.size), weights)
    scores, mated = run.scores[index], (run.first == run.second)[index]
    if mated.all() or not mated.any():
        return {}
    fmr, fnmr, _ = roc_points(scores[mated], scores[~mated])
    out = {"eer": equal_error_rate(fmr, fnmr)}
    for level in FMR_LEVELS:
        if (~mated).sum() >= needed_pairs(level):
            out[f"fnmr@fmr={level_key(level)}"] = fnmr_at_fmr(fmr, fnmr, level)[0]
    return out


def _openset(run: RunComparisons, drawn: np.ndarray, codes: dict) -> dict:
    columns = drawn[codes["identities"]] > 0
    rows = np.repeat(np.arange(run.query_pids.size), drawn[codes["query"]])
    if rows.size == 0 or not columns.any():
        return {}
    outcomes = outcomes_of_identity_scores(run.by_identity[rows][:, columns], run.identities[columns],
                                           run.query_pids[rows])
    if outcomes.mated_rank.size == 0 or outcomes.nonmated_top.size == 0:
        return {}
    return {f"fnir@fpir={level_key(level)}": fnir_at_fpir(outcomes, level)[0] for level in FPIR_LEVELS
            if outcomes.nonmated_top.size >= needed_pairs(level)}


def _cllr(run: RunComparisons, weights: np.ndarray) -> dict:
    from lir.data.models import LLRData
    from lir.metrics import cllr

    if run.llrs is None:
        return {}
    index = np.repeat(run.lr_index, weights[run.lr_index])
    labels = (run.first == run.second)[index].astype(np.int64)
    if labels.all() or not labels.any():
        return {}
    llrs = np.repeat(run.llrs, weights[run.lr_index])
    return {"cllr": float(cllr(LLRData(features=llrs, labels=labels)))}


def _replicate(runs: list[RunComparisons], codes: list[dict], drawn: np.ndarray) -> dict[str, float]:
    """Each figure of one replicate: its mean over the runs that could compute it (NaN when none could)."""
    found: dict[str, list] = {key: [] for key in INTERVAL_KEYS}
    for run, code in zip(runs, codes):
        weights = pair_weights(drawn, code["first"], code["second"])
        for figures in (_verification(run, weights), _openset(run, drawn, code), _cllr(run, weights)):
            for key, value in figures.items():
                found[key].append(value)
    return {key: float(np.mean(values)) if values else math.nan for key, values in found.items()}


def _person_pairs(run: RunComparisons) -> int:
    """How many unordered pairs of two different people the run's comparisons hold."""
    people, second = np.unique(np.concatenate([run.first, run.second]), return_inverse=True)
    first, second = second[:run.first.size], second[run.first.size:]
    other = first != second
    low, high = np.minimum(first, second)[other], np.maximum(first, second)[other]
    return int(np.unique(low.astype(np.int64) * people.size + high).size)


def _people_support(runs: list[RunComparisons], key: str) -> tuple[int, int] | None:
    """(people-level sample, needed) for a figure at a level; None for figures without one."""
    if "@" not in key:
        return None
    level = float(key.partition("=")[2])
    if key.startswith("fnmr"):  # different-person pairs of people, fewest over the runs
        have = min(_person_pairs(r) for r in runs)
    else:  # people searched without their mate (a query whose person has a stranger in the gallery)
        have = min(len(set(r.query_pids.tolist())) for r in runs)
    return have, needed_pairs(level)


def _entry(interval: Interval, support: tuple[int, int] | None, key: str) -> dict:
    entry = {**interval.as_dict(), "supported": True, "note": ""}
    if support is not None and support[0] < support[1]:
        what = "different-person pairs of people" if key.startswith("fnmr") else "people searched without their mate"
        entry.update(supported=False, note=f"rests on {support[0]:,} {what}; {support[1]:,} needed")
    elif interval.failed > MAX_FAILED_SHARE * interval.replicates:
        entry.update(supported=False, note=f"{interval.failed} of {interval.replicates} replicates could not "
                                           f"compute it")
    return entry


def evaluation_intervals(runs: list[RunComparisons], aggregate: dict, replicates: int = 100, level: float = 0.95,
                         seed: int = 0) -> dict[str, dict]:
    """key -> the interval of the mean over the runs (``aggregate``'s point figure), with ``supported`` and a
    ``note`` saying why not; figures the aggregate lacks (too few comparisons even for a point) are left out."""
    keys = [key for key in INTERVAL_KEYS if aggregate.get(key) is not None]
    if not runs or not keys or replicates <= 0:
        return {}
    count, codes = _encode(runs)
    rng = np.random.default_rng(seed)
    values = {key: np.full(replicates, np.nan) for key in keys}
    for r in range(replicates):
        found = _replicate(runs, codes, draw_identities(rng, count))
        for key in keys:
            values[key][r] = found[key]
    return {key: _entry(percentile_interval(aggregate[key]["mean"], values[key], level),
                        _people_support(runs, key), key) for key in keys}


__all__ = ["INTERVAL_KEYS", "RunComparisons", "evaluation_intervals", "run_comparisons"]
