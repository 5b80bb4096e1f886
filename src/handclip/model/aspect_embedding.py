"""Aspect embeddings (CLIP-ReID's side-information embedding, SIE, with the hand aspect as the "camera")
and the optional aspect classifier head (docs/method.md, "Aspects of a hand").

SIE, as CLIP-ReID computes it for a ViT: one learnable vector per aspect, [4, width], initialised from a
truncated normal (std 0.02), scaled by ``model.sie_coe`` (3.0) and added to the class token right after
the class token is prepended to the patch tokens, before the positional embedding and ``ln_pre``.
Without an aspect label nothing is added (CLIP-ReID's ``cam_label=None``; its stage 1 encodes images so).

CLIP-ReID applies SIE to ViTs only. For a ResNet-style tower (ModifiedResNet, tiny-cnn) HandCLIP adds it
where the attention pool forms its query: the pool prepends the mean of the spatial tokens, which plays
the class token's part, and the projected feature is that token's output. So only the projected feature
sees the aspect there; the pooled layer-4 feature does not.

The aspect head is a small CNN of its own on the input image, trained with its own loss: it never
changes the identity features, and it exists to warn when a query's stated aspect looks wrong. It does
not read the identity features: training makes them aspect-invariant (one person across aspects), and
their spatial means cannot tell a left hand from a mirrored right one; a linear probe on them stayed
near chance (0.33 against 0.25 on four-aspect synthetic hands, docs/aspects.md).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..aspects import ASPECTS
from .image_prompts import attention_pool_tokens


class AspectEmbedding(nn.Module):
    """One learnable vector per aspect, scaled by ``coefficient``: what is added for ``aspects`` [B]."""

    def __init__(self, width: int, coefficient: float, count: int = len(ASPECTS)):
        super().__init__()
        self.coefficient = float(coefficient)
        self.weight = nn.Parameter(torch.zeros(count, width))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, aspects: torch.Tensor) -> torch.Tensor:
        return self.coefficient * self.weight[aspects.to(self.weight.device).long()]


def add_to_class_token(tokens: torch.Tensor, side: Optional[torch.Tensor]) -> torch.Tensor:
    """``tokens`` [B, 1 + N, W] with ``side`` [B, W] added to the class token (position 0)."""
    if side is None:
        return tokens
    return torch.cat([tokens[:, :1] + side[:, None].to(tokens.dtype), tokens[:, 1:]], dim=1)


def attention_pool(pool: nn.Module, x: torch.Tensor, side: Optional[torch.Tensor]) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` on the map ``x`` [B, C, H, W], with ``side`` [B, C] added to its
    query token (the spatial mean) before the positional embedding; ``pool(x)`` itself when ``side`` is None."""
    if side is None:
        return pool(x)
    return attention_pool_tokens(pool, x, side)[:, 0]


class AspectHead(nn.Module):
    """Aspect logits [B, 4] from the (normalised) input images: three strided 3x3 conv + BN + ReLU layers,
    a 4 x 4 average pool that keeps the layout (which side the thumb is on), one linear layer."""

    def __init__(self, count: int = len(ASPECTS), width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, width), (width, 2 * width), (2 * width, 4 * width)):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.linear = nn.Linear(4 * width * 16, count)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(images.detach())).float()


__all__ = ["AspectEmbedding", "AspectHead", "add_to_class_token", "attention_pool"]
