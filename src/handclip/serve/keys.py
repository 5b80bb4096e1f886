"""API keys for the web service, kept hashed in ``GALLERY/serve/keys.json``.

A key is ``secrets.token_urlsafe(32)`` (256 random bits); only its SHA-256 is stored, so the file
gives nobody a usable key. A random, unsalted hash is enough here: the key is not a password a person
chose, so there is nothing to guess. Each key has a name (shown as the examiner in audit records and
reports), a set of roles and, once revoked, the time it was revoked. The file is rewritten atomically
under an exclusive lock, so two ``serve-keys`` commands never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from ..atomic import atomic_write_json
from ..errors import GalleryError, HandCLIPError

# search: search, list identities, fetch thumbnails and the case reports the key itself asked for;
# enrol: enrol; review: fetch any key's case report (a supervisor or quality reviewer).
ROLES = ("search", "enrol", "review")
SERVE_DIR = "serve"
KEYS_FILE = "keys.json"
KEYS_FORMAT = "handclip-serve-keys-1"
# handclip.gallery.metadata.GALLERY_FILE, named here rather than imported: the gallery package loads the
# model code (torch, seconds), which managing keys never needs.
GALLERY_MARKER = "gallery.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")  # matched whole (fullmatch): no trailing newline


class KeyFileError(HandCLIPError):
    """The key file is damaged, or a key command was given an unknown name or role."""


@dataclass(frozen=True)
class ApiKey:
    id: str        # first 12 hex digits of the key's SHA-256: safe to show, names the key in logs
    name: str
    roles: tuple[str, ...]
    sha256: str
    created: str
    revoked: str | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["roles"] = list(self.roles)
        return out


def keys_path(index_dir: str | os.PathLike) -> Path:
    return Path(index_dir) / SERVE_DIR / KEYS_FILE


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """The key file of one gallery; cheap to re-read, so the service sees revocations at once."""

    def __init__(self, index_dir: str | os.PathLike):
        self.path = keys_path(index_dir)
        self._cache: tuple[tuple, list[ApiKey]] | None = None

    # ------------------------------------------------------------------ reading
    def _stamp(self) -> tuple:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def keys(self) -> list[ApiKey]:
        stamp = self._stamp()
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        keys = self._read() if stamp else []
        self._cache = (stamp, keys)
        return keys

    def _read(self) -> list[ApiKey]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != KEYS_FORMAT:
                raise ValueError("format")
            return [ApiKey(str(k["id"]), str(k["name"]), tuple(k["roles"]), str(k["sha256"]), str(k["created"]),
                           k.get("revoked")) for k in data["keys"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise KeyFileError(f"API key file {self.path} is damaged; restore it or remove it and add keys again") from None

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The live key whose hash matches ``presented``, else None (compared in constant time)."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for key in self.keys():
            if hmac.compare_digest(key.sha256, digest) and key.revoked is None:
                found = key
        return found

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._cache = None
                keys = list(self.keys())
                yield keys
                atomic_write_json(self.path, {"format": KEYS_FORMAT, "keys": [k.as_dict() for k in keys]})
                self._cache = None
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, name: str, roles) -> tuple[str, ApiKey]:
        """Make a key; returns (the key itself, shown once and never stored, its record)."""
        if not _NAME.fullmatch(name or ""):
            raise KeyFileError(f"key name {name!r} must be 1-64 letters, digits, spaces or ._@- "
                            "and start with a letter or digit")
        roles = tuple(sorted(set(roles)))
        unknown = [r for r in roles if r not in ROLES]
        if not roles or unknown:
            raise KeyFileError(f"unknown role {unknown[0]!r} (choose {', '.join(ROLES)})" if unknown
                            else f"give at least one role ({', '.join(ROLES)})")
        secret = secrets.token_urlsafe(32)
        digest = hash_key(secret)
        record = ApiKey(digest[:12], name, roles, digest, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self._locked() as keys:
            keys.append(record)
        return secret, record

    def revoke(self, name_or_id: str) -> list[ApiKey]:
        """Revoke every live key with this name or id; KeyFileError if there is none."""
        revoked = []
        with self._locked() as keys:
            for i, key in enumerate(keys):
                if key.revoked is None and name_or_id in (key.name, key.id):
                    keys[i] = ApiKey(key.id, key.name, key.roles, key.sha256, key.created,
                                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                    revoked.append(keys[i])
            if not revoked:
                raise KeyFileError(f"no live API key named or with id {name_or_id!r} in {self.path}")
        return revoked


class KeyListing(NamedTuple):
    path: Path  # the key file
    keys: list[ApiKey]


def _gallery_key_store(index_dir: str | os.PathLike) -> KeyStore:
    """The key store of the gallery at ``index_dir``; GalleryError if there is no gallery there."""
    if not (Path(index_dir) / GALLERY_MARKER).exists():
        raise GalleryError(f"{index_dir} is not a gallery (no {GALLERY_MARKER}); enrol images first")
    return KeyStore(index_dir)


def add_api_key(index_dir: str | os.PathLike, name: str, roles) -> tuple[str, ApiKey]:
    """Make a key for the service on a gallery: (the key, to give its holder now: only its hash is kept, its record)."""
    return _gallery_key_store(index_dir).add(name, roles)


def list_api_keys(index_dir: str | os.PathLike) -> KeyListing:
    """The service's keys on a gallery (ids, names, roles, revocation; never the keys) and their file."""
    store = _gallery_key_store(index_dir)
    return KeyListing(store.path, store.keys())


def revoke_api_keys(index_dir: str | os.PathLike, name_or_id: str) -> list[ApiKey]:
    """Revoke every live key of the service on a gallery with this name or id (KeyFileError if none)."""
    return _gallery_key_store(index_dir).revoke(name_or_id)
