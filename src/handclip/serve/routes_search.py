"""Search and case reports: ``POST /api/v1/search`` and ``GET /api/v1/reports/{report_id}``.

A case report is fetched by an unguessable id (128 random bits) and only with the key that asked for
it, or a key of the ``review`` role; any other key gets 404, as for an id that does not exist.
Answers name files by name, relative to the gallery, or by hash, never by server path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path as PathParam, Request, UploadFile
from fastapi.responses import FileResponse
from PIL import Image

from ..data.query_transform import CROP_PATTERN, MAX_ANGLE, QueryTransform, oriented_size
from ..errors import HandCLIPError

from ..gallery.case_compare import COMPARE_PATTERN, comparison_ranks
from ..gallery.case_report import CASE_ID_LIMIT, CASE_ID_PATTERN
from ..gallery.results import display_path, exhibit_name
from .keys import ApiKey
from .limits import Limits, check_image
from .replies import AUTHED, UPLOAD, error, responses
from .security import require
from .state import REPORT_ID, ServiceState, Upload

MAX_TOP_K = 100
Aspect = Literal["dorsal_r", "dorsal_l", "palmar_r", "palmar_l"]  # handclip.aspects.ASPECTS
router = APIRouter()


def service(request: Request) -> ServiceState:
    return request.app.state.service


def single(*names: str, typed: tuple[str, ...] = ()):
    """A dependency refusing a form whose singular fields come more than once (a second ``image`` part
    would otherwise silently win), or whose ``typed`` fields (numbers, choices) are sent empty (FastAPI
    would take an empty value for a missing one and use the default)."""

    async def check(request: Request) -> None:
        form = await request.form()
        repeated = [name for name in names if len(form.getlist(name)) > 1]
        if repeated:
            raise HTTPException(422, f"{repeated[0]}: given {len(form.getlist(repeated[0]))} times; send it once")
        empty = [name for name in typed if form.get(name) == ""]
        if empty:
            raise HTTPException(422, f"{empty[0]}: empty value; leave the field out for its default")

    return check


def query_transform(crop: str | None, rotate: float, mirror: bool, upload: Upload) -> QueryTransform:
    """The transform of the form, held to the uploaded image: 422 naming the value when it does not fit,
    before the upload is stored or anything is recorded."""
    try:
        transform = QueryTransform.parse(crop, rotate, mirror)
        with Image.open(io.BytesIO(upload.data)) as image:
            transform.check(oriented_size(image), repr(upload.name))
    except HandCLIPError as exc:
        raise HTTPException(422, str(exc)) from None
    return transform


def read_upload(file: UploadFile, limits: Limits) -> Upload:
    name = exhibit_name(file.filename)  # the client's name is shown and recorded, never used as a path
    data = file.file.read()
    return Upload(name, data, check_image(data, name, limits))


def thumbnail_url(sha256: str | None) -> str | None:
    return f"/api/v1/images/{sha256}/thumbnail" if sha256 else None


def search_answer(found, gallery) -> dict:
    """The search as JSON for a web client (see the module's docstring for what it leaves out)."""
    info = found.as_dict()
    for query in info["queries"]:
        for c in query["candidates"]:
            c["name"] = display_path(c.pop("path"), c["identity"], gallery.index_dir)
            c["thumbnail"] = thumbnail_url(c["sha256"])
        query["query"] = Path(query["query"]).name
        if query["prepared"]:  # the prepared image by its hashes, never by server path
            query["prepared"] = {k: v for k, v in query["prepared"].items() if k != "path"}
    info["gallery"] = {k: v for k, v in info["gallery"].items() if k != "dir"}
    info["model"] = {"checkpoint": Path(found.model["checkpoint"]).name if found.model["checkpoint"] else None,
                     "checkpoint_sha256": found.model["checkpoint_sha256"]}
    if found.calibration is not None:
        info["calibration"] = found.calibration.public_record(found.by, (found.aspects or {}).get("calibration_pair"))
    info["audit"] = {"seq": found.audit.seq, "hash": found.audit.hash, "anchor": found.audit.anchor,
                     "signed_by": found.audit.key_id}
    info["candidates"] = info["queries"][0]["candidates"]
    info["open_set"] = info["queries"][0]["open_set"]
    info["record"] = found.audit.seq
    info["report"] = None
    return info


@router.post("/api/v1/search", responses=responses(*UPLOAD),
             dependencies=[Depends(single("image", "top_k", "by", "index_type", "report", "case_id", "threshold_lr",
                                          "crop", "rotate", "mirror", "aspect", "mirror_aspect", "gallery_aspect",
                                          "compare",
                                          typed=("top_k", "by", "index_type", "report", "threshold_lr", "crop",
                                                 "rotate", "mirror", "aspect", "mirror_aspect", "gallery_aspect",
                                                 "compare")))])
def search(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("search"))],
           image: Annotated[UploadFile, File(description="the query hand photo (JPEG, PNG, WebP, BMP or TIFF)",
                                              json_schema_extra={"format": "binary"})],
           top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 10,
           by: Annotated[Literal["identity", "image"], Form()] = "identity",
           index_type: Annotated[Literal["auto", "flat", "pca", "ivf", "hnsw"], Form()] = "auto",
           report: Annotated[bool, Form()] = False,
           case_id: Annotated[str | None, Form(max_length=CASE_ID_LIMIT, pattern=CASE_ID_PATTERN,
                                               description="printed on the report; no control or invisible "
                                                           "formatting characters")] = None,
           threshold_lr: Annotated[float, Form(gt=0, le=1e12, allow_inf_nan=False,
                                               description="the open-set answer's threshold: does any candidate's "
                                                           "LR exceed it? (with a calibration)")] = 1.0,
           crop: Annotated[str, Form(max_length=80, pattern=CROP_PATTERN, description="search only this box: x,y,w,h in pixels of "
                                                                       "the photo after its EXIF orientation")] = None,
           rotate: Annotated[float, Form(ge=-MAX_ANGLE, le=MAX_ANGLE, allow_inf_nan=False,
                                         description="degrees clockwise, after the crop")] = 0.0,
           mirror: Annotated[bool, Form(description="swap left and right, after the crop and rotation")] = False,
           aspect: Annotated[Aspect, Form(description="the query's hand aspect")] = None,
           mirror_aspect: Annotated[bool, Form(description="compare the query as the other hand: the model sees "
                                                           "it mirrored with the other side's aspect")] = False,
           gallery_aspect: Annotated[Aspect, Form(description="the gallery aspect to search")] = None,
           compare: Annotated[str, Form(max_length=80, pattern=COMPARE_PATTERN,
                                        description="the report's comparison pages: N for the top N, or ranks "
                                                    "such as 1,4 or 2-5; 0 for none (default: the top 3)")] = None):
    """Rank the gallery for one query photo; ``record`` and ``audit.anchor`` name the audit record it wrote.
    With ``report`` the case report is made and ``report`` is its URL. With a calibration, ``open_set``
    says whether any candidate's LR exceeds ``threshold_lr``, and each candidate's ``words`` give its
    numbers as a person reads them. ``crop``, ``rotate`` and ``mirror`` prepare the photo before it is
    searched (in that order, after its EXIF orientation); a box that leaves the image is refused with 422
    and nothing is recorded. ``aspect``, ``mirror_aspect`` and ``gallery_aspect``: the hand aspects
    compared (docs/method.md, "Aspects of a hand"). ``compare``: which candidates get a comparison page
    in the report (query and candidate side by side); a rank beyond ``top_k`` is refused with 422."""
    try:
        comparison_ranks(compare, top_k, field="compare", top_field="top_k")
    except HandCLIPError as exc:
        return error(422, str(exc))
    upload = read_upload(image, state.limits)
    transform = query_transform(crop, rotate, mirror, upload)
    arguments = {"interface": "serve", "upload": upload.name, "top_k": top_k, "by": by,
                 "crop": crop, "rotate": rotate, "mirror": mirror,
                 "index_type": index_type, "calibration": state.calibration.path if state.calibration else None,
                 "report": report, "case_id": case_id, "threshold_lr": threshold_lr, "api_key": key.id,
                 "aspect": aspect, "mirror_aspect": mirror_aspect, "gallery_aspect": gallery_aspect,
                 "compare": compare}
    found, gallery, report_id = state.search(upload, top_k=top_k, by=by, index_type=index_type, key=key,
                                             arguments=arguments, report=report, case_id=case_id,
                                             threshold_lr=threshold_lr, transform=transform,
                                             aspects={"aspect": aspect, "mirror_aspect": mirror_aspect,
                                                      "gallery_aspect": gallery_aspect}, compare=compare)
    out = search_answer(found, gallery)
    if report_id is not None:
        out["report"] = f"/api/v1/reports/{report_id}"
    return out


@router.get("/api/v1/reports/{report_id}", response_class=FileResponse,
            responses={200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the case report (PDF)"}, **responses(*AUTHED, 404, 422)})
def case_report(state: Annotated[ServiceState, Depends(service)], key: Annotated[ApiKey, Depends(require("search"))],
                report_id: Annotated[str, PathParam(pattern=REPORT_ID)]):
    """The case report of a search: only for the key that asked for it, or a key with the ``review`` role."""
    path = state.report_for(report_id, key)
    if path is None:
        return error(404, "no such case report for this key")
    return FileResponse(path, media_type="application/pdf", filename=path.name)
