"""Protocol manifests: one CSV that says which image goes to which split of which run.

A manifest is the single source of truth for an experiment's data: train / val images of the
training identities, and for each Monte Carlo run ``i`` the query and gallery images of the test
identities. No image is copied; ``path`` points at the original file.

Columns, in this order::

    split,run,path,pid,camid,dataset,subset,original_id,is_distractor

* ``split``: train, val, query or gallery.
* ``run``: empty for train/val; 0..runs-1 for query/gallery.
* ``path``: absolute when written by HandCLIP; a relative path in a hand-written manifest is taken
  relative to the manifest's own folder.
* ``pid``: the integer identity used for matching. Distractor identities carry offset ids so they
  never equal a real identity.
* ``camid``: empty or an integer. Hand datasets have no cameras: in a manifest with hand aspects
  (``subset`` one of dorsal_r, dorsal_l, palmar_r, palmar_l) it is the aspect's index 0..3 in that
  order (``handclip.aspects``), which the model's aspect embeddings read; it must then agree with
  ``subset``, and evaluation never treats it as a camera.
* ``dataset``, ``subset``, ``original_id``: provenance (e.g. ``11k``, ``dorsal_r``, ``0000002``).
* ``is_distractor``: 1 for gallery images of identities that are never queried.

Only ``split``, ``path`` and ``pid`` are required in a hand-written file; the other columns default
to empty / 0 (``run`` defaults to 0 for query/gallery rows). Unknown columns are refused, so a typo
in a header can never be silently ignored.

Text cells (``path``, ``dataset``, ``subset``, ``original_id``) that start with ``= + - @``, a tab,
a carriage return or an apostrophe are written with one leading apostrophe, so a spreadsheet opening
the file never runs them as formulas; reading removes it again.

Records are kept in one canonical order, so the same content always gives the same bytes (and the
same ``sha256``), whatever order the records were produced in.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..aspects import ASPECT_NAMES, aspect_index
from ..atomic import atomic_write_bytes, sha256_bytes
from ..errors import DataError

COLUMNS = ("split", "run", "path", "pid", "camid", "dataset", "subset", "original_id", "is_distractor")
REQUIRED_COLUMNS = ("split", "path", "pid")
SPLITS = ("train", "val", "query", "gallery")
_SPLIT_RANK = {name: rank for rank, name in enumerate(SPLITS)}
# Identities are stored as int64 by the loaders; larger ids would overflow silently there.
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class ManifestRecord:
    split: str
    run: Optional[int]
    path: str
    pid: int
    camid: Optional[int]
    dataset: str
    subset: str
    original_id: str
    is_distractor: bool

    def sort_key(self) -> tuple:
        return (_SPLIT_RANK.get(self.split, len(SPLITS)), -1 if self.run is None else self.run,
                bool(self.is_distractor), self.pid, self.path, self.subset, self.dataset, self.original_id,
                -1 if self.camid is None else self.camid)

    def as_row(self) -> list[str]:
        return [self.split, "" if self.run is None else str(self.run), protect_cell(self.path), str(self.pid),
                "" if self.camid is None else str(self.camid), protect_cell(self.dataset),
                protect_cell(self.subset), protect_cell(self.original_id), "1" if self.is_distractor else "0"]


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection); such a text cell
# is written with a leading apostrophe, which spreadsheets show as plain text, and read back without it.
# A text that itself starts with an apostrophe gets one more, so the round trip is exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def protect_cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def unprotect_cell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def _check_record(rec: ManifestRecord) -> Optional[str]:
    """The reason ``rec`` is invalid on its own, or None."""
    if rec.split not in _SPLIT_RANK:
        return f"split {rec.split!r} is not one of {', '.join(SPLITS)}"
    if rec.split in ("train", "val") and rec.run is not None:
        return f"run must be empty for split {rec.split!r} (got {rec.run})"
    if rec.split in ("query", "gallery") and (rec.run is None or rec.run < 0):
        return f"split {rec.split!r} needs a run number >= 0 (got {rec.run!r})"
    if not rec.path:
        return "path is empty"
    if "\x00" in rec.path:
        return "path contains a NUL character"
    if not (0 <= rec.pid <= MAX_ID):
        return f"pid {rec.pid} is outside 0..{MAX_ID}"
    if rec.camid is not None and not (-MAX_ID <= rec.camid <= MAX_ID):
        return f"camid {rec.camid} is out of range"
    if rec.is_distractor and rec.split != "gallery":
        return f"is_distractor=1 is only allowed in the gallery split (got split {rec.split!r})"
    if rec.subset in ASPECT_NAMES and rec.camid is not None and rec.camid != aspect_index(rec.subset):
        return f"camid {rec.camid} is not the index {aspect_index(rec.subset)} of its aspect {rec.subset}"
    return None


def with_aspect(rec: ManifestRecord, aspect: str) -> ManifestRecord:
    """``rec`` marked as a photo of ``aspect``: that aspect as its subset, the aspect's index as its camid."""
    return dataclasses.replace(rec, subset=aspect, camid=aspect_index(aspect))


