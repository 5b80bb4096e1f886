"""HandCLIP's defaults compute what CLIP-ReID's official code computes; each switch flipped gives HandCLIP's
earlier behaviour. Expected values come from the formulas (CLIP-ReID's SupConLoss, TripletLoss, timm's
CosineLRScheduler, WarmupMultiStepLR, its transforms and positional-embedding resize), written out here."""

from __future__ import annotations

import copy
import math
import random
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from handclip.config import CLIP_MEAN, CLIP_STD, DataConfig, ModelConfig, Stage1Config, Stage2Config, RuntimeConfig
from handclip.config import config_from_dict, load_config
from handclip.data.transforms import build_transforms
from handclip.errors import CheckpointError
from handclip.train.losses import SupConLoss
from handclip.model.backbone import create_clip
from handclip.model.handclip import build_model
from handclip.train.optim import build_stage1_optimizer, build_stage2_optimizer

from training_helpers import base_config, make_context, tiny_manifest  # noqa: F401 - fixture

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notices
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------------------------ image-text logits


def test_supcon_default_is_raw_dot_product_at_temperature_one_on_a_hand_computed_case():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    contrast = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]])
    anchor_labels, contrast_labels = torch.tensor([0, 1]), torch.tensor([0, 1, 0])
    # logits = anchors @ contrast.T = [[1, 2, 0], [2, 0, 2]]. Row 0 (label 0): positives are columns 0 and 2,
    # loss0 = log(e + e^2 + 1) - (1 + 0) / 2. Row 1 (label 1): positive column 1, loss1 = log(2 e^2 + 1) - 0.
    e = math.e
    expected = ((math.log(e + e * e + 1) - 0.5) + math.log(2 * e * e + 1)) / 2
    loss = SupConLoss()(anchors, contrast, anchor_labels, contrast_labels)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Flipped (losses.logits: cosine): cosine similarities times the scale.
    cos = [[1 / math.sqrt(2), 1.0, 0.0], [1 / math.sqrt(2), 0.0, 1.0]]
    s = 10.0
    row0 = math.log(sum(math.exp(s * c) for c in cos[0])) - s * (cos[0][0] + cos[0][2]) / 2
    row1 = math.log(sum(math.exp(s * c) for c in cos[1])) - s * cos[1][1]
    cosine = SupConLoss()(anchors, contrast, anchor_labels, contrast_labels, scale=s)
    assert cosine.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_i2t_default_is_label_smoothed_cross_entropy_on_image_proj_at_text_T(tiny_manifest):
    from handclip.train.stage2 import Stage2Trainer

    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for logits_mode in ("dot", "cosine"):  # dot: the default, not set
        losses = {} if logits_mode == "dot" else {"logits": "cosine"}
        ctx = make_context(base_config(tiny_manifest, losses=losses, stage2={"id_weight": 0.0, "triplet_weight": 0.0}))
        trainer = Stage2Trainer(ctx)
        seen = _spy_forward(trainer)
        terms = trainer.compute_losses(images, labels)
        image, text = seen["out"].image_proj.float(), trainer.fixed_text.float()
        if logits_mode == "dot":
            assert trainer.scale is None
            logits = image @ text.T  # CLIP-ReID: logits = image_features @ text_features.t()
        else:
            scale = float(ctx.model.logit_scale.exp())
            assert trainer.scale == pytest.approx(scale)
            logits = scale * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
        expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
        assert set(terms) == {"i2t"}
        assert terms["i2t"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_stage1_supcon_gets_the_logits_switch(tiny_manifest, monkeypatch):
    from handclip.train import stage1

    scales = []

    class Recording(SupConLoss):
        def forward(self, anchors, contrast, anchor_labels, contrast_labels, scale=None):
            scales.append(scale)
            return super().forward(anchors, contrast, anchor_labels, contrast_labels, scale)

    monkeypatch.setattr(stage1, "SupConLoss", Recording)
    for losses, model_section in (({}, {}), ({"logits": "cosine"}, {"logit_scale": 7.0})):
        logits_mode = losses.get("logits", "dot")  # dot: the default
        scales.clear()
        ctx = make_context(base_config(tiny_manifest, losses=losses, stage1={"epochs": 1},
                                       model={"backbone": "tiny-vit", **model_section}))
        stage1.run_stage1(ctx)
        assert scales and set(scales) == ({None} if logits_mode == "dot" else {7.0})


# ----------------------------------------------------------------------------------------- triplet


def _spy_forward(trainer) -> dict:
    seen = {}
    forward = trainer.forward_model

    def spy(*args, **kwargs):
        seen["out"] = forward(*args, **kwargs)
        return seen["out"]

    trainer.forward_model = spy
    return seen


def _batch_hard(features: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Mean over anchors of relu(max d(a, positive) - min d(a, negative) + margin), Euclidean."""
    x = features.detach().double()
    losses = []
    for i in range(len(labels)):
        dist = (x - x[i]).norm(dim=1)
        positive = max(float(dist[j]) for j in range(len(labels)) if j != i and labels[j] == labels[i])
        negative = min(float(dist[j]) for j in range(len(labels)) if labels[j] != labels[i])
        losses.append(max(0.0, positive - negative + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn"])
def test_triplet_is_summed_over_the_three_features_and_the_switch_gives_two(tiny_manifest, backbone):
    from handclip.train.stage2 import Stage2Trainer

    torch.manual_seed(1)
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for features in (None, ["last", "proj"]):
        stage2 = {"id_weight": 0.0, "i2t_weight": 0.0, "triplet_weight": 0.5}
        if features is not None:
            stage2["triplet_features"] = features
        ctx = make_context(base_config(tiny_manifest, model={"backbone": backbone}, stage2=stage2))
        assert ctx.config.stage2.triplet_features == (features or ["mid", "last", "proj"])
        trainer = Stage2Trainer(ctx)
        seen = _spy_forward(trainer)
        terms = trainer.compute_losses(images, labels)
        out = seen["out"]
        by_name = {"mid": out.feat_mid, "last": out.feat_last, "proj": out.feat_proj}
        expected = 0.5 * sum(_batch_hard(by_name[n], labels, 0.3) for n in ctx.config.stage2.triplet_features)
        assert terms["triplet"].item() == pytest.approx(expected, rel=1e-4)
        assert all(_batch_hard(by_name[n], labels, 0.3) > 0 for n in by_name)  # each term matters


def test_rn_mid_feature_is_pooled_layer3_as_clip_reid():
    model = build_model({"backbone": "tiny-rn"}, {"image_size": [64, 64]}, num_ids=3).eval()
    seen = {}
    handle = model.image_encoder.layer3.register_forward_hook(lambda m, i, o: seen.__setitem__("x3", o) or None)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    handle.remove()
    torch.testing.assert_close(out.feat_mid, seen["x3"].mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------- learning rates


def _stage1_clipreid(epoch: int, base=3.5e-4, init=1e-5, warmup=5, lr_min=1e-6, epochs=120) -> float:
    """timm's CosineLRScheduler as CLIP-ReID configures it (no warm-up prefix, one cycle) at t = epoch."""
    if epoch < warmup:
        return init + epoch * (base - init) / warmup
    if epoch >= epochs:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * epoch / epochs))


