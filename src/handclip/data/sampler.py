"""Identity-balanced P x K batch sampler (CLIP-ReID's RandomIdentitySampler), deterministic and DDP-aware.

Each epoch, every identity's images are shuffled and cut into chunks of K (an identity with fewer than K
images gets K drawn with replacement; a final partial chunk is dropped); then batches are formed by
repeatedly drawing P distinct identities that still have chunks and taking one chunk of each. Every anchor
therefore has K-1 positives in its batch (plain random batches leave most anchors without a positive and
the triplet loss near zero; docs/method.md, "Pitfalls").

When fewer than P identities still have chunks, CLIP-ReID drops them (``leftover="drop"``, the default);
with ``leftover="extra_batch"`` (``stage2.sampler_leftover``) the identities that were not visited yet this
epoch get one more batch, completed with other identities, so every identity is seen every epoch.
Unlike CLIP-ReID's, the epoch is a function of (seed, epoch) only, so runs and resumed runs repeat exactly.

Under DistributedDataParallel every rank builds the same global batch list and takes its contiguous slice
of P*K/world_size indices from each batch: ranks never repeat or drop an image of the global batch, and
when K divides the slice each rank holds whole identities (K positives per anchor on every rank).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import TrainingError


def _distributed_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of dataset indices: P identities x K images per global batch.

    ``labels[i]`` is the identity of dataset item i. ``rank``/``world_size`` default to torch.distributed's
    when it is initialised (else 0/1); each rank yields P*K/world_size indices per batch.
    """

    def __init__(self, labels: Sequence[int], ids_per_batch: int, images_per_id: int, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, leftover: str = "drop"):
        if rank is None or world_size is None:
            dist_rank, dist_world = _distributed_rank_world()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        self.P, self.K = int(ids_per_batch), int(images_per_id)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        if leftover not in ("drop", "extra_batch"):
            raise TrainingError(f"sampler leftover handling must be 'drop' or 'extra_batch', not {leftover!r}")
        self.leftover = leftover
        if self.P < 1 or self.K < 1:
            raise TrainingError(f"ids_per_batch ({self.P}) and images_per_id ({self.K}) must be at least 1")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise TrainingError(f"rank {self.rank} is outside world size {self.world_size}")
        batch = self.P * self.K
        if batch % self.world_size:
            raise TrainingError(
                f"the global batch of {self.P} ids x {self.K} images = {batch} cannot be split evenly "
                f"across {self.world_size} processes; choose ids_per_batch x images_per_id divisible by {self.world_size}"
            )
        self.per_rank = batch // self.world_size
        by_id: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_id[int(label)].append(index)
        self.ids = sorted(by_id)
        self._indices = [np.asarray(by_id[pid], dtype=np.int64) for pid in self.ids]
        if len(self.ids) < self.P:
            raise TrainingError(
                f"ids_per_batch is {self.P} but the training set has only {len(self.ids)} identities; "
                f"lower stage2.ids_per_batch to at most {len(self.ids)}"
            )
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _chunks(self, rng: np.random.Generator, slot: int) -> list[np.ndarray]:
        """Shuffle identity ``slot``'s images and cut them into chunks of K."""
        images = self._indices[slot]
        if len(images) < self.K:
            return [rng.choice(images, size=self.K, replace=True)]
        images = rng.permutation(images)
        return [images[i:i + self.K] for i in range(0, len(images) - self.K + 1, self.K)]

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All global batches (P*K indices each) of ``epoch`` (default: the current one), same on every rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        chunks = [self._chunks(rng, slot) for slot in range(len(self.ids))]
        next_chunk = [0] * len(self.ids)
        available = list(range(len(self.ids)))
        batches = []
        while len(available) >= self.P:
            chosen = rng.choice(len(available), size=self.P, replace=False)
            slots = [available[c] for c in chosen]
            batch = []
            for slot in slots:
                batch.append(chunks[slot][next_chunk[slot]])
                next_chunk[slot] += 1
            batches.append(np.concatenate(batch))
            # Remove exhausted identities by swapping with the last entry: O(1), still deterministic.
            for c in sorted(chosen, reverse=True):
                if next_chunk[available[c]] == len(chunks[available[c]]):
                    available[c] = available[-1]
                    available.pop()
        unvisited = [s for s in available if next_chunk[s] == 0] if self.leftover == "extra_batch" else []
        if unvisited:
            # Fewer than P identities left and some never seen: one more batch with fresh chunks of others.
            skip = set(unvisited)
            others = [s for s in range(len(self.ids)) if s not in skip]
            fill = rng.choice(len(others), size=self.P - len(unvisited), replace=False)
            slots = unvisited + [others[f] for f in fill]
            rng.shuffle(slots)
            batch = [chunks[s][0] if s in skip else self._chunks(rng, s)[0] for s in slots]
            batches.append(np.concatenate(batch))
        self._cached = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.per_rank
        for batch in self.global_batches():
            yield batch[start:start + self.per_rank].tolist()

    def __len__(self) -> int:
        return len(self.global_batches())
