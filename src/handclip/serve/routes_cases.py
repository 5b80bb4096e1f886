"""Cases: ``GET /api/v1/cases/{case_id}/searches`` (the case's searches, from the audit log), ``.../searches/{record}``
(one search's answer, rebuilt from its record) and ``.../export`` (the case's bundle as one ZIP).

What a key sees follows the rule for case reports: a key sees the searches it made itself, a key with the
``review`` role every search of the case (those made from the command line included). An export holds
what the key sees, and is recorded in the audit log with the key's id. A case id may hold ``/`` (as in
``2026/017``); the route takes it whole. Answers name files by name or hash, never by server path; the
bundle's audit records are the log's own lines, server paths included, so that their hashes recompute.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path as PathParam
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ..forensic.audit_format import AuditError
from ..gallery.case_bundle import bundle_file_name, export_case_bundle, served_report
from ..gallery.case_report import CASE_ID_LIMIT, CASE_ID_PATTERN
from ..gallery.cases import case_searches, record_answer
from ..gallery.results import display_path
from .keys import ApiKey
from .replies import AUTHED, error, public_message, responses
from .routes_search import service, thumbnail_url
from .security import require
from .state import REVIEW_ROLE, ServiceState

router = APIRouter()
CaseId = Annotated[str, PathParam(min_length=1, max_length=CASE_ID_LIMIT, pattern=CASE_ID_PATTERN,
                                  description="the case id the searches were made with; no control or invisible "
                                              "formatting characters")]


def scope_of(key: ApiKey) -> str | None:
    """The key id a key's view of a case is limited to (None: every search, for the review role)."""
    return None if REVIEW_ROLE in key.roles else key.id


def public_answer(record: dict, state: ServiceState, key: ApiKey) -> dict:
    """A search rebuilt from its record, shaped as ``POST /api/v1/search`` answers (no server paths)."""
    answer = record_answer(record)
    gallery_dir = (answer.get("gallery") or {}).get("dir")
    for query in answer["queries"]:
        for candidate in query["candidates"]:
            candidate["name"] = display_path(str(candidate.pop("path", "")), candidate.get("identity"), gallery_dir)
            candidate["thumbnail"] = thumbnail_url(candidate.get("sha256"))
        query["query"] = PurePath(str(query.get("query"))).name
    answer["gallery"] = {k: v for k, v in (answer.get("gallery") or {}).items() if k != "dir"}
    model = answer.get("model") or {}
    answer["model"] = {"checkpoint": PurePath(str(model["checkpoint"])).name if model.get("checkpoint") else None,
                       "checkpoint_sha256": model.get("checkpoint_sha256")}
    if answer.get("calibration"):
        calibration = dict(answer["calibration"])
        calibration["file"] = PurePath(str(calibration.pop("path", ""))).name
        calibration.pop("summary", None)
        answer["calibration"] = calibration
    first = answer["queries"][0] if answer["queries"] else {"candidates": [], "open_set": None}
    answer.update(candidates=first["candidates"], open_set=first.get("open_set"), record=record["seq"])
    pdf = served_report(state.index_dir, record, scope_of(key))
    answer["report"] = f"/api/v1/reports/{pdf.parent.name}" if pdf is not None else None
    return answer


@router.get("/api/v1/cases/{case_id:path}/searches", responses=responses(*AUTHED, 409, 422))
def case_list(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("search"))],
              case_id: CaseId):
    """The searches recorded under ``case_id``, oldest first: the key's own, or every one for the review role."""
    try:
        return case_searches(state.session.audit_log, case_id, key_id=scope_of(key)).as_dict()
    except AuditError as exc:
        return error(409, public_message(f"the gallery's audit log cannot be read: {exc}", state.index_dir))


@router.get("/api/v1/cases/{case_id:path}/searches/{record}", responses=responses(*AUTHED, 404, 409, 422))
def case_search(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("search"))],
                case_id: CaseId, record: Annotated[int, PathParam(ge=1, le=2**53)]):
    """One search of the case, rebuilt from its audit record, as ``POST /api/v1/search`` answered it."""
    found = case_searches(state.session.audit_log, case_id, key_id=scope_of(key))
    match = next((s for s in found.searches if s.seq == record), None)
    if match is None:
        return error(404, "no such search of this case for this key")
    return public_answer(match.record, state, key)


@router.get("/api/v1/cases/{case_id:path}/export", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the case bundle (ZIP with SHA256SUMS)"},
                       **responses(*AUTHED, 404, 409, 422)})
def case_export(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("search"))],
                case_id: CaseId):
    """The case as one ZIP bundle (what the key sees of it; recorded in the audit log)."""
    scope = scope_of(key)
    if not case_searches(state.session.audit_log, case_id, key_id=scope).searches:
        return error(404, "no searches of this case for this key")
    folder = Path(tempfile.mkdtemp(prefix="handclip-case-"))
    out = folder / bundle_file_name(case_id)
    try:
        export_case_bundle(state.session.audit_log, state.index_dir, case_id, out, key_id=scope, examiner=key.name,
                           arguments={"interface": "serve", "case_id": case_id, "api_key": key.id})
    except AuditError:
        shutil.rmtree(folder, ignore_errors=True)
        return error(409, "the gallery's audit log does not verify; its administrator must run `handclip audit "
                          "verify` (nothing was exported)")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(out, media_type="application/zip", filename=out.name,
                         background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))
