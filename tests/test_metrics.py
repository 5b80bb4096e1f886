"""Retrieval metrics: hand-computed cases, agreement with the classic loop, adversarial inputs."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from handclip.errors import HandCLIPError
from handclip.evaluate import metrics
from handclip.evaluate.distances import cosine_distance, euclidean_distance
from handclip.evaluate.metrics import MetricInputError, aggregate_runs, evaluate_rank, evaluate_rank_reference


def assert_same(a, b, tol=1e-12):
    assert a.num_valid_queries == b.num_valid_queries
    assert a.num_skipped_queries == b.num_skipped_queries
    np.testing.assert_allclose(a.cmc, b.cmc, rtol=0, atol=tol)
    assert abs(a.mAP - b.mAP) <= tol
    assert abs(a.mINP - b.mINP) <= tol


# --- hand-computed cases -----------------------------------------------------------------------


def test_single_query_hand_computed():
    # ranked gallery pids: 2, 1, 3, 1 -> correct matches at ranks 2 and 4
    r = evaluate_rank([[0.1, 0.2, 0.3, 0.4]], [1], [2, 1, 3, 1], max_rank=4)
    np.testing.assert_array_equal(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)
    assert (r.num_valid_queries, r.num_skipped_queries) == (1, 0)
    d = r.as_dict()
    assert d["rank1"] == 0 and d["rank5"] == 1 and d["rank10"] == 1 and d["mAP"] == pytest.approx(0.5)


def test_unsorted_gallery_is_ranked_by_distance():
    r = evaluate_rank([[0.9, 0.05, 0.5]], [7], [7, 3, 4], max_rank=3)
    np.testing.assert_array_equal(r.cmc, [0, 0, 1])
    assert r.mAP == pytest.approx(1 / 3)


def test_ties_are_broken_by_gallery_order():
    # the match ties with a wrong item; whichever is listed first ranks first
    late = evaluate_rank([[0.2, 0.2, 0.1]], [1], [2, 1, 3], max_rank=3)
    np.testing.assert_array_equal(late.cmc, [0, 0, 1])
    assert late.mAP == pytest.approx(1 / 3)
    early = evaluate_rank([[0.2, 0.2, 0.1]], [1], [1, 2, 3], max_rank=3)
    np.testing.assert_array_equal(early.cmc, [0, 1, 1])
    assert early.mAP == pytest.approx(1 / 2)
    # all distances equal: pure gallery order
    flat = evaluate_rank(np.zeros((1, 4)), [5], [0, 5, 0, 5], max_rank=4)
    assert flat.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_query_without_match_is_skipped_and_counted():
    distmat = [[0.1, 0.2], [0.3, 0.4]]
    r = evaluate_rank(distmat, [1, 99], [1, 2], max_rank=2)
    assert (r.num_valid_queries, r.num_skipped_queries) == (1, 1)
    np.testing.assert_array_equal(r.cmc, [1, 1])
    assert r.mAP == 1.0 and r.mINP == 1.0


def test_no_valid_query_at_all_is_a_clear_error():
    with pytest.raises(MetricInputError, match="none of the 2 queries"):
        evaluate_rank([[0.1], [0.2]], [1, 2], [3])


def test_same_camera_matches_are_dropped_only_with_camids():
    distmat = [[0.1, 0.2, 0.3]]
    q_pids, g_pids = [1], [1, 2, 1]
    plain = evaluate_rank(distmat, q_pids, g_pids, max_rank=3)
    assert plain.mAP == pytest.approx((1 + 2 / 3) / 2)
    np.testing.assert_array_equal(plain.cmc, [1, 1, 1])
    # gallery 0 is the same identity seen by the same camera: removed, leaving [pid2, pid1]
    cams = evaluate_rank(distmat, q_pids, g_pids, [0], [0, 1, 1], max_rank=3)
    np.testing.assert_array_equal(cams.cmc, [0, 1, 1])
    assert cams.mAP == pytest.approx(1 / 2)
    assert cams.mINP == pytest.approx(1 / 2)
    # different-identity items on the same camera are kept
    other = evaluate_rank(distmat, q_pids, g_pids, [0], [1, 0, 1], max_rank=3)
    assert other.mAP == pytest.approx(plain.mAP)


def test_query_whose_only_matches_share_its_camera_is_skipped():
    r = evaluate_rank([[0.1, 0.2], [0.1, 0.2]], [1, 2], [1, 2], [0, 0], [0, 1], max_rank=2)
    assert (r.num_valid_queries, r.num_skipped_queries) == (1, 1)


def test_max_rank_beyond_gallery_pads_with_last_value():
    r = evaluate_rank([[0.3, 0.1, 0.2]], [1], [1, 2, 3], max_rank=6)
    assert r.cmc.shape == (6,)
    np.testing.assert_array_equal(r.cmc, [0, 0, 1, 1, 1, 1])
    ref = evaluate_rank_reference([[0.3, 0.1, 0.2]], [1], [1, 2, 3], max_rank=6)
    assert_same(r, ref)


def test_mean_over_queries():
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    r = evaluate_rank(distmat, [1, 2], [1, 2, 2], max_rank=3)
    # q0: match at rank 1 -> AP 1, INP 1; q1: matches at ranks 1, 2 -> AP 1, INP 1
    assert r.mAP == 1.0 and r.mINP == 1.0
    r = evaluate_rank(distmat, [1, 1], [1, 2, 2], max_rank=3)
    # q1: only match at rank 3
    assert r.mAP == pytest.approx((1 + 1 / 3) / 2)
    np.testing.assert_allclose(r.cmc, [0.5, 0.5, 1.0])


def test_accepts_torch_and_float32_and_inf():
    d = torch.tensor([[0.5, float("inf"), 0.1], [float("-inf"), 0.2, 0.2]], dtype=torch.float32)
    r = evaluate_rank(d, torch.tensor([1, 2]), np.array([2, 1, 2]), max_rank=3)
    ref = evaluate_rank_reference(d.numpy(), [1, 2], [2, 1, 2], max_rank=3)
    assert_same(r, ref)
    assert r.mAP == pytest.approx((1 / 3 + (1 + 2 / 3) / 2) / 2)


# --- agreement with the classic loop ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_reference_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 60, 300
    q_pids, g_pids = rng.integers(0, 40, nq), rng.integers(0, 40, ng)
    distmat = rng.random((nq, ng))
    cams = (rng.integers(0, 3, nq), rng.integers(0, 3, ng)) if seed % 2 else (None, None)
    assert_same(evaluate_rank(distmat, q_pids, g_pids, *cams), evaluate_rank_reference(distmat, q_pids, g_pids, *cams))


def test_agrees_with_reference_across_small_blocks_and_both_counting_paths(monkeypatch):
    rng = np.random.default_rng(5)
    nq, ng = 80, 120
    # skewed identity sizes: a few large identities take the sorting path, small ones the counting one
    g_pids = np.concatenate([np.zeros(40, int), np.ones(30, int), rng.integers(2, 30, 50)])
    q_pids = rng.integers(0, 32, nq)
    distmat = rng.integers(0, 6, (nq, ng)).astype(float)  # many exact ties
    expected = evaluate_rank_reference(distmat, q_pids, g_pids)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 500)
    assert_same(evaluate_rank(distmat, q_pids, g_pids), expected)


def test_counting_by_comparison_and_by_sorting_agree():
    rng = np.random.default_rng(3)
    d = rng.integers(0, 5, (7, 50)).astype(float)
    d[0, :5] = np.inf
    thresholds = np.concatenate([d[:, :6], np.full((7, 1), -np.inf), np.full((7, 1), np.inf)], axis=1)
    a = metrics._strict_and_equal_counts_by_comparison(d, thresholds)
    b = metrics._strict_and_equal_counts_by_sorting(d, thresholds)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], (d[:, None, :] < thresholds[:, :, None]).sum(2))


@st.composite
def retrieval_problem(draw):
    nq = draw(st.integers(1, 12))
    ng = draw(st.integers(1, 25))
    n_ids = draw(st.integers(1, 6))
    ties = draw(st.booleans())
    values = st.integers(0, 3).map(float) if ties else st.one_of(st.floats(-1e6, 1e6), st.sampled_from([np.inf, -np.inf, 0.5]))
    distmat = draw(hnp.arrays(np.float64, (nq, ng), elements=values))
    q_pids = draw(hnp.arrays(np.int64, nq, elements=st.integers(0, n_ids)))
    g_pids = draw(hnp.arrays(np.int64, ng, elements=st.integers(0, n_ids)))
    cams = (None, None)
    if draw(st.booleans()):
        cams = (
            draw(hnp.arrays(np.int64, nq, elements=st.integers(0, 2))),
            draw(hnp.arrays(np.int64, ng, elements=st.integers(0, 2))),
        )
    max_rank = draw(st.integers(1, 30))
    return distmat, q_pids, g_pids, cams, max_rank


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(retrieval_problem())
def test_property_agrees_with_reference(problem):
    distmat, q_pids, g_pids, cams, max_rank = problem
    try:
        expected = evaluate_rank_reference(distmat, q_pids, g_pids, *cams, max_rank=max_rank)
    except MetricInputError:
        with pytest.raises(MetricInputError):
            evaluate_rank(distmat, q_pids, g_pids, *cams, max_rank=max_rank)
        return
    got = evaluate_rank(distmat, q_pids, g_pids, *cams, max_rank=max_rank)
    assert_same(got, expected, tol=1e-9)
    assert got.cmc.shape == (max_rank,)
    assert np.all(np.diff(got.cmc) >= 0)
    for value in (got.mAP, got.mINP, *got.cmc):
        assert 0.0 <= value <= 1.0


# --- adversarial inputs ------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.text(max_size=3),
    st.lists(st.one_of(st.integers(-2, 2), st.floats(allow_nan=True), st.text(max_size=2)), max_size=4),
    hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.complex128, np.dtype("U2")]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk, junk, junk, st.one_of(st.none(), junk), st.one_of(st.none(), junk), st.one_of(st.integers(-2, 60), junk))
def test_adversarial_inputs_raise_only_documented_errors(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    try:
        r = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    except MetricInputError as exc:
        assert isinstance(exc, HandCLIPError) and isinstance(exc, ValueError)
        assert str(exc) and "\n" not in str(exc)
        return
    assert 0.0 <= r.mAP <= 1.0 and 0.0 <= r.mINP <= 1.0


def test_clear_messages_for_common_mistakes():
    with pytest.raises(MetricInputError, match="NaN distance.*query 1, gallery 0"):
        evaluate_rank([[0.1, 0.2], [np.nan, 0.1]], [1, 2], [1, 2])
    with pytest.raises(MetricInputError, match="g_pids has 3 entries but distmat needs 2"):
        evaluate_rank([[0.1, 0.2]], [1], [1, 2, 3])
    with pytest.raises(MetricInputError, match="2-D"):
        evaluate_rank([0.1, 0.2], [1], [1, 2])
    with pytest.raises(MetricInputError, match="together"):
        evaluate_rank([[0.1]], [1], [1], q_camids=[0])
    with pytest.raises(MetricInputError, match="max_rank"):
        evaluate_rank([[0.1]], [1], [1], max_rank=0)
    with pytest.raises(MetricInputError, match="empty"):
        evaluate_rank(np.zeros((0, 3)), [], [1, 2, 3])
    with pytest.raises(MetricInputError, match="integer ids"):
        evaluate_rank([[0.1]], [1.5], [1])


# --- distances and aggregation -----------------------------------------------------------------


def test_cosine_and_euclidean_distances():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(cosine_distance(q, g), 1 - qn @ gn.T, atol=1e-12)
    np.testing.assert_allclose(euclidean_distance(q, g), np.linalg.norm(q[:, None] - g[None], axis=2), atol=1e-9)
    # torch in, numpy out; float32 stays float32
    out = cosine_distance(torch.from_numpy(q).float(), torch.from_numpy(g).float())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1 - qn @ gn.T, atol=1e-5)
    # an all-zero feature is at distance 1 from everything, not NaN
    assert np.allclose(cosine_distance(np.zeros((1, 8)), g), 1.0)
    with pytest.raises(MetricInputError, match="dimension 8 but gallery features 4"):
        euclidean_distance(q, g[:, :4])
    with pytest.raises(MetricInputError, match="NaN"):
        cosine_distance(np.full((1, 8), np.nan), g)


def test_aggregate_runs_mean_and_population_std():
    runs = [{"rank1": 0.9, "mAP": 0.8, "run": 0, "note": "a"}, {"rank1": 0.7, "mAP": 0.6, "run": 1, "note": "b"}]
    agg = aggregate_runs(runs)
    assert set(agg) == {"rank1", "mAP", "run"}
    assert agg["rank1"]["mean"] == pytest.approx(0.8)
    assert agg["rank1"]["std"] == pytest.approx(np.std([0.9, 0.7]))
    assert agg["rank1"]["values"] == [0.9, 0.7]
    assert aggregate_runs(runs, ddof=1)["mAP"]["std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert aggregate_runs([{"rank1": 0.5}], ddof=1)["rank1"]["std"] == 0.0
    with pytest.raises(MetricInputError, match="'mAP' is missing or not a number in run 1"):
        aggregate_runs([{"mAP": 0.5}, {"rank1": 0.5}])
    with pytest.raises(MetricInputError, match="at least one run"):
        aggregate_runs([])


def test_evaluate_rank_results_aggregate_end_to_end():
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(3):
        d = rng.random((10, 20))
        runs.append(evaluate_rank(d, rng.integers(0, 4, 10), rng.integers(0, 4, 20)).as_dict())
    agg = aggregate_runs(runs)
    assert agg["mAP"]["mean"] == pytest.approx(np.mean([r["mAP"] for r in runs]))


def test_differences_below_float32_resolution_stay_exact():
    # the fast path counts in float32; values that collapse there must be recounted exactly
    rng = np.random.default_rng(0)
    distmat = 1.0 + rng.integers(0, 50, (20, 60)) * 1e-12
    q_pids, g_pids = rng.integers(0, 5, 20), rng.integers(0, 5, 60)
    assert_same(evaluate_rank(distmat, q_pids, g_pids), evaluate_rank_reference(distmat, q_pids, g_pids))
    huge = np.array([[1e300, -1e300, 3e39, 0.5]])  # beyond float32 range
    assert_same(evaluate_rank(huge, [1], [1, 2, 1, 1]), evaluate_rank_reference(huge, [1], [1, 2, 1, 1]))


# --- the cache-blocked counting path -----------------------------------------------------------


@pytest.mark.parametrize("ng", [1, 7, 8, 9, 2039, 2040, 2041, 4081, 5000])
def test_word_wise_counting_matches_a_plain_count_at_run_boundaries(ng):
    # eight booleans per uint64 word, runs of <= 255 words: all-True rows are the overflow worst case
    rng = np.random.default_rng(ng)
    d = rng.integers(0, 4, (3, ng)).astype(np.float32)
    d[0] = 0.0  # every item below +inf and equal to 0
    thresholds = np.array([[np.inf, 0.0, -np.inf], [1.0, 2.0, 3.0], [0.0, 3.0, np.inf]], dtype=np.float32)
    n_less, n_equal = metrics._strict_and_equal_counts_by_comparison(d, thresholds)
    np.testing.assert_array_equal(n_less, (d[:, None, :] < thresholds[:, :, None]).sum(2))
    np.testing.assert_array_equal(n_equal, (d[:, None, :] == thresholds[:, :, None]).sum(2))
    assert n_less[0, 0] == ng and n_equal[0, 1] == ng


def test_reused_scratch_keeps_counts_right_across_partial_sub_blocks(monkeypatch):
    # a scratch of 3 rows for 10 rows: the last sub-block is partial and reuses dirty scratch rows
    monkeypatch.setattr(metrics, "_SCRATCH_BYTES", 3 * 4 * 24)
    rng = np.random.default_rng(1)
    d = rng.integers(0, 3, (10, 20)).astype(np.float32)
    thresholds = np.sort(rng.integers(0, 4, (10, 4)), axis=1).astype(np.float32)
    n_less, n_equal = metrics._strict_and_equal_counts_by_comparison(d, thresholds)
    np.testing.assert_array_equal(n_less, (d[:, None, :] < thresholds[:, :, None]).sum(2))
    np.testing.assert_array_equal(n_equal, (d[:, None, :] == thresholds[:, :, None]).sum(2))


def _tie_heavy_problem(seed, nq=40, ng=150):
    rng = np.random.default_rng(seed)
    # identities of very different sizes (1 .. ~40 items) and some queries with no match at all
    g_pids = np.concatenate([np.zeros(40, int), np.ones(12, int), rng.integers(2, 60, ng - 52)])
    q_pids = np.concatenate([[0, 1, 1000, 1001], rng.integers(0, 62, nq - 4)])
    distmat = rng.integers(0, 8, (nq, ng)) / 4.0  # many exact ties, exact in float32 too
    distmat[5] = 0.5  # a row of equal distances: pure gallery order
    cams = (rng.integers(0, 3, nq), rng.integers(0, 3, ng))
    return distmat, q_pids, g_pids, cams


@pytest.mark.parametrize("path", ["comparison", "sorting"])
@pytest.mark.parametrize("with_cams", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ties_and_skipped_queries_across_sub_blocks_and_counting_paths(monkeypatch, path, with_cams, dtype):
    distmat, q_pids, g_pids, cams = _tie_heavy_problem(7)
    distmat = distmat.astype(dtype)
    cams = cams if with_cams else (None, None)
    expected = evaluate_rank_reference(distmat, q_pids, g_pids, *cams, max_rank=200)  # > gallery
    # tiny sub-blocks and groups, and every query forced onto one counting path
    monkeypatch.setattr(metrics, "_SCRATCH_BYTES", 2 * 8 * 160)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 2000)
    monkeypatch.setattr(metrics, "_COMPARISON_PER_LOG2", 1e9 if path == "comparison" else 0.0)
    got = evaluate_rank(distmat, q_pids, g_pids, *cams, max_rank=200)
    assert_same(got, expected)
    assert got.num_skipped_queries >= 2 and got.cmc.shape == (200,) and got.cmc[-1] == 1.0


def test_float32_and_float64_inputs_of_the_same_values_give_identical_results():
    distmat, q_pids, g_pids, cams = _tie_heavy_problem(3)
    a = evaluate_rank(distmat, q_pids, g_pids, *cams, max_rank=7)
    b = evaluate_rank(distmat.astype(np.float32), q_pids, g_pids, *cams, max_rank=7)
    c = evaluate_rank(torch.from_numpy(distmat).half(), q_pids, g_pids, *cams, max_rank=7)  # exact in fp16 too
    assert_same(a, b, tol=0.0)
    assert_same(a, c, tol=0.0)


def test_float64_ties_hidden_by_float32_rounding_are_ranked_by_gallery_order():
    # 1 + 1e-12 and 1 both round to 1.0f: the counting pass sees a tie, the recount must not
    distmat = np.array([[1.0 + 1e-12, 1.0, 1.0, 0.5, 1.0 + 2e-12]])
    g_pids = [7, 3, 7, 3, 7]
    got = evaluate_rank(distmat, [7], g_pids, max_rank=5)
    # ranked: g3 (0.5), g1 (1.0), g2 (1.0), g0, g4 -> matches at ranks 3, 4, 5
    np.testing.assert_array_equal(got.cmc, [0, 0, 1, 1, 1])
    assert got.mAP == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3)
    assert_same(got, evaluate_rank_reference(distmat, [7], g_pids, max_rank=5))


def test_nan_is_refused_in_rows_with_and_without_matches():
    # NaN is looked for while rows are counted; rows never counted (no match) are checked apart
    for q_pids in ([1, 99], [98, 99], [1, 2]):
        for dtype in (np.float64, np.float32):
            distmat = np.array([[0.1, 0.2], [np.nan, 0.3]], dtype=dtype)
            with pytest.raises(MetricInputError, match="1 NaN distance.*first at query 1, gallery 0"):
                evaluate_rank(distmat, q_pids, [1, 2])
