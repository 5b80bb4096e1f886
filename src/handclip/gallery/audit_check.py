"""A gallery checked against its audit log: the gallery's side of ``handclip audit verify``.

The log's own checks (``handclip.forensic.audit``) say whether the chain and its head hold. Here the
gallery is held to the records:

- every committed shard file matches its SHA-256;
- each record's gallery fields are of the form HandCLIP writes (an ``enrol`` or ``search`` record
  whose ``gallery`` is a string, say, is named, never interpreted) and name this gallery (its uid);
- every gallery row is attributed: its (path, identity, SHA-256) is planned by an ``enrol-start``
  record or listed by an ``enrol`` record. A row no record names was added outside HandCLIP's audited
  enrolment, or its record was removed: a problem naming the rows. A gallery with rows and an empty or
  missing log is the same problem for every row;
- gallery states are compared by commit generation, never by record order (a search may record the
  snapshot it ranked after a newer enrolment committed): a gallery now at an older generation than a
  record saw was rolled back, and two different commits for one generation mean its history was
  rewritten; both are problems. An ``enrol-start`` with no ``enrol`` record after it is an enrolment
  that did not finish: a note saying how many of its images were committed.
- redactions (``handclip.gallery.redaction``) agree with ``redact`` records: each identity the gallery
  holds as redacted has one record with the same reason and row count whose rows are that identity's
  rows, and each record's identity is still redacted (a redaction that vanished was rolled back or
  edited out). A redacted identity's rows stay attributed to their enrolment records.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..errors import GalleryError
from ..forensic.audit import AuditLog, AuditProblem, VerifyResult
from ..forensic.audit_format import Hex64, first_error
from .reader import GalleryReader
from .results import display_path

_Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
_SHOWN = 5  # rows named in one problem; the rest are counted


class _State(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    uid: str
    generation: int = Field(ge=0)
    rows: int = Field(ge=0)
    commit_sha256: Hex64


class _Row(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    path: _Text
    identity: _Text
    sha256: Hex64 | None = None


class _Added(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    added: list[_Row]


class _GalleryRecord(BaseModel):
    """The gallery fields of an ``enrol``, ``enrol-start`` or ``search`` record."""

    model_config = ConfigDict(strict=True, extra="allow")
    gallery: _State
    gallery_after: _State | None = None
    planned: list[_Row] = []
    results: _Added | list | None = None


class _Redact(BaseModel):
    """The fields of a ``redact`` record."""

    model_config = ConfigDict(strict=True, extra="allow")
    gallery: _State
    gallery_after: _State
    identity: _Text
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    rows: list[_Row] = Field(min_length=1)


def _checked(records: list[dict], result: VerifyResult) -> list[dict]:
    """The records whose gallery fields are well-formed; each malformed one is a problem naming it."""
    good = []
    for record in records:
        if record.get("command") not in ("enrol", "enrol-start", "search", "redact"):
            continue
        try:
            _GalleryRecord.model_validate(record)
            if record["command"] == "enrol":
                _Added.model_validate(record.get("results"))
            if record["command"] == "redact":
                _Redact.model_validate(record)
        except ValidationError as exc:
            result.problems.append(AuditProblem(f"record {record['seq']} is not a {record['command']} record HandCLIP "
                                                f"writes ({first_error(exc)})", record["seq"]))
            continue
        good.append(record)
    return good


def _attributed(records: list[dict]) -> tuple[set, set, dict]:
    """(path, identity, sha256) of every image planned or added, (path, identity) of added images whose
    old records hold no hash, and the open enrol-start records by seq."""
    exact, by_name, open_starts = set(), set(), {}
    for record in records:
        if record["command"] == "enrol-start":
            exact.update((p["path"], p["identity"], p.get("sha256")) for p in record["planned"])
            open_starts[record["seq"]] = record
        elif record["command"] == "enrol":
            for added in record["results"]["added"]:
                if added.get("sha256"):
                    exact.add((added["path"], added["identity"], added["sha256"]))
                else:  # written before enrolment records held each image's hash
                    by_name.add((added["path"], added["identity"]))
            open_starts.pop(record.get("started"), None)
    return exact, by_name, open_starts


def _rows_named(gallery: GalleryReader, rows: list[int], entries: list[dict]) -> str:
    shown = ", ".join(f"row {r} ({display_path(entries[r]['path'], entries[r]['identity'], gallery.index_dir)}, "
                      f"identity {entries[r]['identity']!r})" for r in rows[:_SHOWN])
    return shown + (f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else "")


def _check_rows(gallery: GalleryReader, records: list[dict], result: VerifyResult) -> dict:
    entries = gallery.entries(0)
    exact, by_name, open_starts = _attributed(records)
    if entries and not records:
        result.problems.append(AuditProblem(f"the gallery holds {len(entries)} image(s) but its audit log has no "
                                            f"enrolment record: the log was deleted or replaced"))
    loose = [r for r, e in enumerate(entries) if (e["path"], e["identity"], e["sha256"]) not in exact
             and (e["path"], e["identity"], None) not in exact and (e["path"], e["identity"]) not in by_name]
    if loose:
        result.problems.append(AuditProblem(f"{len(loose)} gallery row(s) are named by no enrolment record: "
                                            f"{_rows_named(gallery, loose, entries)}; they were added outside "
                                            f"HandCLIP's audited enrolment, or their records were removed"))
    committed = {(e["path"], e["identity"], e["sha256"]) for e in entries}
    for seq, start in open_starts.items():
        done = sum((p["path"], p["identity"], p.get("sha256")) in committed for p in start["planned"])
        planned = len(start["planned"])
        result.notes.append(f"the enrolment started in record {seq} did not finish (no enrol record closes it): "
                            f"{done} of its {planned} planned image(s) are in the gallery"
                            + ("; enrol the rest again to finish it" if done < planned else ""))
    return open_starts


def _check_generations(gallery: GalleryReader, records: list[dict], result: VerifyResult) -> None:
    now = gallery.commit_state
    seen: dict[int, tuple[str, str]] = {now["generation"]: (now["commit_sha256"], "the gallery now")}
    newest = (None, -1)
    for record in records:
        for state in (record["gallery"], record.get("gallery_after")):
            if state is None:
                continue
            if state["uid"] != now["uid"]:
                result.problems.append(AuditProblem(f"record {record['seq']} is of another gallery (uid "
                                                    f"{state['uid'][:12]}..., this one is {now['uid'][:12]}...)",
                                                    record["seq"]))
                break
            generation, commit = state["generation"], state["commit_sha256"]
            earlier = seen.setdefault(generation, (commit, f"record {record['seq']}"))
            if earlier[0] != commit:
                result.problems.append(AuditProblem(f"record {record['seq']} and {earlier[1]} give commit generation "
                                                    f"{generation} two different commits: the gallery's history was "
                                                    f"rewritten", record["seq"]))
            if generation > newest[1]:
                newest = (record["seq"], generation)
    if newest[1] > now["generation"]:
        result.problems.append(AuditProblem(f"the gallery is at commit generation {now['generation']} but record "
                                            f"{newest[0]} saw generation {newest[1]}: it was rolled back or restored "
                                            f"from a backup", newest[0]))


def _check_redactions(gallery: GalleryReader, records: list[dict], result: VerifyResult) -> None:
    redacts = {r["identity"]: r for r in records if r["command"] == "redact"}
    entries = gallery.entries(0) if gallery.redactions else []
    for redaction in gallery.redactions:
        identity = redaction["identity"]
        record = redacts.pop(identity, None)
        if record is None:
            result.problems.append(AuditProblem(f"identity {identity[:140]!r} is redacted in the gallery but no redact "
                                                f"record names it: the redaction was made outside HandCLIP or its "
                                                f"record was removed"))
            continue
        held = {(entries[r]["path"], entries[r]["sha256"]) for r in gallery.rows_of_identity[identity]}
        named = {(row["path"], row["sha256"]) for row in record["rows"]}
        if record["reason"] != redaction["reason"] or len(record["rows"]) != redaction["rows"] or named != held:
            result.problems.append(AuditProblem(f"record {record['seq']} redacts {identity[:140]!r} with another "
                                                f"reason or other rows than the gallery's redaction", record["seq"]))
    for identity, record in redacts.items():
        result.problems.append(AuditProblem(f"record {record['seq']} redacted {identity[:140]!r} but the gallery no "
                                            f"longer holds that redaction: it was rolled back or edited out",
                                            record["seq"]))


def verify_gallery_audit(index_dir: str | os.PathLike, check_files: bool = True, *, expect=(),
                         public_key: bytes | None = None) -> VerifyResult:
    """The audit log's own checks, plus the gallery's files, row attribution and commit generations."""
    log = AuditLog(index_dir)
    result = log.verify(check_files=check_files, expect=expect, public_key=public_key)
    try:
        gallery = GalleryReader.open(index_dir)
        if check_files:
            gallery.verify_files()
    except GalleryError as exc:
        result.problems.append(AuditProblem(f"gallery: {exc}"))
        return result
    records = _checked(log.readable_records(), result)
    _check_rows(gallery, records, result)
    _check_generations(gallery, records, result)
    _check_redactions(gallery, records, result)
    result.problems.sort(key=lambda p: (p.record if p.record is not None else 1 << 62))
    return result
