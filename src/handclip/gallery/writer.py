"""The writer side of a gallery: creating it, the writer lock, appending batches, compaction.

A ``GalleryWriter`` owns the lock for each change and holds the reader of the newest generation it
made or saw (``writer.reader``); it reads that reader only through its public methods.

One process writes at a time. The lock is an ``flock`` on ``.lock`` in the gallery folder, so it is
released by the kernel when its holder dies (a crashed enrolment never leaves a stale lock). A second
writer waits for it (logging that it waits, up to a timeout) rather than failing half-way through an
enrolment. Creation happens under the same lock, so two enrolments into a new folder make one gallery.

Cleanup after a killed writer only ever deletes files the gallery itself names: shard files of its own
naming pattern that commit.json does not list, and their temporary files. A folder with gallery files
but no gallery.json is refused as damaged, never recreated over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..atomic import atomic_write_json
from ..aspects import normalise_aspect
from ..errors import GalleryError
from ..forensic.audit import AUDIT_FILE
from .metadata import COMMIT_FILE, FORMAT_NAME, FORMAT_VERSION, GALLERY_FILE, Shard, read_json
from .reader import GalleryReader
from .redaction import REDACTIONS, check_not_redacted, check_reason
from .shards import SHARD_DIR, checked_embeddings, delete_shard, remove_orphans, shard_files, write_shard

LOCK_FILE = ".lock"

# Size-tiered compaction: when the newest COMPACT_FANOUT shards share a level they are merged into
# one shard of the next level, so a gallery enrolled 64 images at a time keeps O(16 log16 N) files
# and every row is rewritten only O(log16 N) times. Shards stop growing at MAX_SHARD_ROWS.
COMPACT_FANOUT = 16
MAX_SHARD_ROWS = 1 << 20
# Testing hook: seconds to sleep between writing a batch's shard files and committing it, so a test
# can SIGKILL an enrolment inside the critical window.
COMMIT_DELAY_ENV = "HANDCLIP_GALLERY_COMMIT_DELAY"
# How long a writer waits for another process's lock before giving up (seconds; the env var overrides).
LOCK_TIMEOUT_ENV = "HANDCLIP_GALLERY_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 600.0
WAIT_NOTICE_EVERY = 30.0

log = logging.getLogger(__name__)


def lock_timeout(value: float | None = None) -> float:
    if value is not None:
        return float(value)
    text = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise GalleryError(f"{LOCK_TIMEOUT_ENV}={text[:40]!r} is not a number of seconds") from None


@contextlib.contextmanager
def writer_lock(index_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the gallery's exclusive writer lock, waiting up to ``timeout`` seconds for another writer."""
    lock_path = Path(index_dir) / LOCK_FILE
    try:
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise GalleryError(f"cannot write to gallery {index_dir}: {exc.strerror}") from None
    with handle:
        _acquire(handle, Path(index_dir), lock_path, lock_timeout(timeout))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, index_dir: Path, lock_path: Path, timeout: float) -> None:
    start = time.monotonic()
    notice, pause = start, 0.01
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise GalleryError(f"cannot lock gallery {index_dir}: {exc.strerror}") from None
        now = time.monotonic()
        if now - start >= timeout:
            raise GalleryError(f"gallery {index_dir} is being written by another process (lock {lock_path} "
                               f"still held after {timeout:g} s); try again when it has finished")
        if now >= notice:
            log.warning("gallery %s is being written by another process; waiting for it (up to %g s)",
                        index_dir, timeout)
            notice = now + WAIT_NOTICE_EVERY
        time.sleep(min(pause, max(0.0, timeout - (now - start))))
        pause = min(pause * 2, 0.2)


def _prepare_folder(index_dir: Path) -> None:
    if index_dir.exists() and not index_dir.is_dir():
        raise GalleryError(f"gallery {index_dir} is not a directory (give a folder for --index)")
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise GalleryError(f"gallery {index_dir} is not a directory (give a folder for --index)") from None
    except OSError as exc:
        raise GalleryError(f"cannot create gallery {index_dir}: {exc.strerror}") from None


def _refuse_leftovers(index_dir: Path) -> None:
    """Refuse a folder holding another gallery's files but no gallery.json (a damaged gallery).

    A commit.json with no shards and nothing else is a creation killed before gallery.json was
    written: nothing would be lost, so creation goes on over it.
    """
    found = []
    commit = index_dir / COMMIT_FILE
    if commit.exists():
        try:
            if read_json(commit, "gallery commit file").get("shards") != []:
                found.append(COMMIT_FILE)
        except GalleryError:
            found.append(COMMIT_FILE)
    if shard_files(index_dir):
        found.append(f"{SHARD_DIR}/")
    if (index_dir / AUDIT_FILE).exists():
        found.append(AUDIT_FILE)
    if found:
        raise GalleryError(f"{index_dir / GALLERY_FILE} is missing but {index_dir} holds gallery files "
                           f"({', '.join(found)}): the gallery is damaged; restore {GALLERY_FILE} from a backup "
                           f"or enrol into a new folder (nothing was changed)")


