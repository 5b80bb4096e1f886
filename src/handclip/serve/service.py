"""Running the examiner web service over one gallery (what ``handclip serve`` runs), or building it as
an ASGI app to run in another server.

The web stack (FastAPI, uvicorn) is imported when a service is built, not with this module, so that
``handclip.api`` loads it only for the workflows that serve.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from .limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES, Limits
from .state import ServiceState


def serve_app(index_dir: str | os.PathLike, checkpoint=None, calibration=None, **settings):
    """The examiner web service over a gallery as an ASGI app (``uvicorn.run(app)``); ``settings`` are
    ``ServiceState``'s (``device``, ``limits``, ``batch_size``, ``precision``, ``engine``)."""
    from .app import create_app

    return create_app(ServiceState(index_dir, checkpoint=checkpoint, calibration=calibration, **settings))


def serve(index_dir: str | os.PathLike, checkpoint=None, calibration=None, *, host: str = "127.0.0.1",
          port: int = 8080, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
          batch_size: int = 32, device: str = "auto", tls_cert=None, tls_key=None, allowed_host=(),
          precision: str = "auto", engine: str = "torch", log: Callable[[str], None] | None = None) -> None:
    """Serve the gallery at ``index_dir`` (created on the first enrolment when ``checkpoint`` is given) on
    ``host``:``port`` until the process is stopped, over HTTPS with ``tls_cert`` and ``tls_key``, answering
    the Host names of ``security.allowed_hosts`` plus ``allowed_host``. ``log`` receives what an operator
    should know first: that no API key exists yet, how features are computed (``precision``, ``engine``:
    ``Encoder.computed_with``) and where the service listens; a warning for a
    service other machines can reach goes to standard error."""
    import sys

    import uvicorn

    from .app import create_app
    from .security import allowed_hosts, exposure_warning

    say = log or (lambda line: None)
    # Refused keys and internal errors are logged by "handclip.serve" with a time, beside uvicorn's own lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss's loader reports at INFO each CPU build it tries and does not find (ModuleNotFoundError lines that
    # read as failures); only its warnings and errors are the operator's business.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    state = ServiceState(index_dir, checkpoint=checkpoint, calibration=calibration, device=device,
                         limits=Limits(max_request_bytes, max_pixels), batch_size=batch_size, precision=precision,
                         engine=engine)
    if not state.keys.keys():
        say(f"note: no API keys yet; add one with `handclip serve-keys add --index {index_dir} --name NAME "
            "--role search --role enrol`")
    say(state.encoder.describe_inference())
    warning = exposure_warning(host, tls=bool(tls_cert))
    if warning:
        print(f"handclip: warning: {warning}", file=sys.stderr)
    say(f"serving {index_dir} on {'https' if tls_cert else 'http'}://{host}:{port}/ (OpenAPI schema at /openapi.json)")
    uvicorn.run(create_app(state, allowed_hosts(host, allowed_host)), host=host, port=port, log_level="info",
                ssl_certfile=tls_cert, ssl_keyfile=tls_key)


__all__ = ["serve", "serve_app"]
