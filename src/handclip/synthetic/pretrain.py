"""Pretraining a tiny CLIP on captioned synthetic hands (docs/method.md, "Synthetic hands").

Real users start from pretrained CLIP weights; a fresh machine without downloads has none. This trains
both towers of a tiny backbone (``tiny-cnn``, ``tiny-rn`` or ``tiny-vit``) with open_clip's own
contrastive loss (``ClipLoss``) on image-caption pairs of synthetic identities ``first_id ..
first_id + num_ids - 1``, which the caller keeps disjoint from the identities it trains and tests on.
Captions come from ``handclip.synthetic.captions``: partial, varied descriptions of the hand and the photo,
redrawn every epoch. It is a recipe on the one training loop (``train.loop``): the per-step learning rate,
the progress bar, the NaN/inf guard and the epoch's record are its hooks. The result is a plain state dict
of the open_clip model at its native geometry, so ``model.weights`` loads it strictly like any CLIP file.

Deterministic for a seed on a given machine and thread count: images and captions are functions of
(identity, sample, seed, epoch), every random draw comes from seeded generators, and the file is written
by ``torch.save`` of the same tensors in the same order (checked by SHA-256 in the tests).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from ..atomic import atomic_write_bytes, atomic_write_json, sha256_file
from ..config import PretrainConfig
from ..errors import ConfigError
from ..model.backbone import TINY_CONFIGS, _build_clip, get_clip_config, get_tokenizer
from ..model.handclip import TextEncoder
from ..runtime import cache_root
from ..train.hooks import FiniteGuard, Progress, StepLr
from ..train.loop import Hook, TrainLoop
from .captions import caption
from .render import RENDERER_VERSION, render_hand

# Bump when the pretraining computation changes, so cached files from older code are not reused.
PRETRAIN_VERSION = 1
_PAD = 4  # random translation of up to 4 pixels (reflect-padded crop), the only augmentation


@dataclass
class PretrainResult:
    path: Path
    sha256: str
    history: list[dict] = field(default_factory=list)
    time_s: float = 0.0
    cached: bool = False


def _render(ids: range, images_per_id: int, size: int, seed: int) -> torch.Tensor:
    """uint8 images [N, 3, size, size] of ``ids`` x ``images_per_id``, identity-major."""
    arrays = [np.asarray(render_hand(i, n, size, seed)) for i in ids for n in range(images_per_id)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    size = images.shape[-1]
    padded = F.pad(images, (_PAD,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * _PAD + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[k, :, y:y + size, x:x + size] for k, (y, x) in enumerate(offsets)])


def _param_groups(clip: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only (not on gains, biases, embeddings or the temperature), as CLIP."""
    decay, rest = [], []
    for name, param in clip.named_parameters():
        plain = param.ndim < 2 or "embedding" in name or "logit_scale" in name
        (rest if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def encode_captions(clip, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` (unnormalised), run only up to the batch's last end-of-text token.

    Under the causal mask later positions cannot change earlier ones, so the cut is exact.
    """
    length = int((tokens != 0).sum(1).max())
    return TextEncoder(clip)(clip.token_embedding(tokens[:, :length]), tokens[:, :length], length=length)


def pretrain_cache_path(cfg: PretrainConfig, backbone: str, synthetic_seed: int, mean, std, data_cfg=None) -> Path:
    """Where the pretrained file for exactly these settings is kept, so a second demo reuses it."""
    spec = {"pretrain": cfg.model_dump(mode="json"), "backbone": backbone, "synthetic_seed": synthetic_seed,
            "mean": list(mean), "std": list(std), "renderer": RENDERER_VERSION, "version": PRETRAIN_VERSION}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root(data_cfg) / "pretrained" / f"{backbone}-{key}.pt"


class _PretrainRecord(Hook):
    """The epoch's line of the pretraining history: mean loss next to its chance value ln(batch size), the
    temperature and the time; appended to ``history`` and said through ``say``."""

    def __init__(self, clip: torch.nn.Module, batch_size: int, history: list[dict], say):
        self.clip, self.batch_size, self.history, self.say = clip, batch_size, history, say
        self.losses: list[float] = []
        self.started = 0.0

    def before_epoch(self, loop: TrainLoop) -> None:
        self.losses, self.started = [], time.perf_counter()

    def after_step(self, loop: TrainLoop) -> None:
        self.losses.append(float(loop.terms["clip"].detach()))

    def after_epoch(self, loop: TrainLoop) -> None:
        record = {"epoch": loop.epoch + 1, "loss": float(np.mean(self.losses)), "chance": math.log(self.batch_size),
                  "logit_scale": float(self.clip.logit_scale.detach().exp()),
                  "time_s": round(time.perf_counter() - self.started, 1)}
        self.history.append(record)
        self.say(f"pretrain epoch {record['epoch']}/{loop.epochs}: loss {record['loss']:.3f} "
                 f"(chance {record['chance']:.3f}) in {record['time_s']}s")


def _diverged(stage: str, term: str, value: torch.Tensor, epoch: int, step: int) -> ConfigError:
    return ConfigError(f"pretraining diverged (loss {float(value)}) at epoch {epoch + 1}; lower pretrain.lr")


def _check_settings(cfg: PretrainConfig, backbone: str, out_path: Path) -> None:
    if backbone not in TINY_CONFIGS:
        raise ConfigError(f"pretraining is for the tiny backbones ({', '.join(TINY_CONFIGS)}), not '{backbone}'")
    if out_path.exists() and out_path.is_dir():
        raise ConfigError(f"pretrain output {out_path} is a folder; give a file name such as {out_path / 'tiny.pt'}")
    n_images = cfg.num_ids * cfg.images_per_id
    if cfg.batch_size > n_images:
        raise ConfigError(f"pretrain.batch_size {cfg.batch_size} is larger than the {n_images} pretraining images "
                          f"(pretrain.num_ids x pretrain.images_per_id)")


def _write_weights(clip: torch.nn.Module, out_path: Path) -> str:
    """``clip``'s state dict written atomically to ``out_path``; returns the file's SHA-256."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in clip.state_dict().items()}, buffer)
    atomic_write_bytes(out_path, buffer.getvalue())
    return sha256_file(out_path)


def pretrain_tiny(cfg: PretrainConfig, out_path, backbone: str = "tiny-cnn", synthetic_seed: int = 0,
                  pixel_mean=(0.48145466, 0.4578275, 0.40821073), pixel_std=(0.26862954, 0.26130258, 0.27577711),
                  progress: bool = False, log=None) -> PretrainResult:
    """Train ``backbone``'s image and text towers with ``ClipLoss`` and write its state dict to ``out_path``.

    A recipe on ``train.loop``. Also writes ``<out_path>.json``: the settings, the per-epoch loss next to its
    chance value ln(batch size), and the file's SHA-256.
    """
    out_path = Path(out_path)
    _check_settings(cfg, backbone, out_path)
    say = log or (lambda message: None)
    started = time.perf_counter()
    model_cfg = get_clip_config(backbone)
    size = int(model_cfg["vision_cfg"]["image_size"])
    ids = range(cfg.first_id, cfg.first_id + cfg.num_ids)
    images = _normalise(_render(ids, cfg.images_per_id, size, synthetic_seed), pixel_mean, pixel_std)
    owners = [(i, n) for i in ids for n in range(cfg.images_per_id)]
    say(f"pretrain: rendered {len(owners)} images of {cfg.num_ids} identities in {time.perf_counter() - started:.1f}s")

    torch.manual_seed(cfg.seed)
    clip = _build_clip(model_cfg)
    tokenizer = get_tokenizer(backbone)
    optimizer = torch.optim.AdamW(_param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = len(owners) // cfg.batch_size  # full batches only: every step contrasts the same number of pairs

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # A fresh wording of every image each epoch: the text side sees many captions of one photo.
        texts = [caption(i, n, synthetic_seed, variant=epoch, scene=cfg.caption_scene) for i, n in owners]
        tokens = tokenizer(texts).long()
        order = torch.randperm(len(owners), generator=generator)
        slices = [order[k * cfg.batch_size:(k + 1) * cfg.batch_size] for k in range(steps)]
        return [(idx, tokens[idx]) for idx in slices]

    def losses(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx, batch_tokens = batch
        image_features = F.normalize(clip.encode_image(_shifted(images[idx], generator)), dim=-1)
        text_features = F.normalize(encode_captions(clip, batch_tokens), dim=-1)
        return {"clip": loss_fn(image_features, text_features, clip.logit_scale.exp())}

    def update(terms: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        terms["clip"].backward()
        optimizer.step()
        with torch.no_grad():  # CLIP clamps its temperature at 100
            clip.logit_scale.clamp_(0, math.log(100))

    history: list[dict] = []
    hooks = [StepLr(optimizer, lambda step: _lr_at(step, steps * cfg.epochs, cfg)), Progress(progress),
             FiniteGuard(torch.device("cpu"), error=_diverged), _PretrainRecord(clip, cfg.batch_size, history, say)]
    TrainLoop("pretrain", cfg.epochs, steps, clip, hooks).run(batches, losses, update)

    digest = _write_weights(clip, out_path)
    elapsed = time.perf_counter() - started
    atomic_write_json(out_path.with_name(out_path.name + ".json"), {
        "backbone": backbone, "pretrain": cfg.model_dump(mode="json"), "synthetic_seed": synthetic_seed,
        "pixel_mean": list(pixel_mean), "pixel_std": list(pixel_std), "history": history,
        "sha256": digest, "time_s": round(elapsed, 1), "threads": torch.get_num_threads()})
    return PretrainResult(out_path, digest, history, elapsed)


def pretrained_weights(config, log=None, progress: bool = False) -> PretrainResult:
    """The pretrained file for ``config`` (its ``pretrain`` section, backbone, synthetic seed and mean/std):
    read from the cache when these exact settings were trained before, else trained and cached."""
    path = pretrain_cache_path(config.pretrain, config.model.backbone, config.data.synthetic.seed,
                               config.data.pixel_mean, config.data.pixel_std, config.data)
    meta = path.with_name(path.name + ".json")
    if path.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            if sha256_file(path) == info["sha256"]:
                return PretrainResult(path, info["sha256"], info["history"], 0.0, cached=True)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is retrained, never trusted
    return pretrain_tiny(config.pretrain, path, config.model.backbone, config.data.synthetic.seed,
                         config.data.pixel_mean, config.data.pixel_std, progress=progress, log=log)


def pretrain_tiny_from_config(config, out_path, progress: bool = False, log=None) -> PretrainResult:
    """``pretrain_tiny`` with the settings of a whole config (what ``handclip pretrain-tiny`` runs): its
    ``pretrain`` section, ``model.backbone``, ``data.synthetic.seed``, ``data.pixel_mean``/``pixel_std``
    and ``runtime.threads``; never read from or written to the cache."""
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    return pretrain_tiny(config.pretrain, out_path, config.model.backbone, config.data.synthetic.seed,
                         config.data.pixel_mean, config.data.pixel_std, progress=progress, log=log)


__all__ = ["PretrainResult", "pretrain_tiny", "pretrain_tiny_from_config", "pretrained_weights", "pretrain_cache_path",
           "encode_captions"]
