"""Checking an audit log: the chain, its head, a torn tail, anchors kept elsewhere, signatures, file hashes.

``verify_log`` reads nothing itself: ``AuditLog.verify`` hands it the log's lines, the bytes after the
last newline and the head, so the rules below are the whole of what "verified" means.

- Every line is a record of the envelope schema (``audit_format``) whose hash matches its content,
  whose ``seq`` follows the previous one and whose ``prev_hash`` is the previous record's hash.
- The head exists once the log holds a record, names the log's first record, and names the last
  record, or the one before it while an append was interrupted at its end (its ``pending`` record is
  then the last one, with that hash). A head set back, a record the head does not cover, a record cut
  from the end: each is a problem naming the record.
- Bytes after the last newline are an interrupted append (a note) unless they parse as a complete,
  correctly chained record that the head does not name as pending: that is a committed record whose
  newline was cut, a removal, and a problem naming it.
- Each ``--expect SEQ:HASH`` (a record hash kept elsewhere: a case report, a published head) must be
  in the log; with ``--public-key`` the head must be signed by that key; a log whose newest record
  was appended with a signing key must have a head signed by that key.
- Files named in records are hashed only when they are regular files no larger than
  ``MAX_HASHED_BYTES``: a device, a FIFO or a huge file is named as unreadable, never read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

from .audit_format import GENESIS_HASH, parse_record, record_hash
from .audit_head import Head, signature_problem

# A recorded file larger than this is not hashed (named as unreadable): a checkpoint is a few GB at most.
MAX_HASHED_BYTES = 16 * 2**30


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
    head: Head | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def anchor(self) -> str | None:
        """``SEQ:HASH`` of the head's record: what to keep elsewhere and give to ``--expect`` later."""
        return f"{self.head.seq}:{self.head.hash}" if self.head is not None and self.head.seq else None


@dataclass
class LogState:
    """What verify reads from disk: the log's complete lines, its torn tail and its head."""

    name: str
    head_name: str
    lines: list[bytes]
    torn: bytes
    head: Head | None
    head_error: str | None = None


class _Chain:
    """The records of one log, read in order, with every problem of the chain itself."""

    def __init__(self, state: LogState, result: VerifyResult):
        self.records: dict[int, dict] = {}
        self.last: dict | None = None
        self.files: dict[tuple[str, str], tuple[int, str]] = {}
        problems = result.problems
        expected_seq, prev_hash = 1, GENESIS_HASH
        for number, line in enumerate(state.lines, 1):
            try:
                record = parse_record(line)
            except ValueError as reason:
                problems.append(AuditProblem(f"line {number} of {state.name} is not a valid record "
                                             f"(record {expected_seq} was altered or damaged: {reason})", expected_seq))
                expected_seq, prev_hash = expected_seq + 1, None
                continue
            seq = record["seq"]
            if record["hash"] != record_hash(record):
                problems.append(AuditProblem(f"record {seq} was altered: its content no longer matches its hash", seq))
            if seq > expected_seq:
                gap = f"record {expected_seq}" if seq == expected_seq + 1 else f"records {expected_seq}-{seq - 1}"
                problems.append(AuditProblem(f"{gap} removed: the log goes from record {expected_seq - 1} "
                                             f"to record {seq}", expected_seq))
            elif seq < expected_seq:
                problems.append(AuditProblem(f"record {seq} appears again after record {expected_seq - 1} "
                                             f"(inserted or duplicated)", seq))
            elif prev_hash is not None and record["prev_hash"] != prev_hash:
                problems.append(AuditProblem(f"record {seq - 1} was altered or replaced: record {seq} "
                                             f"does not chain to it", seq - 1))
            for entry in record.get("files") or []:
                self.files.setdefault((entry["path"], entry["sha256"]), (seq, entry["role"]))
            self.records.setdefault(seq, record)
            expected_seq, prev_hash, self.last = max(expected_seq, seq + 1), record["hash"], record
        result.records = len(state.lines)

    @property
    def last_seq(self) -> int:
        return self.last["seq"] if self.last else 0


