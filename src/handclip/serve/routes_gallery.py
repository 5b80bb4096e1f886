"""Enrolment and browsing the gallery: ``POST /api/v1/enrol``, the identities and image thumbnails, and
redacting an identity (``POST /api/v1/identities/{identity}/redact``, enrol role)."""

from __future__ import annotations

import io
import re
from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, Path, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..gallery.results import display_path
from .keys import ApiKey
from .replies import AUTHED, UPLOAD, error, responses
from .routes_search import Aspect, read_upload, service, single, thumbnail_url
from .security import require
from .state import ServiceState

IDENTITY = "^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$"  # also in the schema, so clients and fuzzers know it
router = APIRouter()


class RedactRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S",
                        description="why the identity is redacted (kept in the gallery and its audit record)")


@router.post("/api/v1/enrol", responses=responses(*UPLOAD),
             dependencies=[Depends(single("identity", "aspect", typed=("aspect",)))])
def enrol(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("enrol"))],
          identity: Annotated[str, Form(pattern=IDENTITY, description="1-128 letters, digits, spaces or ._-, "
                                                                        "starting with a letter or digit")],
          images: Annotated[list[UploadFile], File(description="hand photos (JPEG, PNG, WebP, BMP or TIFF)",
                                                   json_schema_extra={"items": {"type": "string", "format": "binary"},
                                                                      "minItems": 1})],
          aspect: Annotated[Aspect, Form(description="the hand aspect of every photo")] = None):
    """Enrol photos of one identity (committed batch by batch; the audit records list them). A photo
    whose content is already enrolled under another identity is not enrolled again: ``other_identity``
    names it and that identity, as the audit record does."""
    identity = identity.strip()
    if not re.fullmatch(IDENTITY[1:-1], identity):
        return error(422, f"identity {identity[:140]!r} must be 1-128 letters, digits, spaces or ._- "
                          "and start with a letter or digit")
    uploads = [read_upload(f, state.limits) for f in images]
    arguments = {"interface": "serve", "identity": identity, "uploads": [u.name for u in uploads],
                 "api_key": key.id, "aspect": aspect}
    summary, record, gallery, names = state.enrol(identity, uploads, examiner=key.name, arguments=arguments,
                                                  aspect=aspect)
    others = [{"name": names.get(s.path, s.path), "identity": s.identity, "enrolled_identity": s.enrolled_identity,
               "enrolled_name": display_path(s.enrolled_path, s.enrolled_identity, gallery.index_dir)}
              for s in summary.other_identity]
    return {"identity": identity, "added": summary.added, "already_enrolled": summary.already_enrolled,
            "other_identity": others, "batches": summary.batches, "gallery_images": len(gallery),
            "gallery_identities": len(gallery.identities()), "record": record.seq, "record_hash": record.hash,
            "anchor": record.anchor}


@router.get("/api/v1/identities", responses=responses(*AUTHED))
def identities(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("search"))]):
    gallery = state.snapshot()
    people = [{"identity": i, "images": len(gallery.rows_of_identity[i])} for i in gallery.identities()]
    return {"identities": people, "images": len(gallery), "generation": gallery.commit_state["generation"],
            "redacted": len(gallery.redacted), "can_redact": "enrol" in key.roles}


@router.get("/api/v1/identities/{identity}", responses=responses(*AUTHED, 404))
def identity(identity: str, state: Annotated[ServiceState, Depends(service)],
             key: Annotated[ApiKey, Depends(require("search"))]):
    gallery = state.snapshot()
    rows = gallery.rows_of_identity.get(identity)
    if rows is None or identity in gallery.redacted:
        return error(404, f"identity {identity[:140]!r} is not enrolled in this gallery"
                          + (" (it was redacted)" if rows is not None else ""))
    paths = [gallery.path_of_row[r] for r in rows]
    hashes = gallery.file_hashes(paths)
    images = [{"name": display_path(p, identity, gallery.index_dir), "sha256": hashes.get(p),
               "thumbnail": thumbnail_url(hashes.get(p))} for p in paths]
    return {"identity": identity, "images": images}


@router.post("/api/v1/identities/{identity}/redact", responses=responses(*AUTHED, 404, 409, 422))
def redact(identity: Annotated[str, Path(min_length=1, max_length=4096)], request: Annotated[RedactRequest, Body()],
           state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("enrol"))]):
    """Redact an identity: its photos stay in the append-only gallery but no search, listing or thumbnail shows
    them again, and it cannot be enrolled again; the ``redact`` audit record names the reason and every photo."""
    gallery = state.snapshot()
    if identity not in gallery.rows_of_identity:
        return error(404, f"identity {identity[:140]!r} is not enrolled in this gallery")
    if not request.reason.strip():
        return error(422, "the reason must not be blank")
    arguments = {"interface": "serve", "identity": identity, "reason": request.reason, "api_key": key.id}
    record = state.session.redact(identity, request.reason, examiner=key.name, arguments=arguments)
    after = state.snapshot()
    return {"identity": identity, "images": len(after.rows_of_identity[identity]),
            "identities_left": len(after.identities()), "generation": after.commit_state["generation"],
            "record": record.seq, "record_hash": record.hash, "anchor": record.anchor}


@router.get("/api/v1/images/{sha256}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "a JPEG thumbnail"}, **responses(*AUTHED, 404, 422)})
def thumbnail(sha256: str, state: Annotated[ServiceState, Depends(service)],
              key: Annotated[ApiKey, Depends(require("search"))],
              size: Annotated[int, Query(ge=16, le=512)] = 160):
    from ..data.images import thumbnail as make_thumbnail

    found = state.image_path(sha256.lower())
    if found is None:
        return error(404, f"no enrolled image has SHA-256 {sha256[:64]}")
    picture = make_thumbnail(found[0], size, letterbox=True)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
