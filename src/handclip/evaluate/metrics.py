"""Retrieval metrics: CMC, mAP and mINP with Market-1501 semantics, distance helpers, run aggregation.

Semantics of :func:`evaluate_rank` (docs/method.md, "Evaluation"):

* For each query the gallery is ranked by distance, ascending. Ties are broken by gallery order (a
  stable sort): of two equally distant gallery items the one listed first ranks first.
* Gallery items with the same identity **and** the same camera as the query are dropped from that
  query's ranking, but only when camera ids are given (hand datasets have none).
* A query with no correct match left in its gallery is skipped and counted in ``num_skipped_queries``.
* AP is the mean of the precision at the rank of each correct match; mAP its mean over valid queries.
* mINP (Ye et al. 2021) is the mean over valid queries of ``num_correct / rank of the hardest match``.
* CMC[k] is the fraction of valid queries whose first correct match is within the top k+1. Asking for
  more ranks than a query's gallery holds is allowed: the curve then stays at its last value (1.0).

The fast path never argsorts a gallery row. The only thing the metrics need is the rank of every
correct match, and rank = (number of gallery items strictly closer) + (number of equally close items
listed earlier). With a few matches per query, counting with comparisons costs ``k * gallery`` work
per query against ``gallery * log(gallery)`` for a sort; when identities are large the code switches
to sorting the row values and binary search. Counting runs in float32 and any match whose float32
value is shared by another item is recounted exactly, so results equal the classic loop's (tests
check to 1e-12). The comparisons run on a few gathered rows at a time whose boolean scratch stays in
the CPU cache, and the booleans are added eight per machine word; this, not the arithmetic, is what
sets the speed. (A binary search of every item among the sorted matches, ``torch.searchsorted``
included, measured 10x slower than these comparisons: it branches per item.) Temporary memory stays
bounded (tens of MiB) whatever the matrix size. :func:`evaluate_rank_reference` is the classic
per-query loop kept as the ground truth for tests and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import HandCLIPError

__all__ = ["MetricInputError", "RankResult", "evaluate_rank", "evaluate_rank_reference", "aggregate_runs",
           "METRIC_KEYS"]

# The retrieval figures every evaluation reports (protocol runs, validation, the demo, the CLI).
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")

# Bound on the temporary boolean/float blocks, in elements (about 32 MiB of booleans).
_BLOCK_ELEMENTS = 1 << 25
# Boolean scratch of one comparison sub-block: small enough to stay in the CPU's L2/L3 cache, where
# writing and re-reading it is ~1.5x faster than streaming a 32 MiB block through memory.
_SCRATCH_BYTES = 1 << 21
# Compare against each match while a query has at most this many times log2(gallery) matches, else
# sort the row: on 10,000-wide float32 rows the two cost the same at about 32-40 matches.
_COMPARISON_PER_LOG2 = 2.5


class MetricInputError(HandCLIPError, ValueError):
    """Inputs to a metric are malformed (shapes, NaN distances, no valid query, ...)."""


@dataclass
class RankResult:
    """Outcome of :func:`evaluate_rank`. ``cmc`` has ``max_rank`` entries; everything lies in [0, 1]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    max_rank: int = field(default=0)

    def rank(self, k: int) -> float:
        """CMC at rank k (1-based); ranks past ``max_rank`` repeat the last value."""
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def as_dict(self) -> dict[str, float | int]:
        return {
            "rank1": self.rank(1),
            "rank5": self.rank(5),
            "rank10": self.rank(10),
            "mAP": float(self.mAP),
            "mINP": float(self.mINP),
            "num_valid_queries": int(self.num_valid_queries),
            "num_skipped_queries": int(self.num_skipped_queries),
        }


# ----------------------------------------------------------------------------------------------
# Input validation


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if hasattr(x, "float") and str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def read_array(x: Any, name: str, what: str) -> np.ndarray:
    """``x`` (numpy, torch or nested lists) as a numpy array; MetricInputError naming ``name`` if it cannot be."""
    try:
        return _to_numpy(x)
    except Exception as exc:  # e.g. ragged nested lists
        raise MetricInputError(f"{name} could not be read as {what} ({exc})") from exc


