"""Where and how tensors are computed: device, precision and the other fast-path switches.

Every switch of the ``runtime`` config section is resolved here, and only here, so training,
feature extraction and the benchmarks make the same choice for the same device. The ``auto``
defaults are the fastest correct choice measured for each device:

- ``runtime.device``: CUDA when present, else CPU.
- ``runtime.amp``: bf16 autocast on GPUs that support it, fp16 (with a GradScaler) on older GPUs,
  full precision on CPU (CPU autocast is slower than fp32 for these models and changes numerics).
- ``runtime.fused_optimizer``: fused Adam on CUDA (one kernel for all parameters); on CPU the
  default foreach Adam is as fast.
- ``runtime.channels_last``: on for ResNet backbones (cuDNN's and oneDNN's NHWC convolutions; measured
  1.14-1.18x per stage-2 step for tiny-rn on the 2-core CPU, benchmarks/bench_stage2.py); never for a ViT
  (its only convolution is the patch embedding).
- ``runtime.inference_precision`` (features for evaluation, enrolment, search, calibration): 'auto' is
  bf16 autocast where the hardware multiplies bf16 natively — a CUDA GPU with bf16, or a CPU with AMX or
  AVX512-BF16 as PyTorch reports it (``torch.cpu._is_amx_tile_supported``, ``_is_avx512_bf16_supported``)
  and oneDNN able to use it — and fp32 on other CPUs, where bf16 is emulated and slower than fp32
  (docs/method.md, "Feature precision and engines"). An older GPU without bf16 keeps fp16 autocast as
  before.
- ``runtime.compile``: off unless asked for (compiling costs minutes on a ViT-B/16 and needs a C
  compiler on CPU; it pays off only on long GPU runs).
- DataLoader workers: the CPUs this process may use, shared by the processes torchrun started on
  this node, minus one for the main process, at most 8; pinned memory and non-blocking copies on CUDA.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from .config_base import INFERENCE_PRECISIONS
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


def autocast(device: torch.device, amp: str | torch.dtype | None = "auto"):
    """Autocast context for ``amp``: a ``runtime.amp`` setting, an already resolved dtype, or None (off)."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = amp if isinstance(amp, torch.dtype) else resolve_amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_native_bf16() -> str | None:
    """What makes this CPU multiply bf16 natively ('AMX', 'AVX512-BF16'), or None where bf16 is emulated."""
    if not torch.backends.mkldnn.is_available():  # oneDNN runs bf16 matmuls and convolutions on CPUs
        return None
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def resolve_inference_precision(device: torch.device, requested: str = "auto") -> tuple[str, str]:
    """(precision, why) for encoding images on ``device``: precision is 'fp32', 'bf16' or (auto on a GPU
    without bf16, as before) 'fp16'; why is a short phrase for the line a command prints."""
    if requested not in INFERENCE_PRECISIONS:
        raise ConfigError(f"runtime.inference_precision: unknown precision '{requested}' "
                          f"(use {', '.join(INFERENCE_PRECISIONS)})")
    if requested != "auto":
        return requested, "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16"
        return "fp16", "auto: this GPU has no bf16"
    if device.type != "cpu":
        return "fp32", f"auto: {device.type} device"
    native = cpu_native_bf16()
    if native:
        return "bf16", f"auto: this CPU multiplies bf16 natively ({native})"
    return "fp32", "auto: this CPU has no native bf16 (neither AMX nor AVX512-BF16)"


def inference_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved inference precision (None: full fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler only for fp16 (bf16 has fp32's range and needs none)."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def use_fused_optimizer(runtime_cfg, device: torch.device) -> bool:
    """``runtime.fused_optimizer``: 'auto' fuses on CUDA only (on CPU the foreach path is as fast)."""
    if runtime_cfg.fused_optimizer == "off":
        return False
    if runtime_cfg.fused_optimizer == "on":
        return True
    return device.type == "cuda"


def use_channels_last(runtime_cfg, device: torch.device, model=None) -> bool:
    """``runtime.channels_last``: 'auto' means a convolutional (ResNet) image encoder, on any device."""
    if runtime_cfg.channels_last == "auto":
        return getattr(model, "kind", "rn") == "rn"
    return runtime_cfg.channels_last == "on"


def pin_memory(device: torch.device | None = None) -> bool:
    """Page-locked host batches (so ``.to(device, non_blocking=True)`` overlaps the copy) only for CUDA."""
    if device is not None:
        return device.type == "cuda"
    return torch.cuda.is_available()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def faiss_with_threads(threads: int | None):
    """The faiss module, its OpenMP pool sized to ``threads``, else $OMP_NUM_THREADS, else the usable CPUs."""
    import faiss

    if not threads:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    faiss.omp_set_num_threads(int(threads))
    return faiss


def default_num_workers() -> int:
    """DataLoader workers sized to the machine: the CPUs this process may use, shared by the processes
    torchrun started on this node, minus one for the main process, at most 8."""
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(8, available_cpus() // local_world - 1))


def cache_root(data_cfg=None) -> Path:
    """Root of HandCLIP's caches: ``data.cache_dir``, else ``$HANDCLIP_CACHE_DIR``, else ``~/.cache/handclip``."""
    if data_cfg is not None and getattr(data_cfg, "cache_dir", None):
        return Path(data_cfg.cache_dir).expanduser()
    env = os.environ.get("HANDCLIP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "handclip"


# ---------------------------------------------------------------------------------------------
# random state: seeded runs, and the exact generator states a resumed run continues from


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy and torch generator states as plain data and tensors (loads with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng_if_resuming(resume: dict | None) -> None:
    """Called by a training stage right before its epoch loop when it continues from a checkpoint."""
    if resume is not None and "_rng" in resume:
        set_rng_state(resume["_rng"])
