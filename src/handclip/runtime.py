"""Where and how tensors are computed: device choice, autocast, thread count.

``runtime.device == "auto"`` picks CUDA when present; ``runtime.amp == "auto"`` picks bf16 on GPUs
that support it, fp16 on older GPUs and full precision on CPU (CPU autocast is slower than fp32
for these small models and changes numerics).
"""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import ConfigError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"runtime.device: unknown device '{spec}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device is '{spec}' but no CUDA device is available")
    return device


def resolve_amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype to use, or None for full precision."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, amp: str = "auto"):
    dtype = resolve_amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_num_workers() -> int:
    """DataLoader workers sized to the machine, leaving one core for the main process."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1))
