"""The split machinery every dataset's protocol shares (docs/method.md, "Protocols").

* identities are split into training (``train_all``) and test identities by the dataset's rule;
* val = one random image per training identity, train = the rest;
* for each Monte Carlo run ``i``: one random image of each test identity goes to gallery ``i``,
  the rest to query ``i``;
* all randomness comes from ``numpy.random.default_rng([seed, <subset code>])`` drawn in a fixed
  order (identities ascending; val first, then run 0, 1, ...), so the same seed gives the same
  manifest byte for byte, and an 11k aspect's gallery ``i`` is the same whether that aspect is
  prepared on its own or pulled in as ``--gallery-all`` distractors.

Identities too small for their split (a training identity with one image cannot give a val image
*and* a training image; a test identity with one image has no query) stop preparation with a
DataError naming the identity, because silently changing a published protocol would make results
incomparable. ``small_ids="keep"`` (``--keep-small-ids``) instead keeps such an identity, with a
warning: a one-image training identity stays in train without a val image, a one-image test identity
is in every gallery with no query (which is also what the Market-1501-style scripts behind the
published numbers do). Identity folders without any image are dropped under "keep".
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np

from ..config import MAX_RUNS, MAX_SEED, shorten
from ..errors import DataError, DataWarning
from .images import MIN_IMAGE_SIDE, scan_images, warn_left_out
from .manifest import ManifestRecord

SmallIds = Literal["error", "keep"]
# What prepare does with files that do not decode or are too small: leave them out of the manifest (each
# named), keep them (--keep-bad, each named), or not decode the images at all (--no-image-check).
BadImages = Literal["leave_out", "keep", "unchecked"]
BAD_IMAGE_POLICIES = ("leave_out", "keep", "unchecked")




@dataclass
class Identity:
    pid: int
    original_id: str
    paths: list[str] = field(default_factory=list)


@dataclass
class Split:
    """Result of the split machinery for one subset (records not yet built)."""

    train: list[Identity]
    test: list[Identity]
    val_pick: dict[int, Optional[int]]        # pid -> index of the val image (None: no val image)
    gallery_picks: list[dict[int, int]]       # per run: pid -> index of the gallery image


@dataclass
class Preparation:
    """What preparing a manifest checked and did, for ``handclip prepare`` to say (not stored in the CSV):
    the bad-image policy, how many images were decoded, the unusable ones, and per-rule row counts."""

    bad_images: str
    images_checked: int = 0
    unusable: list = field(default_factory=list)   # ImageProblem, sorted by path
    rows: list[str] = field(default_factory=list)  # how the dataset's rules selected rows, in words

    @property
    def left_out(self) -> set[str]:
        """The paths to leave out of the manifest."""
        return {p.path for p in self.unusable} if self.bad_images == "leave_out" else set()

    def lines(self) -> list[str]:
        if self.bad_images == "unchecked":
            check = ("images were not decoded (--no-image-check); `handclip scan --manifest FILE` checks them, "
                     "and train, evaluate and calibrate stop on an unusable one unless --skip-bad")
        elif not self.unusable:
            check = (f"decoded all {self.images_checked} images: every one is usable (shorter side at least "
                     f"{MIN_IMAGE_SIDE} px)")
        elif self.bad_images == "leave_out":
            check = (f"decoded all {self.images_checked} images: {len(self.unusable)} unusable one(s) left out of "
                     f"the manifest, named above (--keep-bad keeps them)")
        else:
            check = (f"decoded all {self.images_checked} images: {len(self.unusable)} unusable one(s) kept in the "
                     f"manifest (--keep-bad), named above; train, evaluate and calibrate will stop on them "
                     f"unless --skip-bad")
        return [*self.rows, check]


def screen_images(paths: Sequence[str], policy: str) -> Preparation:
    """Decode every image of ``paths`` (unless ``policy`` is "unchecked") and name each unusable one in a
    DataWarning with what was done about it; ``Preparation.left_out`` is what to leave out."""
    if policy not in BAD_IMAGE_POLICIES:
        raise DataError(f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)} (got {shorten(policy)})")
    if policy == "unchecked":
        return Preparation(policy)
    unique = sorted(set(paths))
    problems = scan_images(unique)
    if policy == "leave_out":
        warn_left_out(problems, "the manifest")
    else:
        for problem in problems:
            warnings.warn(f"kept {problem.path} (--keep-bad) although unusable: {problem.reason}", DataWarning,
                          stacklevel=2)
    return Preparation(policy, len(unique), problems)


def split_rng(seed: int, *salt: int) -> np.random.Generator:
    """The generator of one subset's split: ``seed`` and the dataset's subset code(s)."""
    return np.random.default_rng([int(seed), *salt])


def check_common(runs: int, seed: int, small_ids: str) -> None:
    """Refuse a run count, seed or small-identity policy no protocol accepts."""
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or not 1 <= runs <= MAX_RUNS:
        raise DataError(f"runs must be a whole number from 1 to {MAX_RUNS} (got {shorten(runs)})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise DataError(f"seed must be a whole number from 0 to {MAX_SEED} (got {shorten(seed)})")
    if small_ids not in ("error", "keep"):
        raise DataError(f"small_ids must be 'error' or 'keep' (got {small_ids!r})")


def split_identities(train: list[Identity], test: list[Identity], runs: int, rng: np.random.Generator,
                     label: str, small_ids: str, check: bool = True) -> Split:
    """Draw val and per-run gallery images; identities must already be sorted by pid."""
    val_pick: dict[int, Optional[int]] = {}
    for ident in train:
        pick = int(rng.integers(len(ident.paths)))  # drawn even for 1-image ids: the stream never depends on policy
        val_pick[ident.pid] = pick if len(ident.paths) >= 2 else None
    if check:
        _small(small_ids, [i.original_id for i in train if len(i.paths) < 2], "training", label,
               "a val and a train image", "kept in train without a val image")
        _small(small_ids, [i.original_id for i in test if len(i.paths) < 2], "test", label,
               "a gallery and a query image", "in every gallery, with no query")
    gallery_picks = [{ident.pid: int(rng.integers(len(ident.paths))) for ident in test} for _ in range(runs)]
    return Split(train, test, val_pick, gallery_picks)


def _small(policy: str, ids: list[str], side: str, label: str, needs: str, kept: str) -> None:
    """Report every too-small identity of one side at once (error, or warning under 'keep')."""
    if not ids:
        return
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    if len(ids) == 1:
        problem = f"{side} identity {shown} of {label} has only 1 image, so it cannot give both {needs}"
    else:
        problem = f"{len(ids)} {side} identities of {label} have only 1 image ({shown}), so they cannot give both {needs}"
    if policy == "keep":
        warnings.warn(f"{problem}; {kept}", DataWarning, stacklevel=4)
    else:
        raise DataError(f"{problem} (prepare with --keep-small-ids to keep such identities)")


def split_records(split: Split, dataset: str, subset: str) -> list[ManifestRecord]:
    """The manifest records of a split: train/val, then query/gallery of every run."""
    out = []

    def rec(name, run, path, ident, distractor=False):
        return ManifestRecord(split=name, run=run, path=path, pid=ident.pid, camid=None, dataset=dataset,
                              subset=subset, original_id=ident.original_id, is_distractor=distractor)

    for ident in split.train:
        pick = split.val_pick[ident.pid]
        for k, path in enumerate(ident.paths):
            out.append(rec("val" if k == pick else "train", None, path, ident))
    for run, picks in enumerate(split.gallery_picks):
        for ident in split.test:
            for k, path in enumerate(ident.paths):
                out.append(rec("gallery" if k == picks[ident.pid] else "query", run, path, ident))
    return out


def absolute(path: Union[str, os.PathLike]) -> Path:
    """``path`` with ``~`` expanded, made absolute (symbolic links kept)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def require_dir(root, what: str) -> Path:
    """``root`` as an absolute folder that exists, else a DataError naming ``what``."""
    if root is None or str(root) == "":
        raise DataError(f"{what}: no root folder given")
    path = absolute(root)
    if not path.exists():
        raise DataError(f"{what} root folder not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} root {path} is not a folder")
    return path


def check_images_exist(paths: Sequence[str], listed_in: Path) -> None:
    """Refuse a protocol whose images are not all on disk, naming the first missing one."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]} listed in {listed_in} does not exist{more}")


__all__ = ["BAD_IMAGE_POLICIES", "BadImages", "DataWarning", "Identity", "Preparation", "Split", "SmallIds",
           "absolute", "screen_images", "check_common", "check_images_exist",
           "require_dir", "split_identities", "split_records", "split_rng"]
