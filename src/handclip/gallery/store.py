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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..atomic import atomic_write_json
from ..errors import GalleryError
from ..runtime import available_cpus
from .shards import (
    SHARD_DIR,
    Shard,
    ShardSet,
    checked_embeddings,
    delete_shard,
    open_vectors,
    read_metadata,
    remove_orphans,
    write_shard,
)

FORMAT_NAME = "handclip-gallery"
FORMAT_VERSION = 1
GALLERY_FILE = "gallery.json"
COMMIT_FILE = "commit.json"
LOCK_FILE = ".lock"

# Size-tiered compaction: when the newest COMPACT_FANOUT shards share a level they are merged into
# one shard of the next level, so a gallery enrolled 64 images at a time keeps O(16 log16 N) files
# and every row is rewritten only O(log16 N) times. Shards stop growing at MAX_SHARD_ROWS.
COMPACT_FANOUT = 16
MAX_SHARD_ROWS = 1 << 20
# Fingerprint keys that describe where a model lives, not what it computes.
FINGERPRINT_IGNORED = frozenset({"checkpoint_path", "path", "created"})
# Testing hook: seconds to sleep between writing a batch's shard files and committing it, so a test
# can SIGKILL an enrolment inside the critical window.
COMMIT_DELAY_ENV = "HANDCLIP_GALLERY_COMMIT_DELAY"



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


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GalleryError(f"{what} {path} is missing; the gallery is incomplete or not a HandCLIP gallery") from None
    except OSError as exc:
        raise GalleryError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GalleryError(f"{what} {path} is corrupt or truncated (not valid JSON)") from None
    if not isinstance(data, dict):
        raise GalleryError(f"{what} {path} is corrupt (expected a JSON object)")
    return data



def faiss_with_threads(threads: int | None):
    """The faiss module, its OpenMP pool sized to ``threads``, else $OMP_NUM_THREADS, else the usable CPUs."""
    import faiss

    if not threads:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    faiss.omp_set_num_threads(int(threads))
    return faiss


