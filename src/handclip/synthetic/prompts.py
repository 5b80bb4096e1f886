"""How well the learned identity prompts name the training images (docs/method.md, "Stage 1").

Stage 1 succeeds when, for a training image, its own identity's prompt is the nearest of all training
identities' text features (cosine). Chance is 1 / number of identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def prompt_top1(model, image_features: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``image_features`` (projected, [N, D]) whose nearest prompt text feature is their ``labels``'."""
    was_training = model.training
    model.eval()
    try:
        text = F.normalize(model.all_text_features().float(), dim=-1)
    finally:
        model.train(was_training)
    scores = F.normalize(image_features.float().to(text.device), dim=-1) @ text.T
    return float((scores.argmax(dim=1).cpu() == labels.cpu()).float().mean())


__all__ = ["prompt_top1"]
