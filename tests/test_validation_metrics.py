"""The validation figures against their definitions on small hand-made data, and the identity-level bootstrap's
95% interval covering a known Cllr."""

from __future__ import annotations

import math

import numpy as np
import pytest

from handclip.forensic.bootstrap import identity_bootstrap, identity_weights
from handclip.forensic.validation_metrics import (METRICS, devpav, eer, invariance_bounds, make_pair_set,
                                                  mean_llr_overestimation, misleading_rates)


def _pairs(mated_llrs, nonmated_llrs, mated_scores=None, nonmated_scores=None):
    mated_llrs, nonmated_llrs = np.asarray(mated_llrs, float), np.asarray(nonmated_llrs, float)
    llrs = np.concatenate([mated_llrs, nonmated_llrs])
    scores = (llrs if mated_scores is None else np.concatenate([mated_scores, nonmated_scores]))
    labels = np.r_[np.ones(mated_llrs.size, int), np.zeros(nonmated_llrs.size, int)]
    first = np.arange(llrs.size)  # every pair its own people: no identity structure needed here
    second = np.where(labels == 1, first, first + 10_000)
    return make_pair_set(scores, llrs, labels, first, second)


def _calibrated_gaussian(rng, n_ids: int, mated_per_id: int, mu: float):
    """Calibrated LLRs (log10): natural-log LLR ~ N(+-m, 2m) is its own LR; pairs within and across identities."""
    sd = math.sqrt(2 * mu)
    ids = np.arange(n_ids)
    mated_first = np.repeat(ids, mated_per_id)
    a, b = np.triu_indices(n_ids, k=1)
    first, second = np.r_[mated_first, a], np.r_[mated_first, b]
    labels = (first == second).astype(int)
    natural = np.where(labels == 1, rng.normal(mu, sd, labels.size), rng.normal(-mu, sd, labels.size))
    llrs = natural / math.log(10)
    return make_pair_set(llrs, llrs, labels, first, second)


def _true_cllr(mu: float) -> float:
    """Cllr of calibrated Gaussian LLRs (natural log N(+-mu, 2 mu)) by numerical integration."""
    from scipy.integrate import quad
    from scipy.stats import norm

    sd = math.sqrt(2 * mu)
    same = quad(lambda x: norm.pdf(x, mu, sd) * np.logaddexp(0, -x) / math.log(2), mu - 12 * sd, mu + 12 * sd)[0]
    different = quad(lambda x: norm.pdf(x, -mu, sd) * np.logaddexp(0, x) / math.log(2), -mu - 12 * sd, -mu + 12 * sd)[0]
    return (same + different) / 2


def test_misleading_rates_count_by_definition():
    # Same person: LR < 1 misleads (0 is LR 1 and does not); below 1/100 strongly. Different people: the reverse.
    pairs = _pairs([-3.0, -0.5, 0.0, 0.5, 2.5], [-2.5, -1.0, 0.0, 0.2, 2.1, 3.0])
    rates = misleading_rates(pairs)
    assert rates["counts"] == {"rmep": 2, "rmed": 3, "rmep_strong": 1, "rmed_strong": 2}
    assert rates["rmep"] == pytest.approx(2 / 5) and rates["rmep_strong"] == pytest.approx(1 / 5)
    assert rates["rmed"] == pytest.approx(3 / 6) and rates["rmed_strong"] == pytest.approx(2 / 6)
    assert METRICS["rmed_strong"].compute(pairs) == pytest.approx(2 / 6)


def test_misleading_rates_need_both_classes():
    from handclip.errors import HandCLIPError

    with pytest.raises(HandCLIPError, match="same-person and different-person"):
        misleading_rates(_pairs([1.0, 2.0], []))


def test_eer_of_hand_made_scores():
    # Threshold 0.45: one of four same-person pairs rejected, one of four others accepted.
    pairs = _pairs([1, 1, 1, 1], [0, 0, 0, 0], [0.9, 0.8, 0.7, 0.4], [0.5, 0.3, 0.2, 0.1])
    assert eer(pairs) == pytest.approx(0.25)
    assert METRICS["auc"].compute(pairs) == pytest.approx(15 / 16)


