"""Verification (EER, FNMR@FMR, AUC) and open-set identification (FNIR@FPIR, FNIR by rank) on countable cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handclip.forensic.openset import fpir_fnir_curve, openset_metrics, search_outcomes
from handclip.forensic.verification import (
    ForensicMetricError,
    roc_points,
    split_pairs,
    verification_metrics,
)


def test_eer_and_auc_on_a_hand_counted_set():
    # At threshold 0.65: one of four non-mated accepted (0.65), one of four mated rejected (0.6).
    result = verification_metrics([0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.65])
    assert result.eer == pytest.approx(0.25)
    assert result.auc == pytest.approx(15 / 16)  # 0.6 loses only to 0.65
    assert verification_metrics([0.8, 0.9], [0.1, 0.2]).eer == 0.0
    assert verification_metrics([0.1, 0.2], [0.8, 0.9]).eer == 1.0


def test_eer_interpolates_between_the_two_straddling_roc_points():
    # ROC: (FMR, FNMR) = (0, 1), (0, 2/3) at 0.9, (1/2, 2/3) at 0.5, (1/2, 1/3) at 0.4: crossing at 1/2.
    assert verification_metrics([0.9, 0.4, 0.3], [0.5, 0.1]).eer == pytest.approx(0.5)
    # (0, 1), (0, 1/2) at 0.9, (1/3, 1/2) at 0.8 ... the line FMR = FNMR is met at FMR 1/3 < 1/2:
    # between (1/3, 1/2) and (2/3, 1/2) FNMR stays 1/2, so the crossing is at FMR = FNMR = 1/2.
    assert verification_metrics([0.9, 0.1], [0.8, 0.7, 0.05]).eer == pytest.approx(0.5)


def test_fnmr_at_fmr_and_too_few_non_mated_pairs():
    nonmated = np.arange(100) / 100.0  # 0.00 .. 0.99
    result = verification_metrics([0.5, 0.99, 1.0, 1.2], nonmated)
    # FMR <= 0.01 allows one false match: threshold 0.99 keeps three of the four mated scores
    # (at 1.0 no false match, but two mated scores are lost).
    assert result.fnmr_at_fmr["0.01"] == pytest.approx(0.25)
    assert result.thresholds_at_fmr["0.01"] == pytest.approx(0.99)
    assert result.fnmr_at_fmr["0.001"] is None and result.fnmr_at_fmr["1e-4"] is None
    assert any("too few non-mated pairs (100; at least 1000 needed)" in note for note in result.notes)


def test_mated_and_non_mated_pairs_come_from_the_pids():
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])
    mated, nonmated = split_pairs(scores, [5, 6], [5, 6, 5])
    assert sorted(mated) == [0.7, 0.8, 0.9] and sorted(nonmated) == [0.1, 0.2, 0.3]


def test_empty_pair_sets_are_refused():
    with pytest.raises(ForensicMetricError, match="no non-mated pairs"):
        verification_metrics([0.5, 0.6], [])
    with pytest.raises(ForensicMetricError, match="no mated pairs"):
        verification_metrics([], [0.5])


scores_lists = st.lists(st.integers(0, 12), min_size=1, max_size=25)  # small integers: many ties


@settings(max_examples=60, deadline=None)
@given(mated=scores_lists, nonmated=scores_lists)
def test_roc_eer_fnmr_and_auc_agree_with_brute_force_counting(mated, nonmated):
    mated, nonmated = np.array(mated, float) / 4, np.array(nonmated, float) / 4
    fmr, fnmr, thresholds = roc_points(mated, nonmated)
    # Every threshold the ROC lists, counted directly (accept when score >= threshold).
    for t, a, b in zip(thresholds[1:], fmr[1:], fnmr[1:]):
        assert a == pytest.approx(np.mean(nonmated >= t)) and b == pytest.approx(np.mean(mated < t))
    distinct = np.unique(np.concatenate([mated, nonmated]))
    assert np.array_equal(np.sort(thresholds[1:]), distinct)
    brute = [(np.mean(nonmated >= t), np.mean(mated < t)) for t in [*distinct, np.inf]]
    result = verification_metrics(mated, nonmated, levels=(0.5,))
    low = max(min(a, b) for a, b in brute)
    high = min(max(a, b) for a, b in brute)
    assert low - 1e-12 <= result.eer <= high + 1e-12
    if len(nonmated) >= 2:
        assert result.fnmr_at_fmr["0.5"] == pytest.approx(min(b for a, b in brute if a <= 0.5))
    wins = (mated[:, None] > nonmated[None, :]).mean() + 0.5 * (mated[:, None] == nonmated[None, :]).mean()
    assert result.auc == pytest.approx(wins)


# Gallery: identity A has two images, B and C one each. Queries: a (A), b (B), d (D, not enrolled).
GALLERY = ["A", "A", "B", "C"]
QUERIES = ["A", "B", "D"]


def test_open_set_outcomes_counted_by_hand():
    scores = np.array([
        [0.9, 0.5, 0.6, 0.2],   # a: A's best image 0.9 is rank 1; without A the top is B at 0.6
        [0.7, 0.8, 0.75, 0.1],  # b: A (0.8) beats B (0.75): B is rank 2; without B the top is A at 0.8
        [0.3, 0.2, 0.4, 0.35],  # d: only a non-mated search; top is B at 0.4
    ])
    outcomes = search_outcomes(scores, QUERIES, GALLERY)
    assert outcomes.mated_rank.tolist() == [1, 2] and outcomes.mated_score.tolist() == [0.9, 0.75]
    assert outcomes.nonmated_top.tolist() == [0.6, 0.8, 0.4]
    result = openset_metrics(scores, QUERIES, GALLERY, levels=(0.34, 0.2), ranks=(1, 2, 3))
    assert result.fnir_by_rank == {"1": 0.5, "2": 0.0, "3": 0.0}
    # FPIR <= 0.34 of 3 non-mated searches allows one: threshold 0.6; b is not at rank 1 so it is missed.
    assert result.fnir_at_fpir["0.34"] == 0.5 and result.thresholds_at_fpir["0.34"] == 0.6
    assert result.fnir_at_fpir["0.2"] is None
    assert any("too few non-mated searches (3; at least 5 needed)" in n for n in result.notes)
    assert (result.n_mated_searches, result.n_nonmated_searches, result.num_identities) == (2, 3, 3)


def test_open_set_threshold_decides_when_the_mate_is_rank_one():
    scores = np.array([
        [0.65, 0.5, 0.6, 0.2],   # a: rank 1 at 0.65; non-mated top 0.6
        [0.7, 0.6, 0.75, 0.1],   # b: rank 1 at 0.75; non-mated top 0.7
        [0.3, 0.2, 0.4, 0.35],   # d: non-mated top 0.4
    ])
    result = openset_metrics(scores, QUERIES, GALLERY, levels=(0.34, 0.67), ranks=(1,))
    assert result.fnir_at_fpir == {"0.34": 0.0, "0.67": 0.0}
    assert result.thresholds_at_fpir == {"0.34": 0.6, "0.67": 0.4}
    fpir, fnir = fpir_fnir_curve(search_outcomes(scores, QUERIES, GALLERY))
    # Just above 0.7 nothing non-mated passes, and a (0.65) is missed; above 0.6 one of three passes.
    assert fpir.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert fnir.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0])


def test_ties_count_against_the_mate_and_single_identity_galleries_are_refused():
    outcomes = search_outcomes(np.array([[0.5, 0.5, 0.5, 0.1]]), ["B"], GALLERY)
    assert outcomes.mated_rank.tolist() == [2]  # A ties with B at 0.5 and is ranked first
    with pytest.raises(ForensicMetricError, match="no non-mated searches"):
        openset_metrics(np.array([[0.5, 0.4]]), ["A"], ["A", "A"])
    with pytest.raises(ForensicMetricError, match="no mated searches"):
        openset_metrics(np.array([[0.5, 0.4]]), ["Z"], ["A", "B"])
