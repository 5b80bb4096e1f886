"""Managing a gallery as whole steps (``handclip gallery``): redact an identity, re-encode a gallery with a
new model.

Redaction (``handclip.gallery.redaction``) goes through an ``ExaminerSession`` opened without a model: a
commit plus its ``redact`` audit record.

Re-embedding: embeddings are model-specific (docs/method.md), so a gallery cannot be searched with another
model; ``reembed_gallery`` enrols every image of an old gallery that is not redacted into a NEW gallery
with the new model. Each image is re-hashed first: one whose file is missing or whose bytes changed since
enrolment is named and left out, never enrolled under its old identity with other content. Both audit
logs link the two galleries: the new gallery's first record (``reembed-from``) names the old gallery's
state and its audit head hash; the old gallery then gets a ``reembed-to`` record naming the new gallery,
its first record and its enrolment record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import sha256_file
from ..errors import HandCLIPError
from ..forensic.audit import AuditRef
from .enrol import EnrolItem
from .metadata import GALLERY_FILE
from .reader import GalleryReader
from .records import GALLERY_STATE
from .session import ExaminerSession


@dataclass
class RedactReport:
    """What ``redact_identity`` did: the identity, how many rows search no longer sees, the audit record."""

    index_dir: Path
    identity: str
    rows: int
    identities_left: int
    audit: AuditRef

    def lines(self) -> list[str]:
        return [f"redacted identity {self.identity!r} in {self.index_dir}: its {self.rows} image(s) stay in the "
                f"gallery but no search or listing shows them; {self.identities_left} identities remain searchable",
                f"audit record {self.audit.seq} ({self.audit.anchor}); keep this anchor to check the log later"]


def redact_identity(index_dir: str | os.PathLike, identity: str, reason: str, *, examiner: str | None = None,
                    arguments: dict | None = None) -> RedactReport:
    """Redact ``identity`` from the gallery at ``index_dir`` (audited; rows are kept, search excludes them)."""
    session = ExaminerSession.open(index_dir, with_model=False, examiner=examiner)
    GalleryReader.open(index_dir)  # a damaged gallery answers before anything is written
    ref = session.redact(identity, reason, arguments=arguments or {"identity": identity, "reason": reason})
    after = GalleryReader.open(index_dir)
    return RedactReport(Path(index_dir), identity, len(after.rows_of_identity[identity]), len(after.identities()), ref)


@dataclass
class ReembedReport:
    """What ``reembed_gallery`` did: the new gallery, what it holds, what was left out, the linking records."""

    source: Path
    out: Path
    images: int
    identities: int
    left_out: list[dict] = field(default_factory=list)  # {"path", "identity", "reason"}
    link_in_new: AuditRef | None = None
    link_in_old: AuditRef | None = None

    def lines(self) -> list[str]:
        lines = [f"left out {e['path']} ({e['identity']}): {e['reason']}" for e in self.left_out[:20]]
        if len(self.left_out) > 20:
            lines.append(f"left out {len(self.left_out) - 20} more image(s)")
        lines.append(f"re-encoded {self.images} image(s) of {self.identities} identities from {self.source} into "
                     f"{self.out} ({len(self.left_out)} left out)")
        lines.append(f"linked: {self.out} record {self.link_in_new.anchor} names {self.source}'s audit head; "
                     f"{self.source} record {self.link_in_old.anchor} names {self.out}")
        return lines


def _reusable(old: GalleryReader) -> tuple[list[EnrolItem], list[dict]]:
    """The old gallery's images to enrol again (not redacted, file unchanged) and those left out, with why."""
    items, left_out, seen = [], [], set()
    redacted = old.redacted
    for entry in old.entries(0):
        if entry["identity"] in redacted or entry["sha256"] in seen:
            continue
        try:
            digest = sha256_file(entry["path"])
        except OSError:
            digest = None
        if digest != entry["sha256"]:
            reason = ("file missing or unreadable" if digest is None
                      else "file changed since enrolment (SHA-256 differs)")
            left_out.append({"path": entry["path"], "identity": entry["identity"], "sha256": entry["sha256"],
                             "reason": reason})
            continue
        seen.add(digest)
        items.append(EnrolItem(entry["path"], entry["identity"], entry.get("aspect")))
    return items, left_out


def _check_out(source: Path, out: Path) -> None:
    if out.resolve() == source.resolve():
        raise HandCLIPError(f"--out {out} is the gallery being re-encoded; give a new folder")
    if (out / GALLERY_FILE).exists() or (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir()):
        raise HandCLIPError(f"--out {out} already exists and is not an empty folder; re-encoding writes a NEW gallery")


def reembed_gallery(index_dir: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                    examiner: str | None = None, device: str | None = "auto", batch_size: int = 64,
                    arguments: dict | None = None, progress: bool = False) -> ReembedReport:
    """Enrol every non-redacted, unchanged image of the gallery at ``index_dir`` into a new gallery ``out``
    with the model of ``checkpoint``; both audit logs link the two (see the module's description)."""
    source, out = Path(index_dir), Path(out)
    old = GalleryReader.open(source)
    _check_out(source, out)
    items, left_out = _reusable(old)
    if not items:
        raise HandCLIPError(f"gallery {source} has no image left to re-encode ({len(left_out)} missing or changed)")
    old_session = ExaminerSession.open(source, with_model=False, examiner=examiner)
    head = old_session.audit_log.read_head()
    arguments = arguments or {"index": str(source), "checkpoint": str(checkpoint), "out": str(out)}
    new = ExaminerSession.open(out, checkpoint, device=device, create=True, examiner=examiner, batch_size=batch_size)
    state = old.commit_state
    old_head = {"seq": head.seq, "hash": head.hash} if head else None
    first = new.audit_log.append({
        "command": "reembed-from", "examiner": examiner, "arguments": arguments,
        "source": {"dir": str(source.resolve()), **{k: state[k] for k in GALLERY_STATE},
                   "fingerprint": old.fingerprint, "audit_head": old_head},
        "planned": len(items), "left_out": left_out})
    summary = new.enrol(items, examiner=examiner, arguments={**arguments, "reembed_from": first.anchor},
                        progress=progress)
    after = GalleryReader.open(out)
    link = old_session.audit_log.append({
        "command": "reembed-to", "examiner": examiner, "arguments": arguments,
        "gallery": {"dir": str(source.resolve()), **{k: state[k] for k in GALLERY_STATE}},
        "target": {"dir": str(out.resolve()), "uid": after.uid, "fingerprint": after.fingerprint,
                   "first_record": first.as_dict(), "enrol_record": summary.audit.as_dict() if summary.audit else None,
                   "images": len(after)},
        "left_out": left_out})
    return ReembedReport(source, out, len(after), len(after.identities()), left_out, first, link)