def _stage1_earlier(epoch: int, base=3.5e-4, init=1e-5, warmup=5, lr_min=1e-6, epochs=120) -> float:
    """Earlier HandCLIP: position epoch - 1, cosine over the epochs after the warm-up."""
    t = epoch - 1
    if t < warmup:
        return init + (base - init) * t / warmup
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * (t - warmup) / (epochs - warmup)))


def _stage2_clipreid(last_epoch: int, base=5e-6, factor=0.1, warmup=10, milestones=(30, 50), gamma=0.1) -> float:
    warm = factor * (1 - last_epoch / warmup) + last_epoch / warmup if last_epoch < warmup else 1.0
    return base * warm * gamma ** sum(last_epoch >= m for m in milestones)


def _lr_at(schedule, optimizer, epoch: int, first: int) -> float:
    """What the training loops set before epoch ``epoch`` (1-based): position epoch - 1 + schedule_epochs_from."""
    schedule.set_position(epoch - 1 + first)
    return optimizer.param_groups[0]["lr"]


class _Prompted(nn.Module):
    def __init__(self):
        super().__init__()
        self.prompt_learner = nn.Linear(2, 2)
        self.image_encoder = nn.Linear(2, 2)


def test_stage1_lr_is_timm_cosine_stepped_with_epoch_numbers_1_to_120():
    cpu = torch.device("cpu")
    optimizer, schedule = build_stage1_optimizer(_Prompted(), Stage1Config(), RuntimeConfig(), cpu)
    quoted = {1: 7.8e-5, 5: 3.485e-4, 6: 3.479e-4, 60: 1.755e-4, 120: 1.0e-6}  # the rounded figures
    for epoch, rounded in quoted.items():
        lr = _lr_at(schedule, optimizer, epoch, Stage1Config().schedule_epochs_from)
        assert math.isclose(lr, _stage1_clipreid(epoch), rel_tol=1e-12), epoch
        assert math.isclose(lr, rounded, rel_tol=1e-3), epoch
    assert math.isclose(_lr_at(schedule, optimizer, 1, 1), 7.8e-5, rel_tol=1e-12)
    assert math.isclose(_lr_at(schedule, optimizer, 60, 1), 1.755e-4, rel_tol=1e-12)
    assert _lr_at(schedule, optimizer, 120, 1) == 1e-6
    # Flipped: numbered from 0 with the cosine after the warm-up, HandCLIP's earlier schedule.
    earlier = Stage1Config(schedule_epochs_from=0, warmup_prefix=True)
    optimizer, schedule = build_stage1_optimizer(_Prompted(), earlier, RuntimeConfig(), cpu)
    for epoch, rounded in {1: 1.0e-5, 5: 2.82e-4, 6: 3.5e-4, 60: 1.922e-4, 120: 1.065e-6}.items():
        lr = _lr_at(schedule, optimizer, epoch, 0)
        assert math.isclose(lr, _stage1_earlier(epoch), rel_tol=1e-12), epoch
        assert math.isclose(lr, rounded, rel_tol=1e-3), epoch