def _new_gallery(index_dir: Path, fingerprint: dict, dim: int, checkpoint: str | None) -> None:
    """Write an empty gallery's files (under the writer lock, into a folder holding no gallery)."""
    _refuse_leftovers(index_dir)
    (index_dir / SHARD_DIR).mkdir(exist_ok=True)
    uid = uuid.uuid4().hex
    # commit.json first, gallery.json last: gallery.json's presence marks a complete gallery.
    atomic_write_json(index_dir / COMMIT_FILE, {"uid": uid, "generation": 0, "rows": 0, "next_shard": 0,
                                                "shards": []})
    atomic_write_json(index_dir / GALLERY_FILE, {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "uid": uid, "dim": int(dim),
        "fingerprint": dict(fingerprint), "checkpoint": checkpoint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


class GalleryWriter:
    """The one writer of a gallery: creation, appending batches, compaction, all under the writer lock.

    ``reader`` is the newest generation this writer made or saw; it is replaced (never changed) by each
    commit. Other processes' commits are picked up when the lock is taken.
    """

    def __init__(self, reader: GalleryReader, lock_timeout: float | None = None):
        self._reader = reader
        self.lock_timeout = lock_timeout

    @property
    def reader(self) -> GalleryReader:
        return self._reader

    @property
    def index_dir(self) -> Path:
        return self._reader.index_dir

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, threads: int | None = None, verify: bool = True,
             lock_timeout: float | None = None) -> "GalleryWriter":
        """A writer for an existing gallery (GalleryError naming the file if it is missing or damaged)."""
        return cls(GalleryReader.open(index_dir, threads=threads, verify=verify), lock_timeout)

    @classmethod
    def create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *, checkpoint: str | None = None,
               exist_ok: bool = False, threads: int | None = None, verify: bool = True,
               lock_timeout: float | None = None) -> "GalleryWriter":
        """Make a new, empty gallery in ``index_dir`` (created if needed). A folder that already holds a
        gallery is refused, or with ``exist_ok`` opened (then checked against ``fingerprint``)."""
        index_dir = Path(index_dir)
        if int(dim) < 1:
            raise GalleryError(f"gallery feature dimension must be positive, got {dim}")
        fp_dim = fingerprint.get("feature_dim")
        if fp_dim is not None and int(fp_dim) != int(dim):
            raise GalleryError(f"fingerprint feature_dim {fp_dim} does not match the gallery dimension {dim}")
        _prepare_folder(index_dir)
        # Under the writer lock: of two processes creating the same new gallery, the second finds
        # the first's complete gallery here and opens it.
        with writer_lock(index_dir, lock_timeout):
            if (index_dir / GALLERY_FILE).exists():
                if not exist_ok:
                    raise GalleryError(f"{index_dir} already holds a gallery; open it to add images")
            else:
                _new_gallery(index_dir, fingerprint, dim, checkpoint)
            writer = cls.open(index_dir, threads=threads, verify=verify, lock_timeout=lock_timeout)
        writer.reader.check_model(fingerprint, dim)
        if checkpoint and writer.reader.checkpoint != checkpoint:
            writer.set_checkpoint(checkpoint)
        return writer

    def set_checkpoint(self, checkpoint: str) -> None:
        """Record the checkpoint path so ``handclip search`` can find the model by itself."""
        with self._locked():
            info = {**self._reader.info, "checkpoint": str(checkpoint)}
            atomic_write_json(self.index_dir / GALLERY_FILE, info)
            self._reader = self._reader.after_commit(self._reader.commit, self._reader.shards, info=info)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writer lock, with the latest commit loaded and a killed writer's leftovers removed."""
        with writer_lock(self.index_dir, self.lock_timeout):
            self._reader = self._reader.latest()
            remove_orphans(self.index_dir, {s.name for s in self._reader.shards})
            yield

    def add(self, embeddings: np.ndarray, paths: Sequence[str], identities: Sequence[str],
            file_hashes: Sequence[str], aspects: Sequence[str | None] | None = None) -> int:
        """Append one batch and commit it; returns how many rows were added. ``aspects``: each image's hand
        aspect (stored with its row; None for none).

        Rows whose file hash is already enrolled (or repeated within the batch) are skipped, so
        re-enrolling the same file content never duplicates it. The batch is durable once this
        returns; if the process dies earlier the gallery is exactly as before the call.
        """
        dim = self._reader.dim
        embeddings = checked_embeddings(embeddings, dim, len(paths), "embeddings")
        if not (len(paths) == len(identities) == len(file_hashes)):
            raise GalleryError(f"add() needs one path, identity and file hash per embedding, got "
                               f"{len(paths)}, {len(identities)}, {len(file_hashes)} for {len(embeddings)} rows")
        entries = [{"path": str(p), "identity": str(i), "sha256": str(h)}
                   for p, i, h in zip(paths, identities, file_hashes)]
        for entry, aspect in zip(entries, aspects if aspects is not None else [None] * len(entries)):
            if aspect is not None:
                entry["aspect"] = normalise_aspect(aspect)
        for entry in entries:
            if not all(0 < len(v) and "\0" not in v for v in entry.values()):
                raise GalleryError(f"add() needs non-empty paths, identities and hashes without NUL, "
                                   f"got {entry!r:.200}")
        with self._locked():
            check_not_redacted((e["identity"] for e in entries), self._reader.redacted, self.index_dir)
            keep, seen = [], set()
            for i, file_hash in enumerate(file_hashes):
                if not self._reader.contains(file_hash) and file_hash not in seen:
                    seen.add(file_hash)
                    keep.append(i)
            if not keep:
                return 0
            entries = [entries[i] for i in keep]
            commit = self._reader.commit
            shard = write_shard(self.index_dir, self._take_shard_name(commit), np.ascontiguousarray(embeddings[keep]),
                                entries, 0, dim)
            self._delay_for_tests()
            self._commit(commit, self._reader.shards + [shard], entries)
            self._compact()
        return len(keep)

    @staticmethod
    def _delay_for_tests() -> None:
        delay = os.environ.get(COMMIT_DELAY_ENV)
        if delay:
            time.sleep(float(delay))

    @staticmethod
    def _take_shard_name(commit: dict) -> str:
        number = int(commit["next_shard"])
        commit["next_shard"] = number + 1
        return f"{number:06d}"

    def redact(self, identity: str, reason: str, examiner: str | None = None) -> dict:
        """Commit a redaction of ``identity`` (``handclip.gallery.redaction``): no row is removed; returns
        the redaction as committed. An identity that is not enrolled, or already redacted, is refused."""
        reason = check_reason(reason)
        with self._locked():
            rows = self._reader.rows_of_identity.get(str(identity))
            if rows is None:
                raise GalleryError(f"identity {str(identity)[:140]!r} is not enrolled in gallery {self.index_dir}")
            if identity in self._reader.redacted:
                raise GalleryError(f"identity {identity[:140]!r} is already redacted in gallery {self.index_dir}")
            redaction = {"identity": identity, "reason": reason, "examiner": examiner, "rows": len(rows)}
            commit = self._reader.commit
            commit[REDACTIONS] = [*self._reader.redactions, redaction]
            self._commit(commit, self._reader.shards)
        return redaction

    def _commit(self, commit: dict, shards: list[Shard], added: list[dict] = ()) -> None:
        """Write commit.json listing ``shards`` (the commit point) and move to its reader. Redactions
        are carried from ``commit`` (every later commit keeps them)."""
        redactions = commit.get(REDACTIONS) or []
        commit = {"uid": self._reader.uid, "generation": self._reader.generation + 1,
                  "rows": sum(s.rows for s in shards), "next_shard": commit["next_shard"],
                  "shards": [s.as_dict() for s in shards], **({REDACTIONS: redactions} if redactions else {})}
        atomic_write_json(self.index_dir / COMMIT_FILE, commit)
        self._reader = self._reader.after_commit(commit, shards, added)

    def _compact(self) -> None:
        shards = self._reader.shards
        while len(shards) >= COMPACT_FANOUT:
            tail = shards[-COMPACT_FANOUT:]
            level = tail[0].level
            rows = sum(s.rows for s in tail)
            if any(s.level != level for s in tail) or rows > MAX_SHARD_ROWS:
                return
            self._merge(len(shards) - COMPACT_FANOUT, level + 1)
            shards = self._reader.shards

    def compact(self) -> None:
        """Merge every shard into one file (enrolment already merges small shards as it goes)."""
        with self._locked():
            self._merge(0)

    def _merge(self, first: int, level: int | None = None) -> None:
        """Merge shards ``first..`` into one: write the new shard, commit, then delete the old files.

        A kill before the commit leaves orphans that the next writer deletes; a kill after it leaves
        old files no commit refers to, deleted the same way. Readers that opened the older commit keep
        reading the deleted files through the descriptors they hold (``shards.PinnedShard``).
        """
        reader = self._reader
        shards = reader.shards
        merged = shards[first:]
        if len(merged) < 2:
            return
        start_row = sum(s.rows for s in shards[:first])
        rows = sum(s.rows for s in merged)
        entries = reader.entries(start_row)[:rows]
        level = max(s.level for s in merged) + 1 if level is None else level
        commit = reader.commit
        shard = write_shard(self.index_dir, self._take_shard_name(commit), reader.iter_vectors(start_row), entries,
                            level, reader.dim, rows=rows)
        self._commit(commit, shards[:first] + [shard])
        for old in merged:
            delete_shard(self.index_dir, old)
