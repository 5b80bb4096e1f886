"""Image transforms: PIL image in, normalised float tensor [3, H, W] out.

Train order follows CLIP-ReID: resize (bicubic, as CLIP was trained), horizontal flip, pad + random crop
back to the input size, to-tensor, normalise, random erasing. Random erasing fills with 0, which after
normalisation is the dataset mean colour. Evaluation only resizes and normalises, so training and
evaluation always share the same normalisation (docs/method.md, "Pitfalls").
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..config import DataConfig


class _PlainTensor(torch.nn.Module):
    """Drop torchvision's tv_tensors subclass so batches are ordinary tensors downstream."""

    def forward(self, image):
        return image.as_subclass(torch.Tensor)


def build_transforms(data_cfg: DataConfig, train: bool):
    """Transform for training (augmented) or evaluation, sized to ``data_cfg.image_size`` (height, width)."""
    size = tuple(int(s) for s in data_cfg.image_size)
    steps = [T.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if train:
        aug = data_cfg.augment
        if aug.hflip_p > 0:
            steps.append(T.RandomHorizontalFlip(p=aug.hflip_p))
        if aug.pad > 0:
            steps += [T.Pad(aug.pad), T.RandomCrop(size)]
    steps += [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(data_cfg.pixel_mean), std=list(data_cfg.pixel_std)),
    ]
    if train and data_cfg.augment.random_erasing_p > 0:
        steps.append(T.RandomErasing(p=data_cfg.augment.random_erasing_p, value=0))
    steps.append(_PlainTensor())
    return T.Compose(steps)
