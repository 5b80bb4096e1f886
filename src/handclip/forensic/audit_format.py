"""The audit record format: canonical JSON, the record hash, and the schema every record is read against.

A record is one JSON object per line of ``audit.jsonl``. Its envelope is fixed: ``format``
("handclip-audit-1"), ``seq`` (1, 2, ...), ``prev_hash`` and ``hash`` (64 lowercase hex digits),
``time``, ``command`` and ``files`` (each ``{"role", "path", "sha256"}``, the path absolute); the rest
is the command's own content. ``hash`` is the SHA-256 of the record's canonical JSON (sorted keys, no
spaces, UTF-8, no NaN) with ``hash`` itself left out, so every other field, ``files`` included, is
covered by it. A line that is not such an object is refused when read, never interpreted: a record
whose ``seq`` is ``true``, a record that is a JSON list, or a file entry whose path is not a string
are all named as damaged records.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from ..errors import HandCLIPError

RECORD_FORMAT = "handclip-audit-1"
GENESIS_HASH = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class AuditError(HandCLIPError):
    """The audit log is damaged or cannot be written; nothing was appended."""


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def record_hash(record: dict) -> str:
    """SHA-256 of a record's canonical JSON, its own ``hash`` field left out."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def is_hash(value) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


class FileEntry(BaseModel):
    """A file a record relies on, with its SHA-256 at the time."""

    model_config = ConfigDict(strict=True, extra="forbid")
    role: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    sha256: Hex64

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if "\0" in value or not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path without NUL")
        return value


class RecordEnvelope(BaseModel):
    """The fields every record has, whatever its command."""

    model_config = ConfigDict(strict=True, extra="allow")
    format: Literal["handclip-audit-1"]
    seq: int = Field(ge=1)
    prev_hash: Hex64
    hash: Hex64
    time: str
    command: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    files: list[FileEntry] = []


def first_error(exc: ValidationError) -> str:
    """A pydantic error as one short phrase: ``files.0.path: must be an absolute path``."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ())) or "record"
    return f"{where}: {error.get('msg', 'invalid')}"[:200]


def parse_record(line: bytes) -> dict:
    """The record on ``line``, checked against the envelope; ValueError saying what is wrong."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    try:
        RecordEnvelope.model_validate(record)
    except ValidationError as exc:
        raise ValueError(first_error(exc)) from None
    return record


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (a record number and its 64-hex-digit hash, as a report prints it) as (seq, hash)."""
    seq, _, digest = str(text).strip().partition(":")
    if not (seq.isdigit() and int(seq) >= 1 and is_hash(digest.lower())):
        raise AuditError(f"--expect {str(text)[:80]!r} is not SEQ:HASH (a record number, a colon and the "
                         f"record's 64-hex-digit SHA-256, as the case report prints it)")
    return int(seq), digest.lower()
