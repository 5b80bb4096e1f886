"""The read side of a gallery: one committed generation, immutable.

An examiner enrols known people's hand photos once and searches the gallery for years, so the gallery
grows without being rebuilt and survives crashes. Layout of a gallery directory::

    gallery.json          format version, feature dim, model fingerprint, checkpoint path (written once)
    commit.json           the list of committed shards: the single source of truth
    shards/000007.npy     float32 [rows, dim] L2-normalised embeddings of one enrolment batch
    shards/000007.jsonl   one line per row: {"path", "identity", "sha256"}
    ann/pca.faiss|.json   cached approximate index, one per type (derived data, see handclip.gallery.ann)
    .lock                 held by the one process that writes (handclip.gallery.writer)

A ``GalleryReader`` is what a search holds: opening reads commit.json and pins every shard it lists;
those open files keep the generation readable even after a compaction deletes them, and a shard that
vanished between the two reads means a newer commit, which is read instead. A reader never writes and
never changes: :meth:`latest` returns a new reader for a newer commit. Searching goes through the
reader's index part (``handclip.gallery.index.SearchIndexes``), which it is given or makes itself.
Rows re-scored by a search are read from the memory-mapped shards, each checked against its SHA-256
before use. Every name read from the metadata is checked by ``handclip.gallery.metadata``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from ..errors import GalleryError
from ..model.fingerprint import fingerprint_differences
from .index import SearchIndexes
from .metadata import COMMIT_FILE, GALLERY_FILE, Shard, check_info, parse_commit, read_json
from .redaction import parse_redactions
from .rows import RowTable
from .shards import ShardSet, ShardVanished, read_metadata

# How many times opening retries when a writer replaces the commit while it is being read.
LOAD_ATTEMPTS = 20


def _read_generation(index_dir: Path, info: dict, verify: bool) -> tuple[dict, ShardSet, RowTable]:
    """commit.json, its pinned shards and its rows. A writer may commit and delete merged shards between
    the two reads; a listed file then vanishes and the newer commit is read instead."""
    path = index_dir / COMMIT_FILE
    for _ in range(LOAD_ATTEMPTS):
        commit = read_json(path, "gallery commit file")
        generation, shards, _ = parse_commit(commit, path, info["uid"])
        try:
            shard_set = ShardSet.pin(index_dir, int(info["dim"]), shards, verify)
            try:
                rows = RowTable.from_entries(e for shard in shards
                                             for e in read_metadata(index_dir, shard, COMMIT_FILE))
                parse_redactions(commit, path, rows.rows_of_identity)  # a hand-edited list is refused here
            except BaseException:
                shard_set.close()
                raise
        except ShardVanished as gone:
            latest = read_json(path, "gallery commit file")
            if latest.get("generation") == generation:
                raise GalleryError(f"gallery file {gone.path} is missing (listed in {COMMIT_FILE})") from None
            continue
        return commit, shard_set, rows
    raise GalleryError(f"gallery {index_dir} kept changing while it was being opened; try again")


def read_info(index_dir: str | os.PathLike) -> dict:
    """gallery.json of ``index_dir``, checked (GalleryError naming what is wrong)."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        if index_dir.exists():
            raise GalleryError(f"gallery {index_dir} is not a directory")
        raise GalleryError(f"gallery directory {index_dir} does not exist; enrol images first")
    path = index_dir / GALLERY_FILE
    return check_info(read_json(path, "gallery file"), path)


