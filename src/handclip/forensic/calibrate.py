"""Fit a model's score calibration on a manifest's identities (what ``handclip calibrate`` runs).

Every image of the chosen splits (by default the test identities' query and gallery images, which
the model never trained on) is encoded once, with the same features ``handclip search`` uses (no flip).
Both score kinds are fitted on all their comparisons; the Cllr stored with them is cross-validated by
identity, so it describes LRs for people the calibration did not see.
"""

from __future__ import annotations

import os
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
from .calibration_checks import identity_sha256s
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
    _enough_identities(records, source or "the manifest", f" in split(s) {', '.join(splits)}")
    return records


def _enough_identities(records: list, source: str, where: str = "") -> None:
    usable = sum(1 for n in Counter(rec.pid for rec in records).values() if n >= 2)
    if usable < MIN_IDENTITIES:
        raise CalibrationError(f"{source} has {usable} identities with two or more images{where}; "
                               f"calibration needs at least {MIN_IDENTITIES}")


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


def folder_records(folder) -> tuple[list, str]:
    """The images of a folder of per-identity folders (as ``handclip enrol`` reads them) as records, one
    identity per folder, and the SHA-256 of its listing (each image's SHA-256 and path, as sha256sum
    prints them), so a calibration names exactly the images it was fitted on."""
    from ..atomic import sha256_bytes, sha256_file
    from ..data.images import FolderWalk, identity_folders
    from ..data.manifest import ManifestRecord

    root, walk = Path(folder).absolute(), FolderWalk()
    records = [ManifestRecord("gallery", 0, path, pid, None, "folder", root.name, name, False)
               for pid, (name, paths) in enumerate(identity_folders(root, walk)) for path in paths]
    walk.warn(Path(folder))
    listing = "".join(f"{sha256_file(r.path)}  {os.path.relpath(r.path, root)}\n" for r in records)
    return records, sha256_bytes(listing.encode("utf-8"))


def _usable(records: list, skip_bad: bool, source) -> list:
    """``records`` without the unusable images (each named) under ``skip_bad``; otherwise one DataError."""
    from ..data.images import check_images_exist, unusable_images, warn_left_out

    check_images_exist(records, source=source)
    problems = unusable_images([r.path for r in records], skip_bad)
    if not problems:
        return records
    warn_left_out(problems, "the calibration")
    bad = {p.path for p in problems}
    return [r for r in records if r.path not in bad]


def _calibration_input(manifest_path, images, splits: Sequence[str], skip_bad: bool) -> tuple[list, str, dict]:
    """(records, source named in messages, provenance for the summary) of a manifest's splits or a folder."""
    from ..atomic import sha256_file
    from ..data.manifest import Manifest

    if (manifest_path is None) == (images is None):
        raise CalibrationError("give either a manifest or a folder of per-identity image folders to calibrate on")
    if images is not None:
        records, listing_sha256 = folder_records(images)
        source = f"folder {images}"
        provenance = {"images": str(Path(images)), "images_sha256": listing_sha256, "splits": []}
    else:
        manifest = Manifest.read(manifest_path)
        records = calibration_records(manifest, splits, source=f"manifest {manifest_path}")
        source = f"manifest {manifest_path}"
        provenance = {"manifest": str(Path(manifest_path)), "manifest_sha256": sha256_file(manifest_path),
                      "splits": list(splits)}
        if "train" in splits or "val" in splits:
            print("handclip: warning: the model trained on the train/val identities; LRs calibrated on them "
                  "overstate the evidence for new people", file=sys.stderr)
    records = _usable(records, skip_bad, source)
    _enough_identities(records, source)
    return records, source, provenance


def _identity_sha256(records: list, from_folder: bool) -> list[str]:
    """Who the calibration saw, as SHA-256 of each identity (its id in a manifest, its folder name in a
    folder of people), UTF-8: a validation can check that it is run on other people without the file
    naming anyone."""
    return sorted(identity_sha256s(r.original_id if from_folder else str(r.pid) for r in records))


