"""Full-resolution images for the page's side-by-side comparison: an enrolled image by its SHA-256
(``GET /api/v1/images/{sha256}``) and a search's query (``GET /api/v1/searches/{record}/query``).

Both send the file's bytes as they were recorded, after checking them against the recorded SHA-256 (a
file changed since is refused with 409, never shown as if it were the one compared). A search's query
is shown only to the key that made the search, or a key of the ``review`` role; any other key gets 404,
as for a record that does not exist, as case reports are protected. A file larger than the service takes
as an upload (``Limits.max_request_bytes``) is not sent (413). Answers never name a server path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path as PathParam, Query
from fastapi.responses import Response

from ..atomic import sha256_bytes
from ..forensic.audit import AuditError
from ..gallery.cases import key_of
from .keys import ApiKey
from .replies import AUTHED, error, public_message, responses
from .routes_search import service
from .security import require
from .state import REVIEW_ROLE, ServiceState

SHA256 = "^[0-9a-fA-F]{64}$"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
IMAGE_REPLY = {200: {"content": {media: {"schema": {"type": "string", "format": "binary"}}
                                 for media in sorted(set(MEDIA_TYPES.values()))},
                     "description": "the image file as recorded"}}
router = APIRouter()


def _image_reply(path: str, expected: str, state: ServiceState, what: str) -> Response:
    """The file's bytes if they still hash to ``expected`` and fit the size limit; else a JSON error."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > state.limits.max_request_bytes:
            return error(413, f"{what} is {size} bytes, more than the service's limit of "
                              f"{state.limits.max_request_bytes}")
        data = file.read_bytes()
    except OSError:
        return error(404, f"{what} is no longer kept by the service")
    if sha256_bytes(data) != expected:
        return error(409, f"{what} no longer holds the bytes recorded (SHA-256 {expected[:16]}...); its "
                          "administrator must run `handclip audit verify`")
    return Response(data, media_type=MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream"),
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/v1/images/{sha256}", response_class=Response,
            responses={**IMAGE_REPLY, **responses(*AUTHED, 404, 409, 413, 422)})
def enrolled_image(sha256: Annotated[str, PathParam(pattern=SHA256)],
                   state: Annotated[ServiceState, Depends(service)],
                   key: Annotated[ApiKey, Depends(require("search"))]):
    """An enrolled image at full resolution, as enrolled, by its recorded SHA-256."""
    digest = sha256.lower()
    found = state.image_path(digest)
    if found is None:
        return error(404, f"no enrolled image has SHA-256 {digest}")
    return _image_reply(found[0], digest, state, f"enrolled image {digest[:16]}...")


def _search_record(state: ServiceState, record: int, key: ApiKey) -> dict | None:
    """The search record ``record`` if ``key`` made it or has the review role, else None."""
    found = next((r for r in state.session.audit_log.records() if r.get("seq") == record), None)
    if found is None or found.get("command") != "search":
        return None
    return found if key_of(found) == key.id or REVIEW_ROLE in key.roles else None


@router.get("/api/v1/searches/{record}/query", response_class=Response,
            responses={**IMAGE_REPLY, **responses(*AUTHED, 404, 409, 413, 422)})
def search_query(record: Annotated[int, PathParam(ge=1, le=2**53)], state: Annotated[ServiceState, Depends(service)],
                 key: Annotated[ApiKey, Depends(require("search"))],
                 image: Annotated[Literal["searched", "original"],
                                  Query(description="searched: the prepared image the model embedded (the upload "
                                                    "itself when it was not prepared); original: the upload")]
                 = "searched"):
    """The query of search ``record``: only for the key that made the search, or a key with the ``review`` role."""
    try:
        found = _search_record(state, record, key)
    except AuditError as exc:
        return error(409, public_message(f"the gallery's audit log cannot be read: {exc}", state.index_dir))
    queries = (found or {}).get("results")
    if not isinstance(queries, list) or not queries or not isinstance(queries[0], dict):
        return error(404, "no such search for this key")
    query = queries[0]
    prepared = query.get("prepared") if image == "searched" else None
    source = prepared if isinstance(prepared, dict) else query
    path, digest = source.get("path") if source is prepared else query.get("query"), source.get("sha256")
    if not isinstance(path, str) or not isinstance(digest, str):
        return error(404, "this search's record names no query file")
    return _image_reply(path, digest, state, f"the query of search record {record}")
