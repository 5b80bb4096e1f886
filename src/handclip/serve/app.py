"""The FastAPI application: REST endpoints under ``/api/v1``, the web page at ``/``.

Every endpoint but ``/api/v1/health`` needs an API key (header ``X-API-Key``, or ``Authorization:
Bearer KEY``) with the endpoint's role: ``search`` to search, list identities and fetch thumbnails and
reports, ``enrol`` to enrol. A missing or unknown key gets 401, a key without the role 403; both are
logged with the client address and the key's id, never the key. Errors a client can cause are one
JSON sentence ``{"error": ...}`` with a 4xx status; 5xx would be a bug.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import DataError, GalleryError, HandCLIPError
from ..gallery.results import display_path, exhibit_name, visible_text
from .keys import ApiKey, KeyFileError
from .limits import BodySizeLimit, Limits, UploadRefused, check_image, too_large
from .state import ServiceState, Upload

log = logging.getLogger("handclip.serve")
STATIC = Path(__file__).with_name("static")
IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
Aspect = Literal["dorsal_r", "dorsal_l", "palmar_r", "palmar_l"]
MAX_TOP_K = 100


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(exc: HandCLIPError) -> int:
    if isinstance(exc, UploadRefused):
        return exc.status
    if isinstance(exc, KeyFileError):
        return 503  # the service's own key file is damaged: nothing the client can fix
    if isinstance(exc, DataError):
        return 422
    if isinstance(exc, GalleryError):
        return 409
    return 400


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def require(role: str):
    """A dependency giving the request's key, after checking it holds ``role``."""

    def check(request: Request) -> ApiKey:
        state: ServiceState = request.app.state.service
        presented = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not presented and auth.lower().startswith("bearer "):
            presented = auth[7:].strip()
        key = state.keys.authenticate(presented)
        if key is None:
            log.warning("refused %s %s from %s: %s API key", request.method, request.url.path, _client(request),
                        "no" if not presented else "invalid or revoked")
            raise HTTPException(401, "a valid API key is required (header X-API-Key)",
                                headers={"WWW-Authenticate": "Bearer"})
        if role not in key.roles:
            log.warning("refused %s %s from %s: key %s (%s) lacks role %s", request.method, request.url.path,
                        _client(request), key.id, key.name, role)
            raise HTTPException(403, f"API key '{key.name}' does not have the '{role}' role")
        return key

    return check


def _read_upload(file: UploadFile, limits: Limits) -> Upload:
    name = exhibit_name(file.filename)  # the client's name is shown and recorded, never used as a path
    data = file.file.read()
    return Upload(name, data, check_image(data, name, limits))


def _thumbnail_url(sha256: str | None) -> str | None:
    return f"/api/v1/images/{sha256}/thumbnail" if sha256 else None


def _search_response(found, gallery) -> dict:
    info = found.as_dict()
    for query in info["queries"]:
        for c in query["candidates"]:
            c["name"] = display_path(c.pop("path"), c["identity"], gallery.index_dir)
            c["thumbnail"] = _thumbnail_url(c["sha256"])
        query["query"] = Path(query["query"]).name
    info["gallery"] = {k: v for k, v in info["gallery"].items() if k != "dir"}
    info["model"] = {"checkpoint": Path(found.model["checkpoint"]).name if found.model["checkpoint"] else None,
                     "checkpoint_sha256": found.model["checkpoint_sha256"]}
    if info["calibration"]:
        info["calibration"] = {k: v for k, v in info["calibration"].items() if k != "path"}
    info["audit"] = {"seq": found.audit.seq, "hash": found.audit.hash}
    info["candidates"] = info["queries"][0]["candidates"]
    info["record"] = found.audit.seq
    info["report"] = None
    return info


