"""Error replies: one JSON sentence ``{"error": ...}`` with a 4xx status for anything a client can cause,
documented in the OpenAPI schema for each endpoint. A 5xx is a bug, or the service's own files damaged.

Every reply is JSON-safe: a validation error lists only where and what (``loc``, ``msg``, ``type`` as
strings), never the input it refused (which may be a file or bytes). Messages never name a server
path: the gallery folder is written ``GALLERY``, and a damaged key file is named only in the service's
log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DataError, GalleryError, HandCLIPError
from .keys import KeyFileError
from .limits import UploadRefused, too_large

log = logging.getLogger("handclip.serve")
_MEANING = {400: "a Host name this service does not answer",
            401: "no valid API key", 403: "the key lacks the endpoint's role",
            404: "not found, or not this key's", 409: "the gallery is busy or damaged",
            413: "request or image too large", 415: "not an image format the service takes",
            422: "invalid, missing or repeated form field, or an unusable image", 503: "the service's own key file is damaged"}


class ValidationIssue(BaseModel):
    loc: list[str]
    msg: str
    type: str


class ErrorReply(BaseModel):
    error: str
    detail: list[ValidationIssue] | None = None


def responses(*codes: int) -> dict:
    """OpenAPI ``responses`` for these error statuses (all with the ErrorReply body)."""
    return {code: {"model": ErrorReply, "description": _MEANING[code]} for code in codes}


AUTHED = (400, 401, 403, 503)  # every endpoint that needs a key
UPLOAD = (*AUTHED, 409, 413, 415, 422)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def status_of(exc: HandCLIPError) -> int:
    if isinstance(exc, UploadRefused):
        return exc.status
    if isinstance(exc, KeyFileError):
        return 503  # the service's own key file is damaged: nothing the client can fix
    if isinstance(exc, DataError):
        return 422
    if isinstance(exc, GalleryError):
        return 409
    return 400


def public_message(message: str, gallery_dir) -> str:
    """``message`` with the gallery folder's server path written as GALLERY."""
    for form in sorted({str(gallery_dir.resolve()), str(gallery_dir)}, key=len, reverse=True):
        if form not in (".", ""):
            message = message.replace(form, "GALLERY")
    return message


def _said(issue: dict) -> str:
    """A validation issue's message; a pattern mismatch says what without quoting the pattern."""
    if issue.get("type") == "string_pattern_mismatch":
        return "holds characters that are not allowed here (see the schema's pattern)"
    return str(issue.get("msg", "invalid"))


def install_error_handlers(app: FastAPI, state) -> None:
    @app.exception_handler(HandCLIPError)
    async def handclip_error(request: Request, exc: HandCLIPError):
        if isinstance(exc, KeyFileError):
            log.error("%s", exc)
            return error(503, "the service's API key file is damaged; its administrator must restore it "
                              "(the service log says which file)")
        return error(status_of(exc), public_message(str(exc), state.index_dir))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, Starlette's 404s and the body limit
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 413:
            message = too_large(state.limits.max_request_bytes)
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        issues = [{"loc": [str(p) for p in e.get("loc", ())], "msg": _said(e), "type": str(e.get("type", "invalid"))}
                  for e in exc.errors()]
        first = issues[0] if issues else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p not in ("body", "query", "path")) or "request"
        return JSONResponse({"error": f"{where}: {first['msg']}", "detail": issues}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")
