"""The published evaluation protocols (docs/method.md, "Protocols"): 11k Hands, HD and folder-per-identity,
each turned into a ``Manifest`` by the split machinery of ``handclip.data.splits`` and registered in
``handclip.data.registry`` under ``11k``, ``hd`` and ``folder``.

Distractor identity numbers (offset so they never match a real identity):

* 11k ``gallery_all``: the other three aspects' gallery ``i`` is added with
  ``pid = k * base + id``, ``k`` = 1, 2, 3 in the order dorsal_r, dorsal_l, palmar_r, palmar_l
  (skipping the prepared aspect) and ``base`` = the smallest power of ten above every id in
  HandInfo.csv, at least 10,000,000 (the largest real id is 1,200,000). Real pids are below
  ``base``, so no distractor can equal a real identity or another aspect's distractor.
* HD: the 502-712 subjects get ``pid = id + offset`` with ``offset`` = the smallest power of ten
  above every id in ``1-501``, at least 1000 (so 1000 for the real data, as the published protocol offsets them).
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..aspects import ASPECT_NAMES
from ..aspects import normalise_aspect as _normalise_aspect
from ..errors import DataError
from .images import FolderWalk, identity_folders, is_image_name
from .manifest import Manifest, ManifestRecord, iter_csv_rows, read_csv_text, with_aspect
from .registry import DatasetSpec, Option, bad_images_arg, register_dataset, root_arg, small_ids_arg
from .splits import (
    BadImages,
    DataWarning,
    Identity,
    Preparation,
    SmallIds,
    check_common,
    check_images_exist,
    require_dir,
    screen_images,
    split_identities,
    split_records,
    split_rng,
)

# --------------------------------------------------------------------------- 11k Hands
ASPECTS = ASPECT_NAMES
_ASPECT_BY_NAME = {name: key for key, name in ASPECTS.items()}
# Identities with id <= cutoff form train_all (MBA-Net / GPA-Net / CLIP-HandID protocol).
CUTOFFS_11K = {"dorsal_r": 1050, "dorsal_l": 1037, "palmar_r": 1051, "palmar_l": 1042}
HANDINFO_COLUMNS = ("id", "age", "gender", "skinColor", "accessories", "nailPolish", "aspectOfHand",
                    "imageName", "irregularities")
_HANDINFO_NEEDED = ("id", "accessories", "aspectOfHand", "imageName")
_ASPECT_CODE = {"dorsal_r": 1, "dorsal_l": 2, "palmar_r": 3, "palmar_l": 4}
MIN_DISTRACTOR_BASE_11K = 10_000_000
ALL_ASPECTS = "all"


def normalise_aspect(aspect: str) -> str:
    """'dorsal_r', 'dorsal right', 'Dorsal-Right' -> 'dorsal_r'; DataError for anything else."""
    return _normalise_aspect(aspect, "11k aspect")


@dataclass
class _HandRow:
    line: int
    pid: int
    original_id: str
    accessories: int
    aspect: str
    image_name: str


def read_handinfo(csv_path: Path) -> list[_HandRow]:
    """Parse and validate 11k's HandInfo.csv (every row, so errors name the exact line)."""
    if not csv_path.is_file():
        raise DataError(f"11k metadata file not found: {csv_path} (expected HandInfo.csv in the dataset root)")
    text = read_csv_text(csv_path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise DataError(f"{csv_path}, line 1: malformed CSV ({exc})") from None
    missing = [c for c in _HANDINFO_NEEDED if c not in header]
    if missing:
        raise DataError(f"{csv_path} lacks the column(s) {', '.join(missing)} "
                        f"(expected the 11k columns {','.join(HANDINFO_COLUMNS)})")
    col = {name: header.index(name) for name in _HANDINFO_NEEDED}
    rows: list[_HandRow] = []
    seen: dict[str, int] = {}
    for line, row in iter_csv_rows(reader, str(csv_path)):
        if len(row) < len(header):
            raise DataError(f"{csv_path}, line {line}: expected {len(header)} fields, found {len(row)}")
        raw_id = row[col["id"]].strip()  # one real id is written '1200000 ' (trailing space)
        if not (raw_id.isascii() and raw_id.isdigit()):
            raise DataError(f"{csv_path}, line {line}: id {row[col['id']]!r} is not a whole number")
        raw_acc = row[col["accessories"]].strip()
        if raw_acc not in ("0", "1"):
            raise DataError(f"{csv_path}, line {line}: accessories {row[col['accessories']]!r} must be 0 or 1")
        raw_aspect = row[col["aspectOfHand"]].strip().lower()
        if raw_aspect not in _ASPECT_BY_NAME:
            raise DataError(f"{csv_path}, line {line}: aspectOfHand {row[col['aspectOfHand']]!r} is not one of "
                            f"{', '.join(repr(a) for a in _ASPECT_BY_NAME)}")
        name = row[col["imageName"]].strip()
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"{csv_path}, line {line}: imageName {row[col['imageName']]!r} is not a file name")
        if name in seen:
            raise DataError(f"{csv_path}, line {line}: image {name} is already listed on line {seen[name]}")
        seen[name] = line
        rows.append(_HandRow(line, int(raw_id), raw_id, int(raw_acc), _ASPECT_BY_NAME[raw_aspect], name))
    if not rows:
        raise DataError(f"{csv_path} lists no images")
    return rows


