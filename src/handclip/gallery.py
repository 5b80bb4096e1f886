"""A gallery of enrolled hand embeddings on disk, searched with FAISS.

An examiner enrols known people's hand photos once and searches the gallery with query photos for
years, so the gallery must grow without being rebuilt and must survive crashes. Layout of a gallery
directory::

    gallery.json          format version, feature dim, model fingerprint, checkpoint path (written once)
    commit.json           the list of committed shards: the single source of truth
    shards/000007.npy     float32 [rows, dim] L2-normalised embeddings of one enrolment batch
    shards/000007.jsonl   one line per row: {"path", "identity", "sha256"}
    ann/pca.faiss|.json   cached approximate index, one per type (derived data, extended or rebuilt)
    .lock                 held by the one process that writes

Crash safety: every file is written through ``handclip.atomic`` (temporary file, fsync, rename).
A batch first writes its two shard files, then replaces ``commit.json``; until that rename the new
shard files are unreferenced and ignored (and deleted by the next writer). A process killed at any
moment therefore leaves the gallery as of the last commit: at most the batch in flight is lost.
Rows are only ever appended, never reordered, which keeps cached approximate indexes valid for the
prefix they cover.

Scores are cosine similarities (inner products of L2-normalised vectors). Searching ``by='identity'``
ranks people by the best score over their enrolled images (max aggregation: one good photo of the
right hand is the evidence an examiner looks for; averaging would penalise people enrolled with
many poor photos).

Approximate search (``index_type`` pca, ivf or hnsw) never reports an approximate score. A small
FAISS index over the embeddings projected onto their top principal directions proposes a shortlist
(``shortlist`` x top_k images); every image of each person in it is then re-scored exactly against
the stored float32 vectors, and the best are returned. Adding a person's other photos matters:
photos of one hand differ most along the same dominant directions that separate people, so a
projected index misses some of them while still finding one. ``pca`` scans all projected vectors
(one matrix product per batch of queries: never misses a region of the gallery, about 5x less work
than exact search at 1280 -> 256 dims); ``ivf`` and ``hnsw`` only visit part of the gallery
(faster, lower recall). ``auto`` is exact search up to AUTO_APPROX_THRESHOLD images, pca above (unless pca's self-check,
below, finds it unfit for the gallery's embeddings).
The cached index is extended with newly enrolled rows, and rebuilt (new projection, new lists) once
the gallery has grown past REBUILD_GROWTH times the rows it was trained on; a damaged cache is
rebuilt with a warning. Every build measures its own recall@10 on SELF_CHECK_PROBES of the gallery's
images against exact search (kept in the cache, ``ann_settings``) and warns when it is below
MIN_SELF_RECALL, since how well a projection fits depends on the embeddings. Rows re-scored are read
from the memory-mapped shards, each checked once per process against its SHA-256 before use.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from .atomic import atomic_open, atomic_write_json, atomic_write_text, sha256_file
from .errors import IndexError_

FORMAT_NAME = "handclip-gallery"
FORMAT_VERSION = 1
GALLERY_FILE = "gallery.json"
COMMIT_FILE = "commit.json"
SHARD_DIR = "shards"
ANN_DIR = "ann"
LOCK_FILE = ".lock"

# Above this many vectors, index_type='auto' switches from exact search to the pca index.
AUTO_APPROX_THRESHOLD = 200_000
# An approximate index is rebuilt (projection and lists retrained) once the gallery has grown past
# this factor times the rows it was trained on; smaller growth is appended to the cached index.
REBUILD_GROWTH = 2
# Rows used to estimate the projection (a 1280 x 1280 second-moment matrix is well determined by far fewer).
PROJECTION_SAMPLE = 100_000
# Each (re)build measures the index on this many of the gallery's own images (left out of their own
# results, like a new photo of an enrolled person) against exact search, and warns below MIN_SELF_RECALL.
SELF_CHECK_PROBES = 200
SELF_CHECK_K = 10
MIN_SELF_RECALL = 0.9
# Size-tiered compaction: when the newest COMPACT_FANOUT shards share a level they are merged into
# one shard of the next level, so a gallery enrolled 64 images at a time keeps O(16 log16 N) files
# and every row is rewritten only O(log16 N) times. Shards stop growing at MAX_SHARD_ROWS.
COMPACT_FANOUT = 16
MAX_SHARD_ROWS = 1 << 20
NORM_TOLERANCE = 1e-3
# Fingerprint keys that describe where a model lives, not what it computes.
FINGERPRINT_IGNORED = frozenset({"checkpoint_path", "path", "created"})
# Testing hook: seconds to sleep between writing a batch's shard files and committing it, so a test
# can SIGKILL an enrolment inside the critical window.
COMMIT_DELAY_ENV = "HANDCLIP_GALLERY_COMMIT_DELAY"

IndexType = Literal["auto", "flat", "pca", "ivf", "hnsw"]
INDEX_TYPES = ("auto", "flat", "pca", "ivf", "hnsw")
SearchBy = Literal["image", "identity"]

log = logging.getLogger(__name__)

# Defaults below were chosen from benchmarks/bench_gallery.py sweeps at 100k-200k x 1280 (README).


@dataclass
class PCAParams:
    """Exhaustive scan of the projected vectors."""

    dims: int = 256  # projection size; 128 loses more same-person photos, 512 doubles the scan
    shortlist: int = 3  # images proposed per requested result, before adding their people's other photos


@dataclass
class IVFParams:
    """Inverted lists over the projected vectors: k-means cells, only the nearest ``nprobe`` scanned."""

    dims: int = 128
    nlist: int | None = None  # default 4 sqrt(N), at most N / 39 (k-means wants >= 39 points per cell)
    nprobe: int | None = None  # default nlist / 16: a fixed share of the gallery, so recall holds as N grows
    points_per_list: int = 40  # k-means training sample = points_per_list * nlist
    shortlist: int = 3


@dataclass
class HNSWParams:
    """Graph over the projected vectors (the projection makes a 1M build affordable)."""

    dims: int = 128
    M: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    shortlist: int = 3


# Parameters read at search time; changing the others invalidates a cached index.
SEARCH_TIME_PARAMS = frozenset({"nprobe", "ef_search", "shortlist"})
ANN_SCHEME = "projected-shortlist-exact-rescore-v1"


@dataclass
class Candidate:
    """One ranked answer for a query.

    ``score`` is a cosine similarity. For ``by='image'`` a candidate is one enrolled image. For
    ``by='identity'`` it is one person: ``score`` is the best score over all of that person's
    enrolled images, ``path`` the image that achieved it, ``images`` all of their images best first
    (``(path, score)``), ``num_images`` how many they have enrolled and ``matched`` how many of them are
    among the query's ``top_k`` image-level hits.
    """

    rank: int
    identity: str
    score: float
    path: str
    num_images: int
    matched: int
    images: list[tuple[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["images"] = [{"path": p, "score": s} for p, s in self.images]
        return out


@dataclass(frozen=True)
class _Shard:
    name: str
    rows: int
    level: int
    vectors_sha256: str
    meta_sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


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
        raise IndexError_(f"{what} {path} is missing; the gallery is incomplete or not a HandCLIP gallery") from None
    except OSError as exc:
        raise IndexError_(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IndexError_(f"{what} {path} is corrupt or truncated (not valid JSON)") from None
    if not isinstance(data, dict):
        raise IndexError_(f"{what} {path} is corrupt (expected a JSON object)")
    return data


def _omp_threads(threads: int | None) -> int:
    if threads:
        return int(threads)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Gallery:
    """Enrolled embeddings plus their image paths, identities and file hashes.

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
        self.pca_params = PCAParams()
        self.ivf_params = IVFParams()
        self.hnsw_params = HNSWParams()
        self._reset_state()
        self._load_commit()

    # ------------------------------------------------------------------ opening and creating
    @classmethod
    def create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *,
               checkpoint: str | None = None, **kwargs) -> "Gallery":
        """Make a new, empty gallery in ``index_dir`` (created if needed; must not hold a gallery)."""
        index_dir = Path(index_dir)
        if (index_dir / GALLERY_FILE).exists():
            raise IndexError_(f"{index_dir} already holds a gallery; open it with Gallery.open to add images")
        if int(dim) < 1:
            raise IndexError_(f"gallery feature dimension must be positive, got {dim}")
        fp_dim = fingerprint.get("feature_dim")
        if fp_dim is not None and int(fp_dim) != int(dim):
            raise IndexError_(f"fingerprint feature_dim {fp_dim} does not match the gallery dimension {dim}")
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
    def open(cls, index_dir: str | os.PathLike, **kwargs) -> "Gallery":
        """Open an existing gallery; a missing, foreign or corrupt one raises IndexError_ naming the file."""
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise IndexError_(f"gallery directory {index_dir} does not exist; enrol images first")
        info = _read_json(index_dir / GALLERY_FILE, "gallery file")
        if info.get("format") != FORMAT_NAME:
            raise IndexError_(f"{index_dir / GALLERY_FILE} is not a HandCLIP gallery file")
        if info.get("version") != FORMAT_VERSION:
            raise IndexError_(f"{index_dir / GALLERY_FILE} has gallery format version {info.get('version')}, "
                              f"this HandCLIP reads version {FORMAT_VERSION}")
        if not isinstance(info.get("dim"), int) or not isinstance(info.get("fingerprint"), dict):
            raise IndexError_(f"{index_dir / GALLERY_FILE} is corrupt (missing dim or fingerprint)")
        return cls(index_dir, info, **kwargs)

    @classmethod
    def open_or_create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *,
                       checkpoint: str | None = None, **kwargs) -> "Gallery":
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
    def fingerprint(self) -> dict:
        return dict(self._info["fingerprint"])

    @property
    def checkpoint(self) -> str | None:
        return self._info.get("checkpoint")

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"Gallery({str(self.index_dir)!r}, images={len(self)}, identities={len(self._rows_by_identity)})"

    def identities(self) -> list[str]:
        """Enrolled identities, sorted."""
        return sorted(self._rows_by_identity)

    def images_of(self, identity: str) -> list[str]:
        return [self._paths[r] for r in self._rows_by_identity.get(str(identity), [])]

    def contains(self, file_hash: str) -> bool:
        """Whether an image with this SHA-256 (of the file's bytes) is already enrolled."""
        return file_hash in self._row_by_hash

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    def file_hashes(self, paths: Iterable[str]) -> dict[str, str]:
        """The SHA-256 recorded at enrolment for each of ``paths`` that is enrolled."""
        wanted = set(paths)
        return {p: h for p, h in zip(self._paths, self._hashes) if p in wanted}

    def entries(self, start: int = 0) -> list[dict]:
        """Enrolled rows from ``start`` on, in order, as ``{"path", "identity", "sha256"}``."""
        return [{"path": p, "identity": i, "sha256": h}
                for p, i, h in zip(self._paths[start:], self._identities[start:], self._hashes[start:])]

    @property
    def commit_state(self) -> dict:
        """The committed state this object holds: uid, generation, rows and the SHA-256 of commit.json
        as HandCLIP writes it (equal to the file's own SHA-256 until the next commit)."""
        text = json.dumps(self._commit, indent=2, sort_keys=True) + "\n"
        return {"uid": self._info["uid"], "generation": self._generation, "rows": len(self),
                "commit_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}

    def verify_files(self) -> None:
        """Check every committed shard against its SHA-256 (IndexError_ names the first damaged file)."""
        for shard in self._shards:
            self._verify_shard(shard)

    def check_model(self, fingerprint: dict, dim: int | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one the gallery was enrolled with."""
        differences = fingerprint_differences(self._info["fingerprint"], fingerprint)
        if dim is not None and int(dim) != self.dim:
            differences.insert(0, f"dim {self.dim} vs {dim}")
        if differences:
            raise IndexError_(
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
        self._shards: list[_Shard] = []
        self._paths: list[str] = []
        self._identities: list[str] = []
        self._hashes: list[str] = []
        self._row_by_hash: dict[str, int] = {}
        self._rows_by_identity: dict[str, list[int]] = {}
        self._flat = None  # in-memory faiss.IndexFlatIP over all rows, built lazily
        self._ann: dict[str, object] = {}
        self._ann_trained_rows: dict[str, int] = {}
        self._mmaps: dict[str, np.ndarray] = {}  # shard name -> memory-mapped vectors, for re-scoring
        self._verified: set[str] = set()  # shards whose SHA-256 this process has checked

    def _load_commit(self) -> None:
        path = self.index_dir / COMMIT_FILE
        commit = _read_json(path, "gallery commit file")
        try:
            uid = commit["uid"]
            generation = int(commit["generation"])
            shards = [_Shard(str(s["name"]), int(s["rows"]), int(s["level"]), str(s["vectors_sha256"]),
                             str(s["meta_sha256"])) for s in commit["shards"]]
            total = int(commit["rows"])
            int(commit["next_shard"])
        except (KeyError, TypeError, ValueError):
            raise IndexError_(f"gallery commit file {path} is corrupt (missing or malformed fields)") from None
        if uid != self._info["uid"]:
            raise IndexError_(f"gallery commit file {path} belongs to another gallery (uid mismatch with {GALLERY_FILE})")
        if sum(s.rows for s in shards) != total:
            raise IndexError_(f"gallery commit file {path} is corrupt (row counts do not add up)")
        if generation == self._generation:
            return
        self._reset_state()
        self._commit = commit
        self._generation = generation
        self._shards = shards
        for shard in shards:
            self._load_metadata(shard)
            self._check_vectors_file(shard)

    def _shard_path(self, name: str, suffix: str) -> Path:
        return self.index_dir / SHARD_DIR / f"{name}{suffix}"

    def _load_metadata(self, shard: _Shard) -> None:
        path = self._shard_path(shard.name, ".jsonl")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IndexError_(f"gallery metadata file {path} is missing (listed in {COMMIT_FILE})") from None
        if hashlib.sha256(data).hexdigest() != shard.meta_sha256:
            raise IndexError_(f"gallery metadata file {path} is corrupt or truncated (SHA-256 mismatch)")
        lines = data.decode("utf-8").splitlines()
        if len(lines) != shard.rows:
            raise IndexError_(f"gallery metadata file {path} has {len(lines)} rows, expected {shard.rows}")
        for line in lines:
            entry = json.loads(line)
            self._append_row(entry["path"], entry["identity"], entry["sha256"])

    def _append_row(self, path: str, identity: str, file_hash: str) -> None:
        row = len(self._paths)
        self._paths.append(path)
        self._identities.append(identity)
        self._hashes.append(file_hash)
        self._row_by_hash.setdefault(file_hash, row)
        self._rows_by_identity.setdefault(identity, []).append(row)

    def _check_vectors_file(self, shard: _Shard) -> None:
        """Cheap structural check at open (header + size); the full SHA-256 runs when vectors load."""
        self._open_vectors(shard)

    def _open_vectors(self, shard: _Shard) -> np.ndarray:
        path = self._shard_path(shard.name, ".npy")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise IndexError_(f"gallery vectors file {path} is missing (listed in {COMMIT_FILE})") from None
        except (ValueError, OSError, EOFError):
            raise IndexError_(f"gallery vectors file {path} is corrupt or truncated") from None
        if array.dtype != np.float32 or array.shape != (shard.rows, self.dim):
            raise IndexError_(f"gallery vectors file {path} holds {array.dtype} {array.shape}, "
                              f"expected float32 ({shard.rows}, {self.dim})")
        return array

    def _iter_vectors(self, start_row: int = 0, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Yield committed vectors from ``start_row`` on, in chunks, checking each shard's SHA-256.

        Files are read (not memory-mapped) into fresh buffers so a million-row gallery costs its
        index's memory once, and each byte is read once for both the hash and the index.
        """
        offset = 0
        for shard in self._shards:
            if offset + shard.rows > start_row:
                yield from self._read_shard(shard, max(0, start_row - offset), chunk_rows)
            offset += shard.rows

    def _read_shard(self, shard: _Shard, first_row: int, chunk_rows: int) -> Iterator[np.ndarray]:
        path = self._shard_path(shard.name, ".npy")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            try:
                np.lib.format.read_magic(handle)
                np.lib.format.read_array_header_1_0(handle)
            except ValueError:
                raise IndexError_(f"gallery vectors file {path} is corrupt or truncated") from None
            header_size = handle.tell()
            handle.seek(0)
            digest.update(handle.read(header_size))
            row = 0
            while row < shard.rows:
                buffer = np.empty((min(chunk_rows, shard.rows - row), self.dim), np.float32)
                if handle.readinto(memoryview(buffer).cast("B")) != buffer.nbytes:
                    raise IndexError_(f"gallery vectors file {path} is truncated")
                digest.update(buffer)
                if row + len(buffer) > first_row:
                    yield buffer[max(0, first_row - row):]
                row += len(buffer)
            digest.update(handle.read())
        if self.verify and digest.hexdigest() != shard.vectors_sha256:
            raise IndexError_(f"gallery vectors file {path} is corrupt (SHA-256 mismatch)")
        self._verified.add(shard.name)

    def _verify_shard(self, shard: _Shard) -> None:
        """Check a whole shard's SHA-256 once per process, streaming (nothing is kept in memory)."""
        if shard.name in self._verified or not self.verify:
            return
        for _ in self._read_shard(shard, shard.rows, chunk_rows=16384):
            pass

    def vectors(self) -> np.ndarray:
        """All enrolled embeddings as one float32 array (a copy; mind memory for huge galleries)."""
        if not self._paths:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(list(self._iter_vectors()))

    def refresh(self) -> None:
        """Pick up batches other processes committed since this gallery was opened."""
        self._load_commit()

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        import fcntl

        lock_path = self.index_dir / LOCK_FILE
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise IndexError_(f"cannot write to gallery {self.index_dir}: {exc.strerror}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise IndexError_(f"gallery {self.index_dir} is being written by another process "
                                      f"(lock {lock_path} is held)") from None
                raise
            try:
                self._load_commit()
                self._remove_orphans()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_orphans(self) -> None:
        """Delete shard files a killed writer left behind (never referenced by commit.json)."""
        live = {s.name for s in self._shards}
        for path in self.index_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)
        for path in (self.index_dir / SHARD_DIR).glob("*"):
            stem = path.name.split(".")[0] if not path.name.startswith(".") else None
            if stem is None and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # temporary file of an interrupted atomic write
            elif stem is not None and path.suffix in (".npy", ".jsonl") and stem not in live:
                path.unlink(missing_ok=True)

    def add(self, embeddings: np.ndarray, paths: Sequence[str], identities: Sequence[str],
            file_hashes: Sequence[str]) -> int:
        """Append one batch and commit it; returns how many rows were added.

        Rows whose file hash is already enrolled (or repeated within the batch) are skipped, so
        re-enrolling the same file content never duplicates it. The batch is durable once this
        returns; if the process dies earlier the gallery is exactly as before the call.
        """
        embeddings = self._check_embeddings(embeddings, len(paths), "embeddings")
        if not (len(paths) == len(identities) == len(file_hashes)):
            raise IndexError_(f"add() needs one path, identity and file hash per embedding, got "
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
            start = len(self)
            shard = self._write_shard(vectors, entries, level=0)
            self._delay_for_tests()
            self._commit_shards(self._shards + [shard])
            for entry in entries:
                self._append_row(entry["path"], entry["identity"], entry["sha256"])
            if self._flat is not None and self._flat.ntotal == start:
                self._flat.add(vectors)
            else:
                self._flat = None
            self._compact()
        return len(keep)

    def _check_embeddings(self, embeddings, rows: int | None, what: str) -> np.ndarray:
        array = np.asarray(embeddings)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise IndexError_(f"{what} must have shape [N, {self.dim}], got {list(array.shape)}")
        if rows is not None and array.shape[0] != rows:
            raise IndexError_(f"{what} has {array.shape[0]} rows but {rows} paths were given")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise IndexError_(f"{what} contain NaN or infinite values")
        if len(array):
            norms = np.linalg.norm(array, axis=1)
            if np.abs(norms - 1).max() > NORM_TOLERANCE:
                raise IndexError_(f"{what} must be L2-normalised (row norms range {norms.min():.4f}..{norms.max():.4f})")
        return array

    @staticmethod
    def _delay_for_tests() -> None:
        delay = os.environ.get(COMMIT_DELAY_ENV)
        if delay:
            time.sleep(float(delay))

    def _next_shard_name(self) -> str:
        number = int(self._commit["next_shard"])
        self._commit["next_shard"] = number + 1
        return f"{number:06d}"

    def _write_shard(self, vectors: np.ndarray | Iterable[np.ndarray], entries: list[dict], level: int,
                     rows: int | None = None) -> _Shard:
        """Write a shard's vectors (streamed, so merges never hold everything in memory) and metadata."""
        name = self._next_shard_name()
        chunks = [vectors] if isinstance(vectors, np.ndarray) else vectors
        rows = len(entries) if rows is None else rows
        digest = hashlib.sha256()
        with atomic_open(self._shard_path(name, ".npy"), "wb") as handle:
            header = _HashingWriter(handle, digest)
            np.lib.format.write_array_header_1_0(
                header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                         "fortran_order": False, "shape": (rows, self.dim)})
            written = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=np.float32)
                header.write(chunk.data)
                written += len(chunk)
            if written != rows:
                raise RuntimeError(f"shard {name}: wrote {written} rows, expected {rows}")
        meta = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in entries)
        atomic_write_text(self._shard_path(name, ".jsonl"), meta)
        return _Shard(name, rows, level, digest.hexdigest(), hashlib.sha256(meta.encode("utf-8")).hexdigest())

    def _commit_shards(self, shards: list[_Shard]) -> None:
        commit = {"uid": self._info["uid"], "generation": self._generation + 1,
                  "rows": sum(s.rows for s in shards), "next_shard": self._commit["next_shard"],
                  "shards": [s.as_dict() for s in shards]}
        atomic_write_json(self.index_dir / COMMIT_FILE, commit)  # the commit point
        self._commit = commit
        self._generation = commit["generation"]
        self._shards = shards
        live = {s.name for s in shards}
        self._mmaps = {name: array for name, array in self._mmaps.items() if name in live}
        self._verified &= live

    def _compact(self) -> None:
        while len(self._shards) >= COMPACT_FANOUT:
            tail = self._shards[-COMPACT_FANOUT:]
            level = tail[0].level
            rows = sum(s.rows for s in tail)
            if any(s.level != level for s in tail) or rows > MAX_SHARD_ROWS:
                return
            self._merge(len(self._shards) - COMPACT_FANOUT, level + 1)

    def compact(self) -> None:
        """Merge every shard into one file (enrolment already merges small shards as it goes)."""
        with self._write_lock():
            self._merge(0)

    def _merge(self, first: int, level: int | None = None) -> None:
        """Merge shards ``first..`` into one: write the new shard, commit, then delete the old files.

        A kill before the commit leaves orphans that the next writer deletes; a kill after it leaves
        old files no commit refers to, deleted the same way.
        """
        merged = self._shards[first:]
        if len(merged) < 2:
            return
        start_row = sum(s.rows for s in self._shards[:first])
        rows = sum(s.rows for s in merged)
        entries = [{"path": self._paths[r], "identity": self._identities[r], "sha256": self._hashes[r]}
                   for r in range(start_row, start_row + rows)]
        level = max(s.level for s in merged) + 1 if level is None else level
        shard = self._write_shard(self._iter_vectors(start_row), entries, level, rows=rows)
        self._commit_shards(self._shards[:first] + [shard])
        for old in merged:
            self._shard_path(old.name, ".npy").unlink(missing_ok=True)
            self._shard_path(old.name, ".jsonl").unlink(missing_ok=True)

    # ------------------------------------------------------------------ search
    def _faiss(self):
        import faiss

        faiss.omp_set_num_threads(_omp_threads(self.threads))
        return faiss

    def resolve_index_type(self, index_type: IndexType = "auto") -> str:
        if index_type not in INDEX_TYPES:
            raise IndexError_(f"unknown index type '{index_type}' (choose {', '.join(INDEX_TYPES)})")
        if index_type != "auto":
            return index_type
        if len(self) <= AUTO_APPROX_THRESHOLD:
            return "flat"
        self.ann_index("pca")  # built once, then cached with its self-check
        check = self._ann["pca"][3] or {}
        if check.get("recall_at_10") is not None and check["recall_at_10"] < MIN_SELF_RECALL:
            return "flat"
        return "pca"

    def flat_index(self):
        """Exact inner-product index over every committed row (built once per process).

        The shards are read straight into the index's preallocated storage: adding chunk by chunk
        would grow it by doubling and briefly need twice the gallery's size in memory.
        """
        faiss = self._faiss()
        if self._flat is None or self._flat.ntotal != len(self):
            index = faiss.IndexFlatIP(self.dim)
            total = len(self)
            index.codes.resize(total * self.dim * 4)
            storage = faiss.rev_swig_ptr(index.codes.data(), total * self.dim * 4).view(np.float32)
            storage = storage.reshape(total, self.dim)
            row = 0
            for chunk in self._iter_vectors():
                storage[row:row + len(chunk)] = chunk
                row += len(chunk)
            index.ntotal = total
            self._flat = index
        return self._flat

    def _ann_params(self, index_type: str):
        return {"pca": self.pca_params, "ivf": self.ivf_params, "hnsw": self.hnsw_params}[index_type]

    def _build_params(self, index_type: str) -> dict:
        return {k: v for k, v in asdict(self._ann_params(index_type)).items() if k not in SEARCH_TIME_PARAMS}

    def ann_index(self, index_type: str):
        """The approximate index over every committed row: kept in memory, loaded from its on-disk
        cache, extended with rows enrolled since, or (re)built when missing, damaged, configured
        differently or outgrown (more than REBUILD_GROWTH times the rows it was trained on)."""
        if index_type not in ("pca", "ivf", "hnsw"):
            raise IndexError_(f"'{index_type}' is not an approximate index type (choose pca, ivf or hnsw)")
        self._faiss()
        build = self._build_params(index_type)
        index, trained, built_with, check = self._ann.get(index_type, (None, 0, None, None))
        if index is None or built_with != build:
            index, trained, check = self._load_ann_cache(index_type, build)
        if index is not None and len(self) > REBUILD_GROWTH * trained:
            log.info("gallery %s grew from %d to %d images since its %s index was trained; rebuilding it",
                     self.index_dir, trained, len(self), index_type)
            index = None
        exact = None
        if index is None:
            index, trained = self._new_ann(index_type, build), len(self)
            probe_rows = np.sort(np.random.default_rng(1).choice(
                len(self), size=min(len(self), SELF_CHECK_PROBES), replace=False))
            exact = _ExactTopK(self._gather_rows(probe_rows), probe_rows, SELF_CHECK_K)
        if index.ntotal < len(self):
            row = index.ntotal
            for chunk in self._iter_vectors(start_row=index.ntotal):
                index.add(chunk)
                if exact is not None:
                    exact.observe(chunk, row)  # exact answers for the self-check, in the same pass
                row += len(chunk)
            if exact is not None:
                check = self._self_check(index_type, index, exact)
            self._save_ann_cache(index_type, index, build, trained, check)
        self._ann[index_type] = (index, trained, build, check)
        return index

    def _self_check(self, index_type: str, index, exact: "_ExactTopK") -> dict:
        """Recall@10 of the finished index on some of the gallery's own images, each left out of
        its own results (so its person keeps only their other photos, as for a new query photo)."""
        truth = exact.result()
        depth = min(len(self), int(self._ann_params(index_type).shortlist) * SELF_CHECK_K + 1)
        shortlists = self._shortlist(index_type, index, exact.probes, depth)
        recalls, same_found, same_total = [], 0, 0
        for probe, row, shortlist, true_rows in zip(exact.probes, exact.rows, shortlists, truth):
            if not len(true_rows):
                continue
            _, found = self._expand_and_score(probe, shortlist, SELF_CHECK_K, exclude=int(row))
            recalls.append(len(set(found.tolist()) & set(true_rows.tolist())) / len(true_rows))
            same = {int(t) for t in true_rows if self._identities[t] == self._identities[row]}
            same_found += len(same & set(found.tolist()))
            same_total += len(same)
        check = {"probes": len(recalls), "recall_at_10": round(float(np.mean(recalls)), 4) if recalls else None,
                 "same_person_recall": round(same_found / same_total, 4) if same_total else None}
        if check["recall_at_10"] is not None and check["recall_at_10"] < MIN_SELF_RECALL:
            log.warning("the %s index of gallery %s finds only %.2f of the exact top-%d for %d of the "
                        "gallery's own images: these embeddings do not suit it, so --index-type auto uses exact "
                        "search (flat) for this gallery", index_type, self.index_dir, check["recall_at_10"],
                        SELF_CHECK_K, check["probes"])
        return check

    def _new_ann(self, index_type: str, build: dict):
        """An empty, trained index: projection (and IVF cells) fitted to a sample of the gallery."""
        faiss = self._faiss()
        n = len(self)
        dims = max(1, min(int(build["dims"]), self.dim))
        sample_size = min(n, PROJECTION_SAMPLE)
        if index_type == "ivf":
            nlist = int(build["nlist"] or 4 * math.sqrt(n))
            nlist = max(1, min(nlist, n // 39))
            sample_size = min(n, max(sample_size, int(build["points_per_list"]) * nlist))
        rows = np.sort(np.random.default_rng(0).choice(n, size=sample_size, replace=False))
        sample = self._gather_rows(rows)
        transform = _projection(sample, dims) if dims < self.dim else None
        if index_type == "pca":
            inner = faiss.IndexFlatIP(dims)
        elif index_type == "hnsw":
            inner = faiss.IndexHNSWFlat(dims, int(build["M"]), faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = int(build["ef_construction"])
        else:
            inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(transform.apply(sample) if transform is not None else sample)
        del sample
        # faiss's Python wrapper keeps the transform and quantizer alive with the index.
        return faiss.IndexPreTransform(transform, inner) if transform is not None else inner

    def _ann_paths(self, index_type: str) -> tuple[Path, Path]:
        base = self.index_dir / ANN_DIR
        return base / f"{index_type}.faiss", base / f"{index_type}.json"

    def _load_ann_cache(self, index_type: str, build: dict):
        """(index, rows it was trained on, self-check) from the cache, or (None, 0, None) to build afresh.

        The cache is derived data: anything unexpected means a rebuild, never an error, and a
        damaged file (as opposed to a cache made for other settings) is reported as a warning.
        """
        faiss = self._faiss()
        index_path, meta_path = self._ann_paths(index_type)
        if not index_path.exists() and not meta_path.exists():
            return None, 0, None

        def damaged(reason: str):
            log.warning("approximate index cache %s is damaged (%s); rebuilding it", index_path, reason)
            return None, 0, None

        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return damaged(f"{meta_path.name} is missing or not valid JSON")
        if not isinstance(meta, dict):
            return damaged(f"{meta_path.name} is not a JSON object")
        if meta.get("uid") != self._info["uid"] or meta.get("scheme") != ANN_SCHEME or meta.get("params") != build:
            return None, 0, None  # made for another gallery, an older HandCLIP or other settings: not damage
        rows, trained = meta.get("rows"), meta.get("trained_rows")
        if not isinstance(rows, int) or not isinstance(trained, int) or not 0 < trained <= rows <= len(self):
            return damaged(f"{meta_path.name} lists {rows} rows for a gallery of {len(self)}")
        if not index_path.exists():
            return damaged("the index file is missing")
        if self.verify and sha256_file(index_path) != meta.get("sha256"):
            return damaged("SHA-256 mismatch")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError:
            return damaged("FAISS cannot read it")
        if index.ntotal != rows or index.d != self.dim:
            return damaged(f"it holds {index.ntotal} x {index.d}, expected {rows} x {self.dim}")
        return index, trained, meta.get("self_check")

    def _save_ann_cache(self, index_type: str, index, build: dict, trained: int, check: dict | None) -> None:
        faiss = self._faiss()
        index_path, meta_path = self._ann_paths(index_type)
        digest = hashlib.sha256()
        try:
            index_path.parent.mkdir(exist_ok=True)
            with atomic_open(index_path, "wb") as handle:
                writer = _HashingWriter(handle, digest)
                faiss.write_index(index, faiss.PyCallbackIOWriter(writer.write))
            # The description is written last: a kill in between leaves a hash mismatch, i.e. a rebuild.
            atomic_write_json(meta_path, {"scheme": ANN_SCHEME, "uid": self._info["uid"], "rows": int(index.ntotal),
                                          "trained_rows": int(trained), "params": build,
                                          "self_check": check, "sha256": digest.hexdigest()})
        except OSError:
            pass  # a read-only gallery still searches; it just rebuilds the index next time

    def _inner(self, index):
        faiss = self._faiss()
        return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index

    @staticmethod
    def _nprobe(nlist: int, params: IVFParams) -> int:
        return int(params.nprobe or max(min(nlist, 8), math.ceil(nlist / 16)))

    def ann_settings(self, index_type: str) -> dict:
        """The approximate index's effective settings (defaults resolved), building it if needed."""
        index = self.ann_index(index_type)
        inner, params = self._inner(index), self._ann_params(index_type)
        out = {"type": index_type, "rows": int(index.ntotal), "trained_rows": self._ann[index_type][1],
               "dims": int(inner.d), "shortlist": int(params.shortlist), "self_check": self._ann[index_type][3]}
        if index_type == "ivf":
            out.update(nlist=int(inner.nlist), nprobe=self._nprobe(inner.nlist, params))
        elif index_type == "hnsw":
            out.update(M=int(params.M), ef_construction=int(params.ef_construction), ef_search=int(params.ef_search))
        return out

    def _shortlist(self, index_type: str, index, queries: np.ndarray, depth: int) -> np.ndarray:
        """Row ids of each query's ``depth`` best candidates by projected inner product (-1: none)."""
        inner = self._inner(index)
        params = self._ann_params(index_type)
        if index_type == "ivf":
            inner.nprobe = self._nprobe(inner.nlist, params)
        elif index_type == "hnsw":
            inner.hnsw.efSearch = max(int(params.ef_search), depth)
        return index.search(queries, depth)[1]

    def _shard_vectors(self, shard: _Shard) -> np.ndarray:
        """A shard's vectors, memory-mapped for re-scoring (kept open for the process)."""
        array = self._mmaps.get(shard.name)
        if array is None:
            array = self._mmaps[shard.name] = self._open_vectors(shard)
        return array

    def _gather_rows(self, rows: np.ndarray, verify: bool = False) -> np.ndarray:
        """Stored vectors of ``rows`` (any order) read from the memory-mapped shards.

        With ``verify`` each shard touched is first checked against its SHA-256 (once per process).
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        starts = np.cumsum([0] + [s.rows for s in self._shards])
        which = np.searchsorted(starts, rows, side="right") - 1
        for number in np.unique(which):
            shard = self._shards[number]
            if verify:
                self._verify_shard(shard)
            mask = which == number
            out[mask] = self._shard_vectors(shard)[rows[mask] - starts[number]]
        return out

    def _exact_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored float32 vectors of ``rows``: from the exact index if it is loaded, else the shards."""
        if self._flat is not None and self._flat.ntotal == len(self):
            return self._flat.reconstruct_batch(np.asarray(rows, dtype=np.int64))
        return self._gather_rows(rows, verify=True)

    def search(self, queries: np.ndarray, top_k: int = 10, by: SearchBy = "identity",
               index_type: IndexType = "auto") -> list[list[Candidate]]:
        """Rank the gallery for each query embedding; one candidate list per query, best first.

        Every score returned is exact (approximate indexes only choose which images get scored).
        """
        if by not in ("image", "identity"):
            raise IndexError_(f"search by '{by}' is not supported (choose image or identity)")
        if len(self) == 0:
            raise IndexError_(f"gallery {self.index_dir} is empty; enrol images before searching")
        if int(top_k) < 1:
            raise IndexError_(f"top_k must be at least 1, got {top_k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexError_(f"query embeddings must have shape [M, {self.dim}], got {list(queries.shape)}")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        if not np.isfinite(queries).all() or (norms == 0).any():
            raise IndexError_("query embeddings contain NaN, infinite or all-zero rows")
        queries = np.ascontiguousarray(queries / norms)
        kind = self.resolve_index_type(index_type)
        n, top_k = len(self), int(top_k)
        if kind == "flat":
            index = self.flat_index()
            if by == "image":
                scores, rows = index.search(queries, min(top_k, n))
                return [self._image_candidates(s, r) for s, r in zip(scores, rows)]
            shortlist = lambda q, depth: index.search(q, depth)[1]  # noqa: E731
            first_depth = 0
        else:
            index = self.ann_index(kind)
            first_depth = int(self._ann_params(kind).shortlist) * top_k
            shortlist = lambda q, depth: self._shortlist(kind, index, q, depth)  # noqa: E731
            if by == "image":
                rows = shortlist(queries, min(n, max(top_k, first_depth)))
                return [self._rescored_image_candidates(q, r, top_k) for q, r in zip(queries, rows)]
        # Deepen the image search, batched over the queries that still lack top_k distinct people
        # (a person with many close images can fill the first hits on their own).
        wanted = min(top_k, len(self._rows_by_identity))
        per_identity = -(-n // len(self._rows_by_identity))  # mean images per person, rounded up
        depth = min(n, max(first_depth, top_k * max(4, 2 * per_identity)))
        rows = list(shortlist(queries, depth))
        pending = [i for i in range(len(queries)) if self._distinct_identities(rows[i]) < wanted]
        while pending and depth < n:
            depth = min(n, depth * 4)
            deeper = shortlist(queries[pending], depth)
            still = []
            for i, found in zip(pending, deeper):
                grew = (found >= 0).sum() > (rows[i] >= 0).sum()  # an approximate index can run dry
                rows[i] = found
                if grew and self._distinct_identities(found) < wanted:
                    still.append(i)
            pending = still
        # In exact order the first top_k people found are the answer; the others are re-ranked.
        limit = 2 * top_k if kind == "flat" else None
        return [self._identity_candidates(q, r, top_k, limit) for q, r in zip(queries, rows)]

    def _distinct_identities(self, rows: np.ndarray) -> int:
        return len({self._identities[r] for r in rows if r >= 0})

    def _image_candidates(self, scores: np.ndarray, rows: np.ndarray) -> list[Candidate]:
        out = []
        for score, row in zip(scores, rows):
            if row < 0:
                continue  # approximate indexes may return fewer than k hits
            identity = self._identities[row]
            out.append(Candidate(len(out) + 1, identity, float(score), self._paths[row],
                                 len(self._rows_by_identity[identity]), 1, [(self._paths[row], float(score))]))
        return out

    def _rescored_image_candidates(self, query: np.ndarray, rows: np.ndarray, top_k: int) -> list[Candidate]:
        return self._image_candidates(*self._expand_and_score(query, rows, top_k))

    def _expand_and_score(self, query: np.ndarray, rows: np.ndarray, top_k: int,
                          exclude: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores and rows of the ``top_k`` best among the shortlisted images and every other
        image of their people (``exclude``: a row to leave out, for the self-check)."""
        rows = rows[(rows >= 0) & (rows != exclude)]
        people = dict.fromkeys(self._identities[r] for r in rows)
        expanded = np.fromiter((r for person in people for r in self._rows_by_identity[person] if r != exclude),
                               dtype=np.int64)
        scores = self._exact_rows(expanded) @ query
        order = np.argsort(-scores, kind="stable")[:top_k]
        return scores[order], expanded[order]

    def _identity_candidates(self, query: np.ndarray, rows: np.ndarray, top_k: int,
                             limit: int | None) -> list[Candidate]:
        rows = rows[rows >= 0]
        found = list(dict.fromkeys(self._identities[r] for r in rows))[:limit]
        # Exact scores for every image of these people, in one gather: max aggregation stays exact
        # even when an approximate index missed a person's best image.
        members = [self._rows_by_identity[identity] for identity in found]
        all_rows = np.fromiter((r for m in members for r in m), dtype=np.int64)
        all_scores = self._exact_rows(all_rows) @ query
        bounds = np.cumsum([0] + [len(m) for m in members])
        owner = np.repeat(np.arange(len(found)), np.diff(bounds))
        matched = Counter(owner[np.argsort(-all_scores, kind="stable")[:top_k]].tolist())
        best = [float(all_scores[lo:hi].max()) for lo, hi in zip(bounds[:-1], bounds[1:])]
        out = []
        for rank, i in enumerate(sorted(range(len(found)), key=lambda i: -best[i])[:top_k], 1):
            scores = all_scores[bounds[i]:bounds[i + 1]]
            order = np.argsort(-scores, kind="stable")
            images = [(self._paths[members[i][j]], float(scores[j])) for j in order]
            out.append(Candidate(rank, found[i], images[0][1], images[0][0], len(members[i]),
                                 matched[i], images))
        return out


class _ExactTopK:
    """Running exact top-k (plus the probe itself) of a few probe rows over streamed chunks."""

    def __init__(self, probes: np.ndarray, rows: np.ndarray, k: int):
        self.probes, self.rows, self.k = probes, rows, k
        self.best_scores = np.full((len(rows), k + 1), -np.inf, np.float32)
        self.best_rows = np.full((len(rows), k + 1), -1, np.int64)

    def observe(self, chunk: np.ndarray, first_row: int) -> None:
        scores = np.concatenate([self.best_scores, self.probes @ chunk.T], axis=1)
        rows = np.concatenate([self.best_rows, np.broadcast_to(
            np.arange(first_row, first_row + len(chunk)), (len(self.rows), len(chunk)))], axis=1)
        keep = np.argpartition(-scores, self.k, axis=1)[:, :self.k + 1]
        self.best_scores = np.take_along_axis(scores, keep, axis=1)
        self.best_rows = np.take_along_axis(rows, keep, axis=1)

    def result(self) -> list[np.ndarray]:
        """Each probe's exact top-k rows, the probe itself left out."""
        out = []
        for row, scores, rows in zip(self.rows, self.best_scores, self.best_rows):
            ranked = rows[np.argsort(-scores, kind="stable")]
            out.append(ranked[(ranked >= 0) & (ranked != row)][:self.k])
        return out


def _projection(sample: np.ndarray, dims: int):
    """A faiss transform onto the ``dims`` top eigenvectors of the sample's uncentred second moment.

    Not centred (unlike PCA), so the projected inner product is exactly the part of the true inner
    product that lies in the kept directions, which is what the shortlist ranks by.
    """
    import faiss

    moment = (sample.T @ sample).astype(np.float64)
    _, vectors = np.linalg.eigh(moment)  # ascending eigenvalues
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :dims].T, dtype=np.float32)  # [dims, dim]
    transform = faiss.LinearTransform(sample.shape[1], dims, False)
    faiss.copy_array_to_vector(basis.ravel(), transform.A)
    transform.is_trained = True
    return transform


class _HashingWriter:
    """File-like wrapper that hashes everything written through it."""

    def __init__(self, handle, digest):
        self._handle = handle
        self._digest = digest

    def write(self, data) -> int:
        self._digest.update(data)
        self._handle.write(data)
        return len(data) if not isinstance(data, memoryview) else data.nbytes