def _check_manifest(records: list[ManifestRecord]) -> Optional[str]:
    """The reason a set of (individually valid) records is not a usable manifest, or None."""
    if not records:
        return "it has no records"
    seen_trainval: dict[str, str] = {}
    seen_run: dict[tuple[int, str], str] = {}
    test_paths: set[str] = set()
    query_runs, gallery_runs = set(), set()
    distractor_pids, real_pids = set(), set()
    for rec in records:
        if rec.split in ("train", "val"):
            if rec.path in seen_trainval:
                return f"image {rec.path} appears twice in train/val ({seen_trainval[rec.path]} and {rec.split})"
            seen_trainval[rec.path] = rec.split
        else:
            key = (rec.run, rec.path)
            if key in seen_run:
                return (f"image {rec.path} appears twice in run {rec.run} "
                        f"({seen_run[key]} and {rec.split})")
            seen_run[key] = rec.split
            test_paths.add(rec.path)
            (query_runs if rec.split == "query" else gallery_runs).add(rec.run)
        (distractor_pids if rec.is_distractor else real_pids).add(rec.pid)
    leaked = test_paths.intersection(seen_trainval)
    if leaked:
        return f"image {min(leaked)} is in both train/val and query/gallery"
    if query_runs != gallery_runs:
        odd = sorted(query_runs ^ gallery_runs)[0]
        side = "gallery" if odd in query_runs else "query"
        return f"run {odd} has no {side} images"
    clash = distractor_pids & real_pids
    if clash:
        return f"distractor pid {min(clash)} collides with a real identity's pid"
    return None