def _11k_images_dir(root: Path) -> Path:
    hands = root / "Hands"
    return hands if hands.is_dir() else root


def _11k_identities(rows: list[_HandRow], aspect: str, images_dir: Path,
                    left_out: set[str] = frozenset()) -> tuple[list[Identity], list[Identity]]:
    by_pid: dict[int, Identity] = {}
    for row in rows:
        if row.aspect != aspect or row.accessories != 0 or str(images_dir / row.image_name) in left_out:
            continue
        ident = by_pid.setdefault(row.pid, Identity(row.pid, row.original_id))
        ident.paths.append(str(images_dir / row.image_name))
    idents = [by_pid[pid] for pid in sorted(by_pid)]
    for ident in idents:
        ident.paths.sort()
    cutoff = CUTOFFS_11K[aspect]
    train = [i for i in idents if i.pid <= cutoff]
    test = [i for i in idents if i.pid > cutoff]
    return train, test


def _11k_row_counts(rows: list[_HandRow], aspect: str, gallery_all: bool, left_out: set[str],
                    images_dir: Path) -> list[str]:
    """How the protocol's rules selected HandInfo.csv's rows for ``aspect``, in words."""
    other = sum(row.aspect != aspect for row in rows)
    mine = [row for row in rows if row.aspect == aspect]
    accessories = sum(row.accessories != 0 for row in mine)
    unusable = sum(row.accessories == 0 and str(images_dir / row.image_name) in left_out for row in mine)
    used = len(mine) - accessories - unusable
    other_text = ("--gallery-all: their test identities' gallery images are distractors" if gallery_all
                  else "left out")
    return [f"HandInfo.csv: {len(rows)} rows; {other} of other aspects ({other_text}); of the {len(mine)} "
            f"{ASPECTS[aspect]} rows, {accessories} with accessories left out (the protocol's rule), "
            f"{unusable} with an unusable image left out, {used} used"]


def _11k_all_row_counts(rows: list[_HandRow], left_out: set[str], images_dir: Path) -> list[str]:
    """How the protocol's rules selected HandInfo.csv's rows for every aspect at once, in words."""
    lines = [f"HandInfo.csv: {len(rows)} rows, of all four aspects, each split by its own protocol"]
    for aspect in ASPECTS:
        mine = [row for row in rows if row.aspect == aspect]
        accessories = sum(row.accessories != 0 for row in mine)
        unusable = sum(row.accessories == 0 and str(images_dir / row.image_name) in left_out for row in mine)
        lines.append(f"  {ASPECTS[aspect]}: {len(mine)} rows, {accessories} with accessories left out, "
                     f"{unusable} with an unusable image left out, {len(mine) - accessories - unusable} used")
    return lines


