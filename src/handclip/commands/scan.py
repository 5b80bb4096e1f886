"""``handclip scan --manifest FILE``: check every image a manifest points at, report all problems."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest CSV written by `handclip prepare`")
    parser.add_argument("--min-size", type=int, default=16, help="smallest acceptable image side in pixels (default 16)")
    parser.add_argument("--allow-id-overlap", action="store_true",
                        help="accept query/gallery identities that are also training identities (normally refused)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: 4 per CPU core, max 32)")


def run(args) -> int:
    from ..data.images import scan_images
    from ..data.manifest import Manifest
    from ..errors import DataError

    if not 1 <= args.min_size <= 100_000:
        raise DataError(f"--min-size must be from 1 to 100000 (got {args.min_size})")
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise DataError(f"--workers must be from 1 to 256 (got {args.workers})")
    manifest = Manifest.read(args.manifest)
    manifest.check_identity_overlap(args.allow_id_overlap, f"manifest {args.manifest}", "pass --allow-id-overlap")
    paths = manifest.paths()
    start = time.perf_counter()
    problems = scan_images(paths, min_size=args.min_size, workers=args.workers)
    elapsed = time.perf_counter() - start
    for problem in problems:
        print(f"{problem.path}: {problem.reason}")
    if problems:
        print(f"{len(problems)} of {len(paths)} images have problems ({elapsed:.1f} s)")
        return 1
    print(f"all {len(paths)} images are usable ({elapsed:.1f} s)")
    return 0
