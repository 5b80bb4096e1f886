"""Shard files of a gallery: one float32 ``.npy`` of vectors and one ``.jsonl`` of row metadata each.

Every shard is written through ``handclip.atomic`` and described in ``commit.json`` by its row count
and the SHA-256 of both files, so a reader can tell a complete shard from a damaged one. The vectors
are written and read in chunks: merging shards of a million-row gallery never holds them all in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..atomic import atomic_open, atomic_write_text
from ..errors import GalleryError

SHARD_DIR = "shards"
VECTORS_SUFFIX = ".npy"
METADATA_SUFFIX = ".jsonl"
NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Shard:
    name: str
    rows: int
    level: int
    vectors_sha256: str
    meta_sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


class HashingWriter:
    """File-like wrapper that hashes everything written through it."""

    def __init__(self, handle, digest):
        self._handle = handle
        self._digest = digest

    def write(self, data) -> int:
        self._digest.update(data)
        self._handle.write(data)
        return len(data) if not isinstance(data, memoryview) else data.nbytes


def shard_path(index_dir: Path, name: str, suffix: str) -> Path:
    return Path(index_dir) / SHARD_DIR / f"{name}{suffix}"


def read_metadata(index_dir: Path, shard: Shard, listed_in: str) -> list[dict]:
    """The shard's row entries ({"path", "identity", "sha256"}), checked against its SHA-256 and row count."""
    path = shard_path(index_dir, shard.name, METADATA_SUFFIX)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GalleryError(f"gallery metadata file {path} is missing (listed in {listed_in})") from None
    if hashlib.sha256(data).hexdigest() != shard.meta_sha256:
        raise GalleryError(f"gallery metadata file {path} is corrupt or truncated (SHA-256 mismatch)")
    lines = data.decode("utf-8").splitlines()
    if len(lines) != shard.rows:
        raise GalleryError(f"gallery metadata file {path} has {len(lines)} rows, expected {shard.rows}")
    return [json.loads(line) for line in lines]


def open_vectors(index_dir: Path, shard: Shard, dim: int, listed_in: str) -> np.ndarray:
    """The shard's vectors memory-mapped, after a structural check (header, dtype, shape)."""
    path = shard_path(index_dir, shard.name, VECTORS_SUFFIX)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise GalleryError(f"gallery vectors file {path} is missing (listed in {listed_in})") from None
    except (ValueError, OSError, EOFError):
        raise GalleryError(f"gallery vectors file {path} is corrupt or truncated") from None
    if array.dtype != np.float32 or array.shape != (shard.rows, dim):
        raise GalleryError(f"gallery vectors file {path} holds {array.dtype} {array.shape}, "
                          f"expected float32 ({shard.rows}, {dim})")
    return array


def read_vectors(index_dir: Path, shard: Shard, dim: int, first_row: int, chunk_rows: int,
                 verify: bool) -> Iterator[np.ndarray]:
    """Yield the shard's rows from ``first_row`` on in fresh buffers; the whole file is hashed on the way
    (each byte read once for both) and a SHA-256 mismatch raises once the last chunk is read."""
    path = shard_path(index_dir, shard.name, VECTORS_SUFFIX)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        try:
            np.lib.format.read_magic(handle)
            np.lib.format.read_array_header_1_0(handle)
        except ValueError:
            raise GalleryError(f"gallery vectors file {path} is corrupt or truncated") from None
        header_size = handle.tell()
        handle.seek(0)
        digest.update(handle.read(header_size))
        row = 0
        while row < shard.rows:
            buffer = np.empty((min(chunk_rows, shard.rows - row), dim), np.float32)
            if handle.readinto(memoryview(buffer).cast("B")) != buffer.nbytes:
                raise GalleryError(f"gallery vectors file {path} is truncated")
            digest.update(buffer)
            if row + len(buffer) > first_row:
                yield buffer[max(0, first_row - row):]
            row += len(buffer)
        digest.update(handle.read())
    if verify and digest.hexdigest() != shard.vectors_sha256:
        raise GalleryError(f"gallery vectors file {path} is corrupt (SHA-256 mismatch)")


def write_shard(index_dir: Path, name: str, vectors: np.ndarray | Iterable[np.ndarray], entries: list[dict],
                level: int, dim: int, rows: int | None = None) -> Shard:
    """Write a shard's vectors (streamed from an array or an iterable of chunks) and its metadata."""
    chunks = [vectors] if isinstance(vectors, np.ndarray) else vectors
    rows = len(entries) if rows is None else rows
    digest = hashlib.sha256()
    with atomic_open(shard_path(index_dir, name, VECTORS_SUFFIX), "wb") as handle:
        header = HashingWriter(handle, digest)
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                     "fortran_order": False, "shape": (rows, dim)})
        written = 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            header.write(chunk.data)
            written += len(chunk)
        if written != rows:
            raise RuntimeError(f"shard {name}: wrote {written} rows, expected {rows}")
    meta = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in entries)
    atomic_write_text(shard_path(index_dir, name, METADATA_SUFFIX), meta)
    return Shard(name, rows, level, digest.hexdigest(), hashlib.sha256(meta.encode("utf-8")).hexdigest())