class GalleryReader:
    """One committed generation of a gallery: its rows, their stored vectors, and search over them."""

    def __init__(self, index_dir: Path, info: dict, commit: dict, shards: ShardSet, rows: RowTable, *,
                 threads: int | None = None, indexes: SearchIndexes | None = None):
        self.index_dir = Path(index_dir)
        self._info = dict(info)
        self._commit = dict(commit)
        self._shards = shards
        self._rows = rows
        self._redactions = parse_redactions(self._commit, self.index_dir / COMMIT_FILE, rows.rows_of_identity)
        self._excluded: np.ndarray | None = None
        self.threads = threads
        self._indexes = indexes.handed_to(self) if indexes is not None else None

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, threads: int | None = None, verify: bool = True,
             indexes: SearchIndexes | None = None) -> "GalleryReader":
        """The gallery's newest commit; a missing, foreign or corrupt gallery raises GalleryError naming the file."""
        info = read_info(index_dir)
        commit, shards, rows = _read_generation(Path(index_dir), info, verify)
        return cls(Path(index_dir), info, commit, shards, rows, threads=threads, indexes=indexes)

    def latest(self) -> "GalleryReader":
        """This reader if no newer commit exists, else a reader of the newest one (which takes over this
        reader's search indexes: keep using the new reader, not this one)."""
        commit = read_json(self.index_dir / COMMIT_FILE, "gallery commit file")
        if commit.get("generation") == self.generation and commit.get("uid") == self.uid:
            return self
        commit, shards, rows = _read_generation(self.index_dir, self._info, self._shards.verify)
        return GalleryReader(self.index_dir, self._info, commit, shards, rows, threads=self.threads,
                             indexes=self._indexes)

    def after_commit(self, commit: dict, shards: list[Shard], added: Iterable[dict] = (),
                     info: dict | None = None) -> "GalleryReader":
        """The reader of the commit a writer just made from this generation: ``shards`` as listed in
        ``commit``, ``added`` rows appended (none for a compaction). Used by ``GalleryWriter``."""
        return GalleryReader(self.index_dir, info or self._info, commit, self._shards.successor(shards),
                             self._rows.extended(added), threads=self.threads, indexes=self._indexes)

    # ------------------------------------------------------------------ what the gallery is
    @property
    def uid(self) -> str:
        """The gallery's random identifier, written once at creation (commit.json and caches carry it)."""
        return self._info["uid"]

    @property
    def info(self) -> dict:
        """gallery.json as read (a copy)."""
        return dict(self._info)

    @property
    def commit(self) -> dict:
        """commit.json of this generation (a copy)."""
        return json.loads(json.dumps(self._commit))

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

    @property
    def verify(self) -> bool:
        return self._shards.verify

    @property
    def fingerprint(self) -> dict:
        return dict(self._info["fingerprint"])

    @property
    def checkpoint(self) -> str | None:
        return self._info.get("checkpoint")

    @property
    def generation(self) -> int:
        return int(self._commit["generation"])

    @property
    def commit_state(self) -> dict:
        """uid, generation, rows and the SHA-256 of commit.json as HandCLIP writes it (equal to the file's
        own SHA-256 until the next commit)."""
        text = json.dumps(self._commit, indent=2, sort_keys=True) + "\n"
        return {"uid": self.uid, "generation": self.generation, "rows": len(self),
                "commit_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}

    def check_model(self, fingerprint: dict, dim: int | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one the gallery was enrolled with."""
        differences = fingerprint_differences(self._info["fingerprint"], fingerprint)
        if dim is not None and int(dim) != self.dim:
            differences.insert(0, f"dim {self.dim} vs {dim}")
        if differences:
            raise GalleryError(
                f"gallery {self.index_dir} was enrolled with a different model "
                f"(gallery vs this model: {'; '.join(differences)}); use the gallery's checkpoint "
                f"or enrol into a new gallery")

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"GalleryReader({str(self.index_dir)!r}, images={len(self)}, identities={len(self.identities())})"

    @property
    def path_of_row(self) -> tuple[str, ...]:
        return self._rows.paths

    @property
    def aspect_of_row(self) -> tuple[str | None, ...]:
        """Each row's hand aspect, None for rows enrolled without one (galleries older than aspects)."""
        return self._rows.aspects

    @property
    def identity_of_row(self) -> tuple[str, ...]:
        return self._rows.identities

    @property
    def rows_of_identity(self) -> Mapping[str, tuple[int, ...]]:
        return self._rows.rows_of_identity

    @property
    def paths(self) -> list[str]:
        return list(self._rows.paths)

    def identities(self) -> list[str]:
        """Enrolled identities that are not redacted, sorted."""
        redacted = self.redacted
        return sorted(i for i in self._rows.rows_of_identity if i not in redacted)

    @property
    def redactions(self) -> list[dict]:
        """This generation's redactions (``handclip.gallery.redaction``), oldest first (copies)."""
        return [dict(r) for r in self._redactions]

    @property
    def redacted(self) -> frozenset:
        """The redacted identities: their rows stay in the gallery but no search or listing shows them."""
        return frozenset(r["identity"] for r in self._redactions)

    @property
    def excluded_rows(self) -> np.ndarray:
        """The rows of redacted identities, sorted (int64; empty when nothing is redacted)."""
        if self._excluded is None:
            by_identity = self._rows.rows_of_identity
            self._excluded = np.array(sorted(r for i in self.redacted for r in by_identity[i]), dtype=np.int64)
        return self._excluded

    def images_of(self, identity: str) -> list[str]:
        return [self._rows.paths[r] for r in self._rows.rows_of_identity.get(str(identity), ())]

    def contains(self, file_hash: str) -> bool:
        """Whether an image with this SHA-256 (of the file's bytes) is enrolled."""
        return self._rows.first_row_of_hash(file_hash) is not None

    def enrolled_as(self, file_hash: str) -> tuple[str, str] | None:
        """(identity, path) of the first row enrolled with this file hash, or None."""
        row = self._rows.first_row_of_hash(file_hash)
        return None if row is None else (self._rows.identities[row], self._rows.paths[row])

    def file_hashes(self, paths: Iterable[str]) -> dict[str, str]:
        """The SHA-256 recorded at enrolment for each of ``paths`` that is enrolled."""
        wanted = set(paths)
        return {p: h for p, h in zip(self._rows.paths, self._rows.hashes) if p in wanted}

    def entries(self, start: int = 0) -> list[dict]:
        """Enrolled rows from ``start`` on, in order, as ``{"path", "identity", "sha256"}``."""
        return self._rows.entries(start)

    # ------------------------------------------------------------------ vectors
    @property
    def shards(self) -> list[Shard]:
        """The committed shards, in row order."""
        return self._shards.shards

    def verify_files(self) -> None:
        """Check every committed shard against its SHA-256 (GalleryError names the first damaged file)."""
        for shard in self._shards.shards:
            self._shards.check(shard)

    def iter_vectors(self, start_row: int = 0, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Committed vectors from ``start_row`` on, in chunks (see ``ShardSet.iter_vectors``)."""
        return self._shards.iter_vectors(start_row, chunk_rows)

    def gather_rows(self, rows: np.ndarray, verify: bool = False) -> np.ndarray:
        """Stored vectors of ``rows`` (any order), from the memory-mapped shards."""
        return self._shards.gather(rows, verify)

    def vectors(self) -> np.ndarray:
        """All enrolled embeddings as one float32 array (a copy; mind memory for huge galleries)."""
        if not len(self):
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(list(self.iter_vectors()))

    # ------------------------------------------------------------------ search
    @property
    def indexes(self) -> SearchIndexes:
        """The search part: exact index and cached approximate indexes over this generation."""
        if self._indexes is None:
            self._indexes = SearchIndexes(self)
        return self._indexes

    @property
    def ann(self):
        return self.indexes.ann

    def resolve_index_type(self, index_type: str = "auto") -> str:
        return self.indexes.resolve_index_type(index_type)

    def flat_index(self):
        return self.indexes.flat()

    def search(self, queries: np.ndarray, top_k: int = 10, by: str = "identity", index_type: str = "auto"):
        """Rank the gallery for each query embedding; one candidate list per query, best first."""
        return self.indexes.search(queries, top_k=top_k, by=by, index_type=index_type)

    def close(self) -> None:
        """Release the shard files this reader holds open (also done when the object is collected)."""
        self._shards.close()

    def __enter__(self) -> "GalleryReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