def prepare_11k(root, aspect: str, runs: int = 10, seed: int = 0, gallery_all: bool = False,
                small_ids: SmallIds = "error", bad_images: BadImages = "leave_out") -> Manifest:
    """11k Hands protocol for one aspect (docs/method.md, "Protocols"), or for all four (``aspect='all'``,
    ``prepare_11k_all``). ``bad_images``: what to do with an image that does not decode or is too small
    (``screen_images``); it is left out before the split."""
    if str(aspect).strip().lower() == ALL_ASPECTS:
        _refuse_gallery_all(gallery_all, "gallery_all")
        return prepare_11k_all(root, runs, seed, small_ids, bad_images)
    aspect = normalise_aspect(aspect)
    check_common(runs, seed, small_ids)
    root = require_dir(root, "11k")
    csv_path = root / "HandInfo.csv"
    rows = read_handinfo(csv_path)
    images_dir = _11k_images_dir(root)
    aspects = set(ASPECTS) if gallery_all else {aspect}
    wanted = [str(images_dir / r.image_name) for r in rows if r.aspect in aspects and r.accessories == 0]
    check_images_exist(wanted, csv_path)
    preparation = screen_images(wanted, bad_images)
    left_out = preparation.left_out
    preparation.rows = _11k_row_counts(rows, aspect, gallery_all, left_out, images_dir)
    train, test = _11k_identities(rows, aspect, images_dir, left_out)
    if not train or not test:
        side = "training" if not train else "test"
        raise DataError(f"{csv_path} has no {side} identities for aspect {aspect} "
                        f"(accessories == 0, id {'<=' if not train else '>'} {CUTOFFS_11K[aspect]})")
    split = split_identities(train, test, runs, split_rng(seed, _ASPECT_CODE[aspect]), f"11k {aspect}", small_ids)
    records = split_records(split, "11k", aspect)
    if gallery_all:
        base = MIN_DISTRACTOR_BASE_11K
        while base <= max(r.pid for r in rows):
            base *= 10
        k = 0
        for other in ASPECTS:
            if other == aspect:
                continue
            k += 1
            o_train, o_test = _11k_identities(rows, other, images_dir, left_out)
            if not o_test:
                continue
            # Same stream as preparing `other` on its own, so this is exactly its gallery i.
            o_split = split_identities(o_train, o_test, runs, split_rng(seed, _ASPECT_CODE[other]), f"11k {other}",
                                       "keep", check=False)
            for run, picks in enumerate(o_split.gallery_picks):
                for ident in o_test:
                    records.append(ManifestRecord(
                        split="gallery", run=run, path=ident.paths[picks[ident.pid]], pid=k * base + ident.pid,
                        camid=None, dataset="11k", subset=other, original_id=ident.original_id, is_distractor=True))
    return Manifest(records, source=f"11k manifest for {aspect}", preparation=preparation)


