"""DataLoaders for training (P x K batches, augmented) and evaluation (in order, no augmentation).

Both apply the same first resize to every decoded image before the transforms (``first_resize``: by
default the transforms' own resize to the input size, so each image is resized once from the original;
with ``data.cache_resolution`` a shrink to that long side), through the decode cache when
``data.decode_cache`` is on, so the cache never changes a pixel.
Call ``loader.batch_sampler.set_epoch(epoch)`` before each training epoch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..runtime import cache_root, default_num_workers, pin_memory
from .cache import DecodeCache, FirstResize
from .dataset import ManifestDataset, as_records
from .sampler import PKSampler
from .transforms import build_transforms, interpolation_of, resize_size


def resolve_num_workers(setting: int | str) -> int:
    """``data.num_workers``: an int as given; ``auto``: the CPUs this process may use, shared by the
    processes torchrun started on this node, minus one for the main process, at most 8."""
    if setting != "auto":
        return int(setting)
    return default_num_workers()


def working_resolution(data_cfg: DataConfig) -> int | None:
    """Long side images are shrunk to before the transforms (``data.cache_resolution``); None: no shrink."""
    resolution = data_cfg.cache_resolution
    if resolution is not None and resolution < max(data_cfg.image_size):
        raise ConfigError(
            f"data.cache_resolution {resolution} is smaller than the input size {tuple(data_cfg.image_size)}; "
            f"use at least {max(data_cfg.image_size)}, or leave it unset to resize each image once"
        )
    return resolution


def first_resize(data_cfg: DataConfig, train: bool) -> FirstResize:
    """The resize applied to every decoded image before the training (or evaluation) transform."""
    resolution = working_resolution(data_cfg)
    if resolution is not None:
        return FirstResize(max_side=resolution)
    return FirstResize(size=resize_size(data_cfg, train), interpolation=interpolation_of(data_cfg, train))


def decode_cache_for(data_cfg: DataConfig, resize: FirstResize) -> DecodeCache | None:
    if not data_cfg.decode_cache:
        return None
    return DecodeCache(cache_root(data_cfg) / "decode", resize)


def _loader_kwargs(data_cfg: DataConfig, persistent: bool) -> dict:
    workers = resolve_num_workers(data_cfg.num_workers)
    kwargs = {"num_workers": workers, "pin_memory": pin_memory()}
    if workers > 0:
        kwargs["persistent_workers"] = persistent
    return kwargs


def build_train_loader(data_cfg: DataConfig, records: Sequence, label_map: Mapping[int, int] | None,
                       ids_per_batch: int, images_per_id: int, seed: int = 0,
                       rank: int | None = None, world_size: int | None = None, leftover: str = "drop") -> DataLoader:
    """Augmented P x K loader; yields (images [B,3,H,W], labels [B], dataset indices [B]) with B = P*K/world_size.

    ``rank``/``world_size`` default to torch.distributed's when initialised; ``leftover``: the sampler's
    handling of identities left at the end of an epoch (``stage2.sampler_leftover``).
    """
    if not records:
        raise DataError("the training split is empty")
    resize = first_resize(data_cfg, train=True)
    dataset = ManifestDataset(records, build_transforms(data_cfg, train=True), label_map,
                              decode_cache=decode_cache_for(data_cfg, resize), first_resize=resize)
    sampler = PKSampler(dataset.labels, ids_per_batch, images_per_id, seed=seed, rank=rank, world_size=world_size,
                        leftover=leftover)
    # Seeds the workers' augmentation RNGs: same seed, rank and worker count, same augmentations.
    generator = torch.Generator().manual_seed(int(seed) * 1000 + sampler.rank)
    return DataLoader(dataset, batch_sampler=sampler, generator=generator, **_loader_kwargs(data_cfg, persistent=True))


def build_random_loader(data_cfg: DataConfig, records: Sequence, label_map: Mapping[int, int], batch_size: int,
                        seed: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Augmented loader of random batches (no P x K), each epoch a new permutation of the training images
    drawn from (seed, epoch); a shorter last batch is dropped. Under DDP each rank takes its share of the
    permutation and ``batch_size`` images of it per step. Call ``loader.sampler.set_epoch(epoch)`` first."""
    if not records:
        raise DataError("the training split is empty")
    resize = first_resize(data_cfg, train=True)
    dataset = ManifestDataset(records, build_transforms(data_cfg, train=True), label_map,
                              decode_cache=decode_cache_for(data_cfg, resize), first_resize=resize)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed))
    generator = torch.Generator().manual_seed(int(seed) * 1000 + rank)
    return DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, drop_last=True, generator=generator,
                      **_loader_kwargs(data_cfg, persistent=True))


def build_eval_loader(data_cfg: DataConfig, records_or_paths: Sequence, batch_size: int) -> DataLoader:
    """Loader over records (or bare paths, label -1) in their given order, no augmentation, last batch kept."""
    resize = first_resize(data_cfg, train=False)
    dataset = ManifestDataset(as_records(records_or_paths), build_transforms(data_cfg, train=False),
                              decode_cache=decode_cache_for(data_cfg, resize), first_resize=resize)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, drop_last=False,
                      **_loader_kwargs(data_cfg, persistent=False))
