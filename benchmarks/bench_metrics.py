"""Speed of handclip.evaluate.metrics.evaluate_rank against the classic per-query loop.

    PYTHONPATH=src python benchmarks/bench_metrics.py [--size 10000] [--ids 1000] [--seed 0]
        [--dtype float64 float32] [--camids no yes] [--repeat 1]

Builds a random size x size distance matrix without ties, with ~ids identities (query and gallery
drawn from the same identities, so each query has ~size/ids correct matches) and, for every dtype x camids
combination asked for, times side by side in one process:

* the classic loop as usually written (torchreid's ``eval_market1501`` form): numpy's default
  quicksort argsort of each query's row, then the per-query CMC/AP/INP arithmetic ("classic");
* the same loop with a stable argsort, which follows the documented tie rule ("stable");
* the vectorised ``evaluate_rank``.

It asserts that both loops and ``evaluate_rank`` give the same CMC/mAP/mINP to 1e-9 and prints CPU
and wall seconds and the speed-up against each loop. CPU time of this process is the fair measure on a
shared machine (other jobs stretch whichever wall clock runs while they do); every implementation is
single-threaded, so the two agree on an idle machine. ``--repeat`` keeps each side's best of N runs.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _bench_common import best_of

from handclip.evaluate.metrics import evaluate_rank, evaluate_rank_reference


def _max_difference(a, b) -> float:
    return max(float(np.max(np.abs(a.cmc - b.cmc))), abs(a.mAP - b.mAP), abs(a.mINP - b.mINP))


def make_problem(size: int, ids: int, seed: int = 0):
    """(distmat float64, q_pids, g_pids, (q_camids, g_camids)) without tied distances.

    Each row is a random permutation of 0..n-1 (uniform ranks), correct matches moved 20% closer,
    like a weak model. Non-matches land on even and matches on odd integers, so no row holds two equal
    distances, in float64 or float32: numpy's quicksort then orders every row exactly as a stable sort
    does, and all implementations must agree. (Ties are covered by tests/test_metrics.py.)
    """
    rng = np.random.default_rng(seed)
    n = size
    q_pids = rng.integers(0, ids, n)
    g_pids = rng.integers(0, ids, n)
    base = np.tile(np.arange(n, dtype=np.float64), (n, 1))
    rng.permuted(base, axis=1, out=base)
    base *= 2.0
    base[q_pids[:, None] == g_pids[None, :]] -= 2 * round(0.2 * n) + 1
    base /= 2.0 * n
    cameras = (rng.integers(0, 6, n), rng.integers(0, 6, n))
    return base, q_pids, g_pids, cameras


def compare_metrics(distmat, q_pids, g_pids, cams=(None, None), repeat: int = 1):
    """Time evaluate_rank and both classic loops on one problem; assert they agree to 1e-9.

    Returns (evaluate_rank's result, {"evaluate_rank"|"quicksort"|"stable": (CPU s, wall s)}).
    """
    fast, t_fast, w_fast = best_of(lambda: evaluate_rank(distmat, q_pids, g_pids, *cams, max_rank=50), repeat)
    quick, t_quick, w_quick = best_of(
        lambda: evaluate_rank_reference(distmat, q_pids, g_pids, *cams, max_rank=50, sort_kind="quicksort"), repeat
    )
    stable, t_stable, w_stable = best_of(
        lambda: evaluate_rank_reference(distmat, q_pids, g_pids, *cams, max_rank=50), repeat
    )
    for name, ref in (("classic (quicksort)", quick), ("stable", stable)):
        diff = _max_difference(ref, fast)
        assert diff <= 1e-9, f"{name} loop and evaluate_rank differ by {diff:g}"
        assert (ref.num_valid_queries, ref.num_skipped_queries) == (fast.num_valid_queries, fast.num_skipped_queries)
    return fast, {"evaluate_rank": (t_fast, w_fast), "quicksort": (t_quick, w_quick), "stable": (t_stable, w_stable)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--ids", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", nargs="+", choices=["float64", "float32"], default=["float64", "float32"])
    parser.add_argument("--camids", nargs="+", choices=["no", "yes"], default=["no", "yes"],
                        help="without and/or with 6 random camera ids")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs for every implementation")
    args = parser.parse_args()

    n = args.size
    base, q_pids, g_pids, cameras = make_problem(n, args.ids, args.seed)

    # Untimed warm-up of every implementation (first-call costs: lazy imports, allocator growth).
    small = base[:200, :200]
    for fn in (evaluate_rank, evaluate_rank_reference):
        fn(small, q_pids[:200], g_pids[:200], *(c[:200] for c in cameras))

    load_before = os.getloadavg()
    rows = []
    for dtype in args.dtype:
        distmat = base if dtype == "float64" else base.astype(dtype)
        for with_cams in args.camids:
            cams = cameras if with_cams == "yes" else (None, None)
            fast, times = compare_metrics(distmat, q_pids, g_pids, cams, args.repeat)
            (t_quick, w_quick), (t_stable, w_stable), (t_fast, w_fast) = (
                times["quicksort"], times["stable"], times["evaluate_rank"])
            rows.append((dtype, with_cams, fast, (t_quick, w_quick), (t_stable, w_stable), (t_fast, w_fast)))
            print(f"{dtype} camids={with_cams}: rank1={fast.cmc[0]:.6f} mAP={fast.mAP:.6f} mINP={fast.mINP:.6f} "
                  f"({fast.num_valid_queries} valid / {fast.num_skipped_queries} skipped queries); "
                  "both loops agree to 1e-9", flush=True)
    load_after = os.getloadavg()

    print()
    print(f"distmat {n} x {n}, {args.ids} ids, best of {args.repeat}; seconds as CPU / wall; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs")
    print()
    header = ("dtype", "camids", "classic loop (quicksort)", "stable loop", "evaluate_rank",
              "vs classic CPU / wall", "vs stable CPU / wall")
    table = []
    for dtype, with_cams, _, quick, stable, fast in rows:
        table.append((
            dtype,
            with_cams,
            f"{quick[0]:.2f} / {quick[1]:.2f}",
            f"{stable[0]:.2f} / {stable[1]:.2f}",
            f"{fast[0]:.3f} / {fast[1]:.3f}",
            f"{quick[0] / fast[0]:.1f}x / {quick[1] / fast[1]:.1f}x",
            f"{stable[0] / fast[0]:.1f}x / {stable[1] / fast[1]:.1f}x",
        ))
    widths = [max(len(c) for c in column) for column in zip(header, *table)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in table:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |")
    worst = min(quick[0] / fast[0] for *_, quick, _, fast in rows)
    print()
    print(f"slowest case: evaluate_rank is {worst:.1f}x faster (CPU) than the classic quicksort loop; "
          "all metrics agree to 1e-9")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
