"""Training losses of CLIP-ReID (docs/method.md, "Stage 2") and the optional extras.

- ``CrossEntropyLabelSmooth``: identity cross-entropy with label smoothing (0.1).
- ``TripletLoss``: batch-hard triplet loss (margin 0.3) on Euclidean distances; needs P x K batches so
  every anchor has a positive (docs/method.md, "Pitfalls").
- ``SupConLoss``: supervised contrastive loss between two sets of features (image->text and
  text->image in stage 1): for every anchor, the mean log-softmax over its positives (same identity).
- ``CenterLoss``: learnable class centres; they are parameters and must be given to an optimizer.
- ``i2t_cross_entropy``: image->text cross-entropy over all identities' text features.
- ``prompt_l2``: L2 penalty on the prompt vectors.

Image-text logits (``image_text_logits``) are, as in CLIP-ReID, raw dot products of the unnormalised
features (temperature 1) when ``scale`` is None, and cosine similarities times ``scale`` otherwise
(``losses.logits: cosine``), which keeps the losses on one scale for a random-init tiny model and a
pretrained ViT alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against (1 - eps) * one-hot + eps / num_classes."""

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances [len(x), len(y)] (clamped so the sqrt has a gradient at 0)."""
    x = x.float()
    y = y.float()
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1, keepdim=True).T - 2.0 * x @ y.T
    return sq.clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss: hardest positive and hardest negative per anchor.

    Anchors without a positive or a negative in the batch are left out (they carry no signal);
    if no anchor has both, the loss is 0 (still connected to the graph).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = float(margin)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = euclidean_dist(features, features)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive = same & ~eye
        negative = ~same
        valid = positive.any(1) & negative.any(1)
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(1)
        # Masked mean instead of boolean indexing / an ``if`` on a device value: no host sync per step on
        # a GPU and no graph break under torch.compile. Rows without both a positive and a negative
        # contribute exactly 0 (and no gradient); no valid row at all gives 0, still on the graph.
        losses = torch.where(valid, F.relu(hardest_pos - hardest_neg + self.margin), dist.new_zeros(()))
        return losses.sum() / valid.sum().clamp_min(1)


def image_text_logits(a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor | None) -> torch.Tensor:
    """``a @ b.T`` in float32: raw dot products when ``scale`` is None, else cosine similarities x ``scale``."""
    if scale is None:
        return a.float() @ b.float().T
    return scale * F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


class SupConLoss(nn.Module):
    """Supervised contrastive loss of anchors against a contrast set (CLIP-ReID stage 1).

    logits[i, j] = ``image_text_logits(anchors, contrast, scale)``: the raw dot product (CLIP-ReID's
    temperature 1) when ``scale`` is None. For every anchor the loss is minus the mean, over the
    contrast items with the same label, of the log-softmax of its row. Stage 1 calls it twice: images
    as anchors against the batch's text features and back.
    """

    def forward(self, anchors: torch.Tensor, contrast: torch.Tensor, anchor_labels: torch.Tensor,
                contrast_labels: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        logits = image_text_logits(anchors, contrast, scale)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)).to(log_prob.dtype)
        count = positives.sum(1)
        has_positive = count > 0
        mean_log_prob = (positives * log_prob).sum(1)[has_positive] / count[has_positive]
        if mean_log_prob.numel() == 0:
            return logits.sum() * 0.0
        return -mean_log_prob.mean()


class CenterLoss(nn.Module):
    """Mean squared distance of each feature to its class centre (Wen et al. 2016).

    The centres are learnable parameters: the training code gives them their own optimizer group
    (a head outside every optimizer would train nothing; docs/method.md, "Pitfalls").
    """

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        diff = features.float() - self.centers[labels]
        return diff.pow(2).sum(1).clamp(1e-12, 1e12).mean()


def i2t_cross_entropy(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                      scale: float | torch.Tensor | None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of each image over every identity's text feature (``image_text_logits``)."""
    logits = image_text_logits(image_features, text_features, scale)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def text_id_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                   scale: float | torch.Tensor | None) -> torch.Tensor:
    """ID logits from text anchors (``model.id_head == 'text'``): ``image_text_logits(image, text, scale)``."""
    return image_text_logits(image_features, text_features, scale)


def prompt_l2(ctx: torch.Tensor) -> torch.Tensor:
    """Mean squared L2 norm of the prompt context vectors."""
    return ctx.float().pow(2).sum(-1).mean()


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
