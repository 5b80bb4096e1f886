"""Comparison scores as likelihood ratios: fitted, bounded, stored as plain data.

A calibration turns a score (cosine similarity) into log10 LR, where
LR = p(score | same person) / p(score | different people). The calibrators are the NFI's ``lir``
package's (logistic regression, KDE, isotonic/PAV); their fitted state is kept as plain numbers
(two coefficients, the KDE's monotone table, the PAV step function), so a calibration file loads
without unpickling anything and gives the same LRs every time. Every map is non-decreasing in the
score over the whole real line and clipped to its empirical lower and upper bounds (ELUB), so it
never claims more than its calibration data supports (docs/method.md, "Likelihood ratios").

Two score kinds are calibrated separately because their distributions differ:
``image`` is one query image against one gallery image; ``identity`` is the best score of a query
over all gallery images of one person (what ``handclip search --by identity`` ranks by).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .calibration_checks import (FORMAT, KINDS, METHODS, VERSION, CalibrationError, check_content_hash, check_document,
                                 check_map, content_sha256, parse_json)

__all__ = ["FORMAT", "KINDS", "METHODS", "VERSION", "CalibrationError", "ScoreCalibration", "ScoreMap",
           "cllr_figures", "elub_bounds", "fit_score_map", "kde_table", "monotone_interp",
           "verbal_band", "verbal_equivalent", "verbal_scale_rows", "verbal_strength"]
# Two-fold cross-calibration needs at least three people with two or more images in each fold.
MIN_IDENTITIES = 6
# KDE's densities are estimated from at most this many scores per class: a few thousand suffice.
KDE_MAX_POINTS = 2000
# The KDE table's knots lie at most an eighth of the narrower bandwidth apart, within these counts.
KDE_MIN_KNOTS, KDE_MAX_KNOTS = 1025, 4097
# Stored KDE log10 LRs are held within +-15, far beyond any ELUB bound (log10 of the pair count + 1).
KDE_LOG10_LIMIT = 15.0
# lir's ELUB search holds a pairs x thresholds float matrix; larger non-mated sets are subsampled,
# which can only lower the upper bound (it never exceeds log10 of the non-mated count + 1).
ELUB_MAX_NONMATED = 50_000


# ----------------------------------------------------------------------------------------------
# ENFSI's verbal scale

# Lower edge of each band in log10 LR and the strength of support (ENFSI Guideline for Evaluative
# Reporting in Forensic Science, 2015): 2-10 weak, 10-100 moderate, 100-1,000 moderately strong,
# 1,000-10,000 strong, 10,000-1,000,000 very strong, above 1,000,000 extremely strong.
VERBAL_BANDS = (
    (math.log10(2.0), "weak"),
    (1.0, "moderate"),
    (2.0, "moderately strong"),
    (3.0, "strong"),
    (4.0, "very strong"),
    (6.0, "extremely strong"),
)
SAME = "the same-person proposition"
DIFFERENT = "the different-person proposition"


def verbal_band(log10_lrs) -> np.ndarray:
    """The band of each log10 LR: 0 for no support, k = 1..6 for the k-th band of support for the
    same-person proposition (weak ... extremely strong), -k for the same band for the different-person one.

    The one rule behind the verbal equivalent and the table of bands: an LR on an edge belongs to the
    stronger band, both ways, so LR 10 and LR 1/10 are both "moderate" (docs/method.md, "Likelihood ratios").
    """
    values = np.asarray(log10_lrs, dtype=np.float64)
    if np.any(np.isnan(values)):
        raise CalibrationError("no verbal equivalent for a log10 LR of NaN")
    edges = np.array([edge for edge, _ in VERBAL_BANDS]) - 1e-12  # log10(10 ** k) may round below k
    strength = np.searchsorted(edges, np.abs(values), side="right")
    return np.sign(values).astype(np.int64) * strength


def verbal_strength(log10_lr: float) -> str:
    """The band's word for |log10 LR|: "no", "weak", ..., "extremely strong"."""
    band = abs(int(verbal_band(log10_lr)))
    return "no" if band == 0 else VERBAL_BANDS[band - 1][1]