def prepare_11k_all(root, runs: int = 10, seed: int = 0, small_ids: SmallIds = "error",
                    bad_images: BadImages = "leave_out") -> Manifest:
    """All four 11k aspects in one manifest (docs/method.md, "Aspects of a hand").

    Each aspect is split exactly as its own protocol splits it (its cutoff, its val image and gallery i
    draws), so its query and gallery records are those of ``prepare_11k(root, aspect)``; every record
    carries its aspect (``subset``, and the aspect's index as ``camid``) and the person's id as ``pid``,
    so one identity spans the aspects it was photographed in. The cutoffs differ per aspect, so a few
    people are training identities in one aspect and test identities in another: they are never trained
    on (their train/val images are left out, with a warning), so no test identity is ever seen in training.
    """
    check_common(runs, seed, small_ids)
    root = require_dir(root, "11k")
    csv_path = root / "HandInfo.csv"
    rows = read_handinfo(csv_path)
    images_dir = _11k_images_dir(root)
    wanted = [str(images_dir / r.image_name) for r in rows if r.accessories == 0]
    check_images_exist(wanted, csv_path)
    preparation = screen_images(wanted, bad_images)
    left_out = preparation.left_out
    preparation.rows = _11k_all_row_counts(rows, left_out, images_dir)
    splits = {}
    for aspect in ASPECTS:
        train, test = _11k_identities(rows, aspect, images_dir, left_out)
        if not train or not test:
            side = "training" if not train else "test"
            raise DataError(f"{csv_path} has no {side} identities for aspect {aspect} "
                            f"(accessories == 0, id {'<=' if not train else '>'} {CUTOFFS_11K[aspect]})")
        splits[aspect] = split_identities(train, test, runs, split_rng(seed, _ASPECT_CODE[aspect]), f"11k {aspect}",
                                          small_ids)
    tested = {ident.pid for split in splits.values() for ident in split.test}
    records, untrained = [], set()
    for aspect, split in splits.items():
        for rec in split_records(split, "11k", aspect):
            if rec.split in ("train", "val") and rec.pid in tested:
                untrained.add(rec.original_id)
                continue
            records.append(with_aspect(rec, aspect))
    if untrained:
        shown = ", ".join(sorted(untrained)[:5]) + (f" and {len(untrained) - 5} more" if len(untrained) > 5 else "")
        warnings.warn(f"{len(untrained)} 11k identit{'y is' if len(untrained) == 1 else 'ies are'} a test identity "
                      f"in one aspect and a training identity in another ({shown}); their training images "
                      f"are left out", DataWarning, stacklevel=2)
    return Manifest(records, source="11k manifest for all aspects", preparation=preparation)


# --------------------------------------------------------------------------- HD
HD_TRAIN_CUTOFF = 447
HD_MAIN, HD_EXTRA = "1-501", "502-712"
_HD_NAME = re.compile(r"^(\d+)_(\d+)\.(jpe?g|png|bmp|tiff?)$", re.IGNORECASE)
_HD_CODE = 11


def _hd_base(root: Path) -> Path:
    for candidate in (root / "Original Images", root):
        if (candidate / HD_MAIN).is_dir():
            return candidate
    raise DataError(f"HD root {root} has no 'Original Images/{HD_MAIN}' folder")


def _hd_files(folder: Path) -> list[str]:
    """The image files of an HD folder named ``<id>_<n>.<suffix>``, sorted; a DataWarning for other images."""
    found, skipped = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if _HD_NAME.match(entry.name):
            found.append(str(folder / entry.name))
        elif is_image_name(entry.name):
            skipped.append(entry.name)
    if skipped:
        warnings.warn(f"{len(skipped)} image(s) in {folder} are not named <id>_<n>.jpg and were skipped, "
                      f"e.g. {skipped[0]}", DataWarning, stacklevel=3)
    return found


def _hd_identities(folder: Path, files: list[str]) -> list[Identity]:
    by_pid: dict[int, Identity] = {}
    keyed: dict[int, list[tuple[int, str, str]]] = {}
    for path in files:
        entry = Path(path)
        match = _HD_NAME.match(entry.name)
        pid = int(match.group(1))
        by_pid.setdefault(pid, Identity(pid, match.group(1)))
        keyed.setdefault(pid, []).append((int(match.group(2)), entry.name, path))
    for pid, items in keyed.items():
        by_pid[pid].paths = [path for _, _, path in sorted(items)]
    if not by_pid:
        raise DataError(f"HD folder {folder} has no usable images named <id>_<n>.jpg")
    return [by_pid[pid] for pid in sorted(by_pid)]


