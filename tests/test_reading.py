"""Numbers people read (handclip.forensic.reading): the LR's wording and rounding rule, the notes that
explain a score, a bound and what ``matched`` counts, the suggested statement and the open-set answer."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handclip.forensic.calibration import verbal_equivalent
from handclip.forensic.reading import (SCORE_MEANING, bound_note, lr_number, lr_text, matched_text, open_set_answer,
                                       score_at_threshold, suggested_statement, threshold_text)

PROPOSITIONS = {"hp": "Same person.", "hd": "Different people of the reference population."}


@pytest.mark.parametrize("log10_lr, text", [
    (3.4471, "LR ≈ 2,800 (log10 3.45)"),       # 2,799.6 to two significant figures
    (0.0, "LR ≈ 1.0 (log10 0.00)"),
    (0.30103, "LR ≈ 2.0 (log10 0.30)"),
    (1.2, "LR ≈ 16 (log10 1.20)"),              # 15.85
    (5.0, "LR ≈ 100,000 (log10 5.00)"),
    (8.999, "LR ≈ 1,000,000,000 (log10 9.00)"),  # 9.977e8 rounds up to 1.0e9
    (12.5, "LR ≈ 3.2 × 10^12 (log10 12.50)"),    # 3.16e12
    (-1.2, "LR ≈ 1/16 (log10 -1.20)"),
    (-2.1, "LR ≈ 1/130 (log10 -2.10)"),         # 1/125.9
    (-0.30103, "LR ≈ 1/2.0 (log10 -0.30)"),
])
def test_an_lr_is_shown_to_two_significant_figures_beside_its_log10(log10_lr, text):
    assert lr_text(log10_lr) == text


def _value(text: str) -> float:
    """The LR a ``lr_number`` text states, read back."""
    if text.startswith("1/"):
        return 1 / _value(text[2:])
    power = re.fullmatch(r"([\d.]+) × 10\^(\d+)", text)
    if power:
        return float(power[1]) * 10.0 ** int(power[2])
    return float(text.replace(",", ""))


@settings(max_examples=300, deadline=None)
@given(st.floats(-14, 14), st.floats(0, 3))
def test_a_larger_lr_is_never_written_as_a_smaller_number_and_stays_within_rounding(low, step):
    high = low + step
    assert _value(lr_number(low)) <= _value(lr_number(high)) * (1 + 1e-12)
    # two significant figures: within 5% of the LR (relative to the rounded figure's own size)
    for value in (low, high):
        stated = _value(lr_number(value))
        assert abs(math.log10(stated) - value) <= math.log10(1.06)


def test_nan_has_no_wording():
    with pytest.raises(ValueError):
        lr_number(float("nan"))


def test_the_notes_say_what_a_score_a_bound_and_matched_mean():
    assert "not a probability" in SCORE_MEANING and "similarity" in SCORE_MEANING
    assert bound_note(None) is None
    assert "cannot support a larger LR" in bound_note("upper") and bound_note("upper").count(".") == 1
    assert "cannot support a smaller LR" in bound_note("lower")
    assert matched_text(3, 7, 10) == "3 of 7 enrolled image(s) among the 10 gallery images most similar to the query"
    assert threshold_text(1.0) == "LR > 1" and threshold_text(1000) == "LR > 1,000"
    assert threshold_text(0.5) == "LR > 1/2.0"


@pytest.mark.parametrize("log10_lr", [3.4471, -1.2, 0.1, 6.5])
def test_the_suggested_statement_holds_the_propositions_the_lr_and_its_verbal_equivalent(log10_lr):
    verbal = verbal_equivalent(log10_lr)
    text = suggested_statement(PROPOSITIONS, log10_lr, verbal, "item-17.jpg", "the enrolled images of P-4")
    assert text.startswith("Query image item-17.jpg was compared with the enrolled images of P-4. ")
    assert "Hp: Same person." in text and "Hd: Different people of the reference population." in text
    assert text.endswith(f"In the terms of the ENFSI verbal scale, {verbal}.")
    assert f"(log10 LR {log10_lr:.2f})" in text
    if log10_lr == 0.1:  # LR 1.26: no support either way, no "times more probable"
        assert "about as probable if Hp is true as if Hd is true" in text and "times" not in text
    elif log10_lr > 0:
        assert f"about {lr_number(log10_lr)} times more probable if Hp is true than if Hd is true" in text
    else:
        assert f"about {lr_number(-log10_lr)} times more probable if Hd is true than if Hp is true" in text
    assert "largest LR" in suggested_statement(PROPOSITIONS, 2.0, "x", "q", "c", at_bound="upper")


def _logistic(scores):
    """A non-decreasing score -> log10 LR map for the tests: log10 LR = 40 (s - 0.9), clipped to [-2, 2]."""
    return np.clip(40 * (np.asarray(scores, float) - 0.9), -2, 2)


def test_the_score_at_a_threshold_is_where_the_map_first_exceeds_it():
    edge = score_at_threshold(_logistic, 1.0)  # log10 LR > 0 from s > 0.9
    assert edge == pytest.approx(0.9, abs=1e-12) and _logistic([edge])[0] > 0 >= _logistic([edge - 1e-9])[0]
    assert score_at_threshold(_logistic, 10.0) == pytest.approx(0.925, abs=1e-12)
    assert score_at_threshold(_logistic, 1000.0) is None  # above the map's upper bound (log10 2)
    assert score_at_threshold(_logistic, 1e-3) == -1.0  # every score exceeds it


def test_the_open_set_answer_says_no_candidate_reaches_the_threshold_exactly_when_none_does():
    scores = [0.89, 0.88, 0.80]
    lrs = _logistic(scores).tolist()
    assert all(lr < 0 for lr in lrs)
    edge = score_at_threshold(_logistic, 1.0)
    answer = open_set_answer(lrs, scores, 1.0, edge, 2.0)
    assert answer["none_reached"] and answer["reached"] == []
    assert answer["answer"].startswith("No candidate reaches the threshold (LR > 1). Under this calibration it takes "
                                       "a score of at least 0.9000; the best score here is 0.8900.")
    assert "may not be in the gallery" in answer["answer"]

    scores = [0.95, 0.91, 0.85]
    reached = open_set_answer(_logistic(scores).tolist(), scores, 1.0, edge, 2.0)
    assert not reached["none_reached"] and reached["reached"] == [1, 2]
    assert reached["answer"].startswith("2 candidate(s) reach the threshold (LR > 1; ")
    assert "No candidate" not in reached["answer"] and "not an identification" in reached["answer"]
    # the same candidates against a stricter threshold (LR > 100: score above 0.95) reach nothing
    strict = open_set_answer(_logistic(scores).tolist(), scores, 100.0, score_at_threshold(_logistic, 100.0), 2.0)
    assert strict["none_reached"] and "(LR > 100)" in strict["answer"]
    unreachable = open_set_answer(_logistic(scores).tolist(), scores, 1000.0, None, 2.0)
    assert unreachable["none_reached"] and "above the largest LR this calibration supports" in unreachable["answer"]