def remove_orphans(index_dir: Path, live: set[str]) -> None:
    """Delete shard files a killed writer left behind (never referenced by commit.json)."""
    index_dir = Path(index_dir)
    for path in index_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    for path in (index_dir / SHARD_DIR).glob("*"):
        stem = path.name.split(".")[0] if not path.name.startswith(".") else None
        if stem is None and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)  # temporary file of an interrupted atomic write
        elif stem is not None and path.suffix in (VECTORS_SUFFIX, METADATA_SUFFIX) and stem not in live:
            path.unlink(missing_ok=True)


def delete_shard(index_dir: Path, shard: Shard) -> None:
    for suffix in (VECTORS_SUFFIX, METADATA_SUFFIX):
        shard_path(index_dir, shard.name, suffix).unlink(missing_ok=True)


def checked_embeddings(embeddings, dim: int, rows: int | None, what: str) -> np.ndarray:
    """``embeddings`` as contiguous float32 [rows, dim], finite and L2-normalised, else an GalleryError."""
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[1] != dim:
        raise GalleryError(f"{what} must have shape [N, {dim}], got {list(array.shape)}")
    if rows is not None and array.shape[0] != rows:
        raise GalleryError(f"{what} has {array.shape[0]} rows but {rows} paths were given")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise GalleryError(f"{what} contain NaN or infinite values")
    if len(array):
        norms = np.linalg.norm(array, axis=1)
        if np.abs(norms - 1).max() > NORM_TOLERANCE:
            raise GalleryError(f"{what} must be L2-normalised (row norms range {norms.min():.4f}..{norms.max():.4f})")
    return array


class ShardSet:
    """The committed shards of one gallery, in row order: streamed reads, memory-mapped row lookups, and
    the SHA-256 check of each shard once per process before its vectors are used."""

    def __init__(self, index_dir: Path, dim: int, verify: bool = True, listed_in: str = "commit.json"):
        self.index_dir = Path(index_dir)
        self.dim = dim
        self.verify = verify
        self.listed_in = listed_in
        self.shards: list[Shard] = []
        self._mmaps: dict[str, np.ndarray] = {}  # shard name -> memory-mapped vectors
        self._verified: set[str] = set()  # shards whose SHA-256 this process has checked

    def replace(self, shards: list[Shard]) -> None:
        """Switch to a new committed shard list, keeping what is known of the shards that stay."""
        self.shards = list(shards)
        live = {s.name for s in shards}
        self._mmaps = {name: array for name, array in self._mmaps.items() if name in live}
        self._verified &= live

    def iter_vectors(self, start_row: int = 0, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Committed vectors from ``start_row`` on, in chunks, each shard checked against its SHA-256.

        Files are read (not memory-mapped) into fresh buffers so a million-row gallery costs its
        index's memory once, and each byte is read once for both the hash and the index.
        """
        offset = 0
        for shard in self.shards:
            if offset + shard.rows > start_row:
                yield from self._read(shard, max(0, start_row - offset), chunk_rows)
            offset += shard.rows

    def _read(self, shard: Shard, first_row: int, chunk_rows: int) -> Iterator[np.ndarray]:
        yield from read_vectors(self.index_dir, shard, self.dim, first_row, chunk_rows, self.verify)
        self._verified.add(shard.name)

    def check(self, shard: Shard) -> None:
        """Check a whole shard's SHA-256 once per process, streaming (nothing is kept in memory)."""
        if shard.name in self._verified or not self.verify:
            return
        for _ in self._read(shard, shard.rows, chunk_rows=16384):
            pass

    def mapped(self, shard: Shard) -> np.ndarray:
        """A shard's vectors, memory-mapped for re-scoring (kept open for the process)."""
        array = self._mmaps.get(shard.name)
        if array is None:
            array = self._mmaps[shard.name] = open_vectors(self.index_dir, shard, self.dim, self.listed_in)
        return array

    def gather(self, rows: np.ndarray, verify: bool = False) -> np.ndarray:
        """Stored vectors of ``rows`` (any order); with ``verify`` each shard touched is checked first."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        starts = np.cumsum([0] + [s.rows for s in self.shards])
        which = np.searchsorted(starts, rows, side="right") - 1
        for number in np.unique(which):
            shard = self.shards[number]
            if verify:
                self.check(shard)
            mask = which == number
            out[mask] = self.mapped(shard)[rows[mask] - starts[number]]
        return out
