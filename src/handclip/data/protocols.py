"""The published evaluation protocols (docs/method.md, "Protocols"), each turned into a ``Manifest``.

Shared machinery for every dataset:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np

from ..config import MAX_RUNS, MAX_SEED, shorten
from ..errors import DataError
from .images import identity_folders, is_image_name
from .manifest import Manifest, ManifestRecord, iter_csv_rows, read_csv_text
from .synthetic import write_synthetic_dataset

SmallIds = Literal["error", "keep"]
# A synthetic set beyond this would take hours to render and gigabytes of disk.
MAX_SYNTHETIC_IMAGES = 200_000


class DataWarning(UserWarning):
    """Something about the data the user should know, that does not stop preparation."""


# --------------------------------------------------------------------------- shared machinery
@dataclass
class Identity:
    pid: int
    original_id: str
    paths: list[str] = field(default_factory=list)


@dataclass
class _Split:
    """Result of the split machinery for one subset (records not yet built)."""

    train: list[Identity]
    test: list[Identity]
    val_pick: dict[int, Optional[int]]        # pid -> index of the val image (None: no val image)
    gallery_picks: list[dict[int, int]]       # per run: pid -> index of the gallery image


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *salt])


def _check_common(runs: int, seed: int, small_ids: str) -> None:
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or not 1 <= runs <= MAX_RUNS:
        raise DataError(f"runs must be a whole number from 1 to {MAX_RUNS} (got {shorten(runs)})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise DataError(f"seed must be a whole number from 0 to {MAX_SEED} (got {shorten(seed)})")
    if small_ids not in ("error", "keep"):
        raise DataError(f"small_ids must be 'error' or 'keep' (got {small_ids!r})")


def _split(train: list[Identity], test: list[Identity], runs: int, rng: np.random.Generator,
           label: str, small_ids: str, check: bool = True) -> _Split:
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
    return _Split(train, test, val_pick, gallery_picks)


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
        raise DataError(f"{problem} (use --keep-small-ids / small_ids='keep' to keep such identities)")


def _records(split: _Split, dataset: str, subset: str) -> list[ManifestRecord]:
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


def _abs(path: Union[str, os.PathLike]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _require_dir(root, what: str) -> Path:
    if root is None or str(root) == "":
        raise DataError(f"{what}: no root folder given")
    path = _abs(root)
    if not path.exists():
        raise DataError(f"{what} root folder not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} root {path} is not a folder")
    return path


# --------------------------------------------------------------------------- 11k Hands
ASPECTS = {"dorsal_r": "dorsal right", "dorsal_l": "dorsal left", "palmar_r": "palmar right", "palmar_l": "palmar left"}
_ASPECT_BY_NAME = {name: key for key, name in ASPECTS.items()}
# Identities with id <= cutoff form train_all (MBA-Net / GPA-Net / CLIP-HandID protocol).
CUTOFFS_11K = {"dorsal_r": 1050, "dorsal_l": 1037, "palmar_r": 1051, "palmar_l": 1042}
HANDINFO_COLUMNS = ("id", "age", "gender", "skinColor", "accessories", "nailPolish", "aspectOfHand",
                    "imageName", "irregularities")
_HANDINFO_NEEDED = ("id", "accessories", "aspectOfHand", "imageName")
_ASPECT_CODE = {"dorsal_r": 1, "dorsal_l": 2, "palmar_r": 3, "palmar_l": 4}
MIN_DISTRACTOR_BASE_11K = 10_000_000


def normalise_aspect(aspect: str) -> str:
    """'dorsal_r', 'dorsal right', 'Dorsal-Right' -> 'dorsal_r'; DataError for anything else."""
    text = str(aspect).strip().lower()
    if text in ASPECTS:
        return text
    spaced = re.sub(r"[\s_\-]+", " ", text)
    if spaced in _ASPECT_BY_NAME:
        return _ASPECT_BY_NAME[spaced]
    raise DataError(f"unknown 11k aspect {aspect!r} (expected one of {', '.join(ASPECTS)})")


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


def _11k_identities(rows: list[_HandRow], aspect: str, images_dir: Path) -> tuple[list[Identity], list[Identity]]:
    by_pid: dict[int, Identity] = {}
    for row in rows:
        if row.aspect != aspect or row.accessories != 0:
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


def _check_exist(paths: Sequence[str], listed_in: Path) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]} listed in {listed_in} does not exist{more}")


def prepare_11k(root, aspect: str, runs: int = 10, seed: int = 0, gallery_all: bool = False,
                small_ids: SmallIds = "error") -> Manifest:
    """11k Hands protocol for one aspect (docs/method.md, "Protocols")."""
    aspect = normalise_aspect(aspect)
    _check_common(runs, seed, small_ids)
    root = _require_dir(root, "11k")
    csv_path = root / "HandInfo.csv"
    rows = read_handinfo(csv_path)
    images_dir = _11k_images_dir(root)
    train, test = _11k_identities(rows, aspect, images_dir)
    if not train or not test:
        side = "training" if not train else "test"
        raise DataError(f"{csv_path} has no {side} identities for aspect {aspect} "
                        f"(accessories == 0, id {'<=' if not train else '>'} {CUTOFFS_11K[aspect]})")
    split = _split(train, test, runs, _rng(seed, _ASPECT_CODE[aspect]), f"11k {aspect}", small_ids)
    records = _records(split, "11k", aspect)
    if gallery_all:
        base = MIN_DISTRACTOR_BASE_11K
        while base <= max(r.pid for r in rows):
            base *= 10
        k = 0
        for other in ASPECTS:
            if other == aspect:
                continue
            k += 1
            o_train, o_test = _11k_identities(rows, other, images_dir)
            if not o_test:
                continue
            # Same stream as preparing `other` on its own, so this is exactly its gallery i.
            o_split = _split(o_train, o_test, runs, _rng(seed, _ASPECT_CODE[other]), f"11k {other}", "keep",
                             check=False)
            for run, picks in enumerate(o_split.gallery_picks):
                for ident in o_test:
                    records.append(ManifestRecord(
                        split="gallery", run=run, path=ident.paths[picks[ident.pid]], pid=k * base + ident.pid,
                        camid=None, dataset="11k", subset=other, original_id=ident.original_id, is_distractor=True))
    _check_exist(sorted({r.path for r in records}), csv_path)
    return Manifest(records, source=f"11k manifest for {aspect}")


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


def _hd_identities(folder: Path) -> list[Identity]:
    by_pid: dict[int, Identity] = {}
    keyed: dict[int, list[tuple[int, str, str]]] = {}
    skipped = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        match = _HD_NAME.match(entry.name)
        if not match:
            if is_image_name(entry.name):
                skipped.append(entry.name)
            continue
        pid = int(match.group(1))
        by_pid.setdefault(pid, Identity(pid, match.group(1)))
        keyed.setdefault(pid, []).append((int(match.group(2)), entry.name, str(folder / entry.name)))
    if skipped:
        warnings.warn(f"{len(skipped)} image(s) in {folder} are not named <id>_<n>.jpg and were skipped, "
                      f"e.g. {skipped[0]}", DataWarning, stacklevel=3)
    for pid, items in keyed.items():
        by_pid[pid].paths = [path for _, _, path in sorted(items)]
    if not by_pid:
        raise DataError(f"HD folder {folder} has no images named <id>_<n>.jpg")
    return [by_pid[pid] for pid in sorted(by_pid)]


def prepare_hd(root, runs: int = 10, seed: int = 0, small_ids: SmallIds = "error") -> Manifest:
    """HD (PolyU-IITD hand dorsal) protocol: ids <= 447 of 1-501 train, the rest test, 502-712 distractors."""
    _check_common(runs, seed, small_ids)
    base = _hd_base(_require_dir(root, "HD"))
    main = _hd_identities(base / HD_MAIN)
    extra_dir = base / HD_EXTRA
    if not extra_dir.is_dir():
        raise DataError(f"HD distractor folder not found: {extra_dir}")
    extra = _hd_identities(extra_dir)
    train = [i for i in main if i.pid <= HD_TRAIN_CUTOFF]
    test = [i for i in main if i.pid > HD_TRAIN_CUTOFF]
    if not train or not test:
        side = "training" if not train else "test"
        raise DataError(f"HD folder {base / HD_MAIN} has no {side} identities "
                        f"(id {'<=' if not train else '>'} {HD_TRAIN_CUTOFF})")
    split = _split(train, test, runs, _rng(seed, _HD_CODE), "HD", small_ids)
    records = _records(split, "hd", HD_MAIN)
    offset = 1000
    while offset <= main[-1].pid:
        offset *= 10
    for run in range(runs):
        for ident in extra:
            for path in ident.paths:
                records.append(ManifestRecord(split="gallery", run=run, path=path, pid=offset + ident.pid, camid=None,
                                              dataset="hd", subset=HD_EXTRA, original_id=ident.original_id,
                                              is_distractor=True))
    return Manifest(records, source="HD manifest")


# --------------------------------------------------------------------------- folder per identity
_FOLDER_CODE = 21


def _test_count(test_ids, n: int, root: Path) -> int:
    if test_ids is None:
        count = n // 2
    elif isinstance(test_ids, bool):
        raise DataError(f"test_ids must be a count or a fraction, not {test_ids!r}")
    elif isinstance(test_ids, (int, np.integer)):
        count = int(test_ids)
    elif isinstance(test_ids, float) and 0 < test_ids < 1:
        count = int(round(test_ids * n))
    else:
        raise DataError(f"test_ids {test_ids!r} must be a whole number of identities or a fraction in (0, 1)")
    if not 1 <= count <= n - 1:
        raise DataError(f"test_ids {test_ids!r} gives {count} test identities out of {n} in {root}; "
                        f"need at least 1 test and 1 training identity")
    return count


def prepare_folder(root, runs: int = 10, seed: int = 0, test_ids: Union[None, int, float] = None,
                   small_ids: SmallIds = "error", dataset: str = "folder") -> Manifest:
    """Folder-per-identity dataset (ImageFolder layout) with the same split machinery.

    Identities are the sub-folders of ``root`` (hidden ones ignored), sorted by name; pid is the
    position in that sorted list and ``original_id`` the folder name. Images are found recursively
    inside each identity folder. A seeded permutation picks ``test_ids`` identities (default: half,
    rounded down; a float is a fraction) as test identities, the others train.
    """
    _check_common(runs, seed, small_ids)
    root = _require_dir(root, "folder dataset")
    idents = []
    for name, paths in identity_folders(root):
        folder = root / name
        if not paths:
            if small_ids != "keep":
                raise DataError(f"identity folder {folder} has no images "
                                f"(use --keep-small-ids / small_ids='keep' to leave such folders out)")
            warnings.warn(f"identity folder {folder} has no images; it was left out", DataWarning, stacklevel=2)
            continue
        idents.append(Identity(len(idents), name, paths))
    if len(idents) < 2:
        raise DataError(f"folder dataset {root} needs at least 2 identity folders with images, found {len(idents)}")
    n_test = _test_count(test_ids, len(idents), root)
    rng = _rng(seed, _FOLDER_CODE)
    order = rng.permutation(len(idents))
    test_set = {int(i) for i in order[:n_test]}
    train = [ident for k, ident in enumerate(idents) if k not in test_set]
    test = [ident for k, ident in enumerate(idents) if k in test_set]
    split = _split(train, test, runs, rng, f"folder dataset {root}", small_ids)
    return Manifest(_records(split, dataset, root.name), source=f"manifest for {root}")


# --------------------------------------------------------------------------- synthetic
_SYNTH_CODE = 31


def prepare_synthetic(out_dir, synthetic_cfg, runs: int = 10, seed: int = 0) -> Manifest:
    """Render procedural hands into ``out_dir`` (skipped if already there) and split them.

    The first ``synthetic_cfg.train_ids`` identities are training identities, the next
    ``test_ids`` test identities. ``synthetic_cfg.seed`` fixes the images, ``seed`` the splits.
    """
    _check_common(runs, seed, "error")
    if out_dir is None or str(out_dir) == "":
        raise DataError("synthetic dataset: no output folder given")
    out = _abs(out_dir)
    num_ids = synthetic_cfg.train_ids + synthetic_cfg.test_ids
    per_id = synthetic_cfg.images_per_id
    if per_id < 2:
        raise DataError(f"synthetic images_per_id must be >= 2 for a val/query split (got {per_id})")
    if num_ids * per_id > MAX_SYNTHETIC_IMAGES:
        raise DataError(f"synthetic dataset of {num_ids} identities x {per_id} images is more than "
                        f"{MAX_SYNTHETIC_IMAGES} images; ask for fewer identities or images per identity")
    write_synthetic_dataset(out, num_ids, per_id, size=synthetic_cfg.image_size, seed=synthetic_cfg.seed)
    idents = [Identity(i, f"{i:04d}", [str(out / f"{i:04d}" / f"{n:03d}.png") for n in range(per_id)])
              for i in range(num_ids)]
    _check_exist([p for ident in idents for p in ident.paths], out)
    split = _split(idents[:synthetic_cfg.train_ids], idents[synthetic_cfg.train_ids:], runs,
                   _rng(seed, _SYNTH_CODE), "synthetic dataset", "error")
    return Manifest(_records(split, "synthetic", "synthetic"), source=f"synthetic manifest for {out}")


# --------------------------------------------------------------------------- from a config
def prepare_from_config(data_cfg, workdir) -> Manifest:
    """The manifest a ``DataConfig`` asks for: ``data_cfg.manifest`` if set, else prepared now.

    Synthetic images are rendered into ``data_cfg.root`` when given, else ``<workdir>/synthetic``.
    Nothing is written except those images; the caller decides where to keep the manifest.
    """
    if data_cfg.manifest:
        return Manifest.read(data_cfg.manifest)
    kind = data_cfg.dataset
    if kind == "11k":
        return prepare_11k(data_cfg.root, data_cfg.aspect, runs=data_cfg.runs, seed=data_cfg.split_seed,
                           gallery_all=data_cfg.gallery_all)
    if kind == "hd":
        return prepare_hd(data_cfg.root, runs=data_cfg.runs, seed=data_cfg.split_seed)
    if kind == "folder":
        return prepare_folder(data_cfg.root, runs=data_cfg.runs, seed=data_cfg.split_seed)
    if kind == "synthetic":
        out_dir = data_cfg.root or (_abs(workdir) / "synthetic")
        return prepare_synthetic(out_dir, data_cfg.synthetic, runs=data_cfg.runs, seed=data_cfg.split_seed)
    raise DataError(f"unknown dataset {kind!r} (expected 11k, hd, folder or synthetic)")