def _raise_nan(d: np.ndarray) -> None:
    nan = np.isnan(d)
    i, j = np.argwhere(nan)[0]
    raise MetricInputError(
        f"distmat contains {int(nan.sum())} NaN distance(s), first at query {i}, gallery {j}; "
        "check the features for NaN/inf"
    )


def _as_distmat(distmat: Any, check_nan: bool = True) -> np.ndarray:
    d = read_array(distmat, "distmat", "a numeric matrix")
    if d.ndim != 2:
        raise MetricInputError(f"distmat must be a 2-D (num_query x num_gallery) matrix, got shape {d.shape}")
    if d.dtype.kind not in "biuf":
        raise MetricInputError(f"distmat must hold real numbers, got dtype {d.dtype}")
    if d.shape[0] == 0 or d.shape[1] == 0:
        raise MetricInputError(f"distmat is empty (shape {d.shape}): need at least one query and one gallery item")
    # float32 stays float32 (comparisons are exact in either precision; no 2x copy of a big matrix).
    d = np.ascontiguousarray(d, dtype=np.float32 if d.dtype in (np.float16, np.float32) else np.float64)
    # min() propagates NaN, so the full NaN mask is only built when there is one to report.
    # (evaluate_rank checks each row while it is in the cache instead: one pass less over memory.)
    if check_nan and np.isnan(d.min()):
        _raise_nan(d)
    return d


def _as_ids(values: Any, name: str, expected: int) -> np.ndarray:
    a = read_array(values, name, "an integer array")
    if a.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {a.shape}")
    if a.shape[0] != expected:
        raise MetricInputError(f"{name} has {a.shape[0]} entries but distmat needs {expected}")
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)) and np.all(np.abs(a) < 2**62):
        return a.astype(np.int64)
    raise MetricInputError(f"{name} must hold integer ids, got dtype {a.dtype}")


def _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, check_nan=True):
    d = _as_distmat(distmat, check_nan)
    nq, ng = d.shape
    qp = _as_ids(q_pids, "q_pids", nq)
    gp = _as_ids(g_pids, "g_pids", ng)
    if (q_camids is None) != (g_camids is None):
        raise MetricInputError("q_camids and g_camids must be given together (or both left out)")
    qc = gc = None
    if q_camids is not None:
        qc = _as_ids(q_camids, "q_camids", nq)
        gc = _as_ids(g_camids, "g_camids", ng)
    if isinstance(max_rank, (bool, np.bool_)) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise MetricInputError(f"max_rank must be a positive integer, got {max_rank!r}")
    return d, qp, gp, qc, gc, int(max_rank)


# ----------------------------------------------------------------------------------------------
# Fast, vectorised evaluation


