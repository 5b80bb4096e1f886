"""DataLoaders for training (P x K batches, augmented) and evaluation (in order, no augmentation).

Both bring every image to the working resolution (long side ``data.cache_resolution``) before the
transforms, through the decode cache when ``data.decode_cache`` is on, so the cache never changes a pixel.
Call ``loader.batch_sampler.set_epoch(epoch)`` before each training epoch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..runtime import cache_root, default_num_workers, pin_memory
from .cache import DecodeCache, default_cache_resolution
from .dataset import ManifestDataset, as_records
from .sampler import PKSampler
from .transforms import build_transforms


def resolve_num_workers(setting: int | str) -> int:
    """``data.num_workers``: an int as given; ``auto``: the CPUs this process may use, shared by the
    processes torchrun started on this node, minus one for the main process, at most 8."""
    if setting != "auto":
        return int(setting)
    return default_num_workers()


def working_resolution(data_cfg: DataConfig) -> int:
    """Long side images are shrunk to before the transforms (and stored at in the decode cache)."""
    resolution = data_cfg.cache_resolution or default_cache_resolution(data_cfg.image_size)
    if resolution < max(data_cfg.image_size):
        raise ConfigError(
            f"data.cache_resolution {resolution} is smaller than the input size {tuple(data_cfg.image_size)}; "
            f"use at least {max(data_cfg.image_size)} (default: 2x the larger side)"
        )
    return resolution


def decode_cache_for(data_cfg: DataConfig) -> DecodeCache | None:
    if not data_cfg.decode_cache:
        return None
    return DecodeCache(cache_root(data_cfg) / "decode", working_resolution(data_cfg))


def _loader_kwargs(data_cfg: DataConfig, persistent: bool) -> dict:
    workers = resolve_num_workers(data_cfg.num_workers)
    kwargs = {"num_workers": workers, "pin_memory": pin_memory()}
    if workers > 0:
        kwargs["persistent_workers"] = persistent
    return kwargs


def build_train_loader(data_cfg: DataConfig, records: Sequence, label_map: Mapping[int, int] | None,
                       ids_per_batch: int, images_per_id: int, seed: int = 0,
                       rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """Augmented P x K loader; yields (images [B,3,H,W], labels [B], dataset indices [B]) with B = P*K/world_size.

    ``rank``/``world_size`` default to torch.distributed's when initialised.
    """
    if not records:
        raise DataError("the training split is empty")
    dataset = ManifestDataset(records, build_transforms(data_cfg, train=True), label_map,
                              decode_cache=decode_cache_for(data_cfg), max_side=working_resolution(data_cfg))
    sampler = PKSampler(dataset.labels, ids_per_batch, images_per_id, seed=seed, rank=rank, world_size=world_size)
    # Seeds the workers' augmentation RNGs: same seed, rank and worker count, same augmentations.
    generator = torch.Generator().manual_seed(int(seed) * 1000 + sampler.rank)
    return DataLoader(dataset, batch_sampler=sampler, generator=generator, **_loader_kwargs(data_cfg, persistent=True))


def build_eval_loader(data_cfg: DataConfig, records_or_paths: Sequence, batch_size: int) -> DataLoader:
    """Loader over records (or bare paths, label -1) in their given order, no augmentation, last batch kept."""
    dataset = ManifestDataset(as_records(records_or_paths), build_transforms(data_cfg, train=False),
                              decode_cache=decode_cache_for(data_cfg), max_side=working_resolution(data_cfg))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, drop_last=False,
                      **_loader_kwargs(data_cfg, persistent=False))
