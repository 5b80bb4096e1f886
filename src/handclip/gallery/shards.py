"""Shard files of a gallery: one float32 ``.npy`` of vectors and one ``.jsonl`` of row metadata each.

Every shard is written through ``handclip.atomic`` and described in ``commit.json`` by its row count
and the SHA-256 of both files, so a reader can tell a complete shard from a damaged one. The vectors
are written and read in chunks: merging shards of a million-row gallery never holds them all in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..atomic import atomic_open, atomic_write_text
from ..errors import GalleryError
from .metadata import SHARD_NAME, Shard, parse_rows

SHARD_DIR = "shards"
VECTORS_SUFFIX = ".npy"
METADATA_SUFFIX = ".jsonl"
NORM_TOLERANCE = 1e-3


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


class ShardVanished(Exception):
    """A shard file listed in the commit read was gone: a writer committed and deleted it since."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


class PinnedShard:
    """One shard's vectors file, held open from the moment its commit was read.

    Compaction deletes the files of merged shards as soon as their replacement is committed; an open
    descriptor keeps the bytes readable, so a reader keeps the generation it opened until it refreshes
    (no deferred deletion or reader registry is needed, and a crashed reader holds nothing).
    """

    def __init__(self, index_dir: Path, shard: Shard, dim: int):
        self.path = shard_path(index_dir, shard.name, VECTORS_SUFFIX)
        self.shard = shard
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardVanished(self.path) from None
        except OSError as exc:
            raise GalleryError(f"cannot read gallery vectors file {self.path}: {exc.strerror}") from None
        self._array = None
        try:
            self.header_size = self._check_header(dim)
        except BaseException:
            self.close()
            raise

    def _check_header(self, dim: int) -> int:
        """Structural check (magic, dtype, shape, file size); returns the header's length in bytes."""
        head = os.pread(self.fd, 4096, 0)
        stream = io.BytesIO(head)
        try:
            if np.lib.format.read_magic(stream) != (1, 0):
                raise ValueError("not a version 1.0 .npy header (HandCLIP writes 1.0)")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        except Exception:  # noqa: BLE001 - numpy's header parser raises many types (tokenize errors too)
            raise GalleryError(f"gallery vectors file {self.path} is corrupt or truncated") from None
        if dtype != np.float32 or fortran or shape != (self.shard.rows, dim):
            raise GalleryError(f"gallery vectors file {self.path} holds {dtype} {shape}, "
                               f"expected float32 ({self.shard.rows}, {dim})")
        size = os.fstat(self.fd).st_size
        if size != stream.tell() + self.shard.rows * dim * 4:
            raise GalleryError(f"gallery vectors file {self.path} is corrupt or truncated")
        return stream.tell()

    def read_into(self, buffer: np.ndarray, offset: int) -> int:
        return os.preadv(self.fd, [memoryview(buffer).cast("B")], offset)

    def header(self) -> bytes:
        return os.pread(self.fd, self.header_size, 0)

    def mapped(self, dim: int) -> np.ndarray:
        if self._array is None:
            buffer = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
            self._array = np.frombuffer(buffer, np.float32, self.shard.rows * dim,
                                        self.header_size).reshape(self.shard.rows, dim)
        return self._array

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)  # a memory map made from it stays valid
            self.fd = -1

    def __del__(self):  # a dropped gallery object must not leak descriptors in a long-running service
        self.close()


