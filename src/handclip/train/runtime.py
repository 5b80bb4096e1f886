"""Device, precision and random-state helpers shared by the training stages."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# The fast-path switches live in handclip.runtime (one resolution for training, evaluation and the
# benchmarks); the stages import them from here under their historical names.
from ..runtime import autocast, resolve_amp_dtype, resolve_device, use_channels_last  # noqa: F401
from ..runtime import make_grad_scaler as make_scaler  # noqa: F401


def amp_dtype(runtime_cfg, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``runtime.amp`` on ``device`` (bf16 on CUDA when supported; off on CPU)."""
    return resolve_amp_dtype(device, runtime_cfg.amp)


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


def cache_root(data_cfg=None) -> Path:
    """Cache folder: data.cache_dir, else $HANDCLIP_CACHE_DIR, else ~/.cache/handclip."""
    if data_cfg is not None and data_cfg.cache_dir:
        return Path(data_cfg.cache_dir).expanduser()
    env = os.environ.get("HANDCLIP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "handclip"


def logit_scale_of(model, model_cfg) -> float:
    """The fixed scale of cosine image-text logits: model.logit_scale from the config, else CLIP's own."""
    if model_cfg.logit_scale is not None:
        return float(model_cfg.logit_scale)
    for owner in (model, getattr(model, "clip", None), getattr(model, "text_encoder", None)):
        value = getattr(owner, "logit_scale", None) if owner is not None else None
        if isinstance(value, torch.Tensor):
            return float(value.detach().float().exp().clamp(max=100.0))
        if isinstance(value, (int, float)):
            return float(value)
    return 1.0 / 0.07  # CLIP's initial temperature


def image_text_scale(model, config) -> float | None:
    """Scale of the image-text logits: None for CLIP-ReID's raw dot products (``losses.logits: dot``), else
    the cosine scale of ``logit_scale_of``."""
    return logit_scale_of(model, config.model) if config.losses.logits == "cosine" else None


def restore_rng_if_resuming(resume: dict | None) -> None:
    """Called by a stage right before its epoch loop when it continues from a checkpoint."""
    if resume is not None and "_rng" in resume:
        set_rng_state(resume["_rng"])
