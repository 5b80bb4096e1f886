"""Score -> likelihood-ratio calibration: plain-data maps, ELUB bounds, the calibration file, Cllr, verbal scale."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from handclip.forensic.calibration import (
    FORMAT,
    METHODS,
    CalibrationError,
    ScoreCalibration,
    cllr_figures,
    fit_score_map,
    verbal_equivalent,
    verbal_scale_rows,
)

FINGERPRINT = {"backbone": "tiny-cnn", "feature_dim": 128, "image_size": [64, 64],
               "weights_sha256": "a" * 64, "checkpoint_sha256": "b" * 64}


def _scores(seed=0, n_mated=200, n_nonmated=1500):
    rng = np.random.default_rng(seed)
    return rng.normal(0.8, 0.08, n_mated), rng.normal(0.4, 0.12, n_nonmated)


def _labelled(mated, nonmated):
    return (np.concatenate([nonmated, mated]),
            np.concatenate([np.zeros(len(nonmated), np.int64), np.ones(len(mated), np.int64)]))


@pytest.mark.parametrize("method", METHODS)
def test_plain_data_map_reproduces_lirs_fitted_calibrator(method):
    from lir.algorithms.isotonic_regression import IsotonicCalibrator
    from lir.algorithms.kde import KDECalibrator
    from lir.algorithms.logistic_regression import LogitCalibrator

    mated, nonmated = _scores()  # both under the KDE point limit, so lir sees the same data
    x, y = _labelled(mated, nonmated)
    fitted = fit_score_map(mated, nonmated, method)
    reference = {"logit": LogitCalibrator(C=np.inf), "kde": KDECalibrator(bandwidth="silverman"),
                 "isotonic": IsotonicCalibrator(add_misleading=1)}[method].fit(x, y)
    probe = np.linspace(0.0, 1.0, 41)
    if method == "kde":
        # The stored table is lir's KDE wherever that already rises (here: all of the data's range), to
        # interpolation accuracy, for every LR short of the table's +-15 limit.
        probe = np.linspace(x.min(), x.max(), 997)
        expected = reference.transform(probe)
        assert np.all(np.diff(expected) > 0)
        usable = np.abs(expected) < 14
        assert usable.sum() > 500
        np.testing.assert_allclose(fitted.raw_log10_lr(probe)[usable], expected[usable], atol=1e-3)
    else:
        np.testing.assert_allclose(fitted.raw_log10_lr(probe), reference.transform(probe), rtol=1e-9, atol=1e-9)
    json.dumps(fitted.as_dict(), allow_nan=False)  # plain numbers only


@pytest.mark.parametrize("method", METHODS)
def test_saved_calibration_loads_to_identical_log10_lrs(tmp_path, method):
    mated, nonmated = _scores(1)
    maps = {"image": fit_score_map(mated, nonmated, method), "identity": fit_score_map(mated + 0.05, nonmated + 0.1, method)}
    calibration = ScoreCalibration(maps, FINGERPRINT, {"method": method, "cllr": 0.2})
    path = tmp_path / "calibration.json"
    calibration.save(path)
    loaded = ScoreCalibration.load(path)
    probe = np.random.default_rng(2).uniform(-1, 1, 500)
    for kind in ("image", "identity"):
        assert np.array_equal(loaded.log10_lr(probe, kind), calibration.log10_lr(probe, kind))
        assert loaded.bounds(kind) == calibration.bounds(kind)
    assert loaded.fingerprint == FINGERPRINT and loaded.summary["cllr"] == 0.2
    assert json.loads(path.read_text())["format"] == FORMAT


def test_lrs_are_bounded_by_elub_within_what_the_data_can_support():
    mated, nonmated = _scores(3, n_mated=50, n_nonmated=400)
    fitted = fit_score_map(mated, nonmated, "logit")
    assert -math.log10(50 + 1) - 0.01 <= fitted.lower < 0 < fitted.upper <= math.log10(400 + 1) + 0.01
    extreme = fitted.log10_lr([-10.0, 10.0])
    assert extreme[0] == fitted.lower and extreme[1] == fitted.upper
    raw = fitted.raw_log10_lr([-10.0, 10.0])
    assert raw[0] < fitted.lower and raw[1] > fitted.upper  # the bound did the clipping


def test_higher_scores_give_higher_lrs_and_the_crossing_lies_between_the_classes():
    mated, nonmated = _scores(4)
    for method in METHODS:
        lrs = fit_score_map(mated, nonmated, method).log10_lr(np.linspace(0.2, 0.95, 16))
        assert np.all(np.diff(lrs) >= -1e-9), method
        assert lrs[0] < 0 < lrs[-1], method


def test_logistic_calibration_is_not_shrunk_by_a_penalty_on_narrow_score_ranges():
    rng = np.random.default_rng(5)
    mated, nonmated = rng.normal(0.985, 0.006, 300), rng.normal(0.93, 0.025, 3000)
    fitted = fit_score_map(mated, nonmated, "logit")
    x, y = _labelled(mated, nonmated)
    # The two-Gaussian LR changes by orders of magnitude over these scores; a shrunk slope would not.
    assert fitted.params["coef"] > 100
    assert cllr_figures(fitted.log10_lr(x), y)["cllr_cal"] < 0.05


def test_check_model_names_the_differing_fields():
    calibration = ScoreCalibration({"image": fit_score_map(*_scores())}, FINGERPRINT, {})
    calibration.check_model(dict(FINGERPRINT))
    calibration.check_model(dict(FINGERPRINT, checkpoint_sha256="c" * 64))  # same weights, re-saved file
    with pytest.raises(CalibrationError, match="another model.*feature_dim 128 vs 256"):
        calibration.check_model(dict(FINGERPRINT, feature_dim=256))
    with pytest.raises(CalibrationError, match="weights_sha256"):
        calibration.check_model(dict(FINGERPRINT, weights_sha256="d" * 64))


def test_unusable_scores_are_refused_in_one_line():
    mated, nonmated = _scores()
    with pytest.raises(CalibrationError, match="no non-mated"):
        fit_score_map(mated, [])
    with pytest.raises(CalibrationError, match="no mated"):
        fit_score_map([], nonmated)
    with pytest.raises(CalibrationError, match="all 30 scores are equal"):
        fit_score_map(np.full(10, 0.5), np.full(20, 0.5))
    with pytest.raises(CalibrationError, match="NaN"):
        fit_score_map([0.5, np.nan], nonmated)
    with pytest.raises(CalibrationError, match="unknown calibration method 'svm'"):
        fit_score_map(mated, nonmated, "svm")


def test_bad_calibration_files_are_named(tmp_path):
    with pytest.raises(CalibrationError, match="missing.json does not exist"):
        ScoreCalibration.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "handclip-score')
    with pytest.raises(CalibrationError, match="broken.json is not valid JSON"):
        ScoreCalibration.load(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CalibrationError, match="other.json is not a HandCLIP score calibration"):
        ScoreCalibration.load(other)
    good = ScoreCalibration({"image": fit_score_map(*_scores())}, FINGERPRINT, {})
    future = tmp_path / "future.json"
    future.write_text(json.dumps(dict(good.as_dict(), version=99)))
    with pytest.raises(CalibrationError, match="future.json has format version 99"):
        ScoreCalibration.load(future)
    odd = good.as_dict()
    del odd["maps"]["image"]["params"]["coef"]
    (tmp_path / "odd.json").write_text(json.dumps(odd))
    with pytest.raises(CalibrationError, match="maps.image: params lack coef"):
        ScoreCalibration.load(tmp_path / "odd.json")
    with pytest.raises(CalibrationError, match="no 'identity' scores"):
        good.log10_lr([0.5], kind="identity")


def test_a_calibration_that_cannot_be_stored_leaves_no_file(tmp_path):
    fitted = fit_score_map(*_scores())
    poisoned = ScoreCalibration({"image": fitted}, FINGERPRINT, {"cllr": float("nan")})
    target = tmp_path / "calibration.json"
    with pytest.raises(CalibrationError, match="NaN"):
        poisoned.save(target)
    assert list(tmp_path.iterdir()) == []


def test_cllr_is_one_for_lr_one_everywhere_and_near_zero_for_separated_calibrated_lrs():
    labels = np.array([1] * 30 + [0] * 70)
    assert cllr_figures(np.zeros(100), labels)["cllr"] == 1.0
    separated = np.where(labels == 1, 8.0, -8.0)
    figures = cllr_figures(separated, labels)
    assert figures["cllr"] < 1e-6 and figures["cllr_min"] < 1e-6
    assert figures["n_mated"] == 30 and figures["n_nonmated"] == 70
    # Right order but overconfident the wrong way round for half: calibration loss shows up in Cllr_cal.
    wrong_scale = np.where(labels == 1, -0.5, -1.5)
    figures = cllr_figures(wrong_scale, labels)
    assert figures["cllr_min"] < 1e-6 < figures["cllr_cal"]
    with pytest.raises(CalibrationError, match="0 non-mated"):
        cllr_figures(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("log10_lr, expected", [
    (0.0, "do not support one proposition over the other"),
    (math.log10(1.9), "do not support"),
    (math.log10(2.0), "weak support for the same-person proposition rather than the different-person"),
    (1.0, "provide moderate support for the same-person"),
    (2.5, "moderately strong support for the same-person"),
    (3.0, "provide strong support"),
    (5.9, "very strong support"),
    (6.0, "extremely strong support for the same-person"),
    (-0.5, "weak support for the different-person proposition rather than the same-person"),
    (-3.5, "provide strong support for the different-person"),
    (-7.0, "extremely strong support for the different-person"),
])
def test_verbal_equivalent_follows_the_enfsi_bands_both_ways(log10_lr, expected):
    assert expected in verbal_equivalent(log10_lr)


def test_verbal_scale_rows_cover_the_line_without_gaps():
    rows = verbal_scale_rows()
    assert rows[0]["high"] == math.inf and rows[-1]["low"] == -math.inf
    for upper, lower in zip(rows, rows[1:]):
        assert upper["low"] == pytest.approx(lower["high"])
    assert rows[4]["lr"] == "10 to 100" and "moderate support" in rows[4]["verbal"]


# ----------------------------------------------------------------------------------------------
# A likelihood ratio never falls as the score rises, on the whole real line (docs/method.md,
# "Likelihood ratios")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Far outside any cosine, the scores a caller could still pass (a distance, a bug upstream).
FAR_SCORES = np.array([-1e6, -1e3, -10.0, -1.0, 0.0, 1.0, 10.0, 1e3, 1e6])


def _probe(mated, nonmated) -> np.ndarray:
    """Sorted scores from -1e6 to 1e6: every calibration score, its neighbours in floating point, a fine
    grid over and beyond the data, and far-away scores."""
    data = np.concatenate([mated, nonmated])
    low, high = data.min(), data.max()
    near = np.concatenate([np.nextafter(data, -np.inf), data, np.nextafter(data, np.inf)])
    grid = np.linspace(low - 2 * (high - low) - 1, high + 2 * (high - low) + 1, 4001)
    return np.sort(np.concatenate([FAR_SCORES, near, grid]))


def _assert_monotone_finite_bounded(score_map, probe, what):
    lrs = score_map.log10_lr(probe)
    assert math.isfinite(score_map.lower) and math.isfinite(score_map.upper), what
    assert score_map.lower <= 0.0 <= score_map.upper, what
    assert np.all(np.isfinite(lrs)), what
    assert lrs.min() >= score_map.lower and lrs.max() <= score_map.upper, what
    falls = np.flatnonzero(np.diff(lrs) < 0)
    assert falls.size == 0, (what, [(probe[i], lrs[i], probe[i + 1], lrs[i + 1]) for i in falls[:3]])


@st.composite
def calibration_sets(draw):
    """Mated and non-mated scores of random sizes, centres (either class may lie higher), spreads and
    shapes, some rounded so that scores tie."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = []
    for size in (draw(st.integers(2, 60)), draw(st.integers(2, 400))):
        centre, spread = draw(st.floats(-1.0, 1.0)), draw(st.sampled_from([1e-4, 1e-3, 0.01, 0.05, 0.2, 1.0]))
        shape = draw(st.sampled_from(["normal", "laplace", "two-lumps"]))
        values = {"normal": lambda: rng.normal(centre, spread, size),
                  "laplace": lambda: rng.laplace(centre, spread, size),
                  "two-lumps": lambda: centre + spread * np.where(rng.random(size) < 0.3, -5, 1)
                                        + rng.normal(0, spread / 10, size)}[shape]()
        decimals = draw(st.sampled_from([None, 2, 4]))
        classes.append(values if decimals is None else np.round(values, decimals))
    mated, nonmated = classes
    from hypothesis import assume

    assume(np.ptp(mated) > 0 and np.ptp(nonmated) > 0)  # KDE's bandwidth needs each class to vary
    return mated, nonmated


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(scores=calibration_sets())
def test_every_calibration_is_non_decreasing_finite_and_bounded_on_the_whole_line(method, scores):
    mated, nonmated = scores
    score_map = fit_score_map(mated, nonmated, method)
    _assert_monotone_finite_bounded(score_map, _probe(mated, nonmated), method)


