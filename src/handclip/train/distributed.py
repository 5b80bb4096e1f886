"""Multi-process training on PyTorch's own distributed engine (``torchrun -m handclip train ...``).

Under torchrun (env RANK / WORLD_SIZE / LOCAL_RANK) the process group is initialised (NCCL on CUDA,
gloo on CPU), the model is wrapped in DistributedDataParallel, each rank draws its own share of every
P x K batch (``PKSampler(rank, world_size)``: P / world_size whole identities, so every rank still has
positives for the triplet loss), and gradients are averaged across ranks. Stage 1 works on cached
features and is cheap: every rank runs it identically (same seed, same data), which keeps the prompts
equal without communication. Validation runs on rank 0 and its result is broadcast; only rank 0
writes files.

As in torchreid and CLIP-ReID, the per-batch losses (batch-hard triplet mining, BNNeck batch
statistics) are computed on each rank's local share; the averaged gradient therefore equals that of
one process accumulating the shares' losses, which is what the distributed test checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (no-op in a single process)."""
    if not launched_distributed():
        return DistInfo()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    here = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return DistInfo(rank, world_size, local_rank, here)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device, ignore: list[str]):
    """DistributedDataParallel over the image path; ``ignore`` names parameters reduced by hand."""
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def average_gradients(params) -> None:
    """All-reduce (mean) the gradients of parameters DDP does not manage (the prompts in a joint run)."""
    world = dist.get_world_size()
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(world)


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
