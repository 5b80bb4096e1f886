"""``handclip prepare DATASET``: write a protocol manifest (docs/method.md, "Protocols").

The datasets and their own options come from the dataset registry (``handclip.datasets``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..datasets import DATASETS

    names = ",".join(DATASETS)
    # Validated in run() rather than by argparse choices, so a wrong value is one clear line.
    parser.add_argument("dataset", metavar=f"{{{names}}}", help="which dataset layout/protocol")
    parser.add_argument("--root", help="dataset folder (for synthetic: where the images are written)")
    parser.add_argument("--runs", type=int, default=10, help="Monte Carlo query/gallery runs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="split seed; the same seed gives the same manifest")
    parser.add_argument("--keep-small-ids", action="store_true",
                        help="keep identities with a single image (train: no val image; test: no query) "
                             "instead of stopping")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--keep-bad", action="store_true",
                        help="keep images that do not decode or are under 16 px in the manifest (each is named); "
                             "by default they are left out, each named")
    checks.add_argument("--no-image-check", action="store_true",
                        help="do not decode the images (faster on a large dataset; `handclip scan` checks later)")
    for option, owners in DATASETS.options():
        if len(owners) == 1:
            text = f"{owners[0][0]} only: {owners[0][1]}"
        else:
            text = "; ".join(f"{name}: {meaning}" for name, meaning in owners)
        parser.add_argument(option.flag, help=text, **option.kwargs)
    parser.add_argument("--out", help="manifest CSV to write (omit for a dry run that only prints the summary)")
    parser.add_argument("--summary", action=argparse.BooleanOptionalAction, default=True,
                        help="print identities and images per split (default: on)")
    parser.set_defaults(_dataset_options=[option.dest for option, _ in DATASETS.options()])


def run(args) -> int:
    from .. import api

    options = {dest: getattr(args, dest) for dest in args._dataset_options}
    # Each image left out (or kept with --keep-bad) is a warning line, printed by the CLI as it happens.
    manifest = api.prepare_dataset(args.dataset, args.root, runs=args.runs, seed=args.seed,
                                   keep_small_ids=args.keep_small_ids, keep_bad=args.keep_bad,
                                   check_images=not args.no_image_check, out=args.out, **options)
    for line in manifest.preparation.lines() if manifest.preparation else []:
        print(line)
    identities = len({r.pid for r in manifest.records if not r.is_distractor})
    written = f"wrote {Path(args.out)}" if args.out else "dry run (no --out), nothing written"
    print(f"{written}: {len(manifest.paths())} images of {identities} identities, in {len(manifest)} rows")
    if args.summary:
        print(manifest.summary())
    return 0
