"""Cross-calibration by identity never sees the people it scores; forensic figures of a protocol run."""

from __future__ import annotations

import numpy as np
import pytest

from handclip.forensic import crosscal
from handclip.forensic.calibration import CalibrationError, ScoreMap
from handclip.forensic.crosscal import cross_calibrate, identity_pairs, image_pairs
from handclip.evaluate.forensic import run_figures


def _recording_fit(monkeypatch):
    """Replace the calibrator fit with one that records the scores it was given (each score encodes its
    pair's two identities as first * 100 + second) and returns LR 1 everywhere."""
    calls = []

    def fit(mated, nonmated, method="logit", seed=0):
        seen = np.concatenate([np.asarray(mated), np.asarray(nonmated)]).astype(np.int64)
        calls.append(set((seen // 100).tolist()) | set((seen % 100).tolist()))
        return ScoreMap("logit", {"coef": 0.0, "intercept": 0.0}, -1.0, 1.0)

    monkeypatch.setattr(crosscal, "fit_score_map", fit)
    return calls


def _all_pairs(n_ids: int, repeats: int = 2):
    ids = np.repeat(np.arange(n_ids), repeats)
    first, second = np.repeat(ids, ids.size), np.tile(ids, ids.size)
    return (first * 100 + second).astype(np.float64), (first == second).astype(np.int64), first, second


@pytest.mark.parametrize("n_folds", [2, 3])
def test_cross_calibration_never_fits_on_the_identities_it_scores(monkeypatch, n_folds):
    calls = _recording_fit(monkeypatch)
    scores, labels, first, second = _all_pairs(12)
    result = cross_calibrate(scores, labels, first, second, n_folds=n_folds)
    assert len(calls) == len(result.folds) == n_folds
    scored_total = 0
    for fitted_ids, fold in zip(calls, result.folds):
        scored = np.isin(result.index, np.flatnonzero(
            np.isin(first, fold["scored_ids"]) & np.isin(second, fold["scored_ids"])))
        scored_pairs = result.index[scored]
        scored_ids = set(first[scored_pairs].tolist()) | set(second[scored_pairs].tolist())
        assert scored_ids and fitted_ids and not (scored_ids & fitted_ids)
        assert fitted_ids | scored_ids == set(range(12))  # nothing else is left out of the fit
        scored_total += scored_pairs.size
    # Only within-fold pairs are scored, each once: never a pair with one side in the fitting folds.
    assert scored_total == result.index.size == len(set(result.index.tolist()))
    same_fold = [any(first[i] in f["scored_ids"] and second[i] in f["scored_ids"] for f in result.folds)
                 for i in result.index]
    assert all(same_fold)


def test_protocol_run_calibration_is_identity_disjoint(monkeypatch):
    calls = _recording_fit(monkeypatch)
    query_pids = np.repeat(np.arange(10), 3)
    gallery_pids = np.arange(10)
    scores = (query_pids[:, None] * 100 + gallery_pids[None, :]).astype(np.float64)
    figures = run_figures(scores, query_pids, gallery_pids, folds=2)
    assert "calibration" in figures and len(calls) == 2
    fold_sets = [set(range(10)) - ids for ids in calls]  # what each fold's fit did not see
    assert fold_sets[0] and fold_sets[1] and not (fold_sets[0] & fold_sets[1])
    assert figures["calibration"]["cllr"] == pytest.approx(1.0)  # LR 1 everywhere from the recording fit


def test_too_few_identities_names_the_number_needed():
    scores, labels, first, second = _all_pairs(4)
    with pytest.raises(CalibrationError, match="at least 6 identities with two or more images.*found 4"):
        cross_calibrate(scores, labels, first, second)


def test_separable_features_give_informative_calibrated_lrs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(16, 32))
    pids = np.repeat(np.arange(16), 4)
    features = centres[pids] + 0.9 * rng.normal(size=(pids.size, 32))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    for build in (image_pairs, identity_pairs):
        scores, labels, first, second = build(features, pids)
        figures = cross_calibrate(scores, labels, first, second, n_folds=2).figures()
        assert figures["cllr"] < 0.6 and 0 < figures["cllr_min"] <= figures["cllr"]
        assert figures["log10_lr_min"] < 0 < figures["log10_lr_max"]


def test_pair_builders_count_pairs_by_hand():
    features = np.eye(3)[[0, 0, 1, 2]]  # pids 7, 7, 8, 9: images 0 and 1 identical
    pids = np.array([7, 7, 8, 9])
    scores, labels, first, second = image_pairs(features, pids)
    assert scores.size == 6 and labels.sum() == 1 and scores[labels == 1].tolist() == [1.0]
    scores, labels, first, second = identity_pairs(features, pids)
    # Each image against each identity except a one-image identity against its own image: 4 x 3 - 2.
    assert scores.size == 10 and labels.sum() == 2 and sorted(scores[labels == 1].tolist()) == [1.0, 1.0]


def test_a_run_with_one_gallery_identity_leaves_notes_not_errors():
    figures = run_figures(np.array([[0.9], [0.8]]), [1, 1], [1])
    text = " ".join(figures["notes"])
    assert "no non-mated pairs" in text and "no non-mated searches" in text and "needs at least 6" in text


EDGES = [np.log10(2.0), 1.0, 2.0, 3.0, 4.0, 6.0]  # ENFSI's band edges in log10 LR


@pytest.mark.parametrize("log10_lr", [sign * edge + sign * inward * 1e-9 for edge in EDGES
                                      for sign in (1, -1) for inward in (0, -1, 1)])
def test_the_band_table_files_every_lr_where_its_verbal_equivalent_words_it(log10_lr):
    """LR 10, 1/10, 100, 1/100 ... exactly, and a hair either side of each: one rule for both."""
    from handclip.forensic.calibration import verbal_equivalent
    from handclip.evaluate.forensic import ForensicResult

    result = ForensicResult([], {}, [], "cosine similarity", "logit", 2,
                            llrs=np.array([log10_lr]), labels=np.array([1]))
    bands = result.lr_bands()
    assert sorted(row["mated"] for row in bands) == [0.0] * (len(bands) - 1) + [1.0]
    filed = next(row for row in bands if row["mated"] == 1.0)
    assert filed["verbal"] == verbal_equivalent(log10_lr), (log10_lr, filed["lr"])


@pytest.mark.parametrize("lr, words", [
    (10.0, "moderate support for the same-person"), (1 / 10, "moderate support for the different-person"),
    (100.0, "moderately strong support for the same-person"),
    (1 / 100, "moderately strong support for the different-person"),
    (2.0, "weak support for the same-person"), (1 / 2, "weak support for the different-person"),
    (1e6, "extremely strong support for the same-person"), (1e-6, "extremely strong support for the different")])
def test_an_lr_on_a_band_edge_is_worded_and_tabled_in_the_stronger_band_both_ways(lr, words):
    from handclip.forensic.calibration import verbal_equivalent
    from handclip.evaluate.forensic import ForensicResult

    assert words in verbal_equivalent(np.log10(lr))
    result = ForensicResult([], {}, [], "cosine similarity", "logit", 2,
                            llrs=np.array([np.log10(lr)]), labels=np.array([0]))
    assert [row["verbal"] for row in result.lr_bands() if row["nonmated"] == 1.0] == [verbal_equivalent(np.log10(lr))]
