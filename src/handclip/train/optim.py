"""Optimizers and learning-rate schedules of both stages (CLIP-ReID defaults, docs/method.md "Defaults").

Stage 1: Adam on the prompt vectors only; timm's ``CosineLRScheduler`` with CLIP-ReID's arguments
(linear warm-up from ``warmup_lr_init`` over ``warmup_epochs``, cosine to ``lr_min`` over all
``epochs``, no warm-up prefix, one cycle). CLIP-ReID calls ``scheduler.step(epoch)`` with epoch 1..N
before each epoch, so epoch 1 already trains at 7.8e-5 and epoch N at ``lr_min``.
Stage 2: Adam with one group per (lr, weight decay) kind: backbone weights, backbone biases (lr x
``bias_lr_factor``, ``weight_decay_bias``), new heads (``head_lr``) and, in a joint run, the prompts;
center-loss centres get their own SGD optimizer with ``center_lr`` (as in CLIP-ReID); CLIP-ReID's
``WarmupMultiStepLR``: linear warm-up from ``warmup_factor`` then steps at ``milestones``, which
CLIP-ReID steps at the start of every epoch (last_epoch 1..N).

Schedules are functions of a (possibly fractional) epoch position, so the same object serves
per-epoch (``set_position(epoch + first)``) and per-step (``set_position(epoch + first + step / steps)``)
updates, where ``first`` is ``stage*.schedule_epochs_from``; resuming only needs the position.
"""

from __future__ import annotations

import bisect
from typing import Iterable

import torch

from ..runtime import use_fused_optimizer


def _adam(groups: list[dict], fused: bool) -> torch.optim.Adam:
    groups = [g for g in groups if g["params"]]
    if fused:
        try:
            return torch.optim.Adam(groups, fused=True)
        except (RuntimeError, TypeError):
            pass  # device or dtype without a fused kernel: fall back silently, results are the same
    return torch.optim.Adam(groups)


def adam(groups: list[dict], runtime_cfg, device: torch.device) -> torch.optim.Adam:
    """Adam over ``groups`` (empty ones left out), fused where ``runtime.fused_optimizer`` and the device allow."""
    return _adam(groups, use_fused_optimizer(runtime_cfg, device))


class EpochSchedule:
    """Sets every group's lr from its base lr and the current epoch position ``t``."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.position = 0.0
        self.set_position(0.0)

    def lr_at(self, base_lr: float, t: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_position(self, t: float) -> None:
        self.position = float(t)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(group["initial_lr"], self.position)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.set_position(state["position"])


class TimmCosineLR(EpochSchedule):
    """timm's ``CosineLRScheduler`` as CLIP-ReID builds it, evaluated at the epoch position.

    ``warmup_prefix=False`` (CLIP-ReID): the cosine spans all ``epochs``, the warm-up included.
    ``warmup_prefix=True``: the cosine starts after the warm-up and spans the remaining epochs.
    """

    def __init__(self, optimizer, epochs: int, warmup_epochs: int = 5, warmup_lr_init: float = 1e-5,
                 lr_min: float = 1e-6, warmup_prefix: bool = False):
        from timm.scheduler import CosineLRScheduler

        span = epochs - warmup_epochs if warmup_prefix else epochs
        self.timm = CosineLRScheduler(optimizer, t_initial=max(span, 1), lr_min=lr_min, cycle_mul=1.0,
                                      cycle_decay=0.1, cycle_limit=1, warmup_t=warmup_epochs,
                                      warmup_lr_init=warmup_lr_init, warmup_prefix=warmup_prefix,
                                      t_in_epochs=True, noise_range_t=None)
        super().__init__(optimizer)

    def set_position(self, t: float) -> None:
        self.position = float(t)
        self.timm.step(self.position)


class WarmupMultiStepLR(EpochSchedule):
    """Linear warm-up factor from ``warmup_factor`` to 1 over ``warmup_epochs``; x ``gamma`` at each milestone."""

    def __init__(self, optimizer, milestones: Iterable[int], gamma: float = 0.1, warmup_factor: float = 0.1,
                 warmup_epochs: int = 10):
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_epochs = warmup_epochs
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, t: float) -> float:
        factor = 1.0
        if t < self.warmup_epochs:
            alpha = t / self.warmup_epochs
            factor = self.warmup_factor * (1 - alpha) + alpha
        return base_lr * factor * self.gamma ** bisect.bisect_right(self.milestones, t)


def build_stage1_optimizer(model, stage1_cfg, runtime_cfg, device: torch.device):
    """Adam on the prompt vectors only, with timm's warm-up cosine schedule."""
    params = list(model.prompt_learner.parameters())
    optimizer = _adam([{"params": params, "lr": stage1_cfg.lr, "weight_decay": stage1_cfg.weight_decay}],
                      use_fused_optimizer(runtime_cfg, device))
    schedule = TimmCosineLR(optimizer, stage1_cfg.epochs, stage1_cfg.warmup_epochs, stage1_cfg.warmup_lr_init,
                            stage1_cfg.lr_min, warmup_prefix=stage1_cfg.warmup_prefix)
    return optimizer, schedule


