"""Every built-in dataset, registered: importing this module fills ``handclip.data.registry.DATASETS``
with 11k, HD and folder (``handclip.data.protocols``) and synthetic (``handclip.synthetic.dataset``).

It sits above ``data/`` and ``synthetic/`` so that ``data/`` never imports ``synthetic/``; whatever
needs every dataset (``handclip prepare``, training from a config, the demo) imports them from here.
"""

from __future__ import annotations

from pathlib import Path

from .data import protocols as _real_datasets  # noqa: F401 - registers 11k, hd and folder
from .data.manifest import Manifest
from .data.registry import DATASETS
from .synthetic import dataset as _synthetic_dataset  # noqa: F401 - registers synthetic


def prepare_from_config(data_cfg, workdir) -> Manifest:
    """The manifest a ``DataConfig`` asks for: ``data_cfg.manifest`` if set, else prepared now by its dataset.

    Only a dataset that makes its own images (synthetic) writes anything, under ``workdir`` unless
    ``data_cfg.root`` says where; the caller decides where to keep the manifest.
    """
    if data_cfg.manifest:
        return Manifest.read(data_cfg.manifest)
    return DATASETS.get(data_cfg.dataset).from_config(data_cfg, Path(workdir))


__all__ = ["DATASETS", "prepare_from_config"]
