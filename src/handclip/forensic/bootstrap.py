"""Identity-level bootstrap intervals for any figure computed from scored comparisons.

Comparisons of one person are not independent (they share that person's hands), so the bootstrap resamples
people, never pairs (docs/method.md, "Validating the LR method"): each replicate draws as many identities as
there are, with replacement; a same-person comparison of identity i then counts c_i times and a
different-person comparison of i and j counts c_i * c_j times, where c is how often each was drawn. The
interval is the percentile interval of the replicates. A replicate whose figure cannot be computed (one
class missing, say) is left out and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .validation_metrics import PairSet

DEFAULT_REPLICATES = 200


@dataclass(frozen=True)
class Interval:
    """A figure on all the data (``estimate``) with its bootstrap percentile interval [low, high]."""

    estimate: float
    low: float
    high: float
    level: float
    replicates: int
    failed: int

    def as_dict(self) -> dict:
        return {"estimate": _finite(self.estimate), "low": _finite(self.low), "high": _finite(self.high),
                "level": self.level, "replicates": self.replicates, "failed": self.failed}


def _finite(value: float):
    return float(value) if value is not None and math.isfinite(value) else None


def _safe(statistic: Callable[[PairSet], float], pairs: PairSet) -> float:
    from ..errors import HandCLIPError

    try:
        value = float(statistic(pairs))
    except (HandCLIPError, ValueError, ZeroDivisionError, FloatingPointError):
        return math.nan
    return value


def _identity_codes(pairs: PairSet) -> tuple[int, np.ndarray, np.ndarray]:
    identities, codes = np.unique(np.concatenate([pairs.first, pairs.second]), return_inverse=True)
    return identities.size, codes[:len(pairs)], codes[len(pairs):]


def identity_weights(pairs: PairSet, rng: np.random.Generator, codes=None) -> np.ndarray:
    """How many times each pair counts in one identity-level bootstrap replicate (see the module docstring)."""
    count, first, second = codes or _identity_codes(pairs)
    return pair_weights(draw_identities(rng, count), first, second)


def draw_identities(rng: np.random.Generator, count: int) -> np.ndarray:
    """How many times each of ``count`` identities is drawn in one replicate (as many draws as identities)."""
    return np.bincount(rng.integers(0, count, count), minlength=count)


def pair_weights(drawn: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """How many times each pair (identity codes ``first``, ``second``) counts when identity i is drawn
    ``drawn[i]`` times: c_i for a same-person pair, c_i * c_j for a different-person pair."""
    return np.where(first == second, drawn[first], drawn[first] * drawn[second])


def percentile_interval(estimate: float, values: np.ndarray, level: float) -> Interval:
    """The percentile interval of the replicates' ``values`` (NaN: a replicate that could not compute it)."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[np.isfinite(values)]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = (np.percentile(kept, [tail, 100.0 - tail]) if kept.size else (math.nan, math.nan))
    return Interval(float(estimate), float(low), float(high), level, int(values.size), int(values.size - kept.size))


def identity_bootstrap(pairs: PairSet, statistics: Mapping[str, Callable[[PairSet], float]],
                       replicates: int = DEFAULT_REPLICATES, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Each named statistic on ``pairs`` with its identity-level bootstrap ``level`` interval; every statistic
    is computed on the same replicates."""
    values = bootstrap_values(pairs, statistics, replicates, seed)
    return {name: percentile_interval(_safe(statistic, pairs), values[name], level)
            for name, statistic in statistics.items()}


def bootstrap_values(pairs: PairSet, statistics: Mapping[str, Callable[[PairSet], float]],
                     replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> dict[str, np.ndarray]:
    """Each statistic's value in every replicate (NaN where it could not be computed). Two pair sets of the
    same pairs (other LRs, say) get the same replicates from the same seed, so their values line up."""
    rng = np.random.default_rng(seed)
    values = {name: np.full(replicates, np.nan) for name in statistics}
    codes, index = _identity_codes(pairs), np.arange(len(pairs))
    for r in range(replicates):
        weights = identity_weights(pairs, rng, codes)
        sample = pairs.take(np.repeat(index, weights))
        for name, statistic in statistics.items():
            values[name][r] = _safe(statistic, sample)
    return values


__all__ = ["DEFAULT_REPLICATES", "Interval", "bootstrap_values", "draw_identities", "identity_bootstrap", "identity_weights",
           "pair_weights", "percentile_interval"]
