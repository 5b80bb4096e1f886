"""``handclip evaluate``: metrics over a manifest's Monte Carlo runs, as JSON, Markdown, PNGs and HTML."""

from __future__ import annotations

from ..errors import DataError


def add_arguments(parser) -> None:
    from ..config_base import INFERENCE_OPTIONS

    source = parser.add_argument_group("model (a trained checkpoint, or a backbone for the zero-shot baseline)")
    source.add_argument("--checkpoint", help="a HandCLIP checkpoint, e.g. RUN/best.pt")
    source.add_argument("--backbone", help="zero-shot: an open_clip model name (ViT-B-16, RN50, tiny-rn, ...)")
    source.add_argument("--weights", help="zero-shot: backbone weights file or open_clip tag (default: random init)")
    source.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="zero-shot input size (default 224 224)")
    source.add_argument("--allow-unsafe-weights", action="store_true",
                        help="allow a pickle/TorchScript weights file whose SHA-256 is not a known official one")
    parser.add_argument("--manifest", required=True, help="protocol manifest CSV (from `handclip prepare`)")
    parser.add_argument("--runs", default="all", help="'all' or comma-separated run indices (default: all)")
    distractors = parser.add_mutually_exclusive_group()
    distractors.add_argument("--gallery-all", action="store_true",
                             help="require the manifest's distractor gallery (prepare 11k with --gallery-all)")
    distractors.add_argument("--no-distractors", action="store_true", help="drop the manifest's distractor gallery images")
    parser.add_argument("--allow-id-overlap", action="store_true",
                        help="accept query/gallery identities that are also training identities (normally refused)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave images that do not decode or are too small out (each named) instead of stopping")
    aspects = parser.add_argument_group("hand aspects (a manifest with several: prepare synthetic --aspects, 11k --aspect all)")
    aspects.add_argument("--query-aspect", help="queries of this aspect (dorsal_r, dorsal_l, palmar_r, palmar_l) ...")
    aspects.add_argument("--gallery-aspect", help="... against the gallery of this aspect")
    aspects.add_argument("--mirror-query", action="store_true",
                         help="mirror the queries left-right (a left hand against right hands); with --aspect-matrix, "
                              "in the cells whose query and gallery sides differ")
    aspects.add_argument("--aspect-matrix", action="store_true",
                         help="every query aspect against every gallery aspect: rank-1, mAP and EER, a table and "
                              "a heat map")
    parser.add_argument("--flip", action="store_true", help="average each feature with its mirror image's")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    parser.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    for flag, option in INFERENCE_OPTIONS.items():  # --precision, --engine
        parser.add_argument(flag, **option)
    parser.add_argument("--out", help="output folder (default: next to the checkpoint, eval-<manifest name>)")
    parser.add_argument("--show", type=int, default=8, help="queries shown in the ranked-list picture (0: no picture)")
    parser.add_argument("--top-k", type=int, default=10, help="gallery images per query in the ranked-list picture")
    forensic = parser.add_argument_group("forensic figures (verification, open-set identification, likelihood ratios)")
    forensic.add_argument("--no-forensic", action="store_true", help="CMC / mAP only")
    forensic.add_argument("--calibration-method", choices=["logit", "kde", "isotonic"], default="logit",
                          help="lir calibrator for the cross-calibrated LRs (default logit)")
    forensic.add_argument("--calibration-folds", type=int, default=2,
                          help="identity folds per run for cross-calibration (default 2)")
    forensic.add_argument("--intervals", type=int, default=100, metavar="N",
                          help="identity-level bootstrap replicates for the 95%% intervals of EER, FNMR@FMR, "
                               "FNIR@FPIR and Cllr (default 100; 0: no intervals)")
    forensic.add_argument("--calibration", metavar="JSON",
                          help="also judge this stored calibration (from `handclip calibrate`, same model) on every run")


def _parse_runs(text: str):
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--runs must be 'all' or comma-separated integers, not '{text}'") from None


def _eval_config(args):
    """The evaluation options as an EvalConfig; a bad value is one line naming the option."""
    from pydantic import ValidationError

    from ..config import EvalConfig, shorten

    try:
        return EvalConfig(batch_size=args.batch_size, flip=args.flip, rerank=args.rerank, metric=args.metric)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "an option"
        raise DataError(f"{option}: {err['msg']} (got {shorten(err.get('input'))})") from None


def _interval_config(args):
    from pydantic import ValidationError

    from ..config import IntervalConfig

    try:
        return IntervalConfig(replicates=args.intervals)
    except ValidationError as exc:
        raise DataError(f"--intervals: {exc.errors()[0]['msg']} (got {args.intervals})") from None


def run(args) -> int:
    from ..config import MAX_IMAGE_SIDE
    from ..preflight import require_file, weights_is_path

    if args.show < 0 or args.top_k < 1:
        raise DataError(f"--show must be >= 0 and --top-k >= 1 (got --show {args.show}, --top-k {args.top_k})")
    eval_cfg = _eval_config(args)
    if not 2 <= args.calibration_folds <= 1000:
        raise DataError(f"--calibration-folds must be from 2 to 1000 (got {args.calibration_folds})")
    if args.image_size is not None and not all(16 <= side <= MAX_IMAGE_SIDE for side in args.image_size):
        raise DataError(f"--image-size {args.image_size[0]} {args.image_size[1]}: each side must be from 16 "
                        f"to {MAX_IMAGE_SIDE} pixels")
    runs = _parse_runs(args.runs)
    require_file("--manifest", args.manifest, "manifest CSV")
    require_file("--checkpoint", args.checkpoint, "checkpoint")
    require_file("--calibration", args.calibration, "calibration file")
    if args.weights and weights_is_path(args.weights):
        require_file("--weights", args.weights, "weights file")
    from .. import api

    if args.aspect_matrix:
        if args.query_aspect or args.gallery_aspect:
            raise DataError("--aspect-matrix evaluates every aspect pair; leave out --query-aspect and --gallery-aspect")
        matrix = api.aspect_matrix_report(
            args.manifest, args.out, checkpoint=args.checkpoint, backbone=args.backbone, weights=args.weights,
            image_size=args.image_size, allow_unsafe_weights=args.allow_unsafe_weights, eval_cfg=eval_cfg, runs=runs,
            allow_id_overlap=args.allow_id_overlap, mirror_query=args.mirror_query, device=args.device, progress=True,
            skip_bad=args.skip_bad, precision=args.precision, engine=args.engine)
        for line in matrix.lines():
            print(line)
        return 0
    report = api.evaluate_and_report(
        args.manifest, args.out, checkpoint=args.checkpoint, backbone=args.backbone, weights=args.weights,
        image_size=args.image_size, allow_unsafe_weights=args.allow_unsafe_weights, eval_cfg=eval_cfg, runs=runs,
        distractors=not args.no_distractors, require_distractors=args.gallery_all,
        allow_id_overlap=args.allow_id_overlap, forensic=not args.no_forensic,
        calibration_method=args.calibration_method, calibration_folds=args.calibration_folds,
        calibration=args.calibration, queries_shown=args.show, top_k=args.top_k, device=args.device, progress=True,
        skip_bad=args.skip_bad, query_aspect=args.query_aspect, gallery_aspect=args.gallery_aspect,
        mirror_query=args.mirror_query, precision=args.precision, engine=args.engine,
        intervals=_interval_config(args))
    for line in report.lines():
        print(line)
    return 0
