"""Identity classification heads placed after the BNNeck."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def linear_id_classifier(in_features: int, num_ids: int) -> nn.Linear:
    """Bias-free linear ID classifier, weights N(0, 0.001) as in BNNeck / CLIP-ReID."""
    layer = nn.Linear(in_features, num_ids, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer


class ArcMarginProduct(nn.Module):
    """ArcFace head (Deng et al. 2019): s * cos(theta + m) for the true class, s * cos(theta) otherwise.

    Without labels (evaluation) it returns the plain scaled cosine logits.
    """

    def __init__(self, in_features: int, num_ids: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.in_features = in_features
        self.num_ids = num_ids
        self.scale = float(scale)
        self.margin = float(margin)
        self.weight = nn.Parameter(torch.empty(num_ids, in_features))
        nn.init.xavier_uniform_(self.weight)
        self._cos_m = math.cos(self.margin)
        self._sin_m = math.sin(self.margin)
        # Beyond theta = pi - m, cos(theta + m) stops decreasing; use a linear penalty there instead.
        self._threshold = math.cos(math.pi - self.margin)
        self._fallback = math.sin(math.pi - self.margin) * self.margin

    def forward(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        cosine = F.linear(F.normalize(features.float()), F.normalize(self.weight.float()))
        if labels is None:
            return cosine * self.scale
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-7))
        phi = cosine * self._cos_m - sine * self._sin_m
        phi = torch.where(cosine > self._threshold, phi, cosine - self._fallback)
        one_hot = F.one_hot(labels.long(), self.num_ids).to(cosine.dtype)
        return (one_hot * phi + (1.0 - one_hot) * cosine) * self.scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_ids={self.num_ids}, scale={self.scale}, margin={self.margin}"
