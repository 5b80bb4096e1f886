"""``handclip search``: rank a gallery's identities (or images) for query hand photos."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config_base import INFERENCE_OPTIONS

    parser.add_argument("--index", required=True, help="gallery directory made by `handclip enrol`")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMG", help="query hand photo(s)")
    parser.add_argument("--top-k", type=int, default=10, help="candidates per query (default 10)")
    parser.add_argument("--aspect", default=None,
                        help="the query's hand aspect (dorsal_r, dorsal_l, palmar_r, palmar_l); the gallery images of "
                             "the aspect it shows are searched, and a per-pair calibration weighs that pair only")
    parser.add_argument("--mirror-aspect", action="store_true",
                        help="compare the query as the other hand: the model sees it mirrored with the aspect of "
                             "the other side, the gallery aspect and calibration pair follow (a left hand against "
                             "right hands; not the examiner's --mirror, which prepares and stores the query)")
    parser.add_argument("--gallery-aspect", default=None,
                        help="search the gallery images of this aspect (default: the aspect the query shows)")
    parser.add_argument("--by", choices=["identity", "image"], default="identity",
                        help="rank people (best cosine similarity over their images, default) or single images")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the one the gallery was enrolled with)")
    parser.add_argument("--index-type", choices=["auto", "flat", "pca", "ivf", "hnsw"], default="auto",
                        help="exact search (flat), or a shortlist from an approximate index re-scored exactly "
                             "(pca: full scan of 256-d projections; ivf, hnsw: faster, lower recall); "
                             "auto: flat up to 200,000 images, pca above unless its self-check finds it unfit")
    parser.add_argument("--calibration", default=None, metavar="CAL.json",
                        help="score calibration for this model: gives each candidate a bounded log10 likelihood "
                             "ratio and its verbal equivalent (--by identity uses its 'identity' kind)")
    parser.add_argument("--threshold-lr", type=float, default=1.0, metavar="LR",
                        help="with --calibration: the open-set answer says whether any candidate's LR exceeds "
                             "this (default 1), or that none does")
    parser.add_argument("--crop", default=None, metavar="X,Y,W,H",
                        help="search only this box of each query: x, y, width, height in pixels of the photo as "
                             "shown (EXIF orientation applied), (0,0) its top-left corner")
    parser.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                        help="turn each query this many degrees clockwise after the crop (-360 to 360; quarter "
                             "turns are lossless)")
    parser.add_argument("--mirror", action="store_true",
                        help="swap left and right after the crop and rotation (a left-hand exhibit against "
                             "right-hand photos)")
    parser.add_argument("--report", default=None, metavar="CASE.pdf", help="write a case report (PDF) to sign")
    parser.add_argument("--compare", default=None, metavar="N|RANKS",
                        help="comparison pages in the report (query and candidate side by side, large): N for the "
                             "top N, or ranks such as 1,4 or 2-5; 0 for none (default: the top 3)")
    parser.add_argument("--case-id", default=None, help="case identifier printed on the report")
    parser.add_argument("--examiner", default=None, help="examiner's name for the audit record and report "
                                                         "(default: the OS user)")
    parser.add_argument("--html", default=None, metavar="OUT.html", help="write a page with thumbnails and scores")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write every candidate as JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    for flag, option in INFERENCE_OPTIONS.items():  # --precision, --engine
        parser.add_argument(flag, **option)


def _check_output(flag: str, out: str | None) -> None:
    """Refuse an output path that cannot be a file before searching (naming the user's path)."""
    from pathlib import Path

    from ..errors import HandCLIPError

    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise HandCLIPError(f"{flag} {out} is a directory; give a file name (e.g. {path / 'results'}"
                            f"{'.html' if flag == '--html' else '.json' if flag == '--json' else '.pdf'})")
    if path.parent.exists() and not path.parent.is_dir():
        raise HandCLIPError(f"{flag} {out}: {path.parent} is not a directory")


def run(args) -> int:
    from ..errors import HandCLIPError

    if args.top_k < 1:
        raise HandCLIPError(f"--top-k must be >= 1 (got {args.top_k})")
    if args.compare is not None and not args.report:
        raise HandCLIPError("--compare chooses the report's comparison pages; give --report CASE.pdf with it")
    for flag, out in (("--html", args.html), ("--json", args.json), ("--report", args.report)):
        _check_output(flag, out)
    from ..preflight import require_file, require_folder

    require_folder("--index", args.index, "gallery folder", "make one with `handclip enrol`")
    require_file("--checkpoint", args.checkpoint, "checkpoint")
    require_file("--calibration", args.calibration, "calibration file")
    from .. import api

    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "debug"}
    api.search_gallery(args.index, args.query, checkpoint=args.checkpoint, calibration=args.calibration,
                       top_k=args.top_k, by=args.by, index_type=args.index_type, device=args.device,
                       examiner=args.examiner, arguments=arguments, json=args.json, html=args.html,
                       aspect=args.aspect, mirror_aspect=args.mirror_aspect, gallery_aspect=args.gallery_aspect,
                       report=args.report, case_id=args.case_id, threshold_lr=args.threshold_lr,
                       precision=args.precision, engine=args.engine, crop=args.crop, rotate=args.rotate,
                       mirror=args.mirror, compare=args.compare, log=print)
    return 0