def chain_problems(state: LogState) -> list[AuditProblem]:
    """The problems of the chain alone (records and a torn tail), the head left out: what re-anchoring
    a log whose head was lost requires to be empty."""
    result = VerifyResult(log=state.name)
    chain = _Chain(state, result)
    if state.torn and whole_record_in_torn_tail(state.torn, chain.last) is not None:
        result.problems.append(AuditProblem(f"the record at the end of {state.name} lacks its final newline: "
                                            f"restore the newline or the log from a backup first"))
    return result.problems


def verify_log(state: LogState, *, expect=(), public_key: bytes | None = None) -> tuple[VerifyResult, _Chain]:
    """Every check of the log itself (not the files its records name); see the module's rules."""
    result = VerifyResult(log=state.name)
    if not state.lines and not state.torn and state.head is None and state.head_error is None:
        result.notes.append(f"{state.name} holds no records yet")
        return result, _Chain(state, result)
    chain = _Chain(state, result)
    result.head = state.head
    _check_head(state, chain, result)
    _check_torn(state, chain, result)
    _check_signature(state, chain, result, public_key)
    for seq, digest in expect:
        record = chain.records.get(seq)
        if record is None:
            result.problems.append(AuditProblem(f"record {seq} given by --expect is not in the log (it ends at record "
                                                f"{chain.last_seq}): records were removed or the log replaced", seq))
        elif record["hash"] != digest:
            result.problems.append(AuditProblem(f"record {seq} differs from the one given by --expect (hash "
                                                f"{digest[:16]}... expected, {record['hash'][:16]}... in the log): "
                                                f"the log was rewritten", seq))
    result.problems.sort(key=lambda p: (p.record if p.record is not None else 1 << 62))
    return result, chain


def _check_head(state: LogState, chain: _Chain, result: VerifyResult) -> None:
    head, name, problems = state.head, state.head_name, result.problems
    if state.head_error is not None:
        problems.append(AuditProblem(state.head_error))
        return
    last_seq = chain.last_seq
    if head is None:
        problems.append(AuditProblem(f"{name} is missing: the newest records cannot be checked for removal "
                                     f"(check the log against a record hash kept elsewhere with --expect, then "
                                     f"`handclip audit reanchor`)", last_seq or None))
        return
    if head.legacy:
        result.notes.append(f"{name} is in the older format without the first record's hash (the next append "
                            f"rewrites it)")
    first = chain.records.get(1)
    if head.first_hash is not None and first is not None and head.first_hash != first["hash"]:
        problems.append(AuditProblem(f"the log was replaced: its record 1 is not the one {name} was started "
                                     f"with", 1))
    if head.seq > last_seq:
        gap = f"record {head.seq}" if head.seq == last_seq + 1 else f"records {last_seq + 1}-{head.seq}"
        problems.append(AuditProblem(f"{gap} removed from the end: {name} names record {head.seq} but the log "
                                     f"ends at record {last_seq}", last_seq + 1))
        return
    named = chain.records.get(head.seq)
    if head.seq and named is not None and named["hash"] != head.hash:
        problems.append(AuditProblem(f"record {head.seq} was replaced: its hash differs from the one in {name}",
                                     head.seq))
    if head.seq == last_seq:
        if head.pending is not None and not state.torn:  # a torn tail's own note says it
            result.notes.append(f"an append of record {head.pending[0]} was interrupted before its record was "
                                f"written (nobody was given it)")
    elif head.seq == last_seq - 1 and head.pending == (last_seq, chain.last["hash"]):
        result.notes.append(f"record {last_seq} was written but {name} not yet updated (an append interrupted at "
                            f"its end); the next append completes it")
    elif head.seq == last_seq - 1:
        problems.append(AuditProblem(f"record {last_seq} is not covered by {name}, which names record {head.seq}: "
                                     f"it was added or edited after the head was written, or the head was set back",
                                     last_seq))
    else:
        problems.append(AuditProblem(f"{name} names record {head.seq} but the log holds {last_seq}: the head was "
                                     f"set back", head.seq + 1))


