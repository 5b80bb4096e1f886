"""Numbers people read: how every output (web page, JSON answer, HTML page, PDF, console) words a
likelihood ratio, a score, a bound, the calibration's Cllr, a suggested statement and the open-set answer.

One function per wording, so the page, the JSON, the PDF and the command line cannot drift apart.

The rounding rule (``lr_number``): an LR of 1 or more is given to two significant figures (2,800; 35;
2.0), with a thousands separator, and from 10^9 up as a mantissa with one decimal times a power of ten
(3.2 × 10^12); an LR below 1 is written as the reciprocal of such a number (1/16). Beside it the log10 LR
is given to two decimals. Two significant figures are as fine as two decimals of log10 (a step of 0.01
in log10 is 2.3 % of the LR); more digits would claim a precision the calibration does not have
(docs/method.md, "Likelihood ratios"). Rounding to significant figures never reverses an order, so a
larger LR is never written as a smaller number.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .calibration import verbal_band

SCORE_MEANING = ("A score is a similarity (the cosine of two images' features, at most 1), not a probability: it "
                 "ranks the candidates, and a score of 0.99 does not mean 99%.")
CLLR_MEANING = ("Cllr measures how good this calibration's LRs were on its own data, cross-validated by "
                "identity: 0 is perfect, 1 is no better than giving LR 1 to every comparison.")
DEFAULT_THRESHOLD_LR = 1.0  # LR > 1: the findings favour the same-person proposition at all
# Bisection steps for the score at an LR threshold: 2 / 2**60 is far below the 4 decimals shown.
_BISECTION_STEPS = 60
_POWER_FROM = 9  # log10 LR from which an LR is written with a power of ten


def lr_number(log10_lr: float) -> str:
    """The LR itself, rounded as the module's docstring says: 2,800; 35; 2.0; 1/16; 3.2 × 10^12."""
    value = float(log10_lr)
    if math.isnan(value):
        raise ValueError("an LR of NaN has no wording")
    if value < 0:
        return "1/" + lr_number(-value)
    if math.isinf(value):
        return "∞"
    if value >= _POWER_FROM:  # never 10.0 ** value, which overflows far out
        exponent = int(math.floor(value))
        mantissa = round(10.0 ** (value - exponent), 1)
        if mantissa >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        return f"{mantissa:.1f} × 10^{exponent}"
    rounded = float(f"{10.0 ** value:.2g}")
    return f"{rounded:.1f}" if rounded < 10 else f"{rounded:,.0f}"


def lr_text(log10_lr: float) -> str:
    """"LR ≈ 2,800 (log10 3.45)": how every output shows a calibrated candidate's LR."""
    return f"LR ≈ {lr_number(log10_lr)} (log10 {float(log10_lr):.2f})"


def bound_note(side: str | None) -> str | None:
    """One sentence for an LR clipped to the calibration's bound (None when it was not)."""
    if side == "upper":
        return "At the upper bound: the calibration data cannot support a larger LR, whatever the score."
    if side == "lower":
        return "At the lower bound: the calibration data cannot support a smaller LR, whatever the score."
    return None


def matched_text(matched: int, num_images: int, top_k: int) -> str:
    """What ``Candidate.matched`` counts (it replaces "3/7 images in top hits")."""
    return (f"{int(matched)} of {int(num_images)} enrolled image(s) among the {int(top_k)} gallery images most "
            f"similar to the query")


def calibration_note(calibration, kind: str, pair: str | None = None) -> str:
    """The calibration line of the score kind in use (``CalibrationInfo.describe``: its Cllr rounded to 3
    decimals; of the aspect ``pair``'s map when one weighed the scores) and what Cllr measures."""
    return f"{calibration.describe(kind, pair)}. {CLLR_MEANING}"


