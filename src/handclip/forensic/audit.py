"""A gallery's tamper-evident audit trail: one hash-chained JSON record per enrolment and search.

Files in the gallery folder::

    audit.jsonl        one record per line, only ever appended to
    audit.head.json    sequence number and hash of the newest committed record
    audit.torn         interrupted appends set aside (one JSON line each, the bytes in base64)

Every record holds ``seq`` (1, 2, ...), ``prev_hash`` (the previous record's ``hash``; 64 zeros for
the first) and ``hash``, the SHA-256 of the record's canonical JSON without ``hash`` (sorted keys,
no spaces, UTF-8). Editing a record changes its hash; re-hashing an edited record breaks the next
record's ``prev_hash``; removing a record leaves a gap in ``seq``; removing the newest records leaves
the log shorter than ``audit.head.json`` says. Whoever rewrites the tail *and* the head consistently
can only be caught against a record hash kept elsewhere, which is why every search returns its
record's seq and hash and the case report prints them.

Appending (under an exclusive ``flock`` on audit.jsonl, so concurrent processes queue): the record is
written as one line to an ``O_APPEND`` descriptor and fsynced; it is committed from that moment and
only then returned to the caller; audit.head.json is then replaced atomically. A crash during the
write leaves a *torn tail*: bytes after the last newline, a record nobody was ever given. The next
append moves those bytes to audit.torn, truncates the log back to its last complete line and notes
the repair (size and SHA-256 of the fragment) in the new record, so the chain itself says what was
set aside; ``verify`` reports a torn tail without failing. If the head names a record the log no
longer holds, committed records were lost: appends are refused and nothing is written.

Records list every file they rely on under ``files`` (role, path, SHA-256 at the time): query photos,
the checkpoint, the calibration file, enrolled images. ``verify`` re-hashes each of them.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import getpass
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write_json, sha256_file
from ..errors import HandCLIPError

AUDIT_FILE = "audit.jsonl"
HEAD_FILE = "audit.head.json"
TORN_FILE = "audit.torn"
GENESIS_HASH = "0" * 64
RECORD_FORMAT = "handclip-audit-1"
_TAIL_BLOCK = 1 << 16
# Testing hook: seconds to sleep after writing the first half of a record line, so a test can SIGKILL
# an append mid-record and check the torn tail is handled.
TORN_WRITE_DELAY_ENV = "HANDCLIP_AUDIT_TORN_WRITE_DELAY"


class AuditError(HandCLIPError):
    """The audit log is damaged or cannot be written; nothing was appended."""


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def record_hash(record: dict) -> str:
    """SHA-256 of a record's canonical JSON, its own ``hash`` field left out."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
    from importlib import metadata

    from .. import __version__

    versions = {"handclip": __version__, "python": platform.python_version()}
    for package in ("torch", "open_clip_torch", "faiss-cpu", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tuple(versions.items())


def software_versions() -> dict:
    return dict(_versions())


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return f"uid {os.getuid()}"


def utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def file_entry(role: str, path: str | os.PathLike, sha256: str | None = None) -> dict:
    """A file a record relies on; hashed now unless its hash is already known."""
    return {"role": role, "path": str(Path(path).resolve()), "sha256": sha256 or sha256_file(path)}


@dataclass(frozen=True)
class AuditRef:
    """Which record a command wrote: what a case report prints and a service returns."""

    seq: int
    hash: str
    log: str

    def as_dict(self) -> dict:
        return {"seq": self.seq, "hash": self.hash, "log": self.log}


@dataclass
class AuditProblem:
    message: str
    record: int | None = None
    path: str | None = None


@dataclass
class VerifyResult:
    log: str
    records: int = 0
    files_checked: int = 0
    problems: list[AuditProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _scan_tail(handle) -> tuple[bytes | None, int, bytes]:
    """(last complete line or None, offset just past it, torn bytes after it), reading backwards."""
    handle.seek(0, os.SEEK_END)
    pos = handle.tell()
    buf = b""
    while True:
        last_nl = buf.rfind(b"\n")
        if last_nl >= 0:
            prev_nl = buf.rfind(b"\n", 0, last_nl)
            if prev_nl >= 0 or pos == 0:
                return buf[prev_nl + 1:last_nl], pos + last_nl + 1, buf[last_nl + 1:]
        elif pos == 0:
            return None, 0, buf
        start = max(0, pos - _TAIL_BLOCK)
        handle.seek(start)
        buf = handle.read(pos - start) + buf
        pos = start


def _parse(line: bytes) -> dict:
    record = json.loads(line.decode("utf-8"))
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        raise ValueError("not a record")
    return record


class AuditLog:
    """The audit trail in ``directory`` (a gallery folder)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / AUDIT_FILE
        self.head_path = self.directory / HEAD_FILE
        self.torn_path = self.directory / TORN_FILE

    def exists(self) -> bool:
        return self.path.exists() or self.head_path.exists()

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator:
        import fcntl

        flags = (os.O_RDWR | os.O_CREAT | os.O_APPEND) if exclusive else os.O_RDONLY
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "r+b" if exclusive else "rb", buffering=0) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_head(self) -> dict | None:
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)):
                raise ValueError
            return head
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise AuditError(f"audit head {self.head_path} is corrupt; run `handclip audit verify`, and if the "
                             f"log itself verifies, remove {self.head_path.name} to go on (the next record notes it)") from None

    def _check_head(self, head: dict | None, last: dict | None) -> None:
        last_seq = last["seq"] if last else 0
        if head is None:
            return
        if head["seq"] > last_seq or (head["seq"] == last_seq and last and head["hash"] != last.get("hash")):
            raise AuditError(f"audit log {self.path} has lost committed records: {self.head_path.name} names record "
                             f"{head['seq']} but the log ends at record {last_seq}; restore {self.path.name} from a "
                             f"backup (nothing was written)")

    def _set_aside(self, torn: bytes, offset: int) -> dict:
        note = {"offset": offset, "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
        line = json.dumps({**note, "time": utc_now(), "data_base64": base64.b64encode(torn).decode("ascii")})
        with open(self.torn_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return {**note, "set_aside_in": TORN_FILE}

    def append(self, record: dict) -> AuditRef:
        """Chain ``record`` onto the log and commit it durably; returns its seq and hash."""
        with self._locked(exclusive=True) as handle:
            line, end, torn = _scan_tail(handle)
            try:
                last = _parse(line) if line is not None else None
            except ValueError:
                raise AuditError(f"audit log {self.path}: its last record is corrupt; run `handclip audit verify` "
                                 f"(nothing was written)") from None
            head = self._read_head()
            self._check_head(head, last)
            full = {"format": RECORD_FORMAT, **record, "seq": (last["seq"] + 1) if last else 1,
                    "prev_hash": last.get("hash") if last else GENESIS_HASH, "time": utc_now(), "os_user": os_user(),
                    "software": software_versions()}
            if torn:
                full["torn_tail_set_aside"] = self._set_aside(torn, end)
                os.ftruncate(handle.fileno(), end)
                os.fsync(handle.fileno())
            if head is None and last is not None:
                full["head_was_missing"] = True
            full["hash"] = record_hash(full)
            self._write_line(handle, canonical_json(full) + b"\n", end)
            atomic_write_json(self.head_path, {"seq": full["seq"], "hash": full["hash"]})
        return AuditRef(full["seq"], full["hash"], str(self.path.resolve()))

    def _write_line(self, handle, data: bytes, end: int) -> None:
        fd = handle.fileno()
        delay = os.environ.get(TORN_WRITE_DELAY_ENV)
        try:
            view = memoryview(data)
            if delay:
                half = len(view) // 2
                os.write(fd, view[:half])
                os.fsync(fd)
                time.sleep(float(delay))
                view = view[half:]
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)  # never leave a torn record behind on purpose
            reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror
            raise AuditError(f"cannot append to audit log {self.path}: {reason} (nothing was written)") from None

    # ------------------------------------------------------------------ reading
    def _read_all(self) -> tuple[list[bytes], bytes]:
        if not self.path.exists():
            return [], b""
        with self._locked(exclusive=False) as handle:
            data = handle.read()
        *lines, torn = data.split(b"\n")
        return lines, torn

    def records(self) -> list[dict]:
        """Every committed record, oldest first (a corrupt line raises AuditError naming it)."""
        lines, _ = self._read_all()
        out = []
        for number, line in enumerate(lines, 1):
            try:
                out.append(_parse(line))
            except ValueError:
                raise AuditError(f"audit log {self.path} line {number} is not a valid record; "
                                 f"run `handclip audit verify`") from None
        return out

    def verify(self, check_files: bool = True) -> VerifyResult:
        """Check the chain, the head and (``check_files``) every file hash the records hold.

        Problems are listed in log order, so the first one names the first record or file that was
        altered or removed.
        """
        result = VerifyResult(log=str(self.path))
        lines, torn = self._read_all()
        if not lines and not torn and not self.head_path.exists():
            result.notes.append(f"{self.path} holds no records yet")
            return result
        problems = result.problems
        expected_seq, prev_hash, last = 1, GENESIS_HASH, None
        files: dict[tuple[str, str], tuple[int, str]] = {}
        for number, line in enumerate(lines, 1):
            try:
                record = _parse(line)
            except ValueError:
                problems.append(AuditProblem(f"line {number} of {self.path.name} is not a valid record "
                                             f"(record {expected_seq} was altered or damaged)", expected_seq))
                expected_seq, prev_hash = expected_seq + 1, None
                continue
            seq = record["seq"]
            if record.get("hash") != record_hash(record):
                problems.append(AuditProblem(f"record {seq} was altered: its content no longer matches its hash", seq))
            if seq > expected_seq:
                gap = f"record {expected_seq}" if seq == expected_seq + 1 else f"records {expected_seq}-{seq - 1}"
                problems.append(AuditProblem(f"{gap} removed: the log goes from record {expected_seq - 1} "
                                             f"to record {seq}", expected_seq))
            elif seq < expected_seq:
                problems.append(AuditProblem(f"record {seq} appears again after record {expected_seq - 1} "
                                             f"(inserted or duplicated)", seq))
            elif prev_hash is not None and record.get("prev_hash") != prev_hash:
                problems.append(AuditProblem(f"record {seq - 1} was altered or replaced: record {seq} "
                                             f"does not chain to it", seq - 1))
            for entry in record.get("files") or []:
                files.setdefault((entry.get("path"), entry.get("sha256")), (seq, entry.get("role", "file")))
            expected_seq, prev_hash, last = max(expected_seq, seq + 1), record.get("hash"), record
        result.records = len(lines)
        self._verify_head(result, last)
        if torn:
            result.notes.append(f"{self.path.name} ends with {len(torn)} bytes of an interrupted append (no "
                                f"committed record); the next append sets them aside in {TORN_FILE}")
        if check_files:
            self._verify_files(result, files)
        problems.sort(key=lambda p: (p.record if p.record is not None else 1 << 62))
        return result

    def _verify_head(self, result: VerifyResult, last: dict | None) -> None:
        try:
            head = self._read_head()
        except AuditError as exc:
            result.problems.append(AuditProblem(str(exc)))
            return
        last_seq = last["seq"] if last else 0
        if head is None:
            if last is not None:
                result.notes.append(f"{self.head_path.name} is missing; the newest records cannot be checked "
                                    f"for removal (the next append restores it)")
            return
        if head["seq"] > last_seq:
            gap = f"record {head['seq']}" if head["seq"] == last_seq + 1 else f"records {last_seq + 1}-{head['seq']}"
            result.problems.append(AuditProblem(f"{gap} removed from the end: {self.head_path.name} names record "
                                                f"{head['seq']} but the log ends at record {last_seq}", last_seq + 1))
        elif head["seq"] == last_seq and last is not None and head["hash"] != last.get("hash"):
            result.problems.append(AuditProblem(f"record {last_seq} was replaced: its hash differs from the one "
                                                f"in {self.head_path.name}", last_seq))
        elif head["seq"] < last_seq - 1:
            result.problems.append(AuditProblem(f"{self.head_path.name} names record {head['seq']} but the log "
                                                f"holds {last_seq}: the head was rolled back", head["seq"]))

    @staticmethod
    def _verify_files(result: VerifyResult, files: dict) -> None:
        current: dict[str, str | None] = {}
        for (path, recorded), (seq, role) in files.items():
            if path not in current:
                try:
                    current[path] = sha256_file(path)
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    current[path] = None
                except OSError as exc:
                    current[path] = f"unreadable ({exc.strerror})"
                result.files_checked += 1
            now = current[path]
            if now is None:
                result.problems.append(AuditProblem(f"{role} file {path} (record {seq}) was removed", seq, path))
            elif now != recorded:
                result.problems.append(AuditProblem(f"{role} file {path} (record {seq}) was changed: SHA-256 "
                                                    f"{recorded[:16]}... recorded, {now[:16]}... now", seq, path))
