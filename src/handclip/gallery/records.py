"""The audit records an examiner session writes, and the check of a gallery against its audit log.

One record per search and per enrolment (``handclip.forensic.audit`` chains and hashes them): what was
asked, with which model, gallery state and calibration, which files (with their SHA-256) and what came
out. ``verify_gallery_audit`` adds the gallery's side to the log's own checks: every shard file intact,
and no change of the gallery between records that no record explains.
"""

from __future__ import annotations

import os

from ..errors import GalleryError, HandCLIPError
from ..forensic.audit import AuditLog, AuditProblem, VerifyResult, file_entry
from .reader import GalleryReader
from .results import SearchResult

GALLERY_STATE = ("uid", "generation", "rows", "commit_sha256")


def model_record(encoder) -> dict:
    fingerprint = encoder.fingerprint()
    return {"checkpoint": encoder.checkpoint, "checkpoint_sha256": fingerprint.get("checkpoint_sha256"),
            "fingerprint": fingerprint, "inference": encoder.inference_record()}


def _model_files(model: dict) -> list[dict]:
    if not model.get("checkpoint_sha256"):
        return []
    return [file_entry("checkpoint", model["checkpoint"], model["checkpoint_sha256"])]


def search_record(search: SearchResult, arguments: dict | None) -> dict:
    files = [file_entry("query", q.query, q.sha256) for q in search.queries] + _model_files(search.model)
    if search.calibration is not None:
        files.append(file_entry("calibration", search.calibration.path, search.calibration.sha256))
    return {"command": "search", "examiner": search.examiner,
            "arguments": arguments if arguments is not None else {
                "queries": [q.query for q in search.queries], "top_k": search.top_k, "by": search.by,
                "index_type": search.index_type, "calibration": search.calibration.path if search.calibration else None},
            "gallery": {k: search.gallery[k] for k in ("dir", *GALLERY_STATE)},
            "gallery_after": None, "model": search.model,
            "calibration": search.calibration.as_record(search.by) if search.calibration else None,
            "files": files, "statement": search.statement, "score": search.score,
            "results": [q.as_dict() for q in search.queries]}


def enrol_record(before: GalleryReader, after: GalleryReader, model: dict, summary, added: list[dict],
                 examiner: str | None, arguments: dict | None) -> dict:
    return {"command": "enrol", "examiner": examiner, "arguments": arguments or {},
            "gallery": {"dir": str(before.index_dir.resolve()), **{k: before.commit_state[k] for k in GALLERY_STATE}},
            "gallery_after": {k: after.commit_state[k] for k in GALLERY_STATE}, "model": model,
            "files": _model_files(model) + [file_entry("enrolled image", e["path"], e["sha256"]) for e in added],
            "results": {"added": [{"path": e["path"], "identity": e["identity"]} for e in added],
                        "already_enrolled": summary.already_enrolled,
                        "skipped_bad": [{"path": p.path, "reason": p.reason} for p in summary.skipped_bad],
                        "gallery_images": len(after), "gallery_identities": len(after.identities())}}


def verify_gallery_audit(index_dir: str | os.PathLike, check_files: bool = True) -> VerifyResult:
    """The audit log's own checks, plus the gallery files and whether the gallery changed unrecorded."""
    log = AuditLog(index_dir)
    result = log.verify(check_files=check_files)
    try:
        gallery = GalleryReader.open(index_dir)
        if check_files:
            gallery.verify_files()
    except GalleryError as exc:
        result.problems.append(AuditProblem(f"gallery: {exc}"))
        return result
    try:
        records = log.records()
    except HandCLIPError:
        return result  # already reported line by line
    previous = None
    for record in records:
        state = record.get("gallery") or {}
        if previous is not None and state.get("commit_sha256") and previous.get("commit_sha256") != state["commit_sha256"]:
            result.notes.append(f"the gallery changed between records {previous['seq']} and {record['seq']} with no "
                                f"record (rows {previous.get('rows')} -> {state.get('rows')}): an enrolment that "
                                f"was interrupted, or an edit")
        previous = {**(record.get("gallery_after") or state), "seq": record.get("seq")}
    now = gallery.commit_state
    if previous is not None and previous.get("commit_sha256") != now["commit_sha256"]:
        result.notes.append(f"the gallery changed after record {previous['seq']} with no record (rows "
                            f"{previous.get('rows')} -> {now['rows']}): an enrolment that was interrupted, or an edit")
    return result
