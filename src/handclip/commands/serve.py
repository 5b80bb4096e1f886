"""``handclip serve``: the examiner web service (REST API + web page) over one gallery."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config_base import INFERENCE_OPTIONS
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
    for flag, option in INFERENCE_OPTIONS.items():  # --precision, --engine
        parser.add_argument(flag, **option)
    parser.add_argument("--tls-cert", default=None, metavar="CERT.pem", help="serve HTTPS with this certificate "
                        "(with --tls-key); or put a TLS reverse proxy in front (docs/web-api.md)")
    parser.add_argument("--tls-key", default=None, metavar="KEY.pem", help="the certificate's private key")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host name clients use besides the loopback names and --host (repeat; e.g. the "
                             "name a reverse proxy forwards)")


def run(args) -> int:
    from ..errors import HandCLIPError

    if not 0 < args.port < 65536:
        raise HandCLIPError(f"--port must be 1-65535 (got {args.port})")
    if args.max_request_mb <= 0 or args.max_pixels < 1 or args.batch_size < 1:
        raise HandCLIPError("--max-request-mb, --max-pixels and --batch-size must be positive")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise HandCLIPError("--tls-cert and --tls-key go together")
    from ..preflight import require_file

    require_file("--checkpoint", args.checkpoint, "checkpoint")
    require_file("--calibration", args.calibration, "calibration file")
    from .. import api

    api.serve(args.index, args.checkpoint, args.calibration, host=args.host, port=args.port,
              max_request_bytes=int(args.max_request_mb * 2**20), max_pixels=args.max_pixels,
              batch_size=args.batch_size, device=args.device, tls_cert=args.tls_cert, tls_key=args.tls_key,
              allowed_host=args.allowed_host, precision=args.precision, engine=args.engine, log=print)
    return 0
