"""``handclip scan --manifest FILE``: check every image a manifest points at, report all problems."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest CSV written by `handclip prepare`")
    parser.add_argument("--min-size", type=int, default=16, help="smallest acceptable image side in pixels (default 16)")
    parser.add_argument("--allow-id-overlap", action="store_true",
                        help="accept query/gallery identities that are also training identities (normally refused)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: 4 per CPU core, max 32)")


def run(args) -> int:
    from ..errors import DataError

    if not 1 <= args.min_size <= 100_000:
        raise DataError(f"--min-size must be from 1 to 100000 (got {args.min_size})")
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise DataError(f"--workers must be from 1 to 256 (got {args.workers})")
    from .. import api

    scan = api.scan_manifest(args.manifest, min_size=args.min_size, workers=args.workers,
                             allow_id_overlap=args.allow_id_overlap)
    for problem in scan.problems:
        print(f"{problem.path}: {problem.reason}")
    if scan.problems:
        print(f"{len(scan.problems)} of {scan.images} images have problems ({scan.seconds:.1f} s); `handclip "
              f"prepare` again leaves them out, or --skip-bad makes train, evaluate and calibrate leave them out")
        return 1
    print(f"all {scan.images} images are usable ({scan.seconds:.1f} s)")
    return 0
