"""A calibration as evidence: the loaded file with its hash, who its data were, and the propositions the
likelihood ratios it gives weigh.

Likelihood ratios weigh two propositions: Hp, the query hand and the candidate's enrolled images come
from the same person; Hd, they come from different people of the population the calibration data
represents. ``by='image'`` uses the calibration's ``image`` kind (the cosine similarity of two
images); ``by='identity'`` its ``identity`` kind, fitted on the score a search ranks people by: the
maximum cosine similarity between the query and any of the person's enrolled images. Without a
calibration, scores are similarities only and every output says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from ..atomic import sha256_file
from .calibration import ScoreCalibration, verbal_equivalent
from .reading import DEFAULT_THRESHOLD_LR, open_set_answer, score_at_threshold

NOT_LIKELIHOOD_RATIOS = ("Scores are cosine similarities between hand embeddings, not likelihood ratios: "
                         "they rank candidates but carry no evidential weight (give --calibration for "
                         "likelihood ratios).")
CALIBRATED = "Likelihood ratios from the calibration below, bounded to what its data supports."
# The summary's top-level figures are the image kind's (see CalibrationInfo.figures).
_KIND_FIGURES = ("cllr", "cllr_min", "cllr_cal", "n_mated", "n_nonmated")
# Summary fields holding a path on the machine that fitted or loaded the calibration, and long lists:
# a record for someone outside that machine (a web client) names the files by name and hash only.
_PATH_FIELDS = ("path", "manifest", "images", "checkpoint")
_LIST_FIELDS = ("identity_sha256",)


@dataclass
class CalibrationInfo:
    """A loaded calibration and the file it came from."""

    calibration: ScoreCalibration
    path: str
    sha256: str

    @property
    def summary(self) -> dict:
        return dict(self.calibration.summary)

    def population(self) -> str:
        """Who the calibration data were: what Hd's "different people" are drawn from."""
        s = self.summary
        text = f"{s.get('n_identities', '?')} identities"
        if s.get("n_images"):
            text += f", {s['n_images']} images"
        details = []
        if s.get("splits"):
            details.append(f"splits {', '.join(map(str, s['splits']))}")
        if s.get("manifest_sha256"):
            details.append(f"SHA-256 {str(s['manifest_sha256'])[:16]}...")
        if s.get("manifest"):
            text += f", of manifest {PurePath(str(s['manifest'])).name}"
        elif s.get("images"):
            text += f", of folder {PurePath(str(s['images'])).name}"
            details.append(f"listing SHA-256 {str(s.get('images_sha256'))[:16]}...")
        return text + (f" ({'; '.join(details)})" if details else "")

    def figures(self, kind: str, pair: str | None = None) -> dict:
        """The cross-validated figures of one score kind (of one aspect pair). The summary's top-level figures
        are the image kind's, so another kind without its own figures gets none rather than those."""
        s = self.summary
        if pair is not None:
            own = (s.get("pairs") or {}).get(pair, {}).get(kind) or {}
            return {**{k: v for k, v in s.items() if k not in _KIND_FIGURES}, **own}
        own = (s.get("kinds") or {}).get(kind)
        if own is None and kind != "image":
            s = {k: v for k, v in s.items() if k not in _KIND_FIGURES}
        return {**s, **(own or {})}

    def describe(self, kind: str, pair: str | None = None) -> str:
        """The calibration of the score kind a search used, as every output shows it (console, JSON, web
        page, HTML, PDF): method, that kind's cross-validated Cllr rounded to 3 decimals, the pair counts,
        and the bounds; for a calibration per aspect pair, the pair whose map was used."""
        f = self.figures(kind, pair)
        number = lambda key: f"{f[key]:.3f}" if isinstance(f.get(key), (int, float)) else "?"  # noqa: E731
        low, high = self.bounds(kind, pair)
        scores = f"'{kind}' scores" + (f" of the aspect pair {pair}" if pair else "")
        return (f"{f.get('method', '?')} calibration of {scores}: Cllr {number('cllr')} (Cllr_min "
                f"{number('cllr_min')}), {f.get('n_identities', '?')} identities, {f.get('n_mated', '?')} mated "
                f"and {f.get('n_nonmated', '?')} non-mated pairs; log10 LR bounded to [{low:+.2f}, {high:+.2f}]")

    def bounds(self, kind: str, pair: str | None = None) -> tuple[float, float]:
        low, high = self.calibration.bounds(kind, pair)
        return float(low), float(high)

    def weigh(self, scores, kind: str, pair: str | None = None) -> list[tuple[float, str, str | None]]:
        """(log10 LR, verbal equivalent, "lower"/"upper" when clipped to a bound, else None) per score."""
        if not len(scores):
            return []
        bounds = self.bounds(kind, pair)
        lrs = self.calibration.log10_lr(np.asarray(scores, np.float64), kind=kind, pair=pair)
        return [(float(lr), verbal_equivalent(float(lr)), _bound_side(float(lr), bounds)) for lr in lrs]

    def score_reaching(self, threshold_lr: float, kind: str, pair: str | None = None) -> float | None:
        """The lowest score whose LR exceeds ``threshold_lr`` under this calibration (None if none does);
        ``pair``: the aspect pair whose map weighs the scores."""
        return score_at_threshold(
            lambda scores: self.calibration.log10_lr(np.asarray(scores, np.float64), kind=kind, pair=pair),
            threshold_lr)

    def open_set(self, log10_lrs, scores, kind: str, threshold_lr: float = DEFAULT_THRESHOLD_LR,
                 threshold_score: float | None = None, pair: str | None = None) -> dict:
        """The open-set answer of one query's candidates (``reading.open_set_answer``); ``threshold_score``
        is ``score_reaching``'s, given when already known."""
        if threshold_score is None:
            threshold_score = self.score_reaching(threshold_lr, kind, pair)
        return open_set_answer(log10_lrs, scores, threshold_lr, threshold_score, self.bounds(kind, pair)[1])

    def as_record(self, kind: str, pair: str | None = None) -> dict:
        low, high = self.bounds(kind, pair)
        record = {"path": self.path, "sha256": self.sha256, "kind": kind, "bounds_log10": [low, high],
                  "description": self.describe(kind, pair), "summary": self.summary}
        if pair is not None:
            record["aspect_pair"] = pair
        return record

    def public_record(self, kind: str, pair: str | None = None) -> dict:
        """``as_record`` for a reader on another machine: no server path (files by name and SHA-256)."""
        record = {k: v for k, v in self.as_record(kind, pair).items() if k != "path"}
        record["file"] = PurePath(self.path).name
        record["summary"] = {k: (PurePath(str(v)).name if k in _PATH_FIELDS and isinstance(v, str) else v)
                             for k, v in self.summary.items() if k not in _LIST_FIELDS and k != "path"}
        return record


def _bound_side(value: float, bounds: tuple[float, float]) -> str | None:
    low, high = bounds
    if value <= low + 1e-9:
        return "lower"
    if value >= high - 1e-9:
        return "upper"
    return None


def load_calibration(path: str | os.PathLike) -> CalibrationInfo:
    """Load a calibration file (CalibrationError naming the file if it is missing or corrupt)."""
    calibration = ScoreCalibration.load(path)
    return CalibrationInfo(calibration, str(Path(path).resolve()), sha256_file(path))


def propositions(calibration: CalibrationInfo | None) -> dict | None:
    if calibration is None:
        return None
    return {"hp": "The query hand and the candidate's enrolled hand images come from the same person.",
            "hd": "They come from different people, from the population the calibration data represents: "
                  f"{calibration.population()}."}
