"""The head of an audit log (``audit.head.json``) and its optional Ed25519 signature.

The head names the newest committed record (``seq``, ``hash``) and the log's first record
(``first_hash``), so a log replaced wholesale no longer matches it. An append writes the head twice:
first naming the record about to be written as ``pending``, then, once that record is on disk, naming
it as committed. A crash between the two leaves a head whose ``pending`` record is the log's last one
(or is missing from it): an interrupted append, told apart from a record added, edited or cut by hand,
which no head names.

A head kept only beside the log proves little: whoever can rewrite the log can rewrite the head. It
becomes evidence when it is kept elsewhere, as Certificate Transparency's signed tree heads are: the
case report and every search answer print the record's ``SEQ:HASH`` for ``handclip audit verify
--expect``, and a laboratory may sign every head with an Ed25519 key kept outside the gallery (the
``HANDCLIP_AUDIT_SIGNING_KEY`` file), so that a head it publishes can be checked with its public key
and a head written without that key is refused by ``verify --public-key``.

Signed bytes: ``handclip-audit-head-1`` and a newline, then the head's canonical JSON without its
``signature``. ``signature`` is ``{"algorithm": "ed25519", "key_id", "public_key", "value"}`` (key and
signature in base64; ``key_id`` the first 16 hex digits of the SHA-256 of the raw public key).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .audit_format import AuditError, canonical_json, is_hash

HEAD_FILE = "audit.head.json"
HEAD_FORMAT = "handclip-audit-head-1"
SIGNING_KEY_ENV = "HANDCLIP_AUDIT_SIGNING_KEY"
_DOMAIN = HEAD_FORMAT.encode("ascii") + b"\n"


@dataclass(frozen=True)
class Head:
    """A parsed head: the newest committed record, the first record, an append in flight, the signature."""

    seq: int
    hash: str
    first_hash: str | None = None
    pending: tuple[int, str] | None = None
    signature: dict | None = None
    legacy: bool = False  # the older {seq, hash} head, written before heads had a format

    @property
    def key_id(self) -> str | None:
        return self.signature.get("key_id") if self.signature else None

    def payload(self) -> dict:
        return head_payload(self.seq, self.hash, self.first_hash, self.pending)


def head_payload(seq: int, digest: str, first_hash: str | None, pending: tuple[int, str] | None) -> dict:
    return {"format": HEAD_FORMAT, "seq": int(seq), "hash": digest, "first_hash": first_hash,
            "pending": {"seq": pending[0], "hash": pending[1]} if pending else None}


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_head(data) -> Head:
    """A head file's JSON as a Head; ValueError if it is not one."""
    if not isinstance(data, dict) or not _int(data.get("seq")) or data["seq"] < 0 or not is_hash(data.get("hash")):
        raise ValueError("not a head")
    if "format" not in data and set(data) == {"seq", "hash"}:
        return Head(data["seq"], data["hash"], legacy=True)
    if data.get("format") != HEAD_FORMAT or set(data) - {"format", "seq", "hash", "first_hash", "pending", "signature"}:
        raise ValueError("unknown head format")
    first, pending, signature = data.get("first_hash"), data.get("pending"), data.get("signature")
    if first is not None and not is_hash(first):
        raise ValueError("first_hash")
    if pending is not None:
        if not (isinstance(pending, dict) and set(pending) == {"seq", "hash"} and _int(pending["seq"])
                and pending["seq"] == data["seq"] + 1 and is_hash(pending["hash"])):
            raise ValueError("pending")
        pending = (pending["seq"], pending["hash"])
    if signature is not None and not (isinstance(signature, dict) and all(
            isinstance(signature.get(k), str) for k in ("algorithm", "key_id", "public_key", "value"))):
        raise ValueError("signature")
    return Head(data["seq"], data["hash"], first, pending, signature)


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


class HeadSigner:
    """An Ed25519 private key that signs every head the log writes."""

    def __init__(self, private_key, source: str = "key"):
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        self.source = source
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_raw = raw
        self.key_id = key_id(raw)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadSigner":
        """The private key in ``path`` (PEM, PKCS#8, unencrypted): AuditError naming the file otherwise."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = Path(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise AuditError(f"cannot read the audit signing key {path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise AuditError(f"audit signing key {path} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditError(f"audit signing key {path} is not an Ed25519 key (make one with "
                             f"`handclip audit keygen --out FILE`)")
        return cls(key, str(path))

    def sign(self, payload: dict) -> dict:
        value = self._key.sign(_DOMAIN + canonical_json(payload))
        return {**payload, "signature": {"algorithm": "ed25519", "key_id": self.key_id,
                                         "public_key": base64.b64encode(self.public_raw).decode("ascii"),
                                         "value": base64.b64encode(value).decode("ascii")}}


def signature_problem(head: Head, public_raw: bytes | None = None) -> str | None:
    """Why the head's signature does not hold (None when it does); with ``public_raw`` the head must be
    signed by that key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    signature = head.signature
    if signature is None:
        return "is not signed" if public_raw is not None else None
    try:
        raw = base64.b64decode(signature["public_key"], validate=True)
        value = base64.b64decode(signature["value"], validate=True)
        if signature["algorithm"] != "ed25519" or signature["key_id"] != key_id(raw):
            return "has a signature of an unknown kind or key"
        Ed25519PublicKey.from_public_bytes(raw).verify(value, _DOMAIN + canonical_json(head.payload()))
    except (ValueError, InvalidSignature):
        return "has a signature that does not match its content"
    if public_raw is not None and raw != public_raw:
        return f"is signed by key {signature['key_id']}, not by the key given ({key_id(public_raw)})"
    return None


def load_public_key(path: str | os.PathLike) -> bytes:
    """The raw Ed25519 public key in ``path`` (PEM), or the public half of a private key file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read public key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = HeadSigner.load(path)._key.public_key() if b"PRIVATE KEY" in data else None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 public key in PEM (the .pub file `handclip audit keygen` wrote)")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key(out: str | os.PathLike) -> tuple[Path, Path, str]:
    """A new Ed25519 key pair: the private key in ``out`` (mode 0600, refused if it exists) and the public
    key in ``out`` + ``.pub``; returns both paths and the key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..atomic import atomic_write_bytes

    out = Path(out)
    public = out.with_name(out.name + ".pub")
    if out.exists() or public.exists():
        raise AuditError(f"{out if out.exists() else public} already exists; a signing key is never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise AuditError(f"cannot write signing key {out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
        handle.flush()
        os.fsync(handle.fileno())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(public, public_pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return out, public, key_id(raw)


def signer_from_environment(gallery_dir: str | os.PathLike) -> HeadSigner | None:
    """The signer named by ``HANDCLIP_AUDIT_SIGNING_KEY``, if set (see ``check_key_location``)."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if not path:
        return None
    check_key_location(path, gallery_dir)
    return HeadSigner.load(path)


def check_key_location(key_path: str | os.PathLike, gallery_dir: str | os.PathLike) -> None:
    """Refuse a signing key kept inside the gallery folder: whoever can edit the gallery could re-sign it."""
    key, gallery = Path(key_path).resolve(), Path(gallery_dir).resolve()
    if key == gallery or gallery in key.parents:
        raise AuditError(f"audit signing key {key_path} is inside the gallery folder {gallery_dir}; keep it "
                         f"elsewhere (whoever can edit the gallery could otherwise re-sign an edited log)")
