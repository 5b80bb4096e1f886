"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written from the paper's description.

For every probe and gallery item p (all N = queries + gallery together):

1. d(p, x): squared Euclidean distance, each row divided by its maximum so rows share one scale.
2. N(p, k): the k nearest items (p itself included). R(p, k) = {x in N(p, k) : p in N(x, k)}, the
   k-reciprocal neighbours.
3. R*(p, k1): R(p, k1) plus R(q, k1/2) of every q in R(p, k1) whose half-size set overlaps R(p, k1) by
   at least two thirds of its size (recovers true matches the strict reciprocal test misses).
4. V_p: weights exp(-d(p, x)) on R*(p, k1), zero elsewhere, normalised to sum 1; then local query
   expansion V_p <- mean of V_x over the k2 nearest x of p.
5. Jaccard distance d_J(p, g) = 1 - sum min(V_p, V_g) / sum max(V_p, V_g); with rows summing to one,
   sum max = 2 - sum min.
6. Final distance (1 - lambda) * d_J + lambda * d, returned for queries x gallery.

Memory is O(N^2) (a few N x N float32/bool matrices), fine for hand test sets (a few thousand images).
Features should be the ones used for retrieval (L2-normalised by the evaluation code).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .distances import feature_pair
from .metrics import MetricInputError

__all__ = ["re_ranking"]


def _neighbours(order: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest (self included) and a mask of which of them are k-reciprocal."""
    n = order.shape[0]
    nbr = order[:, :k]
    member = np.zeros((n, n), dtype=bool)
    member[np.arange(n)[:, None], nbr] = True
    # x in N(p) is reciprocal when p is in N(x): member[x, p].
    reciprocal = member[nbr, np.arange(n)[:, None]]
    return nbr, reciprocal


def re_ranking(q_feat: Any, g_feat: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked query x gallery distance matrix (float64). See the module docstring."""
    q, g = feature_pair(q_feat, g_feat)
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise MetricInputError(f"re-ranking {name} must be a positive integer, got {value!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise MetricInputError(f"re-ranking lambda_value must lie in [0, 1], got {lambda_value!r}")
    nq = q.shape[0]
    feats = np.concatenate([q, g]).astype(np.float64)
    n = feats.shape[0]
    k1 = min(int(k1), n - 1)
    k2 = min(int(k2), n)
    half = min(int(round(k1 / 2)), n - 1)

    sq = (feats * feats).sum(1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T, 0.0)
    np.fill_diagonal(dist, 0.0)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    original_qg = dist[:nq, nq:].copy()
    if lambda_value == 1.0:
        return original_qg

    order = np.argsort(dist, axis=1, kind="stable")
    # Make sure each item is its own first neighbour even when duplicates tie at distance 0.
    self_first = order[:, 0] != np.arange(n)
    if self_first.any():
        rows = np.nonzero(self_first)[0]
        for r in rows:
            o = order[r]
            order[r] = np.concatenate([[r], o[o != r]])

    nbr1, recip1 = _neighbours(order, k1 + 1)
    nbr2, recip2 = _neighbours(order, half + 1)

    # R(p, k1) as a boolean matrix.
    r1 = np.zeros((n, n), dtype=bool)
    r1[np.repeat(np.arange(n), k1 + 1)[recip1.ravel()], nbr1[recip1]] = True

    # Expansion: for each candidate q = nbr1[p, a] in R(p, k1), compare R(q, half) with R(p, k1).
    cand_sets = nbr2[nbr1]  # [n, k1+1, half+1] members of N(q, half)
    cand_valid = recip2[nbr1]  # which of them are in R(q, half)
    in_r1 = r1[np.arange(n)[:, None, None], cand_sets] & cand_valid
    overlap = in_r1.sum(axis=2)
    size = cand_valid.sum(axis=2)
    expand = recip1 & (overlap * 3 >= size * 2)  # |R(p) ∩ R(q, k1/2)| >= 2/3 |R(q, k1/2)|
    r_star = r1.copy()
    take = expand[:, :, None] & cand_valid
    p_idx = np.broadcast_to(np.arange(n)[:, None, None], take.shape)[take]
    r_star[p_idx, cand_sets[take]] = True

    weights = np.where(r_star, np.exp(-dist), 0.0).astype(np.float32)
    weights /= weights.sum(axis=1, keepdims=True)
    if k2 > 1:
        expanded = np.empty_like(weights)
        step = max(1, (1 << 24) // (n * k2))
        for s in range(0, n, step):
            expanded[s : s + step] = weights[order[s : s + step, :k2]].mean(axis=1)
        weights = expanded

    # sum_k min(V_p[k], V_g[k]) only over k where V_p is non-zero (V is sparse).
    gallery_t = np.ascontiguousarray(weights[nq:].T)  # [n, ng]
    jaccard = np.empty((nq, n - nq), dtype=np.float64)
    for i in range(nq):
        nz = np.nonzero(weights[i])[0]
        shared = np.minimum(gallery_t[nz], weights[i, nz][:, None]).sum(axis=0, dtype=np.float64)
        jaccard[i] = 1.0 - shared / (2.0 - shared)
    return (1.0 - lambda_value) * jaccard + lambda_value * original_qg
