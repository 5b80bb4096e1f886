"""Every built-in dataset, registered: importing this module fills ``handclip.data.registry.DATASETS``
with 11k, HD and folder (``handclip.data.protocols``) and synthetic (``handclip.synthetic.dataset``).

It sits above ``data/`` and ``synthetic/`` so that ``data/`` never imports ``synthetic/``; whatever
needs every dataset (``handclip prepare``, training from a config, the demo) imports them from here.
``prepare_dataset`` is what ``handclip prepare`` runs: any registered dataset by name, with its own options.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .data import protocols as _real_datasets  # noqa: F401 - registers 11k, hd and folder
from .data.manifest import Manifest
from .data.registry import DATASETS
from .errors import DataError
from .synthetic import dataset as _synthetic_dataset  # noqa: F401 - registers synthetic


def prepare_from_config(data_cfg, workdir) -> Manifest:
    """The manifest a ``DataConfig`` asks for: ``data_cfg.manifest`` if set, else prepared now by its dataset.

    Only a dataset that makes its own images (synthetic) writes anything, under ``workdir`` unless
    ``data_cfg.root`` says where; the caller decides where to keep the manifest.
    """
    if data_cfg.manifest:
        return Manifest.read(data_cfg.manifest)
    return DATASETS.get(data_cfg.dataset).from_config(data_cfg, Path(workdir))


def prepare_dataset(dataset: str, root: str | os.PathLike | None = None, *, runs: int = 10, seed: int = 0,
                    keep_small_ids: bool = False, keep_bad: bool = False, check_images: bool = True,
                    out: str | os.PathLike | None = None, **options) -> Manifest:
    """The protocol manifest ``handclip prepare DATASET`` writes, also written to ``out`` when given.

    ``options`` are the dataset's own options by their ``handclip prepare`` names (``aspect="dorsal_r"``,
    ``gallery_all=True`` for 11k; ``DATASETS.options()`` lists them); one that belongs to another
    dataset only is refused, as on the command line. Every image is decoded first (unless not
    ``check_images``): an unusable one is left out before the split (kept with ``keep_bad``).
    ``manifest.preparation`` says what was checked and done; each image left out or kept, and each
    splitting problem worked around (``keep_small_ids``), is a ``handclip.errors.DataWarning``.
    """
    if keep_bad and not check_images:
        raise DataError("--keep-bad keeps the unusable images --no-image-check would not look for; give one of them")
    spec = DATASETS.get(dataset)
    known = {option.dest: option for option, _ in DATASETS.options()}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DataError(f"prepare {dataset}: no dataset takes the option {unknown[0]!r} "
                        f"(options: {', '.join(sorted(known))})")
    given = {**{dest: option.unset for dest, option in known.items()}, **options}
    args = argparse.Namespace(dataset=dataset, root=None if root is None else os.fspath(root), runs=runs, seed=seed,
                              keep_small_ids=keep_small_ids, keep_bad=keep_bad, no_image_check=not check_images,
                              **given)
    _refuse_other_datasets_options(args, spec.name)
    manifest = spec.from_args(args)
    if out is not None:
        manifest.write(out)
    return manifest


def _refuse_other_datasets_options(args: argparse.Namespace, dataset: str) -> None:
    """One line naming the given options that belong to other datasets only (``hd --aspect``)."""
    misplaced: dict[tuple[str, ...], list[str]] = {}
    for option, owners in DATASETS.options():
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


__all__ = ["DATASETS", "prepare_dataset", "prepare_from_config"]
