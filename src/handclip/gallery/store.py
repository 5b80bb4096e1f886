"""A gallery of enrolled hand embeddings on disk: crash-safe shards, one writer, many readers.

An examiner enrols known people's hand photos once and searches the gallery with query photos for
years, so the gallery must grow without being rebuilt and must survive crashes. Layout of a gallery
directory::

    gallery.json          format version, feature dim, model fingerprint, checkpoint path (written once)
    commit.json           the list of committed shards: the single source of truth
    shards/000007.npy     float32 [rows, dim] L2-normalised embeddings of one enrolment batch
    shards/000007.jsonl   one line per row: {"path", "identity", "sha256"}
    ann/pca.faiss|.json   cached approximate index, one per type (derived data, see handclip.gallery.ann)
    .lock                 held by the one process that writes

Crash safety: every file is written through ``handclip.atomic`` (temporary file, fsync, rename).
A batch first writes its two shard files, then replaces ``commit.json``; until that rename the new
shard files are unreferenced and ignored (and deleted by the next writer). A process killed at any
moment therefore leaves the gallery as of the last commit: at most the batch in flight is lost.
Rows are only ever appended, never reordered, which keeps cached approximate indexes valid for the
prefix they cover. Rows re-scored by a search are read from the memory-mapped shards, each checked
once per process against its SHA-256 before use.

Readers: opening reads commit.json and opens every shard it lists; those open files keep the opened
generation readable even after a compaction deletes them, and a shard that vanished between the two
reads means a newer commit, which is read instead. Writing (lock, creation, compaction) lives in
``handclip.gallery.writing``; every name read from the metadata is checked by ``handclip.gallery.metadata``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import GalleryError
from ..runtime import available_cpus
from .metadata import FORMAT_NAME, FORMAT_VERSION, check_info, parse_commit, read_json
from .shards import Shard, ShardSet, ShardVanished, read_metadata
from .writing import (
    COMMIT_DELAY_ENV,
    COMMIT_FILE,
    COMPACT_FANOUT,
    GALLERY_FILE,
    LOCK_FILE,
    LOCK_TIMEOUT_ENV,
    MAX_SHARD_ROWS,
    GalleryWriter,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "GALLERY_FILE", "COMMIT_FILE", "LOCK_FILE", "COMMIT_DELAY_ENV",
           "LOCK_TIMEOUT_ENV", "COMPACT_FANOUT", "MAX_SHARD_ROWS", "GalleryStore", "faiss_with_threads",
           "fingerprint_differences"]

# Fingerprint keys that describe where a model lives, not what it computes.
FINGERPRINT_IGNORED = frozenset({"checkpoint_path", "path", "created"})
# How many times opening retries when a writer replaces the commit while it is being read.
LOAD_ATTEMPTS = 20


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "...'"


def fingerprint_differences(expected: dict, actual: dict) -> list[str]:
    """The fields on which two model fingerprints differ, as ``key gallery vs model`` strings.

    The same weights re-saved into another checkpoint file (other epoch counter, other extras)
    compute the same embeddings, so the file hash only counts when no weights hash is recorded.
    """
    ignored = set(FINGERPRINT_IGNORED)
    if expected.get("weights_sha256") and expected.get("weights_sha256") == actual.get("weights_sha256"):
        ignored.add("checkpoint_sha256")
    keys = sorted((set(expected) | set(actual)) - ignored)
    return [f"{key} {_describe(expected.get(key))} vs {_describe(actual.get(key))}"
            for key in keys if expected.get(key) != actual.get(key)]


def faiss_with_threads(threads: int | None):
    """The faiss module, its OpenMP pool sized to ``threads``, else $OMP_NUM_THREADS, else the usable CPUs."""
    import faiss

    if not threads:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    faiss.omp_set_num_threads(int(threads))
    return faiss


class GalleryStore(GalleryWriter):
    """Enrolled embeddings plus their image paths, identities and file hashes.

    ``path_of_row``, ``identity_of_row`` and ``rows_of_identity`` describe the committed rows.
    Create with :meth:`create`, reopen with :meth:`open` (any number of readers; one writer at a
    time, enforced by a lock file held during each :meth:`add`; see ``handclip.gallery.writing``).
    A reader holds the generation it opened (its shard files stay open) until :meth:`refresh`.
    """

    def __init__(self, index_dir: Path, info: dict, *, threads: int | None = None,
                 verify: bool = True, lock_timeout: float | None = None):
        self.index_dir = Path(index_dir)
        self._info = info
        self.dim = int(info["dim"])
        self.threads = threads
        self.verify = verify
        self.lock_timeout = lock_timeout
        self._generation = -1
        self._shards = ShardSet(self.index_dir, self.dim, self.verify, COMMIT_FILE)
        self._reset_rows()
        self._load_commit()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, index_dir: str | os.PathLike, **kwargs) -> "GalleryStore":
        """Open an existing gallery; a missing, foreign or corrupt one raises GalleryError naming the file."""
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            if index_dir.exists():
                raise GalleryError(f"gallery {index_dir} is not a directory")
            raise GalleryError(f"gallery directory {index_dir} does not exist; enrol images first")
        path = index_dir / GALLERY_FILE
        return cls(index_dir, check_info(read_json(path, "gallery file"), path), **kwargs)

    # ------------------------------------------------------------------ read-only properties
    @property
    def uid(self) -> str:
        """The gallery's random identifier, written once at creation (commit.json and caches carry it)."""
        return self._info["uid"]

    @property
    def fingerprint(self) -> dict:
        return dict(self._info["fingerprint"])

    @property
    def checkpoint(self) -> str | None:
        return self._info.get("checkpoint")

    def __len__(self) -> int:
        return len(self.path_of_row)

    def __repr__(self) -> str:
        return f"Gallery({str(self.index_dir)!r}, images={len(self)}, identities={len(self.rows_of_identity)})"

    def identities(self) -> list[str]:
        """Enrolled identities, sorted."""
        return sorted(self.rows_of_identity)

    def images_of(self, identity: str) -> list[str]:
        return [self.path_of_row[r] for r in self.rows_of_identity.get(str(identity), [])]

    def contains(self, file_hash: str) -> bool:
        """Whether an image with this SHA-256 (of the file's bytes) is already enrolled."""
        return file_hash in self._row_by_hash

    def enrolled_as(self, file_hash: str) -> tuple[str, str] | None:
        """(identity, path) of the first row enrolled with this file hash, or None."""
        row = self._row_by_hash.get(file_hash)
        return None if row is None else (self.identity_of_row[row], self.path_of_row[row])

    @property
    def shards(self) -> list[Shard]:
        """The committed shards, in row order."""
        return list(self._shards.shards)

    @property
    def paths(self) -> list[str]:
        return list(self.path_of_row)

    def file_hashes(self, paths: Iterable[str]) -> dict[str, str]:
        """The SHA-256 recorded at enrolment for each of ``paths`` that is enrolled."""
        wanted = set(paths)
        return {p: h for p, h in zip(self.path_of_row, self._hashes) if p in wanted}

    def entries(self, start: int = 0) -> list[dict]:
        """Enrolled rows from ``start`` on, in order, as ``{"path", "identity", "sha256"}``."""
        return [{"path": p, "identity": i, "sha256": h}
                for p, i, h in zip(self.path_of_row[start:], self.identity_of_row[start:], self._hashes[start:])]

    @property
    def commit_state(self) -> dict:
        """The committed state this object holds: uid, generation, rows and the SHA-256 of commit.json
        as HandCLIP writes it (equal to the file's own SHA-256 until the next commit)."""
        text = json.dumps(self._commit, indent=2, sort_keys=True) + "\n"
        return {"uid": self.uid, "generation": self._generation, "rows": len(self),
                "commit_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}

    def verify_files(self) -> None:
        """Check every committed shard against its SHA-256 (GalleryError names the first damaged file)."""
        for shard in self._shards.shards:
            self._shards.check(shard)

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

    # ------------------------------------------------------------------ loading committed state
    def _reset_rows(self) -> None:
        self.path_of_row: list[str] = []
        self.identity_of_row: list[str] = []
        self._hashes: list[str] = []
        self._row_by_hash: dict[str, int] = {}
        self.rows_of_identity: dict[str, list[int]] = {}

    def _load_commit(self) -> None:
        """Read commit.json and pin its shards. A writer may commit and delete merged shards between
        the two reads; a listed file then vanishes and the newer commit is read instead."""
        path = self.index_dir / COMMIT_FILE
        for _ in range(LOAD_ATTEMPTS):
            commit = read_json(path, "gallery commit file")
            generation, shards, _ = parse_commit(commit, path, self.uid)
            if generation == self._generation:
                return
            try:
                opened = self._shards.pin(shards)
                try:
                    rows = [read_metadata(self.index_dir, shard, COMMIT_FILE) for shard in shards]
                except BaseException:
                    for pinned in opened.values():
                        pinned.close()
                    raise
            except ShardVanished as gone:
                latest = read_json(path, "gallery commit file")
                if latest.get("generation") == generation:
                    raise GalleryError(f"gallery file {gone.path} is missing (listed in {COMMIT_FILE})") from None
                continue
            self._install(commit, generation, shards, opened, rows)
            return
        raise GalleryError(f"gallery {self.index_dir} kept changing while it was being opened; try again")

    def _install(self, commit: dict, generation: int, shards: list[Shard], opened: dict, rows: list) -> None:
        self._reset_rows()
        self._commit = commit
        self._generation = generation
        self._shards.replace(shards, opened)
        for entries in rows:
            for entry in entries:
                self._append_row(entry["path"], entry["identity"], entry["sha256"])

    def _append_row(self, path: str, identity: str, file_hash: str) -> None:
        row = len(self.path_of_row)
        self.path_of_row.append(path)
        self.identity_of_row.append(identity)
        self._hashes.append(file_hash)
        self._row_by_hash.setdefault(file_hash, row)
        self.rows_of_identity.setdefault(identity, []).append(row)

    def iter_vectors(self, start_row: int = 0, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Committed vectors from ``start_row`` on, in chunks (see ``ShardSet.iter_vectors``)."""
        return self._shards.iter_vectors(start_row, chunk_rows)

    def gather_rows(self, rows: np.ndarray, verify: bool = False) -> np.ndarray:
        """Stored vectors of ``rows`` (any order), from the memory-mapped shards."""
        return self._shards.gather(rows, verify)

    def vectors(self) -> np.ndarray:
        """All enrolled embeddings as one float32 array (a copy; mind memory for huge galleries)."""
        if not self.path_of_row:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(list(self.iter_vectors()))

    def refresh(self) -> None:
        """Pick up batches other processes committed since this gallery was opened.

        Not to be called while another thread searches this same object (its row lists are rebuilt):
        a service shares one opened object per generation, or serialises refresh with its searches."""
        self._load_commit()

    def close(self) -> None:
        """Release the shard files this reader holds open (also done when the object is collected)."""
        self._shards.close()

    def __enter__(self) -> "GalleryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