class Manifest:
    """An immutable, canonically ordered list of ``ManifestRecord``."""

    def __init__(self, records: Iterable[ManifestRecord], source: str = "manifest", preparation=None):
        # What preparing it checked and did (``handclip.data.splits.Preparation``); not part of the CSV.
        self.preparation = preparation
        records = list(records)
        for rec in records:
            problem = _check_record(rec)
            if problem:
                raise DataError(f"{source}: invalid record for {rec.path!r}: {problem}")
        problem = _check_manifest(records)
        if problem:
            raise DataError(f"{source} is not a usable manifest: {problem}")
        self.records: list[ManifestRecord] = sorted(records, key=ManifestRecord.sort_key)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.records)

    def __eq__(self, other) -> bool:
        return isinstance(other, Manifest) and self.records == other.records

    def __repr__(self) -> str:
        counts = Counter(r.split for r in self.records)
        return f"Manifest({', '.join(f'{s}={counts[s]}' for s in SPLITS)}, runs={len(self.runs)})"

    def split(self, name: str, run: Optional[int] = None) -> list[ManifestRecord]:
        """Records of one split. For query/gallery, ``run=None`` returns every run's records."""
        if name not in _SPLIT_RANK:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == name and (run is None or r.run == run)]

    @property
    def runs(self) -> list[int]:
        return sorted({r.run for r in self.records if r.run is not None})

    def train_label_map(self) -> dict[int, int]:
        """Training pid -> contiguous class index 0..N-1 (pids sorted ascending)."""
        return {pid: index for index, pid in enumerate(sorted({r.pid for r in self.records if r.split == "train"}))}

    def identity_overlap(self) -> list[int]:
        """Pids that are both training (train/val) and test (query/gallery) identities, ascending."""
        trainval = {r.pid for r in self.records if r.split in ("train", "val")}
        return sorted({r.pid for r in self.records if r.split in ("query", "gallery") and r.pid in trainval})

    def check_identity_overlap(self, allow: bool, source: str, flag: str) -> None:
        """Refuse test identities that are also training identities unless ``allow``: their scores would
        measure memorisation, not identification of unseen people (docs/method.md, "Protocols")."""
        shared = self.identity_overlap()
        if not shared or allow:
            return
        names = {r.pid: r.original_id for r in self.records if r.pid in set(shared[:5])}
        shown = ", ".join(f"{pid}" + (f" ({names[pid]})" if names.get(pid) else "") for pid in shared[:5])
        more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        raise DataError(f"{source}: {len(shared)} query/gallery identit{'y is' if len(shared) == 1 else 'ies are'} "
                        f"also training identities (pid {shown}{more}); use disjoint identities, or {flag} "
                        f"if the overlap is intended")

    def paths(self) -> list[str]:
        return sorted({r.path for r in self.records})

    def without_paths(self, paths: Iterable[str]) -> "Manifest":
        """A copy without the records of ``paths`` (e.g. images a scan found unusable, for --skip-bad)."""
        drop = {os.fspath(p) for p in paths}
        return Manifest([r for r in self.records if r.path not in drop], source="manifest without skipped images")

    # ------------------------------------------------------------------ bytes
    def to_csv_bytes(self) -> bytes:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for rec in self.records:
            writer.writerow(rec.as_row())
        return buffer.getvalue().encode("utf-8")

    def sha256(self) -> str:
        return sha256_bytes(self.to_csv_bytes())

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.to_csv_bytes())
        return path

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, path: str | os.PathLike) -> "Manifest":
        path = Path(path)
        if not path.exists():
            raise DataError(f"manifest not found: {path}")
        if not path.is_file():
            raise DataError(f"manifest {path} is not a file")
        text = read_csv_text(path, "manifest ")
        base_dir = Path(os.path.abspath(path.parent))
        records = _parse_csv(text, str(path), base_dir)
        return cls(records, source=f"manifest {path}")

    # ------------------------------------------------------------------ summary
    def summary(self) -> str:
        """A table of identities and images per split, like the tables in docs/method.md, "Protocols"."""
        datasets = sorted({r.dataset for r in self.records if not r.is_distractor} - {""})
        subsets = sorted({r.subset for r in self.records if not r.is_distractor} - {""})
        runs = self.runs
        head = []
        if datasets:
            head.append("dataset " + ",".join(datasets))
        if subsets:
            head.append("subset " + ",".join(subsets))
        head.append(f"{len(runs)} Monte Carlo run{'s' if len(runs) != 1 else ''}")
        lines = ["  ".join(head)]
        rows: list[tuple[str, str, str, str, str]] = []

        def ids_images(recs):
            return len({r.pid for r in recs}), len(recs)

        train, val = self.split("train"), self.split("val")
        trainval = train + val
        for label, recs in (("train_all", trainval), ("train", train), ("val", val)):
            ids, imgs = ids_images(recs)
            rows.append((label, str(ids), str(imgs), "", ""))
        first = runs[0] if runs else None
        test_real = [r for r in self.records if r.split in ("query", "gallery") and r.run == first
                     and not r.is_distractor]
        ids, imgs = ids_images(test_real)
        rows.append(("test", str(ids), str(imgs), "", ""))
        for name in ("query", "gallery"):
            per_run = defaultdict(list)
            for r in self.split(name):
                per_run[r.run].append(r)
            stats = [(ids_images([r for r in per_run[k] if not r.is_distractor]),
                      ids_images([r for r in per_run[k] if r.is_distractor])) for k in runs]
            label = f"{name} (per run)"
            if not stats:
                rows.append((label, "0", "0", "", ""))
                continue

            def span(values):
                lo, hi = min(values), max(values)
                return str(lo) if lo == hi else f"{lo}-{hi}"

            real_ids = span([s[0][0] for s in stats])
            real_imgs = span([s[0][1] for s in stats])
            dis_ids = span([s[1][0] for s in stats]) if any(s[1][1] for s in stats) else ""
            dis_imgs = span([s[1][1] for s in stats]) if any(s[1][1] for s in stats) else ""
            rows.append((label, real_ids, real_imgs, dis_ids, dis_imgs))
            if dis_imgs:
                totals = [ids_images(per_run[k]) for k in runs]
                rows.append((f"{name} incl. distractors", span([t[0] for t in totals]),
                             span([t[1] for t in totals]), "", ""))
        if any(r[3] for r in rows):
            header = ("split", "ids", "images", "distractor ids", "distractor images")
        else:
            header = ("split", "ids", "images")
            rows = [r[:3] for r in rows]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        fmt = lambda row: "  ".join(  # noqa: E731
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)).rstrip()
        lines.append(fmt(header))
        lines.extend(fmt(row) for row in rows)
        no_val = sorted({r.pid for r in train} - {r.pid for r in val})
        if val and no_val:
            lines.append(f"note: {len(no_val)} training identit{'y has' if len(no_val) == 1 else 'ies have'} "
                         f"no val image")
        lines.extend(self.in_words())
        lines.append(f"sha256 {self.sha256()}")
        return "\n".join(lines)

    def in_words(self) -> list[str]:
        """The splits in sentences: what train_all, val, test, query and gallery hold, and why a manifest
        has more rows than images (each test image is listed once per Monte Carlo run)."""
        train, val = self.split("train"), self.split("val")
        ids = lambda recs: len({r.pid for r in recs})  # noqa: E731
        runs = self.runs
        lines = [f"train_all = train + val: the {ids(train + val)} training identities, {len(train) + len(val)} "
                 f"images; val holds {len(val)} of them (one per identity, never trained on, to choose best.pt), "
                 f"train the other {len(train)}"]
        if runs:
            first = runs[0]
            query = self.split("query", first)
            gallery = [r for r in self.split("gallery", first) if not r.is_distractor]
            distractors = [r for r in self.split("gallery", first) if r.is_distractor]
            extra = (f", plus {len(distractors)} distractor images of {ids(distractors)} identities never queried"
                     if distractors else "")
            lines.append(f"test: {ids(query + gallery)} other identities, {len(query) + len(gallery)} images; each of "
                         f"the {len(runs)} Monte Carlo runs puts one image of each in the gallery ({len(gallery)}"
                         f"{extra}) and the other {len(query)} in the query")
        test_rows = len(self.records) - len(train) - len(val)
        lines.append(f"{len(self.records)} rows for {len(self.paths())} distinct images: {len(train) + len(val)} "
                     f"train/val rows and {test_rows} query/gallery rows, each test image listed once per run")
        return lines