def calibrate(checkpoint, manifest_path=None, method: str = "logit", splits: Sequence[str] = DEFAULT_SPLITS,
              folds: int = 5, seed: int = 0, device=None, batch_size: int = 128,
              progress: bool = False, out=None, images=None, skip_bad: bool = False, aspect_pairs: bool = False,
              mirror: bool = True, precision: str = "auto", engine: str = "torch") -> ScoreCalibration:
    """A ScoreCalibration for ``checkpoint`` fitted on the identities of ``manifest_path`` (its ``splits``) or
    of ``images``, a folder of per-identity folders of people the model never trained on (every image), saved
    to ``out`` (a JSON file, written atomically) when given. An unusable image stops it, naming the file,
    unless ``skip_bad`` (each is then named and left out). With ``aspect_pairs`` one map per aspect pair
    (``calibrate_pairs``; ``mirror``: also the cross-side pairs with the query mirrored). The features are
    computed at ``precision`` with ``engine`` (``Encoder.computed_with``), as the summary's ``inference``
    record says."""
    from ..model.inference import load_encoder

    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    records, source, provenance = _calibration_input(manifest_path, images, splits, skip_bad)
    encoder = load_encoder(checkpoint, device=device, precision=precision, engine=engine)  # as enrol and search
    if aspect_pairs:
        calibration = calibrate_pairs(encoder, records, source, provenance, method, folds, seed, checkpoint,
                                      batch_size=batch_size, mirror=mirror, progress=progress)
    else:
        features = encoder.features(records, batch_size=batch_size, flip=False, progress=progress)
        pids = np.array([rec.pid for rec in records])
        maps, figures = fit_calibration(features, pids, method, folds, seed)
        image = figures["image"]
        summary = {
            "method": method, "cllr": image["cllr"], "cllr_min": image["cllr_min"], "cllr_cal": image["cllr_cal"],
            "n_identities": int(len(set(pids.tolist()))), "n_images": len(records),
            "identity_sha256": _identity_sha256(records, images is not None),
            "n_mated": image["n_mated"], "n_nonmated": image["n_nonmated"], **provenance,
            "checkpoint": str(Path(checkpoint)), "folds": image["folds"], "seed": seed,
            "score": "cosine similarity of L2-normalised features (no flip)",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kinds": figures,
            "inference": encoder.inference_record(),
        }
        calibration = ScoreCalibration(maps, encoder.fingerprint(), summary)
    if out is not None:
        calibration.save(out)
    return calibration


def calibrate_pairs(encoder, records: list, source: str, provenance: dict, method: str = "logit", folds: int = 5,
                    seed: int = 0, checkpoint=None, batch_size: int = 128, mirror: bool = True,
                    progress: bool = False) -> ScoreCalibration:
    """A ScoreCalibration with one map per aspect pair (``handclip.forensic.pair_calibration``), fitted on
    ``records`` (from ``source``) with ``encoder`` (``load_encoder``): each image encoded with its own aspect,
    and mirrored for the pairs whose sides differ (``mirror``)."""
    from ..aspects import aspects_of, record_aspect
    from .pair_calibration import AspectImages, fit_aspect_pairs

    aspects = aspects_of(records)
    if not aspects:
        raise CalibrationError(f"{source} has no aspect labels (a manifest's subset/camid); --aspect-pairs needs "
                               f"them (prepare synthetic --aspects, prepare 11k --aspect)")
    images = {}
    for aspect in aspects:
        chosen = [r for r in records if record_aspect(r) == aspect]
        features = encoder.features(chosen, batch_size=batch_size, progress=progress)
        flipped = encoder.features(chosen, batch_size=batch_size, progress=progress, mirror=True) if mirror else None
        images[aspect] = AspectImages(features, np.array([r.pid for r in chosen]), flipped)
    maps, figures = fit_aspect_pairs(images, method, folds, seed, mirror=mirror)
    summary = {
        "method": method, "aspect_pairs": sorted(maps), "pairs": figures,
        "n_identities": len({r.pid for r in records}), "n_images": len(records), "aspects": aspects,
        "identity_sha256": _identity_sha256(records, "images" in provenance), **provenance,
        "checkpoint": str(Path(checkpoint or encoder.checkpoint)), "folds": folds, "seed": seed,
        "score": "cosine similarity of L2-normalised features (no flip); a '(mirrored)' pair mirrors the query",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "inference": encoder.inference_record(),
    }
    return ScoreCalibration({}, encoder.fingerprint(), summary, pairs=maps)


__all__ = ["calibrate", "calibrate_pairs", "calibration_records", "fit_calibration", "folder_records", "KINDS",
           "DEFAULT_SPLITS"]
