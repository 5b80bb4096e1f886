"""``handclip prepare {11k,hd,folder,synthetic}``: write a protocol manifest (docs/method.md, "Protocols")."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import DataError

DATASETS = ("11k", "hd", "folder", "synthetic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Validated in run() rather than by argparse choices, so a wrong value is one clear line.
    parser.add_argument("dataset", metavar="{11k,hd,folder,synthetic}", help="which dataset layout/protocol")
    parser.add_argument("--root", help="dataset folder (for synthetic: where the images are written)")
    parser.add_argument("--aspect", help="11k only: dorsal_r, dorsal_l, palmar_r or palmar_l")
    parser.add_argument("--runs", type=int, default=10, help="Monte Carlo query/gallery runs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="split seed; the same seed gives the same manifest")
    parser.add_argument("--gallery-all", action="store_true",
                        help="11k only: add the other three aspects' gallery i as distractors")
    parser.add_argument("--test-ids", default=None,
                        help="folder: test identities as a count or a fraction (default half); "
                             "synthetic: number of test identities (default 50)")
    parser.add_argument("--keep-small-ids", action="store_true",
                        help="keep identities with a single image (train: no val image; test: no query) "
                             "instead of stopping")
    parser.add_argument("--train-ids", type=int, default=None, help="synthetic: training identities (default 100)")
    parser.add_argument("--images-per-id", type=int, default=None, help="synthetic: images per identity (default 8)")
    parser.add_argument("--size", type=int, default=None, help="synthetic: image side in pixels (default 64)")
    parser.add_argument("--out", help="manifest CSV to write (omit for a dry run that only prints the summary)")
    parser.add_argument("--summary", action=argparse.BooleanOptionalAction, default=True,
                        help="print identities and images per split (default: on)")


def _int_arg(value, name: str):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} {value!r} is not a whole number") from None


def _folder_test_ids(text):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise DataError(f"--test-ids {text!r} must be a count (e.g. 50) or a fraction (e.g. 0.5)") from None


def build_manifest(args):
    from ..data import protocols

    dataset = str(args.dataset).lower()
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {args.dataset!r} (expected one of {', '.join(DATASETS)})")
    small = "keep" if args.keep_small_ids else "error"
    if dataset != "11k" and (args.aspect or args.gallery_all):
        raise DataError(f"--aspect and --gallery-all apply to the 11k dataset only, not {dataset}")
    if dataset != "synthetic" and any(v is not None for v in (args.train_ids, args.images_per_id, args.size)):
        raise DataError("--train-ids, --images-per-id and --size apply to the synthetic dataset only")
    if dataset == "11k":
        if not args.aspect:
            raise DataError("prepare 11k needs --aspect (dorsal_r, dorsal_l, palmar_r or palmar_l)")
        return protocols.prepare_11k(_root(args), args.aspect, runs=args.runs, seed=args.seed,
                                     gallery_all=args.gallery_all, small_ids=small)
    if dataset == "hd":
        return protocols.prepare_hd(_root(args), runs=args.runs, seed=args.seed, small_ids=small)
    if dataset == "folder":
        return protocols.prepare_folder(_root(args), runs=args.runs, seed=args.seed,
                                        test_ids=_folder_test_ids(args.test_ids), small_ids=small)
    from pydantic import ValidationError

    from ..config import SyntheticConfig

    values = {"train_ids": args.train_ids, "test_ids": args.test_ids, "images_per_id": args.images_per_id,
              "image_size": args.size}
    names = {"train_ids": "--train-ids", "test_ids": "--test-ids", "images_per_id": "--images-per-id",
             "image_size": "--size", "seed": "--seed"}
    given = {k: _int_arg(v, names[k]) for k, v in values.items() if v is not None}
    try:
        cfg = SyntheticConfig(seed=args.seed, **given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DataError(f"{names.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']} "
                        f"(got {err.get('input')!r})") from None
    return protocols.prepare_synthetic(_root(args), cfg, runs=args.runs, seed=args.seed)


def _root(args):
    if not args.root:
        raise DataError(f"prepare {args.dataset} needs --root DIR")
    return args.root


def run(args) -> int:
    from ..data.protocols import DataWarning

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
