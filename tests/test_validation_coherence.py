"""The coherence row (validate.coherence): the three calibration methods fitted on the validation pairs by
identity-disjoint cross-calibration, compared on the same comparisons; and a plan that asks coherence of a
figure the methods cannot change is refused in one line."""

import numpy as np
import pytest

from handclip.errors import ConfigError
from handclip.forensic.calibration_checks import METHODS
from handclip.forensic.crosscal import cross_calibrate
from handclip.forensic.validation_metrics import METRICS, make_pair_set
from handclip.validate.coherence import COHERENCE_FOLDS, coherence, method_pair_sets, population
from handclip.validate.criteria import read_plan


def _pairs(people=20, images=4, seed=0):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(people), images)
    x = rng.normal(size=(people, 6))[pids] + 0.8 * rng.normal(size=(pids.size, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    first, second = np.triu_indices(pids.size, k=1)
    scores = (x @ x.T)[first, second]
    labels = (pids[first] == pids[second]).astype(int)
    return make_pair_set(scores, np.zeros_like(scores), labels, pids[first], pids[second])


def test_each_method_is_cross_calibrated_on_the_same_comparisons():
    pairs = _pairs()
    found = method_pair_sets(pairs, seed=3)
    assert list(found) == list(METHODS)
    for method, chosen in found.items():
        crossed = cross_calibrate(pairs.scores, pairs.labels, pairs.first, pairs.second, n_folds=COHERENCE_FOLDS,
                                  method=method, seed=3)
        assert np.array_equal(chosen.llrs, crossed.llrs)
        assert np.array_equal(chosen.scores, pairs.scores[crossed.index])
    first = next(iter(found.values()))
    assert all(np.array_equal(p.scores, first.scores) and np.array_equal(p.labels, first.labels)
               for p in found.values())


def test_coherence_is_the_largest_difference_between_the_methods():
    pairs = _pairs()
    interval, note = coherence(pairs, "cllr", replicates=25, level=0.95, seed=1)
    by_method = {m: METRICS["cllr"].compute(p) for m, p in method_pair_sets(pairs, seed=1).items()}
    assert interval["estimate"] == pytest.approx(max(by_method.values()) - min(by_method.values()), abs=1e-12)
    assert interval["low"] >= 0 and interval["low"] <= interval["high"] and interval["replicates"] == 25
    for method, value in by_method.items():
        assert f"{method} {value:.3g}" in note
    assert "not on the calibration's data" in note


def test_a_plan_asking_coherence_of_a_score_only_figure_is_refused(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("title: t\npopulation: p\ncriteria:\n  - {characteristic: coherence, metric: eer, "
                    "criterion: '< 0.1'}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"criteria: .*criteria\[0\]: coherence .* cannot differ in eer"):
        read_plan(plan)


def test_the_population_names_the_calibration_source_and_its_hash():
    text = population({"images": "/cases/ref_people", "images_sha256": "ab" * 32, "n_identities": 9, "n_images": 40})
    assert text == "folder of people ref_people (listing SHA-256 abababababab), 9 identities, 40 images"
    assert population({"manifest": "/x/cal.csv", "manifest_sha256": "cd" * 32, "n_identities": 3}).startswith(
        "manifest cal.csv (SHA-256 cdcdcdcdcdcd), 3 identities")