def prepare_hd(root, runs: int = 10, seed: int = 0, small_ids: SmallIds = "error",
               bad_images: BadImages = "leave_out") -> Manifest:
    """HD (PolyU-IITD hand dorsal) protocol: ids <= 447 of 1-501 train, the rest test, 502-712 distractors.
    ``bad_images``: what to do with an image that does not decode or is too small (``screen_images``)."""
    check_common(runs, seed, small_ids)
    base = _hd_base(require_dir(root, "HD"))
    extra_dir = base / HD_EXTRA
    if not extra_dir.is_dir():
        raise DataError(f"HD distractor folder not found: {extra_dir}")
    main_files, extra_files = _hd_files(base / HD_MAIN), _hd_files(extra_dir)
    preparation = screen_images(main_files + extra_files, bad_images)
    left_out = preparation.left_out
    main = _hd_identities(base / HD_MAIN, [p for p in main_files if p not in left_out])
    extra = _hd_identities(extra_dir, [p for p in extra_files if p not in left_out])
    train = [i for i in main if i.pid <= HD_TRAIN_CUTOFF]
    test = [i for i in main if i.pid > HD_TRAIN_CUTOFF]
    if not train or not test:
        side = "training" if not train else "test"
        raise DataError(f"HD folder {base / HD_MAIN} has no {side} identities "
                        f"(id {'<=' if not train else '>'} {HD_TRAIN_CUTOFF})")
    split = split_identities(train, test, runs, split_rng(seed, _HD_CODE), "HD", small_ids)
    records = split_records(split, "hd", HD_MAIN)
    offset = 1000
    while offset <= main[-1].pid:
        offset *= 10
    for run in range(runs):
        for ident in extra:
            for path in ident.paths:
                records.append(ManifestRecord(split="gallery", run=run, path=path, pid=offset + ident.pid, camid=None,
                                              dataset="hd", subset=HD_EXTRA, original_id=ident.original_id,
                                              is_distractor=True))
    return Manifest(records, source="HD manifest", preparation=preparation)


# --------------------------------------------------------------------------- folder per identity
_FOLDER_CODE = 21


def _test_count(test_ids, n: int, root: Path) -> int:
    if test_ids is None:
        count = n // 2
    elif isinstance(test_ids, bool):
        raise DataError(f"--test-ids must be a count or a fraction, not {test_ids!r}")
    elif isinstance(test_ids, (int, np.integer)):
        count = int(test_ids)
    elif isinstance(test_ids, float) and 0 < test_ids < 1:
        count = int(round(test_ids * n))
    else:
        raise DataError(f"--test-ids {test_ids!r} must be a whole number of identities or a fraction in (0, 1)")
    if not 1 <= count <= n - 1:
        raise DataError(f"--test-ids {test_ids!r} gives {count} test identities out of {n} in {root}; "
                        f"need at least 1 test and 1 training identity")
    return count


def prepare_folder(root, runs: int = 10, seed: int = 0, test_ids: Union[None, int, float] = None,
                   small_ids: SmallIds = "error", dataset: str = "folder",
                   bad_images: BadImages = "leave_out") -> Manifest:
    """Folder-per-identity dataset (ImageFolder layout) with the same split machinery.

    Identities are the sub-folders of ``root`` (hidden ones ignored), sorted by name; pid is the
    position in that sorted list and ``original_id`` the folder name. Images are found recursively
    inside each identity folder (a DataWarning names each identity with sub-folders, and the files
    passed over). ``bad_images``: what to do with an image that does not decode or is too small
    (``screen_images``); it is left out before the split. A seeded permutation picks ``test_ids``
    identities (default: half, rounded down; a float is a fraction) as test identities, the others train.
    """
    check_common(runs, seed, small_ids)
    root = require_dir(root, "folder dataset")
    walk = FolderWalk()
    folders = identity_folders(root, walk)
    walk.warn(root)
    preparation = screen_images([p for _, paths in folders for p in paths], bad_images)
    left_out = preparation.left_out
    idents = []
    for name, paths in folders:
        folder = root / name
        usable = [p for p in paths if p not in left_out]
        if not usable:
            none = "no usable images" if paths else "no images"
            if small_ids != "keep":
                raise DataError(f"identity folder {folder} has {none} "
                                f"(prepare with --keep-small-ids to leave such folders out)")
            warnings.warn(f"identity folder {folder} has {none}; it was left out", DataWarning, stacklevel=2)
            continue
        paths = usable
        idents.append(Identity(len(idents), name, paths))
    if len(idents) < 2:
        raise DataError(f"folder dataset {root} needs at least 2 identity folders with images, found {len(idents)}")
    n_test = _test_count(test_ids, len(idents), root)
    rng = split_rng(seed, _FOLDER_CODE)
    order = rng.permutation(len(idents))
    test_set = {int(i) for i in order[:n_test]}
    train = [ident for k, ident in enumerate(idents) if k not in test_set]
    test = [ident for k, ident in enumerate(idents) if k in test_set]
    split = split_identities(train, test, runs, rng, f"folder dataset {root}", small_ids)
    return Manifest(split_records(split, dataset, root.name), source=f"manifest for {root}",
                    preparation=preparation)


