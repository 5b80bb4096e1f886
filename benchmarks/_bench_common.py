"""Shared pieces of the speed benchmarks (not part of the package): machine line, peak FLOP/s, a stage-2
trainer built exactly as ``handclip train`` builds it, and side-by-side timing."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import torch

# bf16 dense tensor-core peak (FLOP/s) by GPU name, from the vendors' data sheets (no sparsity).
GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is ~756e12
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16 tensor cores; V100 has no bf16
}


def best_of(fn, repeat: int):
    """(result, CPU seconds, wall seconds), the best of ``repeat`` runs of ``fn``."""
    best_cpu = best_wall = float("inf")
    out = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return out, best_cpu, best_wall


def load_line() -> str:
    """Load averages at the time of the run (the machine is shared; compare ratios, not absolute figures)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"



def device_and_model_defaults(args) -> tuple[torch.device, bool, str, int]:
    """(device, is_cuda, backbone, image side): ViT-B/16 at 224 on a GPU, the tiny ViT at 64 on a CPU,
    unless ``--backbone`` / ``--image-size`` say otherwise."""
    from handclip.runtime import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    backbone = args.backbone or ("ViT-B-16" if cuda else "tiny-vit")
    size = args.image_size or (224 if cuda else 64)
    return device, cuda, backbone, size


def machine_line(device: torch.device) -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (f"machine: {platform.machine()}, {cpus} CPUs available, torch {torch.__version__}, "
            f"python {sys.version.split()[0]}, {torch.get_num_threads()} torch threads")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    else:
        text += ", no GPU"
    return text + f"; {load_line()}"


def measured_matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul: a practical peak where no data-sheet figure is known."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()
    # On CPU, per CPU-second of this process (like the CPU-time step figures); on a GPU, per wall second.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = clock()
        a @ b
        sync(device)
        best = min(best, clock() - start)
    return 2 * n ** 3 / best


def peak_flops(device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): bf16 data-sheet figure by GPU name, else a measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BF16_PEAK.items():
            if key in name:
                return value, f"{name} bf16 dense data-sheet peak"
        return measured_matmul_peak(device, torch.bfloat16), f"{name} measured bf16 8192^3 matmul"
    return measured_matmul_peak(device, torch.float32), "this CPU's fp32 1024^3 matmul, per CPU-second"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (matmuls, convolutions, attention; forward and backward) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def stage2_config(backbone: str, image_size: int, ids_per_batch: int, images_per_id: int, device: str,
                  **runtime):
    """CLIP-ReID's stage-2 defaults with the given model, input size, batch layout and runtime switches."""
    from handclip.config import config_from_dict

    return config_from_dict({
        "data": {"image_size": [image_size, image_size], "num_workers": 0},
        "model": {"backbone": backbone},
        "stage2": {"ids_per_batch": ids_per_batch, "images_per_id": images_per_id},
        "runtime": {"device": device, "progress": False, **runtime},
    })


def training_context(config, model, num_ids: int, device: torch.device):
    """The TrainContext ``handclip train`` builds, minus data and run folder (nothing is written)."""
    from handclip.train import distributed as ddp
    from handclip.train.engine import RunFolder, TrainContext

    state = {"stage": None, "epoch": 0, "completed": [], "history": [], "best": None, "stages": ["stage2"]}
    run = RunFolder(tempfile.gettempdir(), active=False)
    label_map = {i: i for i in range(num_ids)}
    return TrainContext(config, None, [], label_map, model, device, run, ddp.DistInfo(), state, progress=False)


def pk_batch(num_ids: int, ids_per_batch: int, images_per_id: int, image_size: int, device: torch.device,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One P x K batch already on the device (normalised-looking pixels, P distinct identities)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(num_ids, generator=gen)[:ids_per_batch]
    labels = ids.repeat_interleave(images_per_id)
    images = torch.randn(len(labels), 3, image_size, image_size, generator=gen)
    return images.to(device), labels.to(device)


def interleaved_timing(steppers: dict, rounds: int, steps_per_round: int, device: torch.device) -> dict:
    """Seconds per step of each stepper, timed in alternating rounds so load from other users hits all alike.

    Each stepper is called ``steps_per_round`` times per round; the device is synchronised only at the
    round's ends (a stepper that synchronises every step pays for it inside the round). Returns
    {name: (median wall seconds per step, median CPU seconds per step of this process)}: on a shared CPU
    the CPU time is the fairer comparison, on a GPU the wall time is what counts.
    """
    times = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            sync(device)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(steps_per_round):
                step()
            sync(device)
            times[name].append(((time.perf_counter() - wall) / steps_per_round,
                                (time.process_time() - cpu) / steps_per_round))

    def median(values):
        return sorted(values)[len(values) // 2]

    return {name: (median([w for w, _ in v]), median([c for _, c in v])) for name, v in times.items()}


def synthetic_manifest(directory, train_ids: int, test_ids: int, images_per_id: int, image_size: int, runs: int = 1):
    """Procedural hand images (handclip.synthetic) split into a manifest written under ``directory``."""
    from pathlib import Path

    from handclip.config import SyntheticConfig
    from handclip.synthetic.dataset import prepare_synthetic

    directory = Path(directory)
    manifest = prepare_synthetic(directory / "images", SyntheticConfig(
        train_ids=train_ids, test_ids=test_ids, images_per_id=images_per_id, image_size=image_size), runs=runs, seed=0)
    path = directory / "manifest.csv"
    manifest.write(path)
    return path


def context_from_config(config, run_dir, device: torch.device):
    """What ``handclip.train.engine.train`` builds before its stages (model, records, label map), with the
    run folder in ``run_dir``."""
    from handclip.data.manifest import Manifest
    from handclip.model.handclip import build_model
    from handclip.runtime import seed_everything
    from handclip.train import distributed as ddp
    from handclip.train.engine import RunFolder, TrainContext, check_training_data

    seed_everything(config.seed)
    manifest = Manifest.read(config.data.manifest)
    records, label_map = check_training_data(manifest, config.stage2, False)
    model = build_model(config.model, config.data, len(label_map)).to(device)
    state = {"stage": None, "epoch": 0, "completed": [], "history": [], "best": None, "stages": ["stage1"]}
    return TrainContext(config, manifest, records, label_map, model, device, RunFolder(run_dir), ddp.DistInfo(),
                        state, progress=False)
