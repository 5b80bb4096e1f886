"""``handclip gallery``: redact an identity (an audited tombstone search honours), or re-encode every enrolled
image into a new gallery with a new model (both audit logs link the two)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["redact", "reembed"],
                        help="redact: take an identity out of every search and listing (rows are kept, the audit "
                             "log records it); reembed: enrol the gallery's images into a NEW gallery with "
                             "--checkpoint")
    parser.add_argument("--index", required=True, help="the gallery directory")
    parser.add_argument("--identity", default=None, help="redact: the identity to redact")
    parser.add_argument("--reason", default=None, help="redact: why (kept in the gallery and its audit record)")
    parser.add_argument("--checkpoint", default=None, help="reembed: the new model's checkpoint")
    parser.add_argument("--out", default=None, metavar="NEWGALLERY", help="reembed: the new gallery's folder "
                                                                          "(must not exist or be empty)")
    parser.add_argument("--examiner", default=None, help="examiner's name for the audit records (default: the OS user)")
    parser.add_argument("--device", default="auto", help="reembed: cpu, cuda or auto")
    parser.add_argument("--batch-size", type=int, default=64, help="reembed: images embedded at a time")


def run(args) -> int:
    from ..errors import HandCLIPError
    from ..preflight import require_file, require_folder

    require_folder("--index", args.index, "gallery folder", "make one with `handclip enrol`")
    if args.action == "redact":
        if not args.identity or not args.reason:
            raise HandCLIPError("gallery redact needs --identity NAME and --reason TEXT")
        from .. import api

        arguments = {"interface": "cli", "identity": args.identity, "reason": args.reason}
        report = api.redact_identity(args.index, args.identity, args.reason, examiner=args.examiner,
                                     arguments=arguments)
        print("\n".join(report.lines()))
        return 0
    if not args.checkpoint or not args.out:
        raise HandCLIPError("gallery reembed needs --checkpoint NEW.pt and --out NEWGALLERY")
    if args.batch_size < 1:
        raise HandCLIPError(f"--batch-size must be at least 1, got {args.batch_size}")
    require_file("--checkpoint", args.checkpoint, "checkpoint")
    from .. import api

    arguments = {"interface": "cli", "index": args.index, "checkpoint": args.checkpoint, "out": args.out}
    report = api.reembed_gallery(args.index, args.checkpoint, args.out, examiner=args.examiner, device=args.device,
                                 batch_size=args.batch_size, arguments=arguments, progress=True)
    print("\n".join(report.lines()))
    return 0
