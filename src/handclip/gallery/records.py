"""The audit records an examiner session writes (``handclip.forensic.audit`` chains and hashes them).

One record per search: what was asked, with which model, gallery state and calibration, which files
(with their SHA-256) and what came out. Two per enrolment: ``enrol-start`` before the first batch is
committed, naming every image the enrolment plans to add (path, identity, SHA-256), so that each row a
killed enrolment committed is still attributed to a record; then ``enrol`` when it ends, with the
images it added, those it left out and those already enrolled under another identity. A ``redact`` record
follows each redaction commit (``handclip.gallery.redaction``), naming the identity, the reason and every
row it takes out of search; ``reembed`` records link a gallery and the one re-encoded from it. A case report
that could not be made after its search was recorded gets a ``report`` record saying so.
``handclip.gallery.audit_check`` reads them back against the gallery.
"""

from __future__ import annotations

from ..forensic.audit import file_entry
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
    files = [file_entry("query", q.query, q.sha256) for q in search.queries]
    files += [file_entry("prepared query", q.prepared["path"], q.prepared["sha256"]) for q in search.queries
              if q.prepared]
    files += _model_files(search.model)
    if search.calibration is not None:
        files.append(file_entry("calibration", search.calibration.path, search.calibration.sha256))
    return {"command": "search", "examiner": search.examiner,
            "arguments": arguments if arguments is not None else {
                "queries": [q.query for q in search.queries], "top_k": search.top_k, "by": search.by,
                "index_type": search.index_type, "calibration": search.calibration.path if search.calibration else None},
            "gallery": {k: search.gallery[k] for k in ("dir", *GALLERY_STATE)},
            "gallery_after": None, "model": search.model,
            "calibration": search.calibration_record(),
            "files": files, "statement": search.statement, "score": search.score,
            "results": [q.as_dict() for q in search.queries], **({"aspects": search.aspects} if search.aspects else {})}


def _state(gallery: GalleryReader) -> dict:
    return {k: gallery.commit_state[k] for k in GALLERY_STATE}


def enrol_start_record(before: GalleryReader, model: dict, planned, examiner: str | None,
                       arguments: dict | None) -> dict:
    """The record written before an enrolment's first batch: every (item, SHA-256) it plans to add."""
    return {"command": "enrol-start", "examiner": examiner, "arguments": arguments or {},
            "gallery": {"dir": str(before.index_dir.resolve()), **_state(before)}, "model": model,
            "planned": [{"path": str(item.path), "identity": str(item.identity), "sha256": digest}
                        for item, digest in planned]}


def enrol_record(before: GalleryReader, after: GalleryReader, model: dict, summary, added: list[dict],
                 examiner: str | None, arguments: dict | None, started: int | None = None) -> dict:
    return {"command": "enrol", "examiner": examiner, "arguments": arguments or {}, "started": started,
            "gallery": {"dir": str(before.index_dir.resolve()), **_state(before)},
            "gallery_after": _state(after), "model": model,
            "files": _model_files(model) + [file_entry("enrolled image", e["path"], e["sha256"]) for e in added],
            "results": {"added": [{"path": e["path"], "identity": e["identity"], "sha256": e["sha256"]} for e in added],
                        "already_enrolled": summary.already_enrolled,
                        "other_identity": [{"path": s.path, "identity": s.identity, "enrolled_identity":
                                            s.enrolled_identity, "enrolled_path": s.enrolled_path}
                                           for s in summary.other_identity],
                        "skipped_bad": [{"path": p.path, "reason": p.reason} for p in summary.skipped_bad],
                        "gallery_images": len(after), "gallery_identities": len(after.identities())}}


def report_failed_record(search: SearchResult, case_id: str | None, error: BaseException) -> dict:
    """The record saying that the case report of a recorded search could not be made."""
    return {"command": "report", "made": False, "search_record": search.audit.seq if search.audit else None,
            "search_hash": search.audit.hash if search.audit else None, "case_id": case_id,
            "error": f"{type(error).__name__}: {error}"[:500]}


def validation_record(summary: dict, report_folder, examiner: str | None, arguments: dict | None) -> dict:
    """The record of a validation of the LR method (``handclip validate --index``): the SHA-256 of the model,
    calibration, manifest and plan it was computed from and of the report files it wrote, and its decision."""
    files = [file_entry(role, item["path"], item["sha256"]) for role, item in summary["files"].items()]
    return {"command": "validate", "examiner": examiner, "arguments": arguments or {},
            "files": files, "report_folder": str(report_folder), "decision": summary["decision"],
            "population": summary["population"]}


def redact_record(before: GalleryReader, after: GalleryReader, redaction: dict, examiner: str | None,
                  arguments: dict | None) -> dict:
    """The record of a redaction commit: the identity, the reason and every row (path, SHA-256) it excludes."""
    identity = redaction["identity"]
    rows = [{"path": e["path"], "identity": identity, "sha256": e["sha256"]}
            for e in after.entries(0) if e["identity"] == identity]
    return {"command": "redact", "examiner": examiner, "arguments": arguments or {},
            "gallery": {"dir": str(before.index_dir.resolve()), **_state(before)}, "gallery_after": _state(after),
            "identity": identity, "reason": redaction["reason"], "rows": rows}
