"""Redacting an identity: an append-only tombstone that search and identity listings honour.

A gallery never deletes a row (docs/method.md: the gallery is append-only, so every past search can be
re-checked against the rows it saw). Redacting an identity is therefore a new commit whose ``redactions``
list names the identity, the reason, the examiner and how many rows it had; the rows, their shards and
the enrolment records that attribute them stay as they were. A reader excludes a redacted identity's rows
from every search and from ``identities()``; an audit ``redact`` record, written after the commit, names
the same identity, reason and rows, and ``handclip audit verify`` checks the two agree.

A redacted identity cannot be enrolled again (``check_not_redacted``): a tombstone that a later enrolment
silently revived would defeat it. There is no un-redaction; enrol the person under a new identity name if
the redaction was a mistake, and the audit trail shows both steps.

``commit.json``'s list is validated on read like every other field: a hand edit (a malformed entry, a
repeated identity, one that names an identity the gallery does not hold or a row count that does not
match the gallery) is refused with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import GalleryError
from .metadata import MAX_TEXT, is_int

REDACTIONS = "redactions"  # the commit.json key
MAX_REASON = 2000  # characters of a redaction's reason


def check_reason(reason) -> str:
    """A redaction's reason: non-empty text up to MAX_REASON characters (GalleryError otherwise)."""
    text = reason.strip() if isinstance(reason, str) else ""
    if not text or len(text) > MAX_REASON or "\0" in text:
        raise GalleryError(f"a redaction needs a reason of 1-{MAX_REASON} characters (--reason), "
                           f"got {str(reason)[:60]!r}")
    return text


def parse_redactions(commit: dict, path: Path, rows_of_identity) -> tuple[dict, ...]:
    """The ``redactions`` of commit.json, each checked against the generation's rows (GalleryError naming
    ``path`` otherwise); empty for a commit without redactions."""
    def corrupt(why: str) -> GalleryError:
        return GalleryError(f"gallery commit file {path} is corrupt ({why})")

    listed = commit.get(REDACTIONS, [])
    if not isinstance(listed, list):
        raise corrupt("redactions must be a list")
    out, seen = [], set()
    for item in listed:
        if not isinstance(item, dict) or set(item) != {"identity", "reason", "examiner", "rows"}:
            raise corrupt("each redaction must hold exactly identity, reason, examiner and rows")
        identity, reason, examiner, rows = item["identity"], item["reason"], item["examiner"], item["rows"]
        if not isinstance(identity, str) or not 0 < len(identity) <= MAX_TEXT or identity in seen:
            raise corrupt(f"redaction identity {str(identity)[:60]!r} is malformed or repeated")
        if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON:
            raise corrupt(f"redaction of {identity[:60]!r} has a malformed reason")
        if examiner is not None and (not isinstance(examiner, str) or len(examiner) > MAX_TEXT):
            raise corrupt(f"redaction of {identity[:60]!r} has a malformed examiner")
        held = len(rows_of_identity.get(identity, ()))
        if not is_int(rows) or rows != held or held == 0:
            raise corrupt(f"redaction of {identity[:60]!r} names {str(rows)[:20]} row(s), the gallery holds {held}")
        seen.add(identity)
        out.append(dict(item))
    return tuple(out)


def check_not_redacted(identities: Iterable[str], redacted: frozenset, index_dir) -> None:
    """Refuse to enrol under a redacted identity (one GalleryError naming the first)."""
    hit = next((i for i in identities if i in redacted), None)
    if hit is not None:
        raise GalleryError(f"identity {hit[:140]!r} was redacted from gallery {index_dir}; a redacted identity is "
                           f"never enrolled again (enrol the person under a new identity name)")
