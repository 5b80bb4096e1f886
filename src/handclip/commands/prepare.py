"""``handclip prepare DATASET``: write a protocol manifest (docs/method.md, "Protocols").

The datasets and their own options come from the dataset registry (``handclip.datasets``)."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import DataError


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
    for option, owners in DATASETS.options():
        if len(owners) == 1:
            text = f"{owners[0][0]} only: {owners[0][1]}"
        else:
            text = "; ".join(f"{name}: {meaning}" for name, meaning in owners)
        parser.add_argument(option.flag, help=text, **option.kwargs)
    parser.add_argument("--out", help="manifest CSV to write (omit for a dry run that only prints the summary)")
    parser.add_argument("--summary", action=argparse.BooleanOptionalAction, default=True,
                        help="print identities and images per split (default: on)")


def build_manifest(args):
    from ..datasets import DATASETS

    spec = DATASETS.get(args.dataset)
    _refuse_other_datasets_options(args, spec.name, DATASETS)
    return spec.from_args(args)


def _refuse_other_datasets_options(args, dataset: str, registry) -> None:
    """One line naming the given options that belong to other datasets only (``hd --aspect``)."""
    misplaced: dict[tuple[str, ...], list[str]] = {}
    for option, owners in registry.options():
        names = tuple(name for name, _ in owners)
        if dataset not in names and getattr(args, option.dest) != option.unset:
            misplaced.setdefault(names, []).append(option.flag)
    problems = [f"{_join(flags)} {'applies' if len(flags) == 1 else 'apply'} to the {_join(owners)} "
                f"{'dataset' if len(owners) == 1 else 'datasets'} only" for owners, flags in misplaced.items()]
    if problems:
        raise DataError(f"{'; '.join(problems)}, not {dataset}")


def _join(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def run(args) -> int:
    from ..data.splits import DataWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        manifest = build_manifest(args)
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            print(f"handclip: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if args.out:
        path = manifest.write(args.out)
        print(f"wrote {len(manifest)} records to {path}")
    if args.summary:
        print(manifest.summary())
    return 0