def _narrow_mated_wide_nonmated(seed=0):
    """Same-person cosines N(0.85, 0.02) x 300 against different-person cosines N(0.50, 0.10) x 20,000:
    the mated density's tail falls faster than the non-mated one's above the data."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.85, 0.02, 300), rng.normal(0.50, 0.10, 20_000)


@pytest.mark.parametrize("method", METHODS)
def test_a_perfect_match_is_never_weaker_evidence_than_a_typical_mated_score(method):
    mated, nonmated = _narrow_mated_wide_nonmated()
    score_map = fit_score_map(mated, nonmated, method)
    cosines = np.array([0.85, 0.90, 0.95, 0.99, 1.0])
    lrs = score_map.log10_lr(cosines)
    assert lrs[-1] >= lrs[0] > 1.0, (method, lrs)  # strong same-person support at 0.85 and above
    assert np.all(np.diff(lrs) >= 0), (method, lrs)


@pytest.mark.parametrize("method", METHODS)
def test_scores_that_rank_people_the_wrong_way_give_lr_one_not_evidence(method):
    rng = np.random.default_rng(6)
    mated, nonmated = rng.normal(0.3, 0.05, 200), rng.normal(0.7, 0.05, 2000)  # same person scores lower
    score_map = fit_score_map(mated, nonmated, method)
    assert np.all(np.abs(score_map.raw_log10_lr(np.linspace(-1.0, 2.0, 301))) < 0.01), method
    assert np.array_equal(score_map.log10_lr([-1e6, 0.3, 0.7, 1e6]), np.zeros(4)), method


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("method", ["logit", "kde", "isotonic"])
def test_files_of_versions_without_a_content_hash_are_refused_in_one_line(tmp_path, method, version):
    """Versions 1 and 2 held no content hash: an edit could not be told, so they are fitted again."""
    data = ScoreCalibration({"image": fit_score_map(*_scores(7), method)}, FINGERPRINT, {"method": method}).as_dict()
    data["version"] = version
    del data["content_sha256"]
    path = tmp_path / f"old-{method}.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError) as refused:
        ScoreCalibration.load(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and f"format version {version}" in message
    assert "fit it again with `handclip calibrate`" in message


@pytest.mark.parametrize("method, key, edit, complaint", [
    ("kde", "log10_lr", lambda v: v[:1] + [v[1] + 50] + v[2:], "log10_lr must never decrease"),
    ("kde", "x", lambda v: v[::-1], "x must increase"),
    ("kde", "log10_lr", lambda v: v[:-1], "differ in length"),
    ("isotonic", "p", lambda v: [1.0 - p for p in v], "p must never decrease"),
    ("isotonic", "p", lambda v: [p * 2 for p in v], "p must lie between 0 and 1"),
    ("logit", "coef", lambda v: -v, "negative logistic slope"),
    ("logit", "intercept", lambda v: "one", "intercept must be finite numbers"),
])
def test_an_edited_map_whose_lr_could_fall_is_refused(tmp_path, method, key, edit, complaint):
    data = ScoreCalibration({"image": fit_score_map(*_scores(8), method)}, FINGERPRINT, {}).as_dict()
    params = data["maps"]["image"]["params"]
    params[key] = edit(params[key])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=f"edited.json, maps.image: .*{complaint}"):
        ScoreCalibration.load(path)