def read_csv_text(path: Path, label: str = "") -> str:
    """A CSV file's text (UTF-8, a byte-order mark tolerated); otherwise a DataError naming
    ``label`` + path and the first bad byte."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}{path} is not UTF-8 text (byte {exc.start})") from None


def iter_csv_rows(reader, source: str):
    """(line number, row) for every non-blank row of a csv.reader; a malformed row is a DataError
    naming ``source`` and the line. Blank lines (e.g. an editor's trailing newline) are skipped."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{source}, line {reader.line_num}: malformed CSV ({exc})") from None
        if row and any(cell.strip() for cell in row):
            yield reader.line_num, row


def _parse_int(text: str, column: str, allow_empty: bool) -> Optional[int]:
    value = text.strip()
    if value == "":
        if allow_empty:
            return None
        raise ValueError(f"{column} is empty")
    # int() accepts '1_000' and unicode digits; a manifest holds plain ASCII integers only.
    body = value[1:] if value[0] in "+-" else value
    if not body.isascii() or not body.isdigit():
        raise ValueError(f"{column} {text!r} is not an integer")
    if len(body) > 19:
        raise ValueError(f"{column} {text!r} is out of range")
    return int(value)


def _parse_csv(text: str, source: str, base_dir: Path) -> list[ManifestRecord]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"manifest {source}, line 1: malformed CSV ({exc})") from None
    if header is None:
        raise DataError(f"manifest {source} is empty (expected a header line: {','.join(COLUMNS)})")
    names = [h.strip() for h in header]
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise DataError(f"manifest {source}, line 1: column {duplicates[0]!r} appears more than once")
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise DataError(f"manifest {source}, line 1: unknown column {unknown[0]!r} "
                        f"(columns are {','.join(COLUMNS)})")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise DataError(f"manifest {source}, line 1: missing column {missing[0]!r} "
                        f"(required: {','.join(REQUIRED_COLUMNS)})")
    index = {name: i for i, name in enumerate(names)}
    records = []
    for line, row in iter_csv_rows(reader, f"manifest {source}"):
        if len(row) != len(names):
            raise DataError(f"manifest {source}, line {line}: expected {len(names)} fields, found {len(row)}")
        get = lambda col, default="": row[index[col]] if col in index else default  # noqa: E731
        try:
            split = get("split").strip()
            if split not in _SPLIT_RANK:
                raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
            run_text = get("run")
            run = _parse_int(run_text, "run", allow_empty=True)
            if run is None and split in ("query", "gallery") and "run" not in index:
                run = 0
            raw_path = unprotect_cell(get("path"))
            if raw_path.strip() == "":
                raise ValueError("path is empty")
            if "\x00" in raw_path:
                raise ValueError("path contains a NUL character")
            path = raw_path if os.path.isabs(raw_path) else os.path.normpath(os.path.join(base_dir, raw_path))
            pid = _parse_int(get("pid"), "pid", allow_empty=False)
            camid = _parse_int(get("camid"), "camid", allow_empty=True)
            flag = get("is_distractor", "0").strip()
            if flag not in ("", "0", "1"):
                raise ValueError(f"is_distractor {flag!r} must be 0 or 1")
            rec = ManifestRecord(split=split, run=run, path=path, pid=pid, camid=camid,
                                 dataset=unprotect_cell(get("dataset").strip()),
                                 subset=unprotect_cell(get("subset").strip()),
                                 original_id=unprotect_cell(get("original_id").strip()), is_distractor=flag == "1")
        except ValueError as exc:
            raise DataError(f"manifest {source}, line {line}: {exc}") from None
        problem = _check_record(rec)
        if problem:
            raise DataError(f"manifest {source}, line {line}: {problem}")
        records.append(rec)
    return records
