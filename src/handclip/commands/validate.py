"""``handclip validate``: test a checkpoint and its calibration against a laboratory's validation plan."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the HandCLIP checkpoint to validate")
    parser.add_argument("--calibration", required=True, help="its calibration JSON (handclip calibrate)")
    parser.add_argument("--manifest", required=True,
                        help="manifest CSV of the validation people: none of them in the calibration, none trained on")
    parser.add_argument("--criteria", required=True,
                        help="the validation plan, written before the run (configs/validation/example_criteria.yaml)")
    parser.add_argument("--out", required=True, help="folder for report.json, report.html, report.pdf and the graphs")
    parser.add_argument("--splits", default="query,gallery",
                        help="manifest splits whose images to use (default: query,gallery = the test identities)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--index", metavar="GALLERY",
                        help="also write an audit record of this validation (file hashes, decision) into this "
                             "gallery's audit log")
    parser.add_argument("--examiner", help="who ran the validation (in the audit record with --index)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave unreadable images out (counted as failures to acquire) instead of stopping")


def run(args) -> int:
    from ..config import MAX_BATCH
    from ..errors import HandCLIPError
    from ..preflight import require_file, require_folder

    if not 1 <= args.batch_size <= MAX_BATCH:
        raise HandCLIPError(f"--batch-size must be from 1 to {MAX_BATCH} (got {args.batch_size})")
    splits = [part.strip() for part in args.splits.split(",") if part.strip()]
    for flag, path, what in (("--checkpoint", args.checkpoint, "checkpoint"), ("--calibration", args.calibration,
                             "calibration JSON"), ("--manifest", args.manifest, "manifest CSV"),
                             ("--criteria", args.criteria, "validation plan YAML")):
        require_file(flag, path, what)
    if args.index is not None:
        require_folder("--index", args.index, "gallery folder", "make one with `handclip enrol`")
    from .. import api

    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "debug"}
    result = api.validate_and_record(args.checkpoint, args.calibration, args.manifest, args.criteria, args.out,
                                     index=args.index, examiner=args.examiner, arguments=arguments, splits=splits,
                                     device=args.device, batch_size=args.batch_size, skip_bad=args.skip_bad,
                                     progress=True)
    for row in result.matrix:
        figure = row.result or {}
        shown = ("not assessed" if not figure else "not computed" if figure["estimate"] is None
                 else f"{figure['estimate']:.3g} [{figure['low']:.3g}, {figure['high']:.3g}]")
        decision = {True: "pass", False: "FAIL", None: "-"}[row.passed]
        print(f"{row.characteristic:>20} {row.metric:<18} {row.condition:<10} {row.criterion:<8} {shown:<26} {decision}")
    print(("PASSED: every assessed criterion met" if result.passed else "NOT PASSED: see the matrix")
          + f"; wrote {args.out}/report.html, report.pdf, report.json")
    if result.audit is not None:
        print(f"audit record {result.audit.anchor} written to {args.index}")
    return 0