def _match_lists(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery indices of each query's identity: (gallery_order, start, count) per query.

    ``gallery_order[start[i]:start[i] + count[i]]`` are the gallery items sharing query i's pid, in
    gallery order (stable sort by pid).
    """
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    start = np.searchsorted(sorted_pids, q_pids, side="left")
    stop = np.searchsorted(sorted_pids, q_pids, side="right")
    return order, start, stop - start


def _swar_layout(ng: int) -> tuple[int, int]:
    """(runs, words) for counting a row of ``ng`` booleans eight at a time as uint64 words.

    The row is padded to ``8 * words * runs`` bytes and read as ``runs`` runs of ``words <= 255``
    words; adding the words of one run leaves every byte lane <= 255, so no carry crosses lanes.
    """
    runs = -(-ng // (8 * 255))
    return runs, -(-ng // (8 * runs))


def _count_true(scratch: np.ndarray, runs: int, words: int) -> np.ndarray:
    """Number of True per (row, threshold) of a (b, k, 8 * words * runs) boolean scratch block.

    Adding eight booleans per machine word beats numpy's byte-wise casting reduction by ~25%.
    """
    b, k, _ = scratch.shape
    lanes = np.add.reduce(scratch.view(np.uint64).reshape(b, k, runs, words), axis=3)
    return np.add.reduce(lanes.view(np.uint8).reshape(b, k, 8 * runs), axis=2, dtype=np.int64)


def _comparison_scratch(rows: int, k: int, ng: int) -> np.ndarray:
    runs, words = _swar_layout(ng)
    return np.zeros((rows, k, 8 * runs * words), dtype=bool)  # padding columns stay False


def _strict_and_equal_counts_by_comparison(
    d: np.ndarray, thresholds: np.ndarray, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each row b and threshold t = thresholds[b, j]: #{g: d[b,g] < t} and #{g: d[b,g] == t}.

    Rows go through in sub-blocks that fit ``scratch`` (rows x thresholds x padded gallery booleans,
    sized to stay in the CPU cache and reused, so it is allocated and zeroed once).
    """
    b, ng = d.shape
    k = thresholds.shape[1]
    runs, words = _swar_layout(ng)
    if scratch is None:
        scratch = _comparison_scratch(max(1, min(b, _SCRATCH_BYTES // (k * 8 * runs * words))), k, ng)
    step = scratch.shape[0]
    n_less = np.empty((b, k), dtype=np.int64)
    n_equal = np.empty((b, k), dtype=np.int64)
    for s in range(0, b, step):
        e = min(b, s + step)
        buf = scratch[: e - s]
        values, t = d[s:e, None, :], thresholds[s:e, :, None]
        np.less(values, t, out=buf[:, :, :ng])
        n_less[s:e] = _count_true(buf, runs, words)
        np.equal(values, t, out=buf[:, :, :ng])
        n_equal[s:e] = _count_true(buf, runs, words)
    return n_less, n_equal


def _strict_and_equal_counts_by_sorting(d: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same as the comparison version, by sorting each row's values and binary search."""
    ordered = np.sort(d, axis=1)
    n_less = np.empty(thresholds.shape, dtype=np.int64)
    n_equal = np.empty(thresholds.shape, dtype=np.int64)
    for i in range(d.shape[0]):
        n_less[i] = np.searchsorted(ordered[i], thresholds[i], side="left")
        n_equal[i] = np.searchsorted(ordered[i], thresholds[i], side="right") - n_less[i]
    return n_less, n_equal


def _ranks_of_matches(d: np.ndarray, rows: np.ndarray, match_idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """0-based stable rank (ties by gallery order) of gallery item match_idx[b, j] in row rows[b] of d.

    Counting runs in float32, which halves memory traffic. Rounding to float32 is monotone, so an item
    strictly below (above) the match in float32 is strictly below (above) it exactly; only when
    another item rounds to the same float32 value as the match (a real tie, or values closer than
    float32 resolution) is that match's rank recounted exactly in the matrix's own precision.
    """
    b, k = match_idx.shape
    ng = d.shape[1]
    exact_thresholds = np.where(valid, d[rows[:, None], match_idx], -np.inf)
    with np.errstate(over="ignore"):  # beyond float32 range -> inf, still order-preserving
        thresholds = exact_thresholds.astype(np.float32)
    # Padding entries probe with -inf: they count nothing and are masked out afterwards.
    # Counting costs two comparison passes per match, sorting about log2(ng) passes per row.
    by_comparison = k <= max(4, int(_COMPARISON_PER_LOG2 * np.log2(max(ng, 2))))
    if by_comparison:
        runs, words = _swar_layout(ng)
        step = max(1, min(b, _SCRATCH_BYTES // (k * 8 * runs * words)))
        scratch = _comparison_scratch(step, k, ng)
    else:
        step = max(1, min(b, _BLOCK_ELEMENTS // (8 * ng)))
    n_less = np.empty((b, k), dtype=np.int64)
    n_equal = np.empty((b, k), dtype=np.int64)
    gathered = np.empty((step, ng), dtype=np.float32)
    for s in range(0, b, step):
        e = min(b, s + step)
        # Gather (and round) only a cache-sized group of rows at a time; float64 rows are copied one
        # by one straight into float32, so no float64 copy competes with the scratch for the cache.
        block = gathered[: e - s]
        if d.dtype == np.float32:
            np.take(d, rows[s:e], axis=0, out=block, mode="clip")  # "clip": no buffered copy
        else:
            with np.errstate(over="ignore"):
                for i, r in enumerate(rows[s:e]):
                    block[i] = d[r]
        if np.isnan(block.min()):  # min() propagates NaN (float32 keeps it)
            _raise_nan(d)
        if by_comparison:
            n_less[s:e], n_equal[s:e] = _strict_and_equal_counts_by_comparison(block, thresholds[s:e], scratch)
        else:
            n_less[s:e], n_equal[s:e] = _strict_and_equal_counts_by_sorting(block, thresholds[s:e])
    ranks = n_less
    # Recount exactly where another item shares the match's float32 value; equal items listed
    # before the match rank before it.
    tb, tj = np.nonzero(valid & (n_equal > 1))
    if tb.size:
        step = max(1, _BLOCK_ELEMENTS // (4 * ng))
        positions = np.arange(ng)
        for s in range(0, tb.size, step):
            bb, jj = tb[s : s + step], tj[s : s + step]
            full = d[rows[bb]]
            t = exact_thresholds[bb, jj][:, None]
            earlier = (full == t) & (positions[None, :] < match_idx[bb, jj][:, None])
            ranks[bb, jj] = (full < t).sum(axis=1) + earlier.sum(axis=1)
    return ranks


def _raise_if_nan_in_rows(d: np.ndarray, rows: np.ndarray) -> None:
    """NaN check of ``rows`` of ``d``, a cache-sized group of rows at a time."""
    rows_per_check = max(1, _BLOCK_ELEMENTS // (8 * d.shape[1]))
    for s in range(0, rows.size, rows_per_check):
        if np.isnan(d[rows[s : s + rows_per_check]].min()):
            _raise_nan(d)


def _query_blocks(count: np.ndarray, ng: int):
    """Blocks of query indices grouped by how many matches they have (so padding stays small), sized for
    memory; queries without a match are left out."""
    nq = len(count)
    by_count = np.argsort(count, kind="stable")
    pos = 0
    while pos < nq:
        # Size the block for its widest row (the last one, counts ascend), then shrink if needed.
        # (at least 4 per row so the gathered rows themselves stay within a few blocks' memory).
        end = min(nq, pos + max(1, _BLOCK_ELEMENTS // (ng * max(int(count[by_count[pos]]), 4))))
        end = min(end, pos + max(1, _BLOCK_ELEMENTS // (ng * max(int(count[by_count[end - 1]]), 4))))
        qi = by_count[pos:end]
        pos = end
        if int(count[qi].max()) > 0:
            yield qi


def _score_queries(d, qi, g_order, start, count, qc, gc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For queries ``qi``: the rank of the first kept correct match (-1 if none), AP and INP."""
    ng = d.shape[1]
    kmax = int(count[qi].max())
    cols = np.arange(kmax)
    valid = cols[None, :] < count[qi][:, None]
    match_idx = g_order[np.minimum(start[qi][:, None] + cols[None, :], ng - 1)]
    match_idx = np.where(valid, match_idx, 0)

    ranks = _ranks_of_matches(d, qi, match_idx, valid)
    removed = valid & (gc[match_idx] == qc[qi][:, None]) if qc is not None else np.zeros_like(valid)
    # Order each query's matches by rank (padding last) and drop the removed ones' ranks.
    order = np.argsort(np.where(valid, ranks, np.iinfo(np.int64).max), axis=1, kind="stable")
    ranks = np.take_along_axis(ranks, order, axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    removed = np.take_along_axis(removed, order, axis=1)
    kept = valid & ~removed
    # A kept match moves up by the number of removed matches ranked before it.
    kept_rank = np.where(kept, ranks - (np.cumsum(removed, axis=1) - removed), 0)
    hits = np.cumsum(kept, axis=1)  # correct matches seen so far (1-based at a kept match)
    n_kept = hits[:, -1]
    precision = np.where(kept, hits / (kept_rank + 1.0), 0.0)
    has = n_kept > 0
    first = np.argmax(kept, axis=1)
    last = kmax - 1 - np.argmax(kept[:, ::-1], axis=1)
    rows = np.arange(len(qi))
    return (np.where(has, kept_rank[rows, first], -1),
            np.where(has, precision.sum(axis=1) / np.maximum(n_kept, 1), 0.0),
            np.where(has, n_kept / (kept_rank[rows, last] + 1.0), 0.0))


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any = None,
    g_camids: Any = None,
    max_rank: int = 50,
) -> RankResult:
    """CMC, mAP and mINP for a query x gallery distance matrix (see the module docstring).

    ``distmat`` (numpy or torch, any real dtype, compared in float32 if given as float32/float16,
    else float64; +/-inf allowed, NaN refused), ``q_pids``/``g_pids``
    integer identities, optional ``q_camids``/``g_camids`` (both or neither). Raises
    :class:`MetricInputError` (a ``HandCLIPError`` and a ``ValueError``) for malformed inputs and when
    no query has a correct match in the gallery.
    """
    # NaN is looked for while each row is in the cache for counting; rows never counted (queries
    # without a match) are looked at here.
    d, qp, gp, qc, gc, max_rank = _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, check_nan=False)
    nq, ng = d.shape
    g_order, start, count = _match_lists(qp, gp)
    _raise_if_nan_in_rows(d, np.flatnonzero(count == 0))

    first_rank = np.full(nq, -1, dtype=np.int64)  # rank of the first kept correct match, -1 if none
    ap = np.zeros(nq, dtype=np.float64)
    inp = np.zeros(nq, dtype=np.float64)
    for qi in _query_blocks(count, ng):
        first_rank[qi], ap[qi], inp[qi] = _score_queries(d, qi, g_order, start, count, qc, gc)

    valid_q = first_rank >= 0
    num_valid = int(valid_q.sum())
    if num_valid == 0:
        raise MetricInputError(
            f"none of the {nq} queries has a correct match in the gallery; check that query and gallery "
            "share identities (pids)"
        )
    hist = np.bincount(np.minimum(first_rank[valid_q], max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hist).astype(np.float64) / num_valid
    return RankResult(cmc=cmc, mAP=float(ap[valid_q].mean()), mINP=float(inp[valid_q].mean()),
                      num_valid_queries=num_valid, num_skipped_queries=nq - num_valid, max_rank=max_rank)


def evaluate_rank_reference(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any = None,
    g_camids: Any = None,
    max_rank: int = 50,
    sort_kind: str = "stable",
) -> RankResult:
    """The classic per-query loop (as in Market-1501 / torchreid evaluation code), same semantics.

    Kept as the ground truth for tests and the speed benchmark. ``sort_kind="quicksort"`` reproduces
    the usual code exactly (ties then fall where numpy's unstable sort puts them).
    """
    d, qp, gp, qc, gc, max_rank = _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    nq, ng = d.shape
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(nq):
        order = np.argsort(d[i], kind=sort_kind)
        if qc is not None:
            keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        else:
            keep = np.ones(ng, dtype=bool)
        raw = (gp[order] == qp[i])[keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        if len(cmc) < max_rank:  # pad with the last value
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        hardest = np.where(raw)[0].max()
        all_inp.append(raw.sum() / (hardest + 1.0))
        hits = raw.cumsum()
        precision = hits / (np.arange(len(raw)) + 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    if not all_cmc:
        raise MetricInputError(
            f"none of the {nq} queries has a correct match in the gallery; check that query and gallery "
            "share identities (pids)"
        )
    return RankResult(
        cmc=np.asarray(all_cmc, dtype=np.float64).mean(axis=0),
        mAP=float(np.mean(all_ap)),
        mINP=float(np.mean(all_inp)),
        num_valid_queries=len(all_cmc),
        num_skipped_queries=nq - len(all_cmc),
        max_rank=max_rank,
    )


# ----------------------------------------------------------------------------------------------
# Monte Carlo runs


def aggregate_runs(runs: Sequence[Mapping[str, Any]], ddof: int = 0) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation of each numeric metric over runs.

    Returns ``{metric: {"mean": float, "std": float, "values": [per-run values]}}``. The standard
    deviation is the population one (``ddof=0``, numpy's default), which is what re-id papers report
    as "mean +/- std over the runs"; pass ``ddof=1`` for the sample estimate. Non-numeric entries are
    ignored; a numeric metric missing from some run is an error.
    """
    runs = list(runs)
    if not runs:
        raise MetricInputError("aggregate_runs needs at least one run")
    for i, r in enumerate(runs):
        if not isinstance(r, Mapping):
            raise MetricInputError(f"run {i} is a {type(r).__name__}, expected a dict of metrics")

    def numeric(v: Any) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

    names: list[str] = []
    for r in runs:
        for k, v in r.items():
            if numeric(v) and k not in names:
                names.append(k)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = []
        for i, r in enumerate(runs):
            if name not in r or not numeric(r[name]):
                raise MetricInputError(f"metric {name!r} is missing or not a number in run {i}")
            values.append(float(r[name]))
        arr = np.asarray(values)
        std = float(arr.std(ddof=ddof)) if len(arr) > ddof else 0.0
        out[name] = {"mean": float(arr.mean()), "std": std, "values": values}
    return out
