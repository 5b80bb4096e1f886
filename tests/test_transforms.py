import random

import numpy as np
import pytest
import torch
from PIL import Image

from handclip.config import CLIP_MEAN, CLIP_STD, DataConfig
from handclip.data.transforms import build_transforms

NO_AUGMENT = {"hflip_p": 0.0, "pad": 0, "random_erasing_p": 0.0}
SAME_RESIZE = {"train": "bilinear", "eval": "bilinear"}  # training and evaluation resize alike


def textured(width=96, height=72, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(224, 224), (256, 128), (64, 96)])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_dtype_for_square_and_non_square_sizes(size, train):
    out = build_transforms(DataConfig(image_size=size), train)(textured())
    assert type(out) is torch.Tensor  # plain tensor, not a torchvision subclass
    assert out.shape == (3, *size)
    assert out.dtype == torch.float32


def test_normalisation_uses_configured_mean_and_std():
    cfg = DataConfig(image_size=(32, 48), pixel_mean=CLIP_MEAN, pixel_std=CLIP_STD)
    transform = build_transforms(cfg, train=False)
    mean_colour = tuple(round(m * 255) for m in CLIP_MEAN)
    near_zero = transform(Image.new("RGB", (50, 40), mean_colour))
    assert near_zero.abs().max() < 0.01
    white = transform(Image.new("RGB", (50, 40), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(white.mean(dim=(1, 2)), expected)
    custom = DataConfig(image_size=(32, 48), pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
    black = build_transforms(custom, train=False)(Image.new("RGB", (50, 40), (0, 0, 0)))
    assert torch.allclose(black, torch.full_like(black, -1.0))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resize_to_height_width_uses_the_configured_interpolation(mode, train):
    image = textured(100, 60)
    cfg = DataConfig(image_size=(40, 30), pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1), interpolation={"train": mode, "eval": mode},
                     augment=NO_AUGMENT)
    out = build_transforms(cfg, train)(image)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[mode]
    expected = np.asarray(image.resize((30, 40), resample), np.float32) / 255  # PIL takes (width, height)
    torch.testing.assert_close(out, torch.from_numpy(expected).permute(2, 0, 1))


def test_train_without_augmentation_equals_eval():
    cfg = DataConfig(image_size=(48, 32), augment=NO_AUGMENT, interpolation=SAME_RESIZE)
    image = textured()
    assert torch.equal(build_transforms(cfg, True)(image), build_transforms(cfg, False)(image))


def test_horizontal_flip_mirrors_the_eval_image():
    cfg = DataConfig(image_size=(48, 32), augment={**NO_AUGMENT, "hflip_p": 1.0}, interpolation=SAME_RESIZE)
    image = textured()
    assert torch.equal(build_transforms(cfg, True)(image), build_transforms(cfg, False)(image).flip(-1))


def test_random_erasing_zero_fill_zeroes_one_rectangle_and_keeps_the_rest():
    cfg = DataConfig(image_size=(64, 48), augment={**NO_AUGMENT, "random_erasing_p": 1.0, "random_erasing_fill": "zero"},
                     interpolation=SAME_RESIZE)
    image = textured()
    reference = build_transforms(cfg, False)(image)
    torch.manual_seed(0)
    out = build_transforms(cfg, True)(image)
    changed = (out != reference).any(dim=0)
    assert changed.any()
    assert (out[:, changed] == 0).all()
    rows, cols = torch.nonzero(changed, as_tuple=True)
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.float().mean() > 0.95  # a rectangle, not scattered pixels


def test_pad_and_random_crop_shift_the_image_within_the_padding():
    pad = 4
    size = (40, 32)
    cfg = DataConfig(image_size=size, augment={**NO_AUGMENT, "pad": pad}, interpolation=SAME_RESIZE)
    image = textured(seed=3)
    reference = build_transforms(cfg, False)(image)
    train = build_transforms(cfg, True)
    shifts = set()
    height, width = size
    for seed in range(12):
        torch.manual_seed(seed)
        out = train(image)
        found = None
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                # out[y, x] == reference[y + dy, x + dx] where both exist
                o = out[:, max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
                r = reference[:, max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)]
                if torch.equal(o, r):
                    found = (dy, dx)
        assert found is not None, f"seed {seed}: output is not a shifted copy of the input"
        shifts.add(found)
    assert len(shifts) > 3  # the crop position really is random


def test_same_seed_same_augmentation_different_seed_differs():
    cfg = DataConfig(image_size=(48, 32))
    train = build_transforms(cfg, True)
    image = textured()
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        random.seed(seed)  # timm's random erasing draws its box from Python's generator
        outs.append(train(image))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
