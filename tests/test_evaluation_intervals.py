"""Identity-level bootstrap intervals of ``handclip evaluate`` (evaluate.intervals): a replicate that draws
every person once is the evaluation itself, a person drawn 0 times is a person left out, figures resting on
too few people are marked, and the CLI puts the intervals beside unchanged point figures."""

import json

import numpy as np
import pytest

from handclip.evaluate.forensic import forensic_evaluation, run_figures
from handclip.evaluate.intervals import INTERVAL_KEYS, _encode, _replicate, evaluation_intervals, run_comparisons


def _scores(people: int, queries_each: int, seed: int = 1, noise: float = 0.7):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, 8))
    query_pids, gallery_pids = np.repeat(np.arange(people), queries_each), np.arange(people)

    def embed(pids):
        x = centres[pids] + noise * rng.normal(size=(pids.size, 8))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return embed(query_pids) @ embed(gallery_pids).T, query_pids, gallery_pids


def _comparisons(scores, query_pids, gallery_pids):
    figures = run_figures(scores, query_pids, gallery_pids)
    return figures, run_comparisons(scores, query_pids, gallery_pids, figures["lr_index"], figures["llrs"])


def test_a_replicate_drawing_everyone_once_is_the_evaluation_itself():
    scores, q, g = _scores(40, 3)
    figures, compared = _comparisons(scores, q, g)
    count, codes = _encode([compared])
    found = _replicate([compared], codes, np.ones(count, dtype=np.int64))
    for key in INTERVAL_KEYS:
        want = figures["flat"].get(key)
        if want is None:
            assert np.isnan(found[key]), key
        else:
            assert found[key] == pytest.approx(want, abs=1e-12), key
    assert {"eer", "fnmr@fmr=0.01", "fnir@fpir=0.1", "cllr"} <= {k for k in found if np.isfinite(found[k])}


def test_a_person_drawn_zero_times_is_left_out_of_pairs_and_searches():
    scores, q, g = _scores(40, 3)
    _, compared = _comparisons(scores, q, g)
    count, codes = _encode([compared])
    drawn = np.ones(count, dtype=np.int64)
    drawn[[3, 17]] = 0
    found = _replicate([compared], codes, drawn)
    keep_q, keep_g = ~np.isin(q, [3, 17]), ~np.isin(g, [3, 17])
    without = run_figures(scores[keep_q][:, keep_g], q[keep_q], g[keep_g])["flat"]
    for key in ("eer", "fnmr@fmr=0.01", "fnir@fpir=0.1"):
        assert found[key] == pytest.approx(without[key], abs=1e-12), key


def test_a_person_drawn_twice_counts_twice():
    scores, q, g = _scores(30, 2)
    _, compared = _comparisons(scores, q, g)
    count, codes = _encode([compared])
    drawn = np.ones(count, dtype=np.int64)
    drawn[5] = 2
    # By hand: person 5's same-person pairs twice, its different-person pairs twice, everything else once.
    first, second = compared.first, compared.second
    weights = np.where((first == 5) | (second == 5), 2, 1)
    mated = np.repeat(first == second, weights)
    repeated = np.repeat(compared.scores, weights)
    from handclip.forensic.verification import equal_error_rate, roc_points

    want = equal_error_rate(*roc_points(repeated[mated], repeated[~mated])[:2])
    assert _replicate([compared], codes, drawn)["eer"] == pytest.approx(want, abs=1e-12)


def test_intervals_hold_the_estimate_and_mark_what_too_few_people_support():
    scores, q, g = _scores(40, 3)
    figures, compared = _comparisons(scores, q, g)
    aggregate = {k: {"mean": v} for k, v in figures["flat"].items() if v is not None}
    found = evaluation_intervals([compared], aggregate, replicates=60, seed=2)
    assert set(found) == {k for k in INTERVAL_KEYS if k in aggregate}
    for key, entry in found.items():
        assert entry["low"] <= entry["estimate"] <= entry["high"], key
        assert entry["estimate"] == aggregate[key]["mean"] and entry["replicates"] == 60
    # 40 people: 780 different-person pairs of people, enough for FMR 1e-2, not for 1e-3.
    assert found["fnmr@fmr=0.01"]["supported"]
    assert not found["fnmr@fmr=0.001"]["supported"] and "780 different-person pairs of people; 1,000" in \
        found["fnmr@fmr=0.001"]["note"]
    assert found["eer"]["supported"] and found["cllr"]["supported"]
    assert evaluation_intervals([compared], aggregate, replicates=60, seed=2) == found  # seeded
    assert evaluation_intervals([compared], aggregate, replicates=0) == {}


def test_more_people_give_a_narrower_interval():
    widths = {}
    for people in (15, 120):
        scores, q, g = _scores(people, 2, seed=4)
        figures, compared = _comparisons(scores, q, g)
        aggregate = {"eer": {"mean": figures["flat"]["eer"]}}
        entry = evaluation_intervals([compared], aggregate, replicates=100, seed=0)["eer"]
        widths[people] = entry["high"] - entry["low"]
    # sqrt(120 / 15) ~ 2.8 times narrower in expectation; a factor 1.5 leaves a wide margin.
    assert widths[120] * 1.5 < widths[15], widths


class _Result:
    """The parts of an EvalResult forensic_evaluation reads: two runs over the same people."""

    def __init__(self):
        self.options, self.distances, self.splits = {}, {}, {}
        for run in (0, 1):
            scores, q, g = _scores(30, 2, seed=10 + run)
            self.distances[run] = 1.0 - scores
            self.splits[run] = ([type("R", (), {"pid": int(p)}) for p in q], [type("R", (), {"pid": int(p)}) for p in g])


def test_forensic_evaluation_reports_intervals_of_the_mean_over_runs_and_keeps_the_points():
    from handclip.config_base import IntervalConfig

    plain = forensic_evaluation(_Result())
    with_intervals = forensic_evaluation(_Result(), intervals=IntervalConfig(replicates=30))
    assert plain.intervals == {} and json.dumps(plain.aggregate) == json.dumps(with_intervals.aggregate)
    for key, entry in with_intervals.intervals.items():
        assert entry["estimate"] == with_intervals.aggregate[key]["mean"]
        assert entry["low"] <= entry["estimate"] <= entry["high"]
    assert "intervals" in with_intervals.as_dict()
