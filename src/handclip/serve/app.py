"""The FastAPI application: REST endpoints under ``/api/v1``, the web page at ``/``.

The endpoints live in four route groups, ``routes_search`` (search and case reports),
``routes_gallery`` (enrolment, identities, thumbnails), ``routes_cases`` (a case's searches and
export) and ``routes_images`` (full-resolution images for the side-by-side comparison); keys, roles, the Host check and the security headers in ``security``; error replies in
``replies``. The OpenAPI schema (``/openapi.json``) declares the key schemes and every error status;
there is no ``/docs`` page (it would load its script from a CDN).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from . import routes_cases, routes_gallery, routes_images, routes_search
from .limits import BodySizeLimit
from .replies import install_error_handlers, responses
from .security import LOOPBACK_NAMES, HostCheck, SecurityHeaders
from .state import ServiceState

STATIC = Path(__file__).with_name("static")


def create_app(state: ServiceState, allowed_hosts=LOOPBACK_NAMES) -> FastAPI:
    """The service over ``state``, answering requests for the Host names ``allowed_hosts`` only
    (``security.allowed_hosts`` gives them for the address it listens on)."""
    app = FastAPI(title="HandCLIP examiner service", version=__version__, docs_url=None, redoc_url=None,
                  description="Search and enrol hand photos in one HandCLIP gallery. Every endpoint but health "
                              "needs an API key (X-API-Key or a bearer token) with the endpoint's role.")
    app.state.service = state
    install_error_handlers(app, state)
    app.include_router(routes_search.router)
    app.include_router(routes_gallery.router)
    app.include_router(routes_cases.router)
    app.include_router(routes_images.router)

    @app.get("/api/v1/health", responses=responses(400))
    def health():
        gallery = state.snapshot()
        return {"status": "ok", "version": __version__, "images": len(gallery),
                "identities": len(gallery.identities()), "generation": gallery.commit_state["generation"],
                "calibrated": state.calibration is not None}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodySizeLimit, max_bytes=state.limits.max_request_bytes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HostCheck, hosts=allowed_hosts)
    return app