def read_metadata(index_dir: Path, shard: Shard, listed_in: str) -> list[dict]:
    """The shard's row entries ({"path", "identity", "sha256"}), checked against its SHA-256 and row count."""
    path = shard_path(index_dir, shard.name, METADATA_SUFFIX)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ShardVanished(path) from None
    except OSError as exc:
        raise GalleryError(f"cannot read gallery metadata file {path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != shard.meta_sha256:
        raise GalleryError(f"gallery metadata file {path} is corrupt or truncated (SHA-256 mismatch)")
    return parse_rows(data, path, shard.rows)


def read_vectors(pinned: PinnedShard, dim: int, first_row: int, chunk_rows: int,
                 verify: bool) -> Iterator[np.ndarray]:
    """Yield the shard's rows from ``first_row`` on in fresh buffers; the whole file is hashed on the way
    (each byte read once for both) and a SHA-256 mismatch raises once the last chunk is read."""
    shard = pinned.shard
    digest = hashlib.sha256(pinned.header())
    offset = pinned.header_size
    row = 0
    while row < shard.rows:
        buffer = np.empty((min(chunk_rows, shard.rows - row), dim), np.float32)
        if pinned.read_into(buffer, offset) != buffer.nbytes:
            raise GalleryError(f"gallery vectors file {pinned.path} is truncated")
        offset += buffer.nbytes
        digest.update(buffer)
        if row + len(buffer) > first_row:
            yield buffer[max(0, first_row - row):]
        row += len(buffer)
    if verify and digest.hexdigest() != shard.vectors_sha256:
        raise GalleryError(f"gallery vectors file {pinned.path} is corrupt (SHA-256 mismatch)")


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


# What a killed writer can leave in shards/: shard files no commit lists, and temporary files of the
# atomic writes of shard files (".000007.npy.<random>.tmp"). Nothing else there is ever deleted.
_SHARD_FILE = re.compile(rf"({SHARD_NAME.pattern})(\{VECTORS_SUFFIX}|\{METADATA_SUFFIX})")
_SHARD_TEMP = re.compile(rf"\.{_SHARD_FILE.pattern}\.[A-Za-z0-9_]+\.tmp")
_TOP_TEMP = re.compile(r"\.(commit|gallery)\.json\.[A-Za-z0-9_]+\.tmp")


def shard_files(index_dir: Path) -> list[Path]:
    """Files in shards/ named like the gallery's own shard files."""
    shard_dir = Path(index_dir) / SHARD_DIR
    if not shard_dir.is_dir():
        return []
    return [p for p in shard_dir.iterdir() if _SHARD_FILE.fullmatch(p.name)]


def remove_orphans(index_dir: Path, live: set[str]) -> None:
    """Delete the shard files a killed writer left behind: only names of the gallery's own shard
    pattern (or their temporary files) that commit.json does not list. Call under the writer lock."""
    for path in Path(index_dir).glob(".*.tmp"):  # commit.json and gallery.json are written under the lock too
        if _TOP_TEMP.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    shard_dir = Path(index_dir) / SHARD_DIR
    if not shard_dir.is_dir():
        return
    for path in shard_dir.iterdir():
        shard = _SHARD_FILE.fullmatch(path.name)
        orphan = (shard is not None and shard.group(1) not in live) or _SHARD_TEMP.fullmatch(path.name)
        if orphan and path.is_file() and not path.is_symlink():
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
    """The shards of one committed generation, in row order, each pinned open (``PinnedShard``): streamed
    reads, memory-mapped row lookups, and the SHA-256 check of each shard once before use.

    A set never changes its shard list: a new generation is a new set (:meth:`successor`), which pins
    its own descriptors, so closing one generation never disturbs another that is still being read."""

    def __init__(self, index_dir: Path, dim: int, shards: list[Shard], pinned: dict[str, PinnedShard],
                 verify: bool = True, verified: frozenset[str] = frozenset()):
        self.index_dir = Path(index_dir)
        self.dim = dim
        self.verify = verify
        self._shards = tuple(shards)
        self._pinned = dict(pinned)
        self._verified = set(verified) & {s.name for s in shards}  # shards whose SHA-256 was checked

    @classmethod
    def pin(cls, index_dir: Path, dim: int, shards: list[Shard], verify: bool = True,
            verified: frozenset[str] = frozenset()) -> "ShardSet":
        """Open every listed shard's vectors file (ShardVanished if one is gone)."""
        opened: dict[str, PinnedShard] = {}
        try:
            for shard in shards:
                if shard.name not in opened:
                    opened[shard.name] = PinnedShard(index_dir, shard, dim)
        except BaseException:
            for pinned in opened.values():
                pinned.close()
            raise
        return cls(index_dir, dim, shards, opened, verify, verified)

    def successor(self, shards: list[Shard]) -> "ShardSet":
        """The set of a later generation, keeping what is known of the shards that stay."""
        return ShardSet.pin(self.index_dir, self.dim, shards, self.verify, frozenset(self._verified))

    @property
    def shards(self) -> list[Shard]:
        return list(self._shards)

    def close(self) -> None:
        for pinned in self._pinned.values():
            pinned.close()

    def iter_vectors(self, start_row: int = 0, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Committed vectors from ``start_row`` on, in chunks, each shard checked against its SHA-256.

        Files are read (not memory-mapped) into fresh buffers so a million-row gallery costs its
        index's memory once, and each byte is read once for both the hash and the index.
        """
        offset = 0
        for shard in self._shards:
            if offset + shard.rows > start_row:
                yield from self._read(shard, max(0, start_row - offset), chunk_rows)
            offset += shard.rows

    def _read(self, shard: Shard, first_row: int, chunk_rows: int) -> Iterator[np.ndarray]:
        yield from read_vectors(self._pinned[shard.name], self.dim, first_row, chunk_rows, self.verify)
        self._verified.add(shard.name)

    def check(self, shard: Shard) -> None:
        """Check a whole shard's SHA-256 once, streaming (nothing is kept in memory)."""
        if shard.name in self._verified or not self.verify:
            return
        for _ in self._read(shard, shard.rows, 16384):
            pass

    def mapped(self, shard: Shard) -> np.ndarray:
        """A shard's vectors, memory-mapped for re-scoring (kept while the set is open)."""
        return self._pinned[shard.name].mapped(self.dim)

    def gather(self, rows: np.ndarray, verify: bool = False) -> np.ndarray:
        """Stored vectors of ``rows`` (any order); with ``verify`` each shard touched is checked first."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        starts = np.cumsum([0] + [s.rows for s in self._shards])
        which = np.searchsorted(starts, rows, side="right") - 1
        for number in np.unique(which):
            shard = self._shards[number]
            if verify:
                self.check(shard)
            mask = which == number
            out[mask] = self.mapped(shard)[rows[mask] - starts[number]]
        return out
