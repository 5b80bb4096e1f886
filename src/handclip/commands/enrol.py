"""``handclip enrol``: embed hand photos with a trained model and add them to a gallery on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

from .inference_options import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="HandCLIP checkpoint (.pt) written by `handclip train`")
    parser.add_argument("--images", required=True,
                        help="directory of per-identity folders (identity = folder name) or a manifest CSV (identity = pid)")
    parser.add_argument("--index", required=True, help="gallery directory (created on first enrolment, appended to later)")
    parser.add_argument("--split", default=None, help="with a manifest: enrol only this split (e.g. gallery)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch; each batch is committed (default 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_inference_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable or too-small images (listed in GALLERY/skipped_images.txt) instead of stopping")
    parser.add_argument("--examiner", default=None, help="examiner's name for the audit record (default: the OS user)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..atomic import atomic_write_text
    from ..errors import HandCLIPError
    from ..gallery.enrol import check_images, collect_images
    from ..gallery.metadata import GALLERY_FILE
    from ..gallery.results import printable
    from ..gallery.session import ExaminerSession

    if args.batch_size < 1:
        raise HandCLIPError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if Path(args.index).exists() and not Path(args.index).is_dir():
        raise HandCLIPError(f"--index {args.index} is a file; give the gallery folder (created on first enrolment)")
    items = collect_images(args.images, split=args.split)
    checked = not args.skip_bad and not (Path(args.index) / GALLERY_FILE).exists()
    if checked:  # before the gallery is created: a failed enrolment leaves no empty gallery
        check_images([item.path for item in items], False, "gallery")
    session = ExaminerSession.open(args.index, args.checkpoint, device=args.device, create=True,
                                   examiner=args.examiner, batch_size=args.batch_size,
                                   precision=args.precision, engine=args.engine)
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "debug"}
    summary = session.enrol(items, arguments=arguments, skip_bad=args.skip_bad, progress=not args.no_progress,
                            images_checked=checked)
    if summary.skipped_bad:
        listing = "".join(f"{p.path}\t{p.reason}\n" for p in summary.skipped_bad)
        atomic_write_text(session.index_dir / "skipped_images.txt", listing)
        print(f"left out {len(summary.skipped_bad)} unusable image(s), listed in {session.index_dir / 'skipped_images.txt'}")
    for same in summary.other_identity[:10]:
        print(f"not enrolled: {printable(same.path)} ({printable(same.identity)}) has the same content as "
              f"{printable(same.enrolled_path)}, enrolled as {printable(same.enrolled_identity)}")
    if len(summary.other_identity) > 10:
        print(f"not enrolled: {len(summary.other_identity) - 10} more image(s) already enrolled under another identity")
    if summary.changed:
        print(f"{len(summary.changed)} image(s) at already enrolled paths had new content and were enrolled as new "
              f"rows (the earlier rows are kept), e.g. {printable(summary.changed[0])}")
    gallery = session.snapshot()
    print(f"enrolled {summary.added} new image(s) ({summary.already_enrolled} already in the gallery) into "
          f"{printable(session.index_dir)}: {len(gallery)} images of {len(gallery.identities())} identities")
    print(session.encoder.describe_inference())
    record = summary.audit
    print(f"audit record {record.seq} (SHA-256 {record.hash}) in {record.log}")
    return 0
