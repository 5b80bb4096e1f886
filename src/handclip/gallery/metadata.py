"""Reading and checking a gallery's metadata: gallery.json, commit.json and the shard row entries.

Everything read from these files is untrusted (a disk fault, a hand edit, an attacker): each value is
checked for type and range before use, and a shard name must match the gallery's own naming pattern
before it is ever joined to a path, so no name can point outside ``shards/``. Any problem is one
``GalleryError`` naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..aspects import ASPECTS
from ..errors import GalleryError

GALLERY_FILE = "gallery.json"
COMMIT_FILE = "commit.json"
FORMAT_NAME = "handclip-gallery"
FORMAT_VERSION = 1
# Shard names are the zero-padded shard counter: nothing else is ever read, written or deleted in shards/.
SHARD_NAME = re.compile(r"[0-9]{6,12}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# Longest path or identity accepted in a row entry (a safety bound, far above any real file name).
MAX_TEXT = 4096


@dataclass(frozen=True)
class Shard:
    """One committed shard as commit.json lists it: its name, row count, compaction level and file hashes."""

    name: str
    rows: int
    level: int
    vectors_sha256: str
    meta_sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path`` (GalleryError if missing, unreadable, not UTF-8, not JSON, not an object)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GalleryError(f"{what} {path} is missing; the gallery is incomplete or not a HandCLIP gallery") from None
    except OSError as exc:
        raise GalleryError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise GalleryError(f"{what} {path} is corrupt (not UTF-8 text)") from None
    except (ValueError, RecursionError):
        raise GalleryError(f"{what} {path} is corrupt or truncated (not valid JSON)") from None
    if not isinstance(value, dict):
        raise GalleryError(f"{what} {path} is corrupt (expected a JSON object)")
    return value


def check_info(info: dict, path: Path) -> dict:
    """gallery.json's fields, checked (format, version, uid, dim, fingerprint, checkpoint)."""
    if info.get("format") != FORMAT_NAME:
        raise GalleryError(f"{path} is not a HandCLIP gallery file")
    if info.get("version") != FORMAT_VERSION:
        raise GalleryError(f"{path} has gallery format version {str(info.get('version'))[:20]}, "
                           f"this HandCLIP reads version {FORMAT_VERSION}")
    if not is_int(info.get("dim")) or not 0 < info["dim"] <= 1 << 16:
        raise GalleryError(f"{path} is corrupt (dim must be a positive integer)")
    if not isinstance(info.get("fingerprint"), dict):
        raise GalleryError(f"{path} is corrupt (missing or malformed fingerprint)")
    if not isinstance(info.get("uid"), str) or not info["uid"]:
        raise GalleryError(f"{path} is corrupt (missing or malformed uid)")
    if info.get("checkpoint") is not None and not isinstance(info["checkpoint"], str):
        raise GalleryError(f"{path} is corrupt (checkpoint must be a path or null)")
    return info


def shard_number(name: str) -> int:
    return int(name)


def parse_commit(commit: dict, path: Path, uid: str):
    """(generation, shards, next_shard) from commit.json, every field checked.

    Shard names must match SHARD_NAME, be unique and lie below ``next_shard`` (so a new shard can
    never be written over a committed one); row counts must add up.
    """
    def corrupt(why: str) -> GalleryError:
        return GalleryError(f"gallery commit file {path} is corrupt ({why})")

    generation, total, next_shard = commit.get("generation"), commit.get("rows"), commit.get("next_shard")
    if not (is_int(generation) and is_int(total) and is_int(next_shard)) or min(generation, total, next_shard) < 0:
        raise corrupt("generation, rows and next_shard must be non-negative integers")
    if commit.get("uid") != uid:
        raise GalleryError(f"gallery commit file {path} belongs to another gallery (uid mismatch with gallery.json)")
    listed = commit.get("shards")
    if not isinstance(listed, list):
        raise corrupt("shards must be a list")
    shards, names = [], set()
    for item in listed:
        if not isinstance(item, dict):
            raise corrupt("each shard must be an object")
        name, rows, level = item.get("name"), item.get("rows"), item.get("level")
        vectors_sha, meta_sha = item.get("vectors_sha256"), item.get("meta_sha256")
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise corrupt(f"shard name {str(name)[:40]!r} is not a gallery shard name")
        if name in names or shard_number(name) >= next_shard:
            raise corrupt(f"shard name {name} is repeated or not below next_shard")
        if not (is_int(rows) and is_int(level)) or rows < 1 or not 0 <= level <= 64:
            raise corrupt(f"shard {name} has a malformed row count or level")
        if not all(isinstance(h, str) and SHA256.fullmatch(h) for h in (vectors_sha, meta_sha)):
            raise corrupt(f"shard {name} has a malformed SHA-256")
        names.add(name)
        shards.append(Shard(name, rows, level, vectors_sha, meta_sha))
    if sum(s.rows for s in shards) != total:
        raise corrupt("row counts do not add up")
    return generation, shards, next_shard


def parse_rows(data: bytes, path: Path, rows: int) -> list[dict]:
    """A shard's metadata lines as ``{"path", "identity", "sha256"}`` dicts of strings, each checked, with
    ``"aspect"`` (one of ``handclip.aspects.ASPECTS``) on rows enrolled with one (older rows have none)."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise GalleryError(f"gallery metadata file {path} is corrupt (not UTF-8 text)") from None
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != rows:
        raise GalleryError(f"gallery metadata file {path} has {len(lines)} rows, expected {rows}")
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            raise GalleryError(f"gallery metadata file {path}, line {number}: not valid JSON") from None
        if not isinstance(entry, dict):
            raise GalleryError(f"gallery metadata file {path}, line {number}: expected a JSON object")
        values = [entry.get(key) for key in ("path", "identity", "sha256")]
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT and "\0" not in v for v in values):
            raise GalleryError(f"gallery metadata file {path}, line {number}: path, identity and sha256 "
                               f"must be non-empty strings")
        entry_out = {"path": values[0], "identity": values[1], "sha256": values[2]}
        if "aspect" in entry:
            if entry["aspect"] not in ASPECTS:
                raise GalleryError(f"gallery metadata file {path}, line {number}: aspect {str(entry['aspect'])[:40]!r} "
                                   f"is not one of {', '.join(ASPECTS)}")
            entry_out["aspect"] = entry["aspect"]
        entries.append(entry_out)
    return entries
