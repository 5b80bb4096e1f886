"""A gallery's tamper-evident audit trail: one hash-chained JSON record per enrolment and search.

Files in the gallery folder::

    audit.jsonl        one record per line, only ever appended to (format: ``audit_format``)
    audit.head.json    the newest committed record, the first record, an append in flight (``audit_head``)
    audit.torn         interrupted appends set aside (one JSON line each, the bytes in base64)

Every record holds ``seq`` (1, 2, ...), ``prev_hash`` (the previous record's ``hash``; 64 zeros for
the first) and ``hash``, the SHA-256 of the record's canonical JSON without ``hash``. Editing a record
changes its hash; re-hashing an edited record breaks the next record's ``prev_hash``; removing a record
leaves a gap in ``seq``; removing the newest records leaves the log shorter than the head says.
Whoever rewrites the log *and* its head consistently is caught only against a record hash kept
elsewhere (``verify(expect=...)``: the case report and every search answer print ``SEQ:HASH``) or,
when the laboratory signs its heads, against its public key (``verify(public_key=...)``).

Appending (under an exclusive ``flock`` on audit.jsonl, so concurrent processes queue): the head is
first rewritten to name the record about to be written as *pending*; the record is then written as one
line to an ``O_APPEND`` descriptor and fsynced (it is committed from that moment and only then
returned to the caller); the head is then rewritten to name it as committed. A crash during the write
leaves a *torn tail*: bytes after the last newline, a record nobody was ever given. The next append
moves those bytes to audit.torn, truncates the log back to its last complete line and notes the repair
(size and SHA-256 of the fragment) in the new record. Appends are refused, and nothing is written, when
the head is missing or corrupt while the log holds records, names a record the log no longer holds,
does not cover the log's last record, or when the torn tail is a whole committed record (see
``audit_verify``): an append never builds on a log that lost or gained records outside HandCLIP.
``reanchor`` is the one way on after a lost head, and it leaves a record saying so.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write_json, sha256_file
from .audit_format import GENESIS_HASH, RECORD_FORMAT, AuditError, canonical_json, parse_record, record_hash
from .audit_head import HEAD_FILE, Head, HeadSigner, head_payload, parse_head
from .audit_verify import (AuditProblem, LogState, VerifyResult, chain_problems, verify_files, verify_log,
                           whole_record_in_torn_tail)

__all__ = ["AUDIT_FILE", "HEAD_FILE", "TORN_FILE", "GENESIS_HASH", "RECORD_FORMAT", "AuditError", "AuditLog",
           "AuditProblem", "AuditRef", "VerifyResult", "canonical_json", "file_entry", "record_hash"]

AUDIT_FILE = "audit.jsonl"
TORN_FILE = "audit.torn"
_TAIL_BLOCK = 1 << 16
# Testing hooks: seconds to sleep after writing the first half of a record line (so a test can SIGKILL
# an append mid-record), and after the record is written but before the head names it as committed.
TORN_WRITE_DELAY_ENV = "HANDCLIP_AUDIT_TORN_WRITE_DELAY"
HEAD_WRITE_DELAY_ENV = "HANDCLIP_AUDIT_HEAD_WRITE_DELAY"


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
    """Which record a command wrote: what a case report prints and a service returns. ``anchor``
    (``SEQ:HASH``) is what an examiner keeps to check the log later (``handclip audit verify --expect``)."""

    seq: int
    hash: str
    log: str
    key_id: str | None = None  # the key that signed the head naming this record, if any

    @property
    def anchor(self) -> str:
        return f"{self.seq}:{self.hash}"

    def as_dict(self) -> dict:
        return {"seq": self.seq, "hash": self.hash, "log": self.log, "anchor": self.anchor,
                "signed_by": self.key_id}


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


class AuditLog:
    """The audit trail in ``directory`` (a gallery folder); ``signer`` signs every head it writes."""

    def __init__(self, directory: str | os.PathLike, signer: HeadSigner | None = None):
        self.directory = Path(directory)
        self.path = self.directory / AUDIT_FILE
        self.head_path = self.directory / HEAD_FILE
        self.torn_path = self.directory / TORN_FILE
        self.signer = signer

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

    def read_head(self) -> Head | None:
        """The head, or None if there is none; AuditError if it is corrupt."""
        try:
            return parse_head(json.loads(self.head_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise AuditError(f"audit head {self.head_path} is corrupt; run `handclip audit verify --expect SEQ:HASH` "
                             f"with a record hash kept elsewhere, then `handclip audit reanchor` (nothing was "
                             f"written)") from None

    def _refuse(self, problem: str) -> None:
        raise AuditError(f"audit log {self.path}: {problem}; run `handclip audit verify` (nothing was written)")

    def _check_head(self, head: Head | None, last: dict | None, torn: bytes) -> None:
        """Refuse to append onto a log whose end the head does not vouch for (see the module's rules)."""
        last_seq = last["seq"] if last else 0
        if head is None:
            if last is not None:
                self._refuse(f"{self.head_path.name} is missing, so records cut from the end could not be told")
            return
        if head.seq > last_seq:
            self._refuse(f"the log has lost committed records: {self.head_path.name} names record {head.seq} but "
                         f"the log ends at record {last_seq}; restore {self.path.name} from a backup")
        covered = head.seq == last_seq and (not last or head.hash == last["hash"])
        finishing = head.seq == last_seq - 1 and head.pending == (last_seq, last["hash"])
        if not (covered or finishing):
            self._refuse(f"its last record {last_seq} is not the one {self.head_path.name} names (record {head.seq})")
        whole = whole_record_in_torn_tail(torn, last) if torn else None
        if whole is not None and head.pending != (whole["seq"], whole["hash"]):
            self._refuse(f"record {whole['seq']} at its end lacks its final newline: a committed record was cut, "
                         f"not an interrupted append")

    def _first_hash(self, head: Head | None, last: dict | None) -> str | None:
        if head is not None and head.first_hash is not None:
            return head.first_hash
        if last is None:
            return None
        with open(self.path, "rb") as handle:
            return parse_record(handle.readline().rstrip(b"\n"))["hash"]

    def _write_head(self, seq: int, digest: str, first_hash: str | None, pending: tuple[int, str] | None) -> None:
        payload = head_payload(seq, digest, first_hash, pending)
        atomic_write_json(self.head_path, self.signer.sign(payload) if self.signer else {**payload, "signature": None})

    def _set_aside(self, torn: bytes, offset: int) -> dict:
        note = {"offset": offset, "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
        line = json.dumps({**note, "time": utc_now(), "data_base64": base64.b64encode(torn).decode("ascii")})
        with open(self.torn_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return {**note, "set_aside_in": TORN_FILE}

    def _last(self, line: bytes | None) -> dict | None:
        try:
            return parse_record(line) if line is not None else None
        except ValueError:
            raise AuditError(f"audit log {self.path}: its last record is corrupt; run `handclip audit verify` "
                             f"(nothing was written)") from None

    def append(self, record: dict, *, _reanchor: str | None = None) -> AuditRef:
        """Chain ``record`` onto the log and commit it durably; returns its seq and hash."""
        with self._locked(exclusive=True) as handle:
            line, end, torn = _scan_tail(handle)
            last = self._last(line)
            head = None if _reanchor is not None else self.read_head()
            if _reanchor is None:
                self._check_head(head, last, torn)
            first_hash = self._first_hash(head, last)
            full = {"format": RECORD_FORMAT, **record, "seq": (last["seq"] + 1) if last else 1,
                    "prev_hash": last["hash"] if last else GENESIS_HASH, "time": utc_now(), "os_user": os_user(),
                    "software": software_versions()}
            if self.signer is not None:
                full["signing_key"] = self.signer.key_id
            if _reanchor is not None:
                full["reanchored"] = _reanchor
            if torn:
                full["torn_tail_set_aside"] = self._set_aside(torn, end)
                os.ftruncate(handle.fileno(), end)
                os.fsync(handle.fileno())
            full["hash"] = record_hash(full)
            first_hash = first_hash or full["hash"]
            self._write_head(last["seq"] if last else 0, last["hash"] if last else GENESIS_HASH, first_hash,
                             (full["seq"], full["hash"]))
            self._write_line(handle, canonical_json(full) + b"\n", end)
            self._delay(HEAD_WRITE_DELAY_ENV)
            self._write_head(full["seq"], full["hash"], first_hash, None)
        return AuditRef(full["seq"], full["hash"], str(self.path.resolve()), self.signer.key_id if self.signer else None)

    def reanchor(self, reason: str) -> AuditRef:
        """Write a new head after the old one was lost or damaged, through a record that says so.

        Refused unless the head is missing or corrupt and the chain itself verifies: records cut from
        the end before this point can then be found only against a record hash kept elsewhere, which
        ``verify`` says in a note whenever it meets this record.
        """
        try:
            head = self.read_head()
        except AuditError:
            head, was = None, "corrupt"
        else:
            was = "missing"
        if head is not None:
            raise AuditError(f"{self.head_path} is intact; there is nothing to re-anchor")
        lines, torn = self._read_all()
        problems = chain_problems(LogState(self.path.name, self.head_path.name, lines, torn, None))
        if problems or not lines:
            first = problems[0].message if problems else "it holds no records"
            raise AuditError(f"audit log {self.path} cannot be re-anchored: {first}")
        return self.append({"command": "reanchor", "reason": str(reason)[:500], "head_was": was}, _reanchor=was)

    @staticmethod
    def _delay(variable: str) -> None:
        delay = os.environ.get(variable)
        if delay:
            time.sleep(float(delay))

    def _write_line(self, handle, data: bytes, end: int) -> None:
        fd = handle.fileno()
        try:
            view = memoryview(data)
            if os.environ.get(TORN_WRITE_DELAY_ENV):
                half = len(view) // 2
                os.write(fd, view[:half])
                os.fsync(fd)
                self._delay(TORN_WRITE_DELAY_ENV)
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
                out.append(parse_record(line))
            except ValueError as reason:
                raise AuditError(f"audit log {self.path} line {number} is not a valid record ({reason}); "
                                 f"run `handclip audit verify`") from None
        return out

    def readable_records(self) -> list[dict]:
        """The records that parse, oldest first; damaged lines are left out (``verify`` names them)."""
        out = []
        for line in self._read_all()[0]:
            try:
                out.append(parse_record(line))
            except ValueError:
                continue
        return out

    def state(self) -> LogState:
        """The log's lines, torn tail and head as verify reads them."""
        lines, torn = self._read_all()
        try:
            head, error = self.read_head(), None
        except AuditError as exc:
            head, error = None, str(exc)
        return LogState(self.path.name, self.head_path.name, lines, torn, head, error)

    def verify(self, check_files: bool = True, *, expect=(), public_key: bytes | None = None) -> VerifyResult:
        """Check the chain, the head, its signature, every ``expect`` (seq, hash) anchor and
        (``check_files``) every file hash the records hold; see ``audit_verify`` for the rules.

        Problems are listed in log order, so the first one names the first record or file that was
        altered or removed.
        """
        result, chain = verify_log(self.state(), expect=expect, public_key=public_key)
        result.log = str(self.path)
        for record in chain.records.values():
            if record.get("reanchored"):
                result.notes.append(f"record {record['seq']} re-anchored the log after its head was "
                                    f"{record['reanchored']}: records cut from the end before it can be found only "
                                    f"against a record hash kept elsewhere (--expect)")
        if check_files:
            verify_files(result, chain.files)
        return result