# --------------------------------------------------------------------------- registry entries
@register_dataset("11k")
class Hands11k(DatasetSpec):
    """11k Hands, one aspect per manifest, or all four (``--aspect all``)."""

    options = (
        Option("--aspect", "dorsal_r, dorsal_l, palmar_r, palmar_l, or all (the four aspects in one manifest)"),
        Option("--gallery-all", "add the other three aspects' gallery i as distractors", {"action": "store_true"}),
    )

    # From a config, training checks its own images (data.skip_bad); prepare checks them all.
    def from_config(self, data_cfg, workdir) -> Manifest:
        return prepare_11k(data_cfg.root, data_cfg.aspect, runs=data_cfg.runs, seed=data_cfg.split_seed,
                           gallery_all=data_cfg.gallery_all, bad_images="unchecked")

    def from_args(self, args) -> Manifest:
        if not args.aspect:
            raise DataError("prepare 11k needs --aspect (dorsal_r, dorsal_l, palmar_r, palmar_l or all)")
        return prepare_11k(root_arg(args), args.aspect, runs=args.runs, seed=args.seed,
                           gallery_all=args.gallery_all, small_ids=small_ids_arg(args), bad_images=bad_images_arg(args))


def _refuse_gallery_all(given: bool, flag: str) -> None:
    if given:
        raise DataError(f"{flag} adds the other aspects as distractors to one aspect's gallery; with aspect 'all' "
                        f"every aspect is in the manifest already (choose galleries with evaluate --gallery-aspect)")


@register_dataset("hd")
class HD(DatasetSpec):
    """HD (PolyU-IITD hand dorsal), with the 502-712 subjects as distractors."""

    def from_config(self, data_cfg, workdir) -> Manifest:
        return prepare_hd(data_cfg.root, runs=data_cfg.runs, seed=data_cfg.split_seed, bad_images="unchecked")

    def from_args(self, args) -> Manifest:
        return prepare_hd(root_arg(args), runs=args.runs, seed=args.seed, small_ids=small_ids_arg(args),
                          bad_images=bad_images_arg(args))


@register_dataset("folder")
class IdentityFolders(DatasetSpec):
    """One sub-folder of images per identity."""

    options = (Option("--test-ids", "test identities as a count or a fraction (default half)"),)

    def from_config(self, data_cfg, workdir) -> Manifest:
        return prepare_folder(data_cfg.root, runs=data_cfg.runs, seed=data_cfg.split_seed, bad_images="unchecked")

    def from_args(self, args) -> Manifest:
        return prepare_folder(root_arg(args), runs=args.runs, seed=args.seed, test_ids=_test_ids_arg(args.test_ids),
                              small_ids=small_ids_arg(args), bad_images=bad_images_arg(args))


def _test_ids_arg(text):
    """``--test-ids`` of the folder dataset: a count (``50``) or a fraction (``0.5``)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise DataError(f"--test-ids {text!r} must be a count (e.g. 50) or a fraction (e.g. 0.5)") from None