def verbal_equivalent(log10_lr: float) -> str:
    """ENFSI's verbal equivalent of an LR, in both directions.

    The propositions: the two hands are from the same person / from different people. An LR below 1
    supports the different-person proposition with the strength its reciprocal gives. LRs between
    1/2 and 2 are said to support neither (ENFSI lists LR 1 for this and starts "weak" at 2).
    """
    value = float(log10_lr)
    word = verbal_strength(value)
    if word == "no":
        return "the findings do not support one proposition over the other"
    first, second = (SAME, DIFFERENT) if value > 0 else (DIFFERENT, SAME)
    return f"the findings provide {word} support for {first} rather than {second}"


def _lr_text(log10: float) -> str:
    if math.isinf(log10):
        return "∞" if log10 > 0 else "0"
    value = 10.0 ** log10
    return f"{value:,.0f}" if value >= 1 else f"1/{1 / value:,.0f}"


def verbal_scale_rows() -> list[dict]:
    """The bands from the strongest same-person support down to the strongest different-person support:
    ``band`` (as ``verbal_band`` numbers it), ``low`` and ``high`` in log10 LR, the LR range as text, and
    the verbal equivalent. An LR on an edge belongs to the row further from LR 1."""
    edges = [edge for edge, _ in VERBAL_BANDS]
    upper = [*edges[1:], math.inf]
    positive = [(band, low, high) for band, (low, high) in enumerate(zip(edges, upper), 1)][::-1]
    bands = [*positive, (0, -edges[0], edges[0]), *[(-band, -high, -low) for band, low, high in positive[::-1]]]
    return [{"band": band, "low": low, "high": high, "lr": f"{_lr_text(low)} to {_lr_text(high)}",
             "verbal": verbal_equivalent(0.0 if band == 0 else (low if band > 0 else high))}
            for band, low, high in bands]


# ----------------------------------------------------------------------------------------------
# One fitted, bounded map


