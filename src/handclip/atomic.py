"""Crash-safe file writing and content hashing.

Every file HandCLIP produces (manifests, checkpoints, reports, caches, gallery indexes) is written
to a temporary file in the same directory, fsynced, then renamed over the target, so a crash or a
full disk leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import HandCLIPError


class WriteError(HandCLIPError, OSError):
    """A file could not be written (full disk, read-only file system, a file where a folder should be, ...).

    Both a user error (one line, exit 2) and an ``OSError``, so code that carries on without a cache
    on any ``OSError`` still does.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def write_error(exc: OSError, target: Path) -> WriteError:
    """The one-line error for ``exc`` raised while writing ``target`` (naming ``target``, not a temporary file)."""
    if exc.errno == errno.ENOSPC:
        message = f"no space left on device while writing {target}; the previous file was kept"
    elif exc.errno == errno.EROFS:
        message = f"read-only file system: cannot write {target}"
    elif exc.errno == errno.EDQUOT:
        message = f"disk quota exceeded while writing {target}; the previous file was kept"
    elif isinstance(exc, (FileExistsError, NotADirectoryError)):
        message = f"cannot write {target}: a file is in the way of its folder {_blocking(target)}"
    elif isinstance(exc, IsADirectoryError):
        message = f"cannot write {target}: it is a folder"
    else:
        message = f"cannot write {target}: {exc.strerror or exc}"
    error = WriteError(message)
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(target)
    return error


def _blocking(target: Path) -> Path:
    """The first ancestor of ``target`` that exists but is not a folder."""
    for parent in reversed(target.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return target.parent


class _RecordingWriter(io.BufferedWriter):
    """Remembers the first OSError of a write or flush: torch.save turns it into a RuntimeError naming
    its own C++ source line, and the real cause (e.g. a full disk) must still reach the user."""

    failure: OSError | None = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as exc:
            self.failure = self.failure or exc
            raise

    def flush(self):
        try:
            return super().flush()
        except OSError as exc:
            self.failure = self.failure or exc
            raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing")
    target = Path(path)
    if target.is_dir():
        raise write_error(IsADirectoryError(errno.EISDIR, "Is a directory"), target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(exc, target) from None
    tmp = Path(tmp_name)
    raw = None
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        raw = _RecordingWriter(io.FileIO(fd, "wb"))
        handle = raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8", newline="")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except WriteError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, target) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        if raw is not None and raw.failure is not None:
            raise write_error(raw.failure, target) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