def test_stage2_lr_is_warmup_multistep_stepped_at_each_epoch_start():
    cpu = torch.device("cpu")
    model = nn.Module()
    model.image_encoder = nn.Linear(2, 2)
    optimizers, schedule = build_stage2_optimizer(model, Stage2Config(), RuntimeConfig(), cpu)
    for epoch, value in {1: 9.5e-7, 10: 5e-6, 30: 5e-7, 50: 5e-8}.items():
        lr = _lr_at(schedule, optimizers.main, epoch, Stage2Config().schedule_epochs_from)
        assert math.isclose(lr, value, rel_tol=1e-12), epoch
        assert math.isclose(lr, _stage2_clipreid(epoch), rel_tol=1e-12), epoch
    # The bias group follows the same factor at twice the lr.
    assert math.isclose(optimizers.main.param_groups[1]["lr"], 2 * 5e-8, rel_tol=1e-12)
    earlier = Stage2Config(schedule_epochs_from=0)
    optimizers, schedule = build_stage2_optimizer(model, earlier, RuntimeConfig(), cpu)
    for epoch, value in {1: 5e-7, 10: 4.55e-6, 30: 5e-6, 50: 5e-7}.items():
        assert math.isclose(_lr_at(schedule, optimizers.main, epoch, 0), value, rel_tol=1e-12), epoch


def test_training_loops_record_the_lr_of_each_epoch_number(tiny_manifest):
    from handclip.train.stage1 import run_stage1
    from handclip.train.stage2 import Stage2Trainer

    stage1 = {"epochs": 2, "warmup_epochs": 1, "lr": 1e-3, "warmup_lr_init": 1e-4, "lr_min": 1e-5}
    stage2 = {"epochs": 2, "warmup_epochs": 2, "lr": 1e-3, "warmup_factor": 0.1, "milestones": [2], "eval_every": 99}
    for first in (1, 0):
        ctx = make_context(base_config(tiny_manifest, stage1={**stage1, "schedule_epochs_from": first},
                                       stage2={**stage2, "schedule_epochs_from": first}))
        run_stage1(ctx)
        Stage2Trainer(ctx).run()
        got = {(r["stage"], r["epoch"]): r["lr"] for r in ctx.state["history"]}
        for epoch in (1, 2):
            t = epoch - 1 + first
            expected1 = _stage1_clipreid(t, 1e-3, 1e-4, 1, 1e-5, 2)
            expected2 = _stage2_clipreid(t, 1e-3, 0.1, 2, (2,), 0.1)
            assert math.isclose(got[("stage1", epoch)], expected1, rel_tol=1e-12), (first, epoch)
            assert math.isclose(got[("stage2", epoch)], expected2, rel_tol=1e-12), (first, epoch)