_BACKBONE_PREFIXES = ("image_encoder.", "text_encoder.", "prompt_learner.")


def stage2_param_groups(model, stage2_cfg, prompt_lr: float | None = None,
                        prompt_weight_decay: float = 0.0) -> list[dict]:
    """Group the model's trainable parameters by the lr / weight decay they get.

    Parameters outside the image encoder, text encoder and prompt learner are the new heads
    (BNNeck, classifiers, ArcFace): they get ``head_lr`` (default: ``lr``).
    """
    lr = stage2_cfg.lr
    head_lr = stage2_cfg.head_lr or lr
    kinds: dict[str, dict] = {}

    def add(kind: str, param, group_lr: float, weight_decay: float) -> None:
        group = kinds.setdefault(kind, {"params": [], "lr": group_lr, "weight_decay": weight_decay, "name": kind})
        group["params"].append(param)

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_bias = name.endswith("bias")
        if name.startswith("aspect_head."):  # trained from scratch, beside a fine-tuned encoder
            add("aspect_head", param, stage2_cfg.aspect_head_lr, 0.0)
        elif name.startswith("prompt_learner."):
            add("prompt", param, prompt_lr if prompt_lr is not None else lr, prompt_weight_decay)
        elif name.startswith(_BACKBONE_PREFIXES):
            if is_bias:
                add("backbone_bias", param, lr * stage2_cfg.bias_lr_factor, stage2_cfg.weight_decay_bias)
            else:
                add("backbone", param, lr, stage2_cfg.weight_decay)
        else:
            if is_bias:
                add("head_bias", param, head_lr * stage2_cfg.bias_lr_factor, stage2_cfg.weight_decay_bias)
            else:
                add("head", param, head_lr, stage2_cfg.weight_decay)
    return list(kinds.values())


class OptimizerSet:
    """The stage-2 optimizers stepped together: Adam for the model, SGD for center-loss centres."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def main(self) -> torch.optim.Optimizer:
        return self.optimizers[0]

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self, scaler=None) -> None:
        for opt in self.optimizers:
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()

    def unscale_(self, scaler) -> None:
        for opt in self.optimizers:
            scaler.unscale_(opt)

    def parameters(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)


def build_stage2_optimizer(model, stage2_cfg, runtime_cfg, device: torch.device, center_loss=None,
                           prompt_lr: float | None = None, prompt_weight_decay: float = 0.0):
    """Adam over every trainable model parameter (+ SGD for centres) and the warm-up multi-step schedule."""
    groups = stage2_param_groups(model, stage2_cfg, prompt_lr, prompt_weight_decay)
    optimizers = [_adam(groups, use_fused_optimizer(runtime_cfg, device))]
    if center_loss is not None:
        optimizers.append(torch.optim.SGD(center_loss.parameters(), lr=stage2_cfg.center_lr))
    schedule = WarmupMultiStepLR(optimizers[0], stage2_cfg.milestones, stage2_cfg.gamma,
                                 stage2_cfg.warmup_factor, stage2_cfg.warmup_epochs)
    return OptimizerSet(optimizers), schedule
