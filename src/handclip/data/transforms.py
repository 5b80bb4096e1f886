"""Image transforms: PIL image in, normalised float tensor [3, H, W] out.

Train order follows CLIP-ReID: resize (``data.interpolation.train``, bicubic as CLIP-ReID's
``interpolation=3``), horizontal flip, pad + random crop back to the input size, to-tensor, normalise
(``data.pixel_mean/std``, CLIP-ReID's ViT configs: 0.5), random erasing after normalisation. Erasing fills
with per-pixel N(0, 1) noise through timm's RandomErasing (mode 'pixel', one box, as CLIP-ReID), or with 0,
the mean colour after normalisation (``data.augment.random_erasing_fill: zero``, torchvision's).
Evaluation only resizes (``data.interpolation.eval``, bilinear as CLIP-ReID's test transform) and
normalises, so training and evaluation always share the same normalisation (docs/method.md, "Pitfalls").
With ``data.augment.resize_crop`` (CLIP-HandID's recipe) training resizes to that size instead and then takes
a random crop of the input size (after the padding, when ``data.augment.pad`` is above 0).
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..config import DataConfig

INTERPOLATION_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


class _PlainTensor(torch.nn.Module):
    """Drop torchvision's tv_tensors subclass so batches are ordinary tensors downstream."""

    def forward(self, image):
        return image.as_subclass(torch.Tensor)


def interpolation_of(data_cfg: DataConfig, train: bool) -> str:
    """The resampling of the resize to ``data.image_size`` in the training or the evaluation transform."""
    return data_cfg.interpolation.train if train else data_cfg.interpolation.eval


def _random_erasing(augment):
    if augment.random_erasing_fill == "pixel":
        from timm.data.random_erasing import RandomErasing

        return RandomErasing(probability=augment.random_erasing_p, mode="pixel", max_count=1, device="cpu")
    return T.RandomErasing(p=augment.random_erasing_p, value=0)


def resize_size(data_cfg: DataConfig, train: bool) -> tuple[int, int]:
    """The size the transform resizes to first: the input size, or ``data.augment.resize_crop`` in training."""
    crop = data_cfg.augment.resize_crop
    return tuple(int(s) for s in (crop if train and crop is not None else data_cfg.image_size))


def build_transforms(data_cfg: DataConfig, train: bool):
    """Transform for training (augmented) or evaluation, sized to ``data_cfg.image_size`` (height, width)."""
    size = tuple(int(s) for s in data_cfg.image_size)
    mode = INTERPOLATION_MODES[interpolation_of(data_cfg, train)]
    steps = [T.Resize(resize_size(data_cfg, train), interpolation=mode, antialias=True)]
    if train:
        aug = data_cfg.augment
        if aug.hflip_p > 0:
            steps.append(T.RandomHorizontalFlip(p=aug.hflip_p))
        if aug.pad > 0:
            steps += [T.Pad(aug.pad), T.RandomCrop(size)]
        elif aug.resize_crop is not None:
            steps.append(T.RandomCrop(size))
    steps += [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(data_cfg.pixel_mean), std=list(data_cfg.pixel_std)),
    ]
    if train and data_cfg.augment.random_erasing_p > 0:
        if data_cfg.augment.random_erasing_fill == "pixel":
            steps.append(_PlainTensor())  # timm's eraser writes into a plain tensor in place
        steps.append(_random_erasing(data_cfg.augment))
    steps.append(_PlainTensor())
    return T.Compose(steps)
