"""``handclip search``: rank a gallery's identities (or images) for query hand photos."""

from __future__ import annotations

import argparse

from .inference_options import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="gallery directory made by `handclip enrol`")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMG", help="query hand photo(s)")
    parser.add_argument("--top-k", type=int, default=10, help="candidates per query (default 10)")
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
    parser.add_argument("--report", default=None, metavar="CASE.pdf", help="write a case report (PDF) to sign")
    parser.add_argument("--case-id", default=None, help="case identifier printed on the report")
    parser.add_argument("--examiner", default=None, help="examiner's name for the audit record and report "
                                                         "(default: the OS user)")
    parser.add_argument("--html", default=None, metavar="OUT.html", help="write a page with thumbnails and scores")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write every candidate as JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_inference_arguments(parser)


def _print(search) -> None:
    from ..gallery.results import display_path, printable

    calibrated = search.calibration is not None
    for query in search.queries:
        print(f"query {printable(query.name or display_path(query.query))}  SHA-256 {query.sha256}")
        for c in query.candidates:
            detail = (f"{c.matched}/{c.num_images} images in top hits" if search.by == "identity"
                      else printable(display_path(c.path, c.identity, search.gallery["dir"])))
            weight = ""
            if calibrated:
                bound = f" (at the {c.at_bound} bound)" if c.at_bound else ""
                weight = f"  log10 LR {c.log10_lr:+.2f}{bound}  {c.verbal}"
            print(f"  {c.rank:3d}. {printable(c.identity):<20} {c.score:.4f}{weight}  {detail}")
    print(f"score: {search.score}")
    if calibrated:
        print(f"Hp: {search.propositions['hp']}\nHd: {search.propositions['hd']}")
        print(_calibration_line(search))
    else:
        print(search.statement)
    if search.audit is not None:
        print(f"audit record {search.audit.seq} (SHA-256 {search.audit.hash}) in {search.audit.log}")


def _calibration_line(search) -> str:
    from ..gallery.results import display_path, printable

    cal = search.calibration
    return (f"calibration {printable(display_path(cal.path))} (SHA-256 {cal.sha256[:16]}...): "
            f"{cal.describe(search.by)}")


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


def _write(flag: str, out: str, write) -> None:
    """Run ``write()``; an OS error names the user's path, not the temporary file beside it."""
    from ..errors import HandCLIPError

    try:
        write()
    except OSError as exc:
        raise HandCLIPError(f"cannot write {flag} {out}: {exc.strerror or exc}") from None


def run(args) -> int:
    from ..atomic import atomic_write_json, sha256_file
    from ..errors import HandCLIPError
    from ..gallery.html import write_search_html
    from ..gallery.session import ExaminerSession

    if args.top_k < 1:
        raise HandCLIPError(f"--top-k must be >= 1 (got {args.top_k})")
    for flag, out in (("--html", args.html), ("--json", args.json), ("--report", args.report)):
        _check_output(flag, out)
    session = ExaminerSession.open(args.index, args.checkpoint, args.calibration, device=args.device,
                                   examiner=args.examiner, precision=args.precision, engine=args.engine)
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "debug"}
    search = session.search(args.query, top_k=args.top_k, by=args.by, index_type=args.index_type,
                            arguments=arguments)
    _print(search)
    print(session.encoder.describe_inference())
    checkpoint = session.encoder.checkpoint
    if args.json:
        info = search.as_dict()
        _write("--json", args.json, lambda: atomic_write_json(
            args.json, {**{k: v for k, v in info.items() if k != "queries"},
                        "checkpoint": checkpoint, "results": info["queries"]}))
        print(f"wrote {args.json}")
    if args.html:
        _write("--html", args.html, lambda: write_search_html(
            search.queries, args.html, gallery_dir=str(session.index_dir), by=args.by,
            checkpoint=checkpoint, statement=search.statement,
            propositions=search.propositions, audit=search.audit,
            calibration=_calibration_line(search) if search.calibration else None))
        print(f"wrote {args.html}")
    if args.report:
        _write("--report", args.report, lambda: session.report(search, args.report, case_id=args.case_id))
        print(f"wrote {args.report} (SHA-256 {sha256_file(args.report)})")
    return 0