def threshold_text(threshold_lr: float) -> str:
    """"LR > 1", "LR > 100", "LR > 1/2.0": a threshold as a person states it."""
    value = float(threshold_lr)
    if 1 <= value < 1e9 and value == round(value):
        return f"LR > {round(value):,d}"
    return f"LR > {lr_number(math.log10(value))}"


def suggested_statement(propositions: dict, log10_lr: float, verbal: str, exhibit: str, compared_with: str,
                        at_bound: str | None = None) -> str:
    """A statement an examiner can copy for one candidate, from the propositions, the LR and its verbal
    equivalent (``verbal``, from ``calibration.verbal_equivalent``); it is the examiner's to adopt only
    after comparing the images."""
    number, log10 = lr_number(abs(log10_lr)), f"log10 LR {float(log10_lr):.2f}"
    if verbal_band(log10_lr) == 0:
        weight = f"The observed similarity is about as probable if Hp is true as if Hd is true ({log10})."
    else:
        first, second = ("Hp", "Hd") if log10_lr > 0 else ("Hd", "Hp")
        weight = (f"The observed similarity is about {number} times more probable if {first} is true than if "
                  f"{second} is true ({log10}).")
    bound = {"upper": " This is the largest LR the calibration data support.",
             "lower": " This is the smallest LR the calibration data support."}.get(at_bound or "", "")
    return (f"Query image {exhibit} was compared with {compared_with}. Hp: {propositions['hp']} "
            f"Hd: {propositions['hd']} {weight}{bound} In the terms of the ENFSI verbal scale, {verbal}.")


def score_at_threshold(log10_lr_of: Callable[[list[float]], Sequence[float]], threshold_lr: float) -> float | None:
    """The lowest score in [-1, 1] whose LR exceeds ``threshold_lr`` (``log10_lr_of``: scores -> log10
    LRs, non-decreasing), found by bisection; None when no score reaches it."""
    target = math.log10(threshold_lr)
    low, high = -1.0, 1.0
    if float(log10_lr_of([high])[0]) <= target:
        return None
    if float(log10_lr_of([low])[0]) > target:
        return low
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if float(log10_lr_of([middle])[0]) > target:
            high = middle
        else:
            low = middle
    return high


def open_set_answer(log10_lrs: Sequence[float], scores: Sequence[float], threshold_lr: float,
                    threshold_score: float | None, upper_bound: float) -> dict:
    """Whether any candidate reaches the threshold (its LR exceeds ``threshold_lr``): the ranks that do,
    the score the threshold takes under the calibration (``threshold_score``, rounded up to 4 decimals),
    and the answer in words, "no candidate reaches the threshold" being one of them."""
    said = threshold_text(threshold_lr)
    target = math.log10(threshold_lr)
    reached = [rank for rank, lr in enumerate(log10_lrs, 1) if lr > target]
    best = f"{max(scores):.4f}" if len(scores) else "none"
    # rounded up, so "at least" stays true (less a bisection step's width, far below the 4 decimals shown)
    shown = None if threshold_score is None else math.ceil(threshold_score * 1e4 - 1e-6) / 1e4
    if shown is None:
        answer = (f"No candidate can reach the threshold ({said}): it lies above the largest LR this calibration "
                  f"supports ({lr_text(upper_bound)}). Choose a lower threshold.")
    elif not reached:
        answer = (f"No candidate reaches the threshold ({said}). Under this calibration it takes a score of at "
                  f"least {shown:.4f}; the best score here is {best}. The person may not be in the gallery: the "
                  f"candidates listed are the nearest ones, not matches.")
    else:
        ranks = ", ".join(str(r) for r in reached)
        answer = (f"{len(reached)} candidate(s) reach the threshold ({said}; a score of at least {shown:.4f} under "
                  f"this calibration): rank(s) {ranks}. Reaching it is not an identification: an examiner "
                  f"compares each one with the query.")
    return {"threshold_lr": float(threshold_lr), "threshold": said, "threshold_score": shown,
            "reached": reached, "none_reached": not reached, "answer": answer}
