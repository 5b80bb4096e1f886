"""k-reciprocal re-ranking."""

import numpy as np
import pytest
import torch

from handclip.evaluate.distances import euclidean_distance
from handclip.evaluate.metrics import MetricInputError, evaluate_rank
from handclip.evaluate.rerank import re_ranking


def clustered(noise, ids=40, per=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, dim))
    x = np.concatenate([centers[i] + noise * rng.normal(size=(per, dim)) for i in range(ids)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pids = np.repeat(np.arange(ids), per)
    is_query = np.zeros(len(x), bool)
    is_query[::per] = True
    return x[is_query], x[~is_query], pids[is_query], pids[~is_query]


def test_shape_and_range():
    q, g, _, _ = clustered(0.8)
    d = re_ranking(q, g)
    assert d.shape == (len(q), len(g)) and d.dtype == np.float64
    assert np.isfinite(d).all() and d.min() >= 0 and d.max() <= 1 + 1e-9


def test_improves_map_on_clustered_identities():
    q, g, qp, gp = clustered(0.8)
    before = evaluate_rank(euclidean_distance(q, g), qp, gp).mAP
    after = evaluate_rank(re_ranking(q, g, k1=20, k2=6, lambda_value=0.3), qp, gp).mAP
    assert after > before + 0.05, (before, after)


def test_lambda_one_returns_the_original_distance():
    q, g, _, _ = clustered(0.8)
    d = re_ranking(q, g, lambda_value=1.0)
    everyone = np.concatenate([q, g])
    row_max = (euclidean_distance(everyone, everyone)[: len(q)] ** 2).max(axis=1, keepdims=True)
    np.testing.assert_allclose(d, euclidean_distance(q, g) ** 2 / row_max, atol=1e-9)
    # same ranking as plain Euclidean distance
    np.testing.assert_array_equal(np.argsort(d, axis=1, kind="stable")[:, :5],
                                  np.argsort(euclidean_distance(q, g), axis=1, kind="stable")[:, :5])


def test_lambda_mixes_the_jaccard_and_original_distances_and_torch_input_works():
    """The final distance is (1 - lambda) x Jaccard + lambda x original: linear in lambda, all Jaccard at 0."""
    q, g, _, _ = clustered(0.8)
    jaccard, original = re_ranking(q, g, lambda_value=0.0), re_ranking(q, g, lambda_value=1.0)
    assert np.abs(jaccard - original).max() > 0.1
    for lam in (0.3, 0.8):
        np.testing.assert_allclose(re_ranking(q, g, lambda_value=lam), (1 - lam) * jaccard + lam * original,
                                   rtol=0, atol=1e-12)
    q32, g32 = q.astype(np.float32), g.astype(np.float32)
    np.testing.assert_allclose(re_ranking(torch.from_numpy(q32), torch.from_numpy(g32), lambda_value=0.3),
                               re_ranking(q32, g32, lambda_value=0.3), rtol=0, atol=1e-12)


def test_tiny_sets_duplicates_and_bad_arguments():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(3, 4))
    q = np.concatenate([g[:1], g[:1]])  # duplicates of a gallery item: distance ties at zero
    d = re_ranking(q, g, k1=20, k2=6)  # k1 larger than the set is clipped
    assert d.shape == (2, 3) and np.isfinite(d).all()
    assert d[0].argmin() == 0
    with pytest.raises(MetricInputError, match="k1"):
        re_ranking(q, g, k1=0)
    with pytest.raises(MetricInputError, match="lambda_value"):
        re_ranking(q, g, lambda_value=1.5)
    with pytest.raises(MetricInputError, match="dimension"):
        re_ranking(q, g[:, :3])
