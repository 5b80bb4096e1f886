"""``handclip calibrate``: fit score -> likelihood-ratio maps for a model on a manifest's identities."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    from ..config_base import INFERENCE_OPTIONS

    parser.add_argument("--checkpoint", required=True, help="the HandCLIP checkpoint whose scores to calibrate")
    people = parser.add_mutually_exclusive_group(required=True)
    people.add_argument("--images", metavar="DIR",
                        help="a folder of per-identity folders (as for `handclip enrol`) of people the model did not "
                             "train on; every image is used")
    people.add_argument("--manifest", help="or a protocol manifest CSV whose --splits hold people the model did "
                                           "not train on")
    parser.add_argument("--method", choices=["logit", "kde", "isotonic"], default="logit",
                        help="lir calibrator: logistic regression (default), KDE or isotonic (PAV)")
    parser.add_argument("--out", help="calibration JSON to write (default: calibration.json next to the checkpoint)")
    parser.add_argument("--splits", default="query,gallery",
                        help="manifest splits whose images to use (default: query,gallery = the test identities)")
    parser.add_argument("--folds", type=int, default=5, help="identity folds for the cross-validated Cllr (default 5)")
    parser.add_argument("--aspect-pairs", action="store_true",
                        help="one map per (query aspect, gallery aspect) pair of the manifest's aspects, and per "
                             "cross-side pair with the query mirrored; a search then uses its own pair's map only")
    parser.add_argument("--no-mirror", action="store_true", help="with --aspect-pairs: fit no mirrored pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    for flag, option in INFERENCE_OPTIONS.items():  # --precision, --engine
        parser.add_argument(flag, **option)
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave images that do not decode or are too small out (each named) instead of stopping")


def run(args) -> int:
    from ..config import MAX_BATCH, MAX_SEED
    from ..errors import HandCLIPError
    from ..preflight import require_file, require_folder

    if not 2 <= args.folds <= 1000:
        raise HandCLIPError(f"--folds must be from 2 to 1000 (got {args.folds})")
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise HandCLIPError(f"--batch-size must be from 1 to {MAX_BATCH} (got {args.batch_size})")
    if not 0 <= args.seed <= MAX_SEED:
        raise HandCLIPError(f"--seed must be from 0 to {MAX_SEED} (got {args.seed})")
    splits = [part.strip() for part in args.splits.split(",") if part.strip()]
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "calibration.json"
    require_file("--checkpoint", args.checkpoint, "checkpoint")
    require_file("--manifest", args.manifest, "manifest CSV")
    require_folder("--images", args.images, "folder of per-identity folders")
    from .. import api

    calibration = api.calibrate(args.checkpoint, args.manifest, method=args.method, splits=splits, folds=args.folds,
                                seed=args.seed, device=args.device, batch_size=args.batch_size, progress=True,
                                out=out, images=args.images, skip_bad=args.skip_bad, aspect_pairs=args.aspect_pairs,
                                mirror=not args.no_mirror, precision=args.precision, engine=args.engine)
    summary = calibration.summary
    print(f"calibrated {args.checkpoint} ({args.method}) on {summary['n_identities']} identities, "
          f"{summary['n_images']} images of {args.manifest or args.images}")
    for line in calibration.describe():
        print(line)
    inference = summary["inference"]
    print(f"features: {inference['precision']} on {inference['device']} with {inference['engine']} "
          f"({inference['why']})")
    print(f"wrote {out}")
    return 0
