"""Fit a model's score calibration on a manifest's identities (what ``handclip calibrate`` runs).

Every image of the chosen splits (by default the test identities' query and gallery images, which
the model never trained on) is encoded once, with the same features ``handclip search`` uses (no flip).
Both score kinds are fitted on all their comparisons; the Cllr stored with them is cross-validated by
identity, so it describes LRs for people the calibration did not see.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from .calibration import (
    KINDS,
    METHODS,
    MIN_IDENTITIES,
    CalibrationError,
    ScoreCalibration,
    fit_score_map,
)
from .crosscal import cross_calibrate, identity_pairs, image_pairs

# A uniform sample of non-mated comparisons estimates their score distribution as well as all of them,
# and keeps the fit, ELUB and the cross-validation quick for galleries of thousands of images.
MAX_NONMATED = 200_000
DEFAULT_SPLITS = ("query", "gallery")


def _subsample_nonmated(pairs, limit: int, rng: np.random.Generator):
    scores, labels, first, second = pairs
    nonmated = np.flatnonzero(labels == 0)
    if nonmated.size <= limit:
        return pairs, int(nonmated.size)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == 1), rng.choice(nonmated, limit, replace=False)]))
    return (scores[keep], labels[keep], first[keep], second[keep]), int(nonmated.size)


def calibration_records(manifest, splits: Sequence[str] = DEFAULT_SPLITS, source=None) -> list:
    """The images to calibrate on: each path once, distractors left out (their pid marks a gallery,
    not a person: 11k's distractors are the same people's other aspects)."""
    unknown = [s for s in splits if s not in ("train", "val", "query", "gallery")]
    if unknown:
        raise CalibrationError(f"unknown split {unknown[0]!r} (choose from train, val, query, gallery)")
    seen = {}
    for rec in manifest.records:
        if rec.split in splits and not rec.is_distractor:
            seen.setdefault(rec.path, rec)
    records = list(seen.values())
    counts = Counter(rec.pid for rec in records)
    usable = sum(1 for n in counts.values() if n >= 2)
    if usable < MIN_IDENTITIES:
        raise CalibrationError(f"{source or 'the manifest'} has {usable} identities with two or more images in "
                               f"split(s) {', '.join(splits)}; calibration needs at least {MIN_IDENTITIES}")
    return records


def fit_calibration(features: np.ndarray, pids, method: str = "logit", folds: int = 5, seed: int = 0,
                    max_nonmated: int = MAX_NONMATED) -> tuple[dict, dict]:
    """(kind -> ScoreMap fitted on everything, kind -> cross-validated figures) from image features."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    rng = np.random.default_rng(seed)
    maps, figures = {}, {}
    for kind, build in (("image", image_pairs), ("identity", identity_pairs)):
        (scores, labels, first, second), available = _subsample_nonmated(build(features, pids), max_nonmated, rng)
        crossed = cross_calibrate(scores, labels, first, second, n_folds=folds, method=method, seed=seed)
        maps[kind] = fit_score_map(scores[labels == 1], scores[labels == 0], method, seed=seed)
        figures[kind] = {**crossed.figures(), "n_mated": int(labels.sum()), "n_nonmated": int((labels == 0).sum()),
                         "n_nonmated_available": available, "folds": len(crossed.folds),
                         "n_cross_validated": int(crossed.index.size)}
    return maps, figures


def calibrate(checkpoint, manifest_path, method: str = "logit", splits: Sequence[str] = DEFAULT_SPLITS,
              folds: int = 5, seed: int = 0, device=None, batch_size: int = 128,
              progress: bool = False, precision: str = "auto", engine: str = "torch") -> ScoreCalibration:
    """A ScoreCalibration for ``checkpoint`` fitted on ``manifest_path``'s identities (not yet saved); the
    features are computed at ``precision`` with ``engine`` (``Encoder.computed_with``), as the summary says."""
    from ..atomic import sha256_file
    from ..data.manifest import Manifest
    from ..data.images import check_images_exist
    from ..model.inference import load_encoder

    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    manifest = Manifest.read(manifest_path)
    records = calibration_records(manifest, splits, source=f"manifest {manifest_path}")
    if "train" in splits or "val" in splits:
        print("handclip: warning: the model trained on the train/val identities; LRs calibrated on them "
              "overstate the evidence for new people", file=sys.stderr)
    check_images_exist(records, source=manifest_path)
    encoder = load_encoder(checkpoint, device=device, precision=precision, engine=engine)  # as enrol and search
    features = encoder.features(records, batch_size=batch_size, flip=False, progress=progress)
    pids = np.array([rec.pid for rec in records])
    maps, figures = fit_calibration(features, pids, method, folds, seed)
    image = figures["image"]
    summary = {
        "method": method, "cllr": image["cllr"], "cllr_min": image["cllr_min"], "cllr_cal": image["cllr_cal"],
        "n_identities": int(len(set(pids.tolist()))), "n_images": len(records),
        "n_mated": image["n_mated"], "n_nonmated": image["n_nonmated"],
        "manifest": str(Path(manifest_path)), "manifest_sha256": sha256_file(manifest_path),
        "splits": list(splits), "checkpoint": str(Path(checkpoint)), "folds": image["folds"], "seed": seed,
        "score": "cosine similarity of L2-normalised features (no flip)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kinds": figures, "inference": encoder.inference_record(),
    }
    return ScoreCalibration(maps, encoder.fingerprint(), summary)


__all__ = ["calibrate", "calibration_records", "fit_calibration", "KINDS", "DEFAULT_SPLITS"]
