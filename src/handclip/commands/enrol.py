"""``handclip enrol``: embed hand photos with a trained model and add them to a gallery on disk."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config_base import INFERENCE_OPTIONS

    parser.add_argument("--checkpoint", required=True, help="HandCLIP checkpoint (.pt) written by `handclip train`")
    parser.add_argument("--images", required=True,
                        help="directory of per-identity folders (identity = folder name) or a manifest CSV (identity = pid)")
    parser.add_argument("--index", required=True, help="gallery directory (created on first enrolment, appended to later)")
    parser.add_argument("--split", default=None, help="with a manifest: enrol only this split (e.g. gallery)")
    parser.add_argument("--aspect", default=None,
                        help="hand aspect of the images (dorsal_r, dorsal_l, palmar_r, palmar_l), stored with each "
                             "row (default: a manifest's own aspects; none for a folder)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch; each batch is committed (default 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    for flag, option in INFERENCE_OPTIONS.items():  # --precision, --engine
        parser.add_argument(flag, **option)
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave images that do not decode or are too small out (each named, and listed in "
                             "GALLERY/skipped_images.txt) instead of stopping")
    parser.add_argument("--examiner", default=None, help="examiner's name for the audit record (default: the OS user)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..errors import HandCLIPError
    from ..preflight import require_file, require_file_or_folder

    if args.batch_size < 1:
        raise HandCLIPError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if Path(args.index).exists() and not Path(args.index).is_dir():
        raise HandCLIPError(f"--index {args.index} is a file; give the gallery folder (created on first enrolment)")
    require_file("--checkpoint", args.checkpoint, "checkpoint")
    require_file_or_folder("--images", args.images, "a folder of per-identity folders, or a manifest CSV")
    from .. import api

    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "debug"}
    report = api.enrol_images(args.index, args.images, args.checkpoint, split=args.split, aspect=args.aspect,
                              batch_size=args.batch_size, device=args.device, skip_bad=args.skip_bad,
                              examiner=args.examiner, arguments=arguments, progress=not args.no_progress,
                              precision=args.precision, engine=args.engine)
    for line in report.lines():
        print(line)
    return 0