def whole_record_in_torn_tail(torn: bytes, last: dict | None) -> dict | None:
    """The record the torn tail holds, if it is a complete record chained onto ``last`` (else None)."""
    try:
        record = parse_record(torn)
    except ValueError:
        return None
    expected = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS_HASH)
    if (record["seq"], record["prev_hash"]) != expected or record["hash"] != record_hash(record):
        return None
    return record


def _check_torn(state: LogState, chain: _Chain, result: VerifyResult) -> None:
    if not state.torn:
        return
    whole = whole_record_in_torn_tail(state.torn, chain.last)
    pending = state.head.pending if state.head is not None else None
    if whole is not None and pending != (whole["seq"], whole["hash"]):
        result.problems.append(AuditProblem(
            f"record {whole['seq']} at the end of {state.name} lacks its final newline: a committed record was cut "
            f"or added by hand, not an interrupted append ({state.head_name} does not name it as pending); restore "
            f"the newline or the log from a backup", whole["seq"]))
        return
    result.notes.append(f"{state.name} ends with {len(state.torn)} bytes of an interrupted append (no committed "
                        f"record); the next append sets them aside")


def _check_signature(state: LogState, chain: _Chain, result: VerifyResult, public_key: bytes | None) -> None:
    head = state.head
    if head is None:
        if public_key is not None:
            result.problems.append(AuditProblem(f"{state.head_name} is missing, so no signature can be checked"))
        return
    why = signature_problem(head, public_key)
    if why is not None:
        result.problems.append(AuditProblem(f"{state.head_name} {why}", head.seq or None))
        return
    signer = (chain.last or {}).get("signing_key")
    if signer and head.key_id != signer:
        result.problems.append(AuditProblem(f"record {chain.last_seq} was appended with signing key {signer} but "
                                            f"{state.head_name} is {'signed by key ' + head.key_id if head.key_id else 'not signed'}",
                                            chain.last_seq))
    elif head.key_id and public_key is None:
        result.notes.append(f"{state.head_name} is signed by key {head.key_id} (Ed25519); give --public-key to check "
                            f"that it is your laboratory's key")


def hash_regular_file(path: str, limit: int = MAX_HASHED_BYTES) -> str | None:
    """SHA-256 of the regular file at ``path``; None if it is missing; ``unreadable (...)`` for anything
    else: a device, FIFO, directory or socket is never read (opening does not block), nor a file over
    ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "unreadable (not a regular file)"
        if info.st_size > limit:
            return f"unreadable (larger than {limit} bytes)"
        digest, remaining = hashlib.sha256(), limit
        while block := handle.read(1 << 20):
            remaining -= len(block)
            if remaining < 0:
                return f"unreadable (larger than {limit} bytes)"
            digest.update(block)
    return digest.hexdigest()


def verify_files(result: VerifyResult, files: dict, limit: int = MAX_HASHED_BYTES) -> None:
    """Re-hash every file the records name; each one changed, removed or unreadable is a problem."""
    current: dict[str, str | None] = {}
    for (path, recorded), (seq, role) in files.items():
        if path not in current:
            current[path] = hash_regular_file(path, limit)
            result.files_checked += 1
        now = current[path]
        if now is None:
            result.problems.append(AuditProblem(f"{role} file {path} (record {seq}) was removed", seq, path))
        elif now.startswith("unreadable"):
            result.problems.append(AuditProblem(f"{role} file {path} (record {seq}) is {now}", seq, path))
        elif now != recorded:
            result.problems.append(AuditProblem(f"{role} file {path} (record {seq}) was changed: SHA-256 "
                                                f"{recorded[:16]}... recorded, {now[:16]}... now", seq, path))
    result.problems.sort(key=lambda p: (p.record if p.record is not None else 1 << 62))
