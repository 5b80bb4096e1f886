"""``handclip serve``: the examiner web service (REST API + web page) over one gallery."""

from __future__ import annotations

import argparse

from .inference_options import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES

    parser.add_argument("--index", required=True, help="gallery directory (created on first enrolment with --checkpoint)")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the one the gallery was enrolled with)")
    parser.add_argument("--calibration", default=None, metavar="CAL.json",
                        help="score calibration: candidates get bounded log10 likelihood ratios, as with `handclip search`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_BYTES / 2**20,
                        help="largest request body accepted, in MiB (default %(default)g)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest image accepted, in pixels (default %(default)d)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per enrolment batch; each is committed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_inference_arguments(parser)


def run(args) -> int:
    import logging

    import uvicorn

    from ..errors import HandCLIPError
    from ..serve.app import create_app
    from ..serve.limits import Limits
    from ..serve.state import ServiceState

    if not 0 < args.port < 65536:
        raise HandCLIPError(f"--port must be 1-65535 (got {args.port})")
    if args.max_request_mb <= 0 or args.max_pixels < 1 or args.batch_size < 1:
        raise HandCLIPError("--max-request-mb, --max-pixels and --batch-size must be positive")
    # Refused keys and internal errors are logged by "handclip.serve" with a time, beside uvicorn's own lines.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(int(args.max_request_mb * 2**20), args.max_pixels)
    state = ServiceState(args.index, checkpoint=args.checkpoint, calibration=args.calibration, device=args.device,
                         limits=limits, batch_size=args.batch_size, precision=args.precision, engine=args.engine)
    if not state.keys.keys():
        print(f"note: no API keys yet; add one with `handclip serve-keys add --index {args.index} --name NAME "
              "--role search --role enrol`")
    print(state.encoder.describe_inference())
    print(f"serving {args.index} on http://{args.host}:{args.port}/ (OpenAPI schema at /openapi.json)")
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")
    return 0