def _devpav_by_definition(llrs, labels) -> float:
    """The mean |PAV(x) - x| over the finite log10 LR range, the PAV curve joined linearly between its points,
    integrated on a fine grid (independent of lir's closed-form areas)."""
    from sklearn.isotonic import isotonic_regression

    order = np.argsort(llrs, kind="stable")
    x, y = llrs[order], labels[order]
    posterior = isotonic_regression(y.astype(float), increasing=True)
    with np.errstate(divide="ignore"):
        pav = np.log10(posterior / (1 - posterior)) - np.log10(labels.sum() / (labels.size - labels.sum()))
    finite = np.isfinite(pav)
    xs, ys = x[finite], pav[finite]
    grid = np.linspace(xs[0], xs[-1], 200_001)
    curve = np.interp(grid, xs, ys)
    return float(np.trapezoid(np.abs(curve - grid), grid) / (xs[-1] - xs[0]))


def test_devpav_is_lirs_and_matches_its_definition():
    from lir.metrics.devpav import devpav as lir_devpav

    rng = np.random.default_rng(3)
    pairs = _pairs(rng.normal(1.0, 1.0, 60), rng.normal(-1.0, 1.0, 90))
    ours = devpav(pairs)
    assert ours == pytest.approx(lir_devpav(pairs.llrs.copy(), pairs.labels.copy()), rel=1e-12)
    assert ours == pytest.approx(_devpav_by_definition(pairs.llrs, pairs.labels), abs=2e-3)
    # LRs three times too strong lie far from their PAV values
    assert devpav(_pairs(3 * pairs.llrs[:60], 3 * pairs.llrs[60:])) > ours + 0.3


def test_llr_overestimation_sees_overstated_lrs():
    pairs = _calibrated_gaussian(np.random.default_rng(0), 60, 20, 4.0)
    honest = mean_llr_overestimation(pairs)
    overstated = mean_llr_overestimation(make_pair_set(pairs.scores, 2 * pairs.llrs, pairs.labels, pairs.first,
                                                       pairs.second))
    assert honest < 0.2 and overstated > honest + 0.3


def test_invariance_bounds_sit_either_side_of_one_and_within_what_the_counts_support():
    pairs = _calibrated_gaussian(np.random.default_rng(1), 40, 5, 3.0)
    low, high = invariance_bounds(pairs)
    assert low < 0 < high
    # With the Jeffreys prior no LR beyond (n + 1) / 0.5 can pass the invariance check.
    assert high <= math.log10(2 * (pairs.n_nonmated + 1)) and low >= -math.log10(2 * (pairs.n_mated + 1))


def test_identity_weights_drop_exactly_the_undrawn_people():
    pairs = _calibrated_gaussian(np.random.default_rng(2), 8, 2, 2.0)
    weights = identity_weights(pairs, np.random.default_rng(5))
    drawn = np.bincount(np.random.default_rng(5).integers(0, 8, 8), minlength=8)
    mated = pairs.labels == 1
    assert np.array_equal(weights[mated], drawn[pairs.first[mated]])
    assert np.array_equal(weights[~mated], drawn[pairs.first[~mated]] * drawn[pairs.second[~mated]])
    assert (weights == 0).any() and (weights > 1).any()


def test_identity_bootstrap_95_interval_covers_a_known_cllr_in_90_of_100():
    mu = 3.0
    truth = _true_cllr(mu)
    from lir.data.models import LLRData
    from lir.metrics import cllr as lir_cllr

    cllr = {"cllr": lambda p: lir_cllr(LLRData(features=p.llrs, labels=p.labels))}
    covered, widths = 0, []
    for replication in range(100):
        pairs = _calibrated_gaussian(np.random.default_rng(100 + replication), 30, 4, mu)
        interval = identity_bootstrap(pairs, cllr, replicates=100, seed=replication)["cllr"]
        covered += interval.low <= truth <= interval.high
        widths.append(interval.high - interval.low)
    assert covered >= 90, f"covered {covered} of 100 (truth {truth:.4f})"
    assert 0 < np.median(widths) < 0.2  # an interval, not the whole range


def test_llr_overestimation_interval_holds_zero_for_calibrated_lrs_and_not_for_overstated_ones():
    from handclip.forensic.validation_metrics import llr_overestimation

    pairs = _calibrated_gaussian(np.random.default_rng(4), 60, 20, 3.0)
    _, _, interval = llr_overestimation(pairs, num_fids=100)
    low, high = np.nanmin(interval[:, (0, 2)], axis=1), np.nanmax(interval[:, (0, 2)], axis=1)
    assert np.mean((low <= 0) & (0 <= high)) > 0.8
    doubled = make_pair_set(pairs.scores, 2 * pairs.llrs, pairs.labels, pairs.first, pairs.second)
    grid, _, interval = llr_overestimation(doubled, num_fids=100)
    strong = grid > 2  # where doubled LRs claim a factor of 100 or more, the data do not support it
    assert np.all(np.nanmin(interval[strong][:, (0, 2)], axis=1) > 0)