def _as_scores(values, what: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.size and not np.all(np.isfinite(scores)):
        raise CalibrationError(f"{what} contain NaN or infinite values")
    return scores


def monotone_interp(x: np.ndarray, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Linear interpolation in a table with non-decreasing ``values``, constant beyond its ends.

    Unlike ``np.interp`` it cannot fall by a rounding step next to a knot: each result is clamped to its
    own segment's two values, so a higher ``x`` never gets a lower value.
    """
    if knots.size == 1:
        return np.full(x.shape, values[0], dtype=np.float64)
    segment = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, knots.size - 2)
    left, right = knots[segment], knots[segment + 1]
    width = right - left
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(width > 0, (x - left) / np.where(width > 0, width, 1.0), 1.0)
    fraction = np.clip(fraction, 0.0, 1.0)
    low, high = values[segment], values[segment + 1]
    return np.clip(low + fraction * (high - low), low, high)


@dataclass(frozen=True)
class ScoreMap:
    """score -> log10 LR for one score kind: the calibrator's plain-data state and its ELUB bounds."""

    method: str
    params: dict
    lower: float
    upper: float

    def raw_log10_lr(self, scores) -> np.ndarray:
        """The calibrator's log10 LR before bounding (may be infinite for PAV's end steps)."""
        from lir.util import ln_to_log10, probability_to_logodds

        x = _as_scores(scores, "scores")
        if self.method == "logit":
            return ln_to_log10(self.params["intercept"] + self.params["coef"] * x)
        knots = np.asarray(self.params["x"], dtype=np.float64)
        if self.method == "kde":
            return monotone_interp(x, knots, np.asarray(self.params["log10_lr"], dtype=np.float64))
        if self.method == "isotonic":
            probability = monotone_interp(x, knots, np.asarray(self.params["p"], dtype=np.float64))
            return np.asarray(probability_to_logodds(probability), dtype=np.float64)
        raise CalibrationError(f"unknown calibration method {self.method!r} (choose from {', '.join(METHODS)})")

    def log10_lr(self, scores) -> np.ndarray:
        return np.clip(self.raw_log10_lr(scores), self.lower, self.upper)

    def as_dict(self) -> dict:
        return {"method": self.method, "params": self.params, "log10_lr_bounds": [self.lower, self.upper]}

    @classmethod
    def from_dict(cls, data, where: str) -> "ScoreMap":
        """A stored map, every value checked (``calibration_checks.check_map``)."""
        return cls(*check_map(data, where))


def _check_fit_input(mated: np.ndarray, nonmated: np.ndarray) -> None:
    if mated.size == 0:
        raise CalibrationError("no mated (same-person) scores to calibrate on")
    if nonmated.size == 0:
        raise CalibrationError("no non-mated (different-person) scores to calibrate on")
    both = np.concatenate([mated, nonmated])
    if np.ptp(both) == 0:
        raise CalibrationError(f"all {both.size} scores are equal ({both[0]:.6g}); they cannot tell people apart, "
                               f"so no calibration can be fitted")


def _subsample(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= limit:
        return values
    return np.sort(rng.choice(values, size=limit, replace=False))


def elub_bounds(llrs: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """lir's empirical lower and upper log10 LR bounds for calibrated ``llrs`` with 0/1 ``labels``."""
    from lir.algorithms.bayeserror import elub

    llrs = np.asarray(llrs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    nonmated = np.flatnonzero(labels == 0)
    if nonmated.size > ELUB_MAX_NONMATED:
        keep = np.random.default_rng(seed).choice(nonmated, size=ELUB_MAX_NONMATED, replace=False)
        chosen = np.sort(np.concatenate([np.flatnonzero(labels == 1), keep]))
        llrs, labels = llrs[chosen], labels[chosen]
    low, high = elub(llrs.copy(), labels, add_misleading=1)  # elub clips its input in place
    return float(low), float(high)


def kde_table(mated_points: np.ndarray, nonmated_points: np.ndarray, low: float, high: float) -> dict:
    """lir's KDE (Silverman bandwidth per class) as a non-decreasing table of log10 LR over [low, high].

    The two densities are evaluated on a fine grid. Where their ratio falls as the score rises, PAV pools
    neighbouring knots, weighting each posterior f1 / (f0 + f1) by f0 + f1, so a pooled interval's LR is
    the ratio of the two classes' probability mass in it (docs/method.md, "Likelihood ratios").
    """
    from lir.algorithms.kde import KDECalibrator
    from scipy.special import expit, logit
    from sklearn.isotonic import isotonic_regression

    sample_x = np.concatenate([nonmated_points, mated_points])
    sample_y = np.concatenate([np.zeros(nonmated_points.size, np.int64), np.ones(mated_points.size, np.int64)])
    calibrator = KDECalibrator(bandwidth="silverman").fit(sample_x, sample_y)
    kde0, kde1 = calibrator._kde0, calibrator._kde1  # lir keeps no public handle on the two densities
    bandwidths = [float(kde0.bandwidth_), float(kde1.bandwidth_)]
    count = int(np.clip(np.ceil(8 * (high - low) / min(bandwidths)) + 1, KDE_MIN_KNOTS, KDE_MAX_KNOTS))
    knots = np.linspace(low, high, count)
    log_f0, log_f1 = kde0.score_samples(knots[:, None]), kde1.score_samples(knots[:, None])
    mass = np.logaddexp(log_f0, log_f1)
    weight = np.maximum(np.exp(mass - mass.max()), 1e-300)  # PAV divides by summed weights
    posterior = isotonic_regression(expit(log_f1 - log_f0), sample_weight=weight, increasing=True)
    limit = 10.0 ** -KDE_LOG10_LIMIT
    values = logit(np.clip(posterior, limit, 1.0 - limit)) / math.log(10.0)
    # Interior knots inside a flat stretch change nothing in the linear interpolation: leave them out.
    flat = np.zeros(count, dtype=bool)
    flat[1:-1] = (values[1:-1] == values[:-2]) & (values[1:-1] == values[2:])
    return {"bandwidth": bandwidths, "x": [float(v) for v in knots[~flat]],
            "log10_lr": [float(v) for v in values[~flat]]}


def fit_score_map(mated, nonmated, method: str = "logit", seed: int = 0) -> ScoreMap:
    """Fit lir's calibrator on mated / non-mated scores, keep its state as plain data, add ELUB bounds."""
    mated = _as_scores(mated, "mated scores")
    nonmated = _as_scores(nonmated, "non-mated scores")
    _check_fit_input(mated, nonmated)
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    rng = np.random.default_rng(seed)
    x = np.concatenate([nonmated, mated])
    y = np.concatenate([np.zeros(nonmated.size, dtype=np.int64), np.ones(mated.size, dtype=np.int64)])
    if method == "logit":
        from lir.algorithms.logistic_regression import LogitCalibrator

        # Plain maximum likelihood: sklearn's default L2 penalty (C = 1) shrinks the slope several-fold when
        # scores span a narrow range (a trained model's cosines lie within 0.8-1.0), squashing every LR to ~1.
        calibrator = LogitCalibrator(C=np.inf).fit(x, y)
        model = calibrator._logit  # the fitted sklearn LogisticRegression (lir keeps no public handle)
        params = {"coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
        if params["coef"] < 0:
            # The likelihood is concave, so its maximum under slope >= 0 lies at slope 0, where lir's
            # balanced class weights put the intercept at 0: LR 1 for every score.
            params = {"coef": 0.0, "intercept": 0.0}
    elif method == "kde":
        mated_points, nonmated_points = _subsample(mated, KDE_MAX_POINTS, rng), _subsample(nonmated, KDE_MAX_POINTS, rng)
        if np.ptp(mated_points) == 0 or np.ptp(nonmated_points) == 0:
            raise CalibrationError("KDE calibration needs mated and non-mated scores that each vary "
                                   "(Silverman's bandwidth is zero otherwise); use --method logit")
        params = kde_table(mated_points, nonmated_points, float(x.min()), float(x.max()))
    else:
        from lir.algorithms.isotonic_regression import IsotonicCalibrator

        # One misleading point at each end keeps the PAV's outermost steps off LR 0 and infinity.
        calibrator = IsotonicCalibrator(add_misleading=1).fit(x, y)
        regression = calibrator._ir
        params = {"x": [float(v) for v in regression._necessary_X_], "p": [float(v) for v in regression._necessary_y_]}
    unbounded = ScoreMap(method, params, -math.inf, math.inf)
    fitted = unbounded.log10_lr(x)
    low, high = elub_bounds(fitted, y, seed=seed)
    return ScoreMap(method, params, low, high)


# ----------------------------------------------------------------------------------------------
# Cllr


def cllr_figures(llrs, labels) -> dict:
    """lir's Cllr, Cllr_min (after PAV) and Cllr_cal = Cllr - Cllr_min, plus the pair counts."""
    from lir.data.models import LLRData
    from lir.metrics import cllr, cllr_min

    llrs = np.asarray(llrs, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n_mated, n_nonmated = int(labels.sum()), int((labels == 0).sum())
    if n_mated == 0 or n_nonmated == 0:
        raise CalibrationError(f"Cllr needs mated and non-mated comparisons (got {n_mated} mated, "
                               f"{n_nonmated} non-mated)")
    data = LLRData(features=llrs, labels=labels)
    total, minimum = float(cllr(data)), float(cllr_min(data))
    return {"cllr": total, "cllr_min": minimum, "cllr_cal": total - minimum,
            "n_mated": n_mated, "n_nonmated": n_nonmated}


# ----------------------------------------------------------------------------------------------
# The calibration file


def _json_text(payload: dict) -> str:
    try:
        return json.dumps(payload, indent=1, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise CalibrationError("the calibration holds NaN or infinite numbers and cannot be stored") from None


@dataclass
class ScoreCalibration:
    """Fitted, bounded score -> log10 LR maps per score kind, with the model and data they belong to.

    ``summary`` holds ``method``, the cross-validated (by identity) ``cllr``, ``cllr_min`` and
    ``cllr_cal``, ``n_identities``, ``n_mated``, ``n_nonmated`` (those of the ``image`` kind; every
    kind's own figures are under ``summary["kinds"]``), ``manifest_sha256`` and ``created``.
    """

    maps: dict[str, ScoreMap]
    fingerprint: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    # Per aspect pair (``handclip.forensic.pair_calibration``): pair key -> kind -> map; figures in summary["pairs"].
    pairs: dict[str, dict[str, ScoreMap]] = field(default_factory=dict)

    def _map(self, kind: str, pair: str | None = None) -> ScoreMap:
        maps = self.maps if pair is None else self.pairs.get(pair, {})
        if kind not in maps:
            raise CalibrationError(f"this calibration{f' of the pair {pair}' if pair else ''} has no {kind!r} scores "
                                   f"(it has {', '.join(sorted(maps)) or 'none'})")
        return maps[kind]

    def log10_lr(self, scores, kind: str = "image", pair: str | None = None) -> np.ndarray:
        """log10 LR of cosine ``scores`` of the given kind (of aspect pair ``pair``), clipped to the ELUB range."""
        return self._map(kind, pair).log10_lr(scores)

    def bounds(self, kind: str = "image", pair: str | None = None) -> tuple[float, float]:
        score_map = self._map(kind, pair)
        return score_map.lower, score_map.upper

    def pair_for(self, query_aspect: str | None, gallery_aspect: str | None, mirrored: bool = False) -> str | None:
        """The key of the pair whose maps weigh these aspects (None: the file's own maps, same-aspect only);
        CalibrationError when it has none for exactly this pair (docs/method.md, "Aspects of a hand")."""
        from ..aspects import pair_key

        if not self.pairs:
            if not mirrored and (query_aspect is None or gallery_aspect is None or query_aspect == gallery_aspect):
                return None
            raise CalibrationError("this calibration was fitted without aspect pairs, so it says nothing about "
                                   "comparing other aspects; fit one with `handclip calibrate --aspect-pairs`")
        if gallery_aspect is None:
            raise CalibrationError("this calibration is fitted per aspect pair, but the gallery images carry no "
                                   "aspect; state the gallery's aspect (enrol --aspect) to weigh the scores")
        key = pair_key(query_aspect, gallery_aspect, mirrored)
        if key not in self.pairs:
            raise CalibrationError(f"this calibration has no maps for the aspect pair {key} (it has "
                                   f"{', '.join(sorted(self.pairs))}); refusing to borrow another pair's")
        return key

    def check_model(self, fingerprint: dict) -> None:
        """CalibrationError naming every field on which ``fingerprint`` differs from the calibrated model's."""
        from ..model.fingerprint import fingerprint_differences

        differences = fingerprint_differences(self.fingerprint, fingerprint)
        if differences:
            source = self.summary.get("path") or "this calibration"
            raise CalibrationError(f"{source} was fitted for another model; differing fields (calibration vs model): "
                                   + "; ".join(differences))

    def describe(self, kinds: Sequence[str] = KINDS) -> list[str]:
        """Lines for a terminal: cross-validated Cllr per aspect pair, then pair counts, Cllr and LR range per kind."""
        lines = []
        for key, maps in self.pairs.items():
            figures = self.summary.get("pairs", {}).get(key, {})
            lines.append(f"{key:>30}: " + ", ".join(f"{kind} Cllr {figures.get(kind, {}).get('cllr', math.nan):.3f}"
                                                    for kind in kinds if kind in maps))
        for kind in (k for k in kinds if k in self.maps):
            f, (low, high) = self.summary.get("kinds", {}).get(kind, {}), self.bounds(kind)
            lines.append(f"{kind:>8}: {f.get('n_mated', '?')} mated / {f.get('n_nonmated', '?')} non-mated; "
                         f"cross-validated Cllr {f.get('cllr', math.nan):.3f} (min {f.get('cllr_min', math.nan):.3f}, "
                         f"cal {f.get('cllr_cal', math.nan):.3f}); LR from 10^{low:.2f} to 10^{high:.2f}")
        return lines

    def as_dict(self) -> dict:
        """The file's content, with the SHA-256 of its canonical form (``calibration_checks``)."""
        summary = {k: v for k, v in self.summary.items() if k != "path"}
        payload = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "summary": summary,
                   "maps": {kind: m.as_dict() for kind, m in self.maps.items()}}
        if self.pairs:  # maps per aspect pair: hashed with the rest, so a swapped pair is detected
            payload["pairs"] = {key: {kind: m.as_dict() for kind, m in maps.items()} for key, maps in self.pairs.items()}
        try:
            return {**payload, "content_sha256": content_sha256(payload)}
        except ValueError:
            raise CalibrationError("the calibration holds NaN or infinite numbers and cannot be stored") from None

    def save(self, path) -> None:
        from ..atomic import atomic_write_text

        atomic_write_text(path, _json_text(self.as_dict()))

    @classmethod
    def load(cls, path) -> "ScoreCalibration":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationError(f"calibration file {path} does not exist") from None
        except IsADirectoryError:
            raise CalibrationError(f"calibration file {path} is a directory") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"cannot read calibration file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        data = parse_json(text, path)
        check_document(data, path)
        parsed = {kind: ScoreMap.from_dict(m, f"calibration file {path}, maps.{kind}")
                  for kind, m in data["maps"].items()}
        pairs = {key: {kind: ScoreMap.from_dict(m, f"calibration file {path}, pairs.{key}.{kind}")
                       for kind, m in maps.items()} for key, maps in data.get("pairs", {}).items()}
        check_content_hash(data, path)  # after the maps, so a map that cannot be right is named first
        return cls(parsed, data["fingerprint"], {**data["summary"], "path": str(path)}, pairs)