def test_stage1_walk_has_no_empty_last_batch_when_the_batch_divides_the_images(tiny_manifest):
    from handclip.train.stage1 import batch_slices, run_stage1

    assert [s.stop - s.start for s in batch_slices(128, 64)] == [64, 64]  # CLIP-ReID walks a third, empty one
    assert [s.stop - s.start for s in batch_slices(130, 64)] == [64, 64, 2]
    ctx = make_context(base_config(tiny_manifest, stage1={"epochs": 1, "batch_size": 12}))
    assert len(ctx.train_records) == 24  # 8 identities x 3 training images
    run_stage1(ctx)
    record = ctx.state["history"][-1]
    assert record["stage"] == "stage1" and math.isfinite(record["loss"])


# --------------------------------------------------------------------------------- input pipeline


def _textured(width=100, height=70, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _normalised(image: Image.Image, size, resample, mean, std) -> torch.Tensor:
    array = np.asarray(image.resize((size[1], size[0]), resample), np.float32) / 255
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_default_normalisation_and_resizes_are_clip_reid_vit():
    cfg = DataConfig(image_size=(40, 30), augment={"hflip_p": 0, "pad": 0, "random_erasing_p": 0})
    assert cfg.pixel_mean == cfg.pixel_std == (0.5, 0.5, 0.5)
    assert (cfg.interpolation.train, cfg.interpolation.eval) == ("bicubic", "bilinear")
    image = _textured()
    half = (0.5, 0.5, 0.5)
    # CLIP-ReID: T.Resize(size, interpolation=3) (bicubic) for training; T.Resize(size) (bilinear) for test.
    torch.testing.assert_close(build_transforms(cfg, True)(image), _normalised(image, (40, 30), Image.BICUBIC, half, half))
    torch.testing.assert_close(build_transforms(cfg, False)(image), _normalised(image, (40, 30), Image.BILINEAR, half, half))
    earlier = cfg.model_copy(update={"pixel_mean": CLIP_MEAN, "pixel_std": CLIP_STD,
                                     "interpolation": {"train": "bicubic", "eval": "bicubic"}})
    earlier = DataConfig.model_validate(earlier.model_dump())
    torch.testing.assert_close(build_transforms(earlier, False)(image),
                               _normalised(image, (40, 30), Image.BICUBIC, CLIP_MEAN, CLIP_STD))


def test_random_erasing_default_is_timm_pixel_mode_after_normalisation():
    from timm.data.random_erasing import RandomErasing

    assert DataConfig().augment.random_erasing_p == 0.5
    no_aug = {"hflip_p": 0, "pad": 0, "random_erasing_p": 1.0}
    cfg = DataConfig(image_size=(64, 48), augment=no_aug, interpolation={"train": "bilinear", "eval": "bilinear"})
    assert cfg.augment.random_erasing_fill == "pixel"
    image = _textured()
    normalised = build_transforms(cfg, False)(image)
    for seed in range(3):
        random.seed(seed)
        torch.manual_seed(seed)
        ours = build_transforms(cfg, True)(image)
        random.seed(seed)
        torch.manual_seed(seed)
        timm_way = RandomErasing(probability=1.0, mode="pixel", max_count=1, device="cpu")(normalised.clone())
        assert torch.equal(ours, timm_way)
        changed = (ours != normalised).any(dim=0)
        assert changed.sum() > 0.02 * 64 * 48 * 0.9
        box = ours[:, changed]
        assert box.std() > 0.5 and (box != 0).float().mean() > 0.99  # noise, not a constant fill
    zero = DataConfig.model_validate({**cfg.model_dump(), "augment": {**no_aug, "random_erasing_fill": "zero"}})
    torch.manual_seed(0)
    out = build_transforms(zero, True)(image)
    changed = (out != normalised).any(dim=0)
    assert changed.any() and (out[:, changed] == 0).all()


def _bilinear_by_hand(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] -> [C, h, w], half-pixel centres (align_corners=False), no antialias, edges clamped."""
    channels, height, width = grid.shape

    def taps(out_n: int, in_n: int):
        rows = []
        for i in range(out_n):
            src = max((i + 0.5) * in_n / out_n - 0.5, 0.0)
            low = min(int(math.floor(src)), in_n - 1)
            high = min(low + 1, in_n - 1)
            rows.append((low, high, src - low))
        return rows

    out = torch.empty(channels, *size, dtype=torch.float64)
    g = grid.double()
    for y, (y0, y1, wy) in enumerate(taps(size[0], height)):
        for x, (x0, x1, wx) in enumerate(taps(size[1], width)):
            out[:, y, x] = ((1 - wy) * ((1 - wx) * g[:, y0, x0] + wx * g[:, y0, x1])
                            + wy * ((1 - wx) * g[:, y1, x0] + wx * g[:, y1, x1]))
    return out


@pytest.mark.parametrize("size", [(96, 48), (40, 40)])
def test_positional_embedding_resize_is_bilinear_without_antialias_and_the_switch_bicubic(size):
    assert ModelConfig().pos_embed_interpolation == "bilinear"
    torch.manual_seed(3)
    native = create_clip("tiny-vit", image_size=(64, 64)).visual.positional_embedding.detach()
    results = {}
    for mode in ("bilinear", "bicubic"):
        torch.manual_seed(3)
        results[mode] = create_clip("tiny-vit", image_size=size, pos_embed_interpolation=mode).visual.positional_embedding
    grid = native[1:].reshape(8, 8, -1).permute(2, 0, 1)
    new = (size[0] // 8, size[1] // 8)
    expected = _bilinear_by_hand(grid, new).permute(1, 2, 0).reshape(-1, grid.shape[0]).float()
    assert torch.equal(results["bilinear"][0], native[0])  # the class token is kept
    torch.testing.assert_close(results["bilinear"][1:].detach(), expected, atol=1e-6, rtol=1e-5)
    shrinking = new[0] < 8 or new[1] < 8
    bicubic = F.interpolate(grid[None], size=new, mode="bicubic", align_corners=False, antialias=shrinking)[0]
    torch.testing.assert_close(results["bicubic"][1:].detach(), bicubic.permute(1, 2, 0).reshape(-1, grid.shape[0]))
    assert not torch.allclose(results["bilinear"], results["bicubic"])


def test_resnet_attention_pool_embedding_follows_the_same_switch():
    torch.manual_seed(4)
    native = create_clip("tiny-rn", image_size=(64, 64), rn_last_stride=2).visual.attnpool.positional_embedding.detach()
    torch.manual_seed(4)
    stride1 = create_clip("tiny-rn", image_size=(64, 64), rn_last_stride=1).visual.attnpool.positional_embedding
    grid = native[1:].reshape(2, 2, -1).permute(2, 0, 1)  # 2x2 map at stride 2, 4x4 at stride 1
    expected = _bilinear_by_hand(grid, (4, 4)).permute(1, 2, 0).reshape(16, -1).float()
    torch.testing.assert_close(stride1[1:].detach(), expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------- QuickGELU

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}
_VISION = {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16}


@pytest.fixture
def gelu_and_quickgelu(monkeypatch):
    """A reduced ViT registered twice with open_clip, as 'test-vit' (GELU) and 'test-vit-quickgelu'."""
    for name, quick in (("test-vit", False), ("test-vit-quickgelu", True)):
        cfg = {"embed_dim": 64, "quick_gelu": quick, "vision_cfg": dict(_VISION), "text_cfg": dict(_TEXT)}
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=64, quick_gelu=True, vision_cfg=dict(_VISION), text_cfg=dict(_TEXT)).eval()
    return model


def _openai_layout(model) -> dict:
    from test_backbone import openai_state_dict

    return openai_state_dict(model)


def test_openai_state_dict_into_a_gelu_backbone_is_refused_in_one_line(gelu_and_quickgelu, tmp_path):
    path = tmp_path / "converted_from_openai.pt"
    torch.save(_openai_layout(gelu_and_quickgelu), path)
    with pytest.raises(CheckpointError) as err:
        build_model({"backbone": "test-vit", "weights": str(path)}, {"image_size": [64, 64]}, num_ids=2)
    message = str(err.value)
    assert "\n" not in message and "QuickGELU" in message and "'test-vit-quickgelu'" in message
    assert "metadata entries" in message and "model.allow_activation_mismatch" in message
    # The QuickGELU model takes it; the switch loads it into the GELU model with a warning.
    build_model({"backbone": "test-vit-quickgelu", "weights": str(path)}, {"image_size": [64, 64]}, num_ids=2)
    with pytest.warns(UserWarning, match="QuickGELU"):
        build_model({"backbone": "test-vit", "weights": str(path), "allow_activation_mismatch": True},
                    {"image_size": [64, 64]}, num_ids=2)


def test_openai_torchscript_into_a_gelu_backbone_is_refused_whatever_its_hash(gelu_and_quickgelu, tmp_path):
    from test_backbone import write_torchscript

    path = tmp_path / "ViT-test.pt"
    write_torchscript(_openai_layout(gelu_and_quickgelu), path)
    model_cfg = {"backbone": "test-vit", "weights": str(path), "allow_unsafe_weights": True}
    with pytest.raises(CheckpointError, match="TorchScript archive.*QuickGELU.*'test-vit-quickgelu'"):
        build_model(model_cfg, {"image_size": [64, 64]}, num_ids=2)
    build_model({**model_cfg, "backbone": "test-vit-quickgelu"}, {"image_size": [64, 64]}, num_ids=2)


def test_gelu_trained_weights_in_the_same_layout_still_load_into_the_gelu_model(gelu_and_quickgelu, tmp_path):
    torch.manual_seed(5)
    laion_like = open_clip.CLIP(embed_dim=64, quick_gelu=False, vision_cfg=dict(_VISION), text_cfg=dict(_TEXT))
    path = tmp_path / "open_clip_gelu.pt"
    torch.save(laion_like.state_dict(), path)  # same keys as OpenAI's, without its metadata entries
    model = build_model({"backbone": "test-vit", "weights": str(path)}, {"image_size": [64, 64]}, num_ids=2).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images).image_proj, laion_like.eval().encode_image(images), atol=1e-5, rtol=1e-5)


def test_default_and_shipped_backbones_are_quickgelu():
    assert ModelConfig().backbone == "ViT-B-16-quickgelu"
    shipped = sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "rn50").glob("*.yaml"))
    assert len(shipped) == 12  # two recipes (ViT-B/16, RN50) and five dataset configs on each
    for path in shipped:
        cfg = load_config(path, ["data.root=/data"])
        assert cfg.model.backbone in ("ViT-B-16-quickgelu", "RN50-quickgelu"), path
        assert open_clip.get_model_config(cfg.model.backbone)["quick_gelu"] is True
        defaults = config_from_dict({"data": {"root": "/data", "dataset": cfg.data.dataset, "aspect": cfg.data.aspect}})
        # Every CLIP-ReID choice in a shipped config is HandCLIP's default too.
        assert cfg.losses == defaults.losses and cfg.data.interpolation == defaults.data.interpolation
        assert cfg.stage2.triplet_features == defaults.stage2.triplet_features
        assert cfg.data.augment == defaults.data.augment
        assert (cfg.stage1.schedule_epochs_from, cfg.stage2.schedule_epochs_from, cfg.stage1.warmup_prefix) == (1, 1, False)
        if cfg.model.backbone.startswith("RN50"):
            assert cfg.data.pixel_mean == (0.485, 0.456, 0.406) and cfg.data.pixel_std == (0.229, 0.224, 0.225)
            assert (cfg.stage1.epochs, cfg.stage2.epochs, cfg.stage2.lr, cfg.stage2.milestones) == (60, 120, 3.5e-4, [40, 70])
            assert (cfg.stage2.warmup_factor, cfg.stage2.weight_decay, cfg.stage2.id_weight) == (0.01, 5e-4, 1.0)
        else:
            assert cfg.data.pixel_mean == cfg.data.pixel_std == (0.5, 0.5, 0.5)


def test_engine_builds_the_sampler_with_the_configured_leftover_handling(tiny_manifest):
    assert Stage2Config().sampler_leftover == "drop"
    for leftover in ("drop", "extra_batch"):
        ctx = make_context(base_config(tiny_manifest, stage2={"sampler_leftover": leftover}))
        assert ctx.build_train_loader().batch_sampler.leftover == leftover
