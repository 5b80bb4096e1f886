"""``handclip evaluate``: metrics over a manifest's Monte Carlo runs, as JSON, Markdown, PNGs and HTML."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from .inference_options import add_inference_arguments


def add_arguments(parser) -> None:
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
    parser.add_argument("--flip", action="store_true", help="average each feature with its mirror image's")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    parser.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    add_inference_arguments(parser)
    parser.add_argument("--out", help="output folder (default: next to the checkpoint, eval-<manifest name>)")
    parser.add_argument("--show", type=int, default=8, help="queries shown in the ranked-list picture (0: no picture)")
    parser.add_argument("--top-k", type=int, default=10, help="gallery images per query in the ranked-list picture")
    forensic = parser.add_argument_group("forensic figures (verification, open-set identification, likelihood ratios)")
    forensic.add_argument("--no-forensic", action="store_true", help="CMC / mAP only")
    forensic.add_argument("--calibration-method", choices=["logit", "kde", "isotonic"], default="logit",
                          help="lir calibrator for the cross-calibrated LRs (default logit)")
    forensic.add_argument("--calibration-folds", type=int, default=2,
                          help="identity folds per run for cross-calibration (default 2)")
    forensic.add_argument("--calibration", metavar="JSON",
                          help="also judge this stored calibration (from `handclip calibrate`, same model) on every run")


def _parse_runs(text: str):
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--runs must be 'all' or comma-separated integers, not '{text}'") from None


def _training_history(checkpoint) -> list | None:
    if checkpoint is None:
        return None
    log = Path(checkpoint).parent / "metrics.jsonl"
    if not log.is_file():
        return None
    history = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return history or None


def forensic_summary_lines(forensic) -> list[str]:
    """EER, FNMR@FMR, FNIR@FPIR, Cllr for the terminal (the report has the rest)."""
    agg = forensic.aggregate

    def rate(key: str) -> str:
        entry = agg.get(key)
        return "n/a" if entry is None else f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"

    lines = [f"  EER: {rate('eer')}  FNMR@FMR=0.01: {rate('fnmr@fmr=0.01')}  FNMR@FMR=0.001: {rate('fnmr@fmr=0.001')}",
             f"  FNIR@FPIR=0.1: {rate('fnir@fpir=0.1')}  FNIR@FPIR=0.01: {rate('fnir@fpir=0.01')}  "
             f"FNIR@FPIR=0.003: {rate('fnir@fpir=0.003')}"]
    if agg.get("cllr") is not None:
        lines.append(f"  Cllr: {agg['cllr']['mean']:.3f} ± {agg['cllr']['std']:.3f}  Cllr_min: "
                     f"{agg['cllr_min']['mean']:.3f}  Cllr_cal: {agg['cllr_cal']['mean']:.3f}  log10 LR from "
                     f"{agg['log10_lr_min']['mean']:.2f} to {agg['log10_lr_max']['mean']:.2f}")
    if agg.get("stored_cllr") is not None:
        lines.append(f"  stored calibration: Cllr {agg['stored_cllr']['mean']:.3f} ± {agg['stored_cllr']['std']:.3f}  "
                     f"Cllr_cal {agg['stored_cllr_cal']['mean']:.3f}")
    for note in forensic.notes:
        lines.append(f"  note: {note}")
    return lines


def load_encoder(args):
    """A trained checkpoint, or a backbone with its (pretrained or random) weights for the zero-shot baseline."""
    from ..model.inference import Encoder

    if args.checkpoint is not None and args.backbone is not None:
        raise DataError("give either a checkpoint or a backbone for a zero-shot evaluation, not both")
    if args.checkpoint is not None:
        if args.weights is not None or args.image_size is not None:
            raise DataError("weights and image size are for a zero-shot backbone; a checkpoint brings its own")
        return Encoder.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                       engine=args.engine)
    if args.backbone is None:
        raise DataError("nothing to evaluate: give --checkpoint, or --backbone (with --weights) for zero-shot")
    return Encoder.zero_shot(args.backbone, args.weights, args.image_size, args.allow_unsafe_weights,
                             device=args.device, precision=args.precision, engine=args.engine)


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


def run(args) -> int:
    from ..data.manifest import Manifest
    from ..evaluate.metrics import METRIC_KEYS
    from ..evaluate.protocol import evaluate_manifest
    from ..evaluate.references import subset_key, subset_title
    from ..evaluate.report import check_output_folder, write_evaluation_outputs

    if args.show < 0 or args.top_k < 1:
        raise DataError(f"--show must be >= 0 and --top-k >= 1 (got --show {args.show}, --top-k {args.top_k})")
    eval_cfg = _eval_config(args)
    if not 2 <= args.calibration_folds <= 1000:
        raise DataError(f"--calibration-folds must be from 2 to 1000 (got {args.calibration_folds})")
    if args.image_size is not None:
        from ..config import MAX_IMAGE_SIDE

        if not all(16 <= side <= MAX_IMAGE_SIDE for side in args.image_size):
            raise DataError(f"--image-size {args.image_size[0]} {args.image_size[1]}: each side must be from 16 "
                            f"to {MAX_IMAGE_SIDE} pixels")
    manifest = Manifest.read(args.manifest)
    manifest.check_identity_overlap(args.allow_id_overlap, f"manifest {args.manifest}", "pass --allow-id-overlap")
    runs = _parse_runs(args.runs)
    has_distractors = any(r.is_distractor for r in manifest.records)
    if args.gallery_all and not has_distractors:
        raise DataError(f"{args.manifest} has no distractor gallery; prepare it with --gallery-all")
    if args.out:
        out = Path(args.out)
    elif args.checkpoint:
        out = Path(args.checkpoint).parent / f"eval-{Path(args.manifest).stem}"
    else:
        out = Path(f"eval-zeroshot-{Path(args.manifest).stem}")
    check_output_folder(out)  # before minutes of encoding, not after
    encoder = load_encoder(args)
    label = encoder.label
    calibration = None
    if args.calibration:
        from ..forensic.calibration import ScoreCalibration

        if args.no_forensic:
            raise DataError("--calibration is judged with the forensic figures; drop --no-forensic")
        calibration = ScoreCalibration.load(args.calibration)
        calibration.check_model(encoder.fingerprint())
    result = evaluate_manifest(encoder, manifest, eval_cfg, runs=runs, distractors=not args.no_distractors,
                               progress=True, keep_distances=True)
    subsets = sorted({subset_key(r.dataset, r.subset) for r in manifest.records if not r.is_distractor})
    title = "Evaluation on " + ", ".join(subset_title(s) for s in subsets)
    forensic = None
    if not args.no_forensic:
        from ..evaluate.forensic import forensic_evaluation


        forensic = forensic_evaluation(result, method=args.calibration_method, folds=args.calibration_folds,
                                       progress=True, calibration=calibration)
    write_evaluation_outputs(result, out, title, label, args.manifest, _training_history(args.checkpoint),
                             queries_shown=args.show, top_k=args.top_k, forensic=forensic)
    agg = result.aggregate
    print(f"{label} on {args.manifest}: {len(result.per_run)} run(s), {result.num_images_encoded} images encoded")
    for key in METRIC_KEYS:
        print(f"  {key:>6}: {100 * agg[key]['mean']:6.2f} ± {100 * agg[key]['std']:.2f}")
    if forensic is not None:
        for line in forensic_summary_lines(forensic):
            print(line)
    print(encoder.describe_inference())
    print(f"report: {out / 'report.html'}")
    return 0