def create_app(state: ServiceState) -> FastAPI:
    app = FastAPI(title="HandCLIP examiner service", version=__version__,
                  description="Search and enrol hand photos in one HandCLIP gallery.")
    app.state.service = state

    @app.exception_handler(HandCLIPError)
    async def handclip_error(request: Request, exc: HandCLIPError):
        return _error(_status_of(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, Starlette's 404s and the body limit
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            message = too_large(state.limits.max_request_bytes)
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid request')}",
                             "detail": exc.errors()}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    @app.get("/api/v1/health")
    def health():
        gallery = state.snapshot()
        return {"status": "ok", "version": __version__, "images": len(gallery),
                "identities": len(gallery.rows_of_identity), "generation": gallery.commit_state["generation"],
                "calibrated": state.calibration is not None}

    @app.post("/api/v1/search")
    def search(key: Annotated[ApiKey, Depends(require("search"))], image: Annotated[UploadFile, File()],
               top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 10,
               by: Annotated[Literal["identity", "image"], Form()] = "identity",
               index_type: Annotated[Literal["auto", "flat", "pca", "ivf", "hnsw"], Form()] = "auto",
               report: Annotated[bool, Form()] = False,
               case_id: Annotated[str | None, Form(max_length=200)] = None,
               aspect: Annotated[Aspect | None, Form()] = None, mirror: Annotated[bool, Form()] = False,
               gallery_aspect: Annotated[Aspect | None, Form()] = None):
        """Rank the gallery for one query photo; the audit record's seq is ``record``. ``aspect``, ``mirror``
        and ``gallery_aspect``: the hand aspects compared (docs/method.md, "Aspects of a hand")."""
        if case_id is not None and case_id != visible_text(case_id):
            return _error(422, "case_id: control and invisible formatting characters are not allowed")
        upload = _read_upload(image, state.limits)
        arguments = {"interface": "serve", "upload": upload.name, "top_k": top_k, "by": by,
                     "index_type": index_type, "calibration": state.calibration.path if state.calibration else None,
                     "report": report, "case_id": case_id, "api_key": key.id, "aspect": aspect, "mirror": mirror,
                     "gallery_aspect": gallery_aspect}
        found, gallery = state.search(upload, top_k=top_k, by=by, index_type=index_type, examiner=key.name,
                                      arguments=arguments, report=report, case_id=case_id,
                                      aspects={"aspect": aspect, "mirror": mirror, "gallery_aspect": gallery_aspect})
        out = _search_response(found, gallery)
        if report:
            out["report"] = f"/api/v1/search/{found.audit.seq}/report.pdf"
        return out

    @app.get("/api/v1/search/{record}/report.pdf")
    def report(record: int, key: Annotated[ApiKey, Depends(require("search"))]):
        path = state.report_path(record)
        if path is None:
            return _error(404, f"no case report for search record {record} (ask for one with report=true)")
        return FileResponse(path, media_type="application/pdf", filename=path.name)

    @app.post("/api/v1/enrol")
    def enrol(key: Annotated[ApiKey, Depends(require("enrol"))], identity: Annotated[str, Form()],
              images: Annotated[list[UploadFile], File()], aspect: Annotated[Aspect | None, Form()] = None):
        """Enrol photos of one identity (committed batch by batch; the audit record lists them)."""
        identity = identity.strip()
        if not IDENTITY.match(identity):
            return _error(422, f"identity {identity!r} must be 1-128 letters, digits, spaces or ._- "
                               "and start with a letter or digit")
        uploads = [_read_upload(f, state.limits) for f in images]
        arguments = {"interface": "serve", "identity": identity, "uploads": [u.name for u in uploads],
                     "api_key": key.id, "aspect": aspect}
        summary, record, gallery = state.enrol(identity, uploads, examiner=key.name, arguments=arguments,
                                               aspect=aspect)
        return {"identity": identity, "added": summary.added, "already_enrolled": summary.already_enrolled,
                "batches": summary.batches, "gallery_images": len(gallery),
                "gallery_identities": len(gallery.identities()), "record": record.seq, "record_hash": record.hash}

    @app.get("/api/v1/identities")
    def identities(key: Annotated[ApiKey, Depends(require("search"))]):
        gallery = state.snapshot()
        people = [{"identity": i, "images": len(gallery.rows_of_identity[i])} for i in gallery.identities()]
        return {"identities": people, "images": len(gallery), "generation": gallery.commit_state["generation"]}

    @app.get("/api/v1/identities/{identity}")
    def identity(identity: str, key: Annotated[ApiKey, Depends(require("search"))]):
        gallery = state.snapshot()
        rows = gallery.rows_of_identity.get(identity)
        if rows is None:
            return _error(404, f"identity {identity!r} is not enrolled in this gallery")
        paths = [gallery.path_of_row[r] for r in rows]
        hashes = gallery.file_hashes(paths)
        images = [{"name": display_path(p, identity, gallery.index_dir), "sha256": hashes.get(p),
                   "thumbnail": _thumbnail_url(hashes.get(p))} for p in paths]
        return {"identity": identity, "images": images}

    @app.get("/api/v1/images/{sha256}/thumbnail")
    def thumbnail(sha256: str, key: Annotated[ApiKey, Depends(require("search"))],
                  size: int = 160):
        from ..data.images import thumbnail as make_thumbnail

        found = state.image_path(sha256.lower())
        if found is None:
            return _error(404, f"no enrolled image has SHA-256 {sha256}")
        picture = make_thumbnail(found[0], max(16, min(int(size), 512)), letterbox=True)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodySizeLimit, max_bytes=state.limits.max_request_bytes)
    return app