class GalleryStore:
    """Enrolled embeddings plus their image paths, identities and file hashes.

    ``path_of_row``, ``identity_of_row`` and ``rows_of_identity`` describe the committed rows.
    Create with :meth:`create`, reopen with :meth:`open` (any number of readers; one writer at a
    time, enforced by a lock file held during each :meth:`add`).
    """

    def __init__(self, index_dir: Path, info: dict, *, threads: int | None = None,
                 verify: bool = True):
        self.index_dir = Path(index_dir)
        self._info = info
        self.dim = int(info["dim"])
        self.threads = threads
        self.verify = verify
        self._reset_state()
        self._load_commit()

    # ------------------------------------------------------------------ opening and creating
    @classmethod
    def create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *,
               checkpoint: str | None = None, **kwargs) -> "GalleryStore":
        """Make a new, empty gallery in ``index_dir`` (created if needed; must not hold a gallery)."""
        index_dir = Path(index_dir)
        if (index_dir / GALLERY_FILE).exists():
            raise GalleryError(f"{index_dir} already holds a gallery; open it with GalleryStore.open to add images")
        if int(dim) < 1:
            raise GalleryError(f"gallery feature dimension must be positive, got {dim}")
        fp_dim = fingerprint.get("feature_dim")
        if fp_dim is not None and int(fp_dim) != int(dim):
            raise GalleryError(f"fingerprint feature_dim {fp_dim} does not match the gallery dimension {dim}")
        index_dir.mkdir(parents=True, exist_ok=True)
        (index_dir / SHARD_DIR).mkdir(exist_ok=True)
        uid = uuid.uuid4().hex
        # commit.json first, gallery.json last: gallery.json's presence marks a complete gallery.
        atomic_write_json(index_dir / COMMIT_FILE, {"uid": uid, "generation": 0, "rows": 0,
                                                    "next_shard": 0, "shards": []})
        info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "uid": uid, "dim": int(dim),
                "fingerprint": dict(fingerprint), "checkpoint": checkpoint,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_json(index_dir / GALLERY_FILE, info)
        return cls(index_dir, info, **kwargs)

    @classmethod
    def open(cls, index_dir: str | os.PathLike, **kwargs) -> "GalleryStore":
        """Open an existing gallery; a missing, foreign or corrupt one raises GalleryError naming the file."""
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise GalleryError(f"gallery directory {index_dir} does not exist; enrol images first")
        info = _read_json(index_dir / GALLERY_FILE, "gallery file")
        if info.get("format") != FORMAT_NAME:
            raise GalleryError(f"{index_dir / GALLERY_FILE} is not a HandCLIP gallery file")
        if info.get("version") != FORMAT_VERSION:
            raise GalleryError(f"{index_dir / GALLERY_FILE} has gallery format version {info.get('version')}, "
                              f"this HandCLIP reads version {FORMAT_VERSION}")
        if not isinstance(info.get("dim"), int) or not isinstance(info.get("fingerprint"), dict):
            raise GalleryError(f"{index_dir / GALLERY_FILE} is corrupt (missing dim or fingerprint)")
        return cls(index_dir, info, **kwargs)

    @classmethod
    def open_or_create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *,
                       checkpoint: str | None = None, **kwargs) -> "GalleryStore":
        """Open the gallery if ``index_dir`` holds one (refusing another model), else create it."""
        if (Path(index_dir) / GALLERY_FILE).exists():
            gallery = cls.open(index_dir, **kwargs)
            gallery.check_model(fingerprint, dim)
            if checkpoint and gallery.checkpoint != checkpoint:
                gallery.set_checkpoint(checkpoint)
            return gallery
        return cls.create(index_dir, fingerprint, dim, checkpoint=checkpoint, **kwargs)

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

    def set_checkpoint(self, checkpoint: str) -> None:
        """Record the checkpoint path so ``handclip search`` can find the model by itself."""
        with self._write_lock():
            self._info["checkpoint"] = str(checkpoint)
            atomic_write_json(self.index_dir / GALLERY_FILE, self._info)

    # ------------------------------------------------------------------ loading committed state
    def _reset_state(self) -> None:
        self._generation = -1
        self._shards = ShardSet(self.index_dir, self.dim, self.verify, COMMIT_FILE)
        self.path_of_row: list[str] = []
        self.identity_of_row: list[str] = []
        self._hashes: list[str] = []
        self._row_by_hash: dict[str, int] = {}
        self.rows_of_identity: dict[str, list[int]] = {}

    def _load_commit(self) -> None:
        path = self.index_dir / COMMIT_FILE
        commit = _read_json(path, "gallery commit file")
        try:
            uid = commit["uid"]
            generation = int(commit["generation"])
            shards = [Shard(str(s["name"]), int(s["rows"]), int(s["level"]), str(s["vectors_sha256"]),
                             str(s["meta_sha256"])) for s in commit["shards"]]
            total = int(commit["rows"])
            int(commit["next_shard"])
        except (KeyError, TypeError, ValueError):
            raise GalleryError(f"gallery commit file {path} is corrupt (missing or malformed fields)") from None
        if uid != self._info["uid"]:
            raise GalleryError(f"gallery commit file {path} belongs to another gallery (uid mismatch with {GALLERY_FILE})")
        if sum(s.rows for s in shards) != total:
            raise GalleryError(f"gallery commit file {path} is corrupt (row counts do not add up)")
        if generation == self._generation:
            return
        self._reset_state()
        self._commit = commit
        self._generation = generation
        self._shards.replace(shards)
        for shard in shards:
            for entry in read_metadata(self.index_dir, shard, COMMIT_FILE):
                self._append_row(entry["path"], entry["identity"], entry["sha256"])
            open_vectors(self.index_dir, shard, self.dim, COMMIT_FILE)  # cheap structural check; SHA-256 on use

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
        """Pick up batches other processes committed since this gallery was opened."""
        self._load_commit()

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        lock_path = self.index_dir / LOCK_FILE
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise GalleryError(f"cannot write to gallery {self.index_dir}: {exc.strerror}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise GalleryError(f"gallery {self.index_dir} is being written by another process "
                                      f"(lock {lock_path} is held)") from None
                raise
            try:
                self._load_commit()
                remove_orphans(self.index_dir, {s.name for s in self._shards.shards})
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, embeddings: np.ndarray, paths: Sequence[str], identities: Sequence[str],
            file_hashes: Sequence[str]) -> int:
        """Append one batch and commit it; returns how many rows were added.

        Rows whose file hash is already enrolled (or repeated within the batch) are skipped, so
        re-enrolling the same file content never duplicates it. The batch is durable once this
        returns; if the process dies earlier the gallery is exactly as before the call.
        """
        embeddings = checked_embeddings(embeddings, self.dim, len(paths), "embeddings")
        if not (len(paths) == len(identities) == len(file_hashes)):
            raise GalleryError(f"add() needs one path, identity and file hash per embedding, got "
                              f"{len(paths)}, {len(identities)}, {len(file_hashes)} for {len(embeddings)} rows")
        with self._write_lock():
            keep, seen = [], set()
            for i, file_hash in enumerate(file_hashes):
                if file_hash not in self._row_by_hash and file_hash not in seen:
                    seen.add(file_hash)
                    keep.append(i)
            if not keep:
                return 0
            vectors = np.ascontiguousarray(embeddings[keep])
            entries = [{"path": str(paths[i]), "identity": str(identities[i]), "sha256": str(file_hashes[i])}
                       for i in keep]
            shard = write_shard(self.index_dir, self._next_shard_name(), vectors, entries, 0, self.dim)
            self._delay_for_tests()
            self._commit_shards(self._shards.shards + [shard])
            for entry in entries:
                self._append_row(entry["path"], entry["identity"], entry["sha256"])
            self._compact()
        return len(keep)

    @staticmethod
    def _delay_for_tests() -> None:
        delay = os.environ.get(COMMIT_DELAY_ENV)
        if delay:
            time.sleep(float(delay))

    def _next_shard_name(self) -> str:
        number = int(self._commit["next_shard"])
        self._commit["next_shard"] = number + 1
        return f"{number:06d}"

    def _commit_shards(self, shards: list[Shard]) -> None:
        commit = {"uid": self._info["uid"], "generation": self._generation + 1,
                  "rows": sum(s.rows for s in shards), "next_shard": self._commit["next_shard"],
                  "shards": [s.as_dict() for s in shards]}
        atomic_write_json(self.index_dir / COMMIT_FILE, commit)  # the commit point
        self._commit = commit
        self._generation = commit["generation"]
        self._shards.replace(shards)

    def _compact(self) -> None:
        shards = self._shards.shards
        while len(shards) >= COMPACT_FANOUT:
            tail = shards[-COMPACT_FANOUT:]
            level = tail[0].level
            rows = sum(s.rows for s in tail)
            if any(s.level != level for s in tail) or rows > MAX_SHARD_ROWS:
                return
            self._merge(len(shards) - COMPACT_FANOUT, level + 1)
            shards = self._shards.shards

    def compact(self) -> None:
        """Merge every shard into one file (enrolment already merges small shards as it goes)."""
        with self._write_lock():
            self._merge(0)

    def _merge(self, first: int, level: int | None = None) -> None:
        """Merge shards ``first..`` into one: write the new shard, commit, then delete the old files.

        A kill before the commit leaves orphans that the next writer deletes; a kill after it leaves
        old files no commit refers to, deleted the same way.
        """
        shards = self._shards.shards
        merged = shards[first:]
        if len(merged) < 2:
            return
        start_row = sum(s.rows for s in shards[:first])
        rows = sum(s.rows for s in merged)
        entries = [{"path": self.path_of_row[r], "identity": self.identity_of_row[r], "sha256": self._hashes[r]}
                   for r in range(start_row, start_row + rows)]
        level = max(s.level for s in merged) + 1 if level is None else level
        shard = write_shard(self.index_dir, self._next_shard_name(), self.iter_vectors(start_row), entries,
                            level, self.dim, rows=rows)
        self._commit_shards(shards[:first] + [shard])
        for old in merged:
            delete_shard(self.index_dir, old)
