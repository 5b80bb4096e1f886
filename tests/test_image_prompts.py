"""Image-conditioned prompts (textual inversion, identity + image prompts, the interaction head) and
CLIP-HandID's single-stage recipe: every new parameter trains, the no-gradient switch freezes exactly the
inversion network, the test feature is each image's own, and the recipe resumes bit-identically."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import StopBefore, base_config, make_context, tiny_manifest  # noqa: F401 - fixture

from handclip.config import config_from_dict
from handclip.errors import ConfigError
from handclip.model.handclip import build_model

# Parameters an image-prompt model adds, or that are new heads: each must be in an optimizer and get a gradient.
NEW_PARTS = ("image_prompts.", "interaction.", "bottleneck_inter.", "classifier_inter.", "bottleneck.",
             "bottleneck_proj.", "classifier.", "classifier_proj.")
# BNNeck biases are frozen on purpose (docs/method.md, "Features").
FROZEN_BY_DESIGN = ("bottleneck.bias", "bottleneck_proj.bias", "bottleneck_inter.bias")


def _trainer(recipe: str, config):
    from handclip.train.single_stage import SingleStageTrainer
    from handclip.train.stage2 import Stage2Trainer

    ctx = make_context(config)
    return ctx, (Stage2Trainer(ctx) if recipe == "stage2" else SingleStageTrainer(ctx))


def _optimized(trainer) -> set[int]:
    optimizer = trainer.optimizers.main if hasattr(trainer, "optimizers") else trainer.optimizer
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _batch(ctx):
    loader = ctx.build_train_loader()
    loader.batch_sampler.set_epoch(0)
    images, labels = next(iter(loader))[:2]
    return images, labels


def _config(manifest, recipe: str, **model):
    sections = {"model": {"backbone": "tiny-vit", **model}}
    if recipe == "single_stage":
        sections["single_stage"] = {"enabled": True, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0}
    return base_config(manifest, **sections)


@pytest.mark.parametrize("recipe,model", [
    ("stage2", {"prompt": "image", "interaction": True}),
    ("stage2", {"prompt": "both", "inversion": "transformer", "inversion_tokens": 2}),
    ("single_stage", {"prompt": "image", "interaction": True, "inversion": "transformer"}),
    ("single_stage", {"prompt": "both"}),
])
def test_every_new_parameter_is_optimized_and_gets_a_gradient(tiny_manifest, recipe, model):
    ctx, trainer = _trainer(recipe, _config(tiny_manifest, recipe, **model))
    terms = trainer.compute_losses(*_batch(ctx))
    assert ("image_prompt" if recipe == "stage2" else "text") in terms
    trainer.update(terms)
    optimized = _optimized(trainer)
    names = [n for n, _ in ctx.model.named_parameters()]
    assert any(n.startswith("image_prompts.inversion.") for n in names)
    if model.get("interaction"):
        assert any(n.startswith("interaction.") for n in names) and "classifier_inter.weight" in names
    checked = 0
    for name, param in ctx.model.named_parameters():
        trains_prompts = recipe == "single_stage" and model["prompt"] == "both"
        if not (name.startswith(NEW_PARTS) or (trains_prompts and name.startswith("prompt_learner."))):
            continue
        if name in FROZEN_BY_DESIGN:
            assert not param.requires_grad, name
            continue
        assert id(param) in optimized, f"{name} is in no optimizer"
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, f"{name} got no gradient"
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("recipe", ["stage2", "single_stage"])
def test_without_inversion_gradient_the_inversion_stays_put_and_the_image_encoder_trains(tiny_manifest, recipe):
    ctx, trainer = _trainer(recipe, _config(tiny_manifest, recipe, prompt="image", inversion_grad=False))
    model = ctx.model
    inversion = dict(model.image_prompts.inversion.named_parameters())
    before = {n: p.detach().clone() for n, p in inversion.items()}
    encoder_before = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    terms = trainer.compute_losses(*_batch(ctx))
    text_term = terms["image_prompt" if recipe == "stage2" else "text"]
    assert torch.isfinite(text_term.detach()) and float(text_term.detach()) > 0
    trainer.update(terms)
    for name, param in inversion.items():
        assert torch.equal(param, before[name]), f"inversion parameter {name} moved"
        assert param.grad is None and id(param) not in _optimized(trainer)
    moved = [n for n, p in model.image_encoder.named_parameters() if not torch.equal(p, encoder_before[n])]
    assert len(moved) > len(encoder_before) // 2


def test_image_prompts_leave_the_identity_model_as_it_was():
    torch.manual_seed(0)
    plain = build_model({"backbone": "tiny-cnn"}, {"image_size": [32, 32]}, num_ids=3)
    torch.manual_seed(0)
    prompted = build_model({"backbone": "tiny-cnn", "prompt": "image", "interaction": True},
                           {"image_size": [32, 32]}, num_ids=3)
    assert plain.image_prompts is None and plain.feature_dim == plain.width + plain.embed_dim
    ours = prompted.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, ours[name]), name  # the image-prompt parts are drawn after everything else
    assert prompted.feature_dim == plain.feature_dim + plain.embed_dim


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-cnn"])
def test_the_test_feature_with_interaction_is_each_images_own_and_survives_a_checkpoint(tmp_path, backbone):
    from handclip.model.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(1)
    model = build_model({"backbone": backbone, "prompt": "image", "interaction": True}, {"image_size": [32, 32]},
                        num_ids=4).eval()
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        batch = model.extract(images)
        alone = model.extract(images[2:3])
        assert batch.shape == (5, model.width + 2 * model.embed_dim)
        # CLIP-HandID's attention runs across the batch, so its test feature depends on the other images.
        torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=1e-5)
        save_checkpoint(tmp_path / "m.pt", model, None)
        loaded, _, _ = load_checkpoint(tmp_path / "m.pt")
        torch.testing.assert_close(loaded.extract(images), batch, atol=0, rtol=0)
        assert loaded.feature_dim == model.feature_dim


def test_image_prompts_are_encoded_only_up_to_the_end_of_text_token_exactly():
    torch.manual_seed(2)
    model = build_model({"backbone": "tiny-vit", "prompt": "both"}, {"image_size": [32, 32]}, num_ids=3).eval()
    learner = model.image_prompts.learner
    pseudo = torch.randn(4, 1, learner.template_embedding.shape[1]) * 0.02
    ctx = model.prompt_learner.ctx[torch.tensor([0, 1, 2, 0])]
    with torch.no_grad():
        prefix = learner(pseudo, ctx)
        cut = model.text_encoder(prefix, learner.tokenized_prompt.expand(4, -1), length=learner.length)
        # Anything after the end-of-text token: under the causal mask it cannot change the feature.
        tail = torch.randn(4, 77 - learner.length, prefix.shape[2])
        tokens = torch.cat([learner.tokenized_prompt, torch.zeros(1, 77 - learner.length, dtype=torch.long)], 1)
        full = model.text_encoder(torch.cat([prefix, tail], 1), tokens.expand(4, -1))
    assert learner.template == "A photo of a X X X X * hand." and learner.length == 13
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_the_single_stage_schedule_is_clip_handids_warmup_and_halving():
    from handclip.train.optim import WarmupMultiStepLR

    cfg = config_from_dict({"single_stage": {"enabled": True}}).single_stage
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": params[:1], "lr": cfg.lr},
                                  {"params": params[1:], "lr": cfg.lr * cfg.new_lr_factor}])
    schedule = WarmupMultiStepLR(optimizer, cfg.milestones, cfg.gamma, cfg.warmup_factor, cfg.warmup_epochs)
    for epoch in range(cfg.epochs):
        # CLIP-HandID's LRScheduler.update(epoch): linear from 0.01 x lr over 10 epochs, then x0.5 at 40 and 60.
        base = 5e-6
        expected = base * 0.01 + (base - base * 0.01) * epoch / 10 if epoch < 10 else base * 0.5 ** sum(
            m <= epoch for m in (40, 60))
        schedule.set_position(epoch + cfg.schedule_epochs_from)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(10 * expected, rel=1e-12)


def test_single_stage_resumes_bit_identically_and_keeps_the_most_accurate_epoch(tiny_manifest, tmp_path,
                                                                                 monkeypatch):
    from handclip.model.checkpoint import load_checkpoint
    from handclip.train import single_stage
    from handclip.train.single_stage import run_single_stage

    config = base_config(tiny_manifest, model={"backbone": "tiny-vit", "prompt": "image", "interaction": True},
                         single_stage={"enabled": True, "epochs": 3, "batch_size": 8, "lr": 1e-3,
                                       "warmup_epochs": 1, "milestones": [2]},
                         data={"augment": {"pad": 0, "resize_crop": [36, 36]}})
    full = make_context(config, run_dir=tmp_path / "full")
    run_single_stage(full)
    history = full.state["history"]
    assert [r["lr"] for r in history] == pytest.approx([1e-5, 1e-3, 5e-4])
    assert all("val_accuracy" in r and "loss_text" in r and "loss_id" in r for r in history)
    best = max(range(3), key=lambda i: (history[i]["val_accuracy"], history[i]["val_rank1"], history[i]["val_mAP"],
                                        -i))
    assert full.state["best"]["epoch"] == best + 1 and full.state["best"]["accuracy"] == history[best]["val_accuracy"]
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == ["single_stage"] * 3

    cut = make_context(config, run_dir=tmp_path / "cut")
    real = single_stage.training_hooks
    monkeypatch.setattr(single_stage, "training_hooks", lambda *a, **k: real(*a, **k) + [StopBefore(2)])
    with pytest.raises(KeyboardInterrupt):
        run_single_stage(cut)
    monkeypatch.setattr(single_stage, "training_hooks", real)
    model, _, extra = load_checkpoint(tmp_path / "cut" / "last.pt")
    resumed = make_context(config, run_dir=tmp_path / "cut")
    resumed.model, resumed.state = model, extra["run_state"]
    torch.manual_seed(999)
    run_single_stage(resumed, resume=dict(extra["resume"], _rng=extra["rng"]))
    ours, theirs = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "resumed parameters differ"


@pytest.mark.parametrize("overrides,message", [
    (["model.prompt=image", "model.inversion_tokens=2", "model.image_prompt_template='A photo of a * hand.'"],
     "has 1 '\\*' placeholders but model.inversion_tokens is 2"),
    (["model.prompt=both", "model.interaction=true"], "model.interaction needs model.prompt: image"),
    (["model.interaction=true"], "model.interaction needs image prompts"),
    (["model.prompt=image", "model.image_prompt_template='A photo of a X * hand.'"], "model.prompt: both"),
    (["model.prompt=both", "model.image_prompt_template='A photo of a X * hand.'"], "needs model.n_ctx=4"),
    (["model.prompt=image", "model.inversion=transformer", "model.inversion_channel_mean=true"],
     "model.inversion_channel_mean"),
    (["model.inversion_tokens=0"], "model.inversion_tokens"),
    (["data.augment.resize_crop=[200,200]"], "data.augment.resize_crop"),
    (["model.prompt=image", "model.interaction=true", "model.id_head=text"], "classifier head"),
])
def test_contradictory_image_prompt_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict({}, overrides)
    assert "\n" not in str(info.value)


def test_placeholders_must_be_consecutive_and_the_recipes_exclusive():
    from handclip.train.engine import STAGES, _stages_to_run

    with pytest.raises(ConfigError, match="consecutive"):
        build_model({"backbone": "tiny-cnn", "prompt": "image", "inversion_tokens": 2,
                     "image_prompt_template": "A * photo of a * hand."}, {"image_size": [32, 32]}, num_ids=2)
    config = config_from_dict({"single_stage": {"enabled": True}})
    assert _stages_to_run(config, STAGES) == ("single_stage",)
    with pytest.raises(ConfigError, match="runtime.joint and single_stage.enabled"):
        _stages_to_run(config_from_dict({"single_stage": {"enabled": True}, "runtime": {"joint": True}}), STAGES)


def test_resize_crop_resizes_then_crops_in_training_only(tiny_manifest):
    from handclip.data.loaders import build_random_loader, first_resize
    from handclip.data.transforms import build_transforms

    config = base_config(tiny_manifest, data={"augment": {"pad": 0, "resize_crop": [40, 36]}})
    data = config.data
    assert first_resize(data, train=True).size == (40, 36) and first_resize(data, train=False).size == (32, 32)
    from PIL import Image

    image = Image.new("RGB", (90, 70), (120, 80, 60))
    assert build_transforms(data, train=True)(image).shape == (3, 32, 32)
    assert build_transforms(data, train=False)(image).shape == (3, 32, 32)

    ctx = make_context(config)
    loader = build_random_loader(data, ctx.train_records, ctx.label_map, batch_size=5, seed=3)
    orders = []
    for epoch in (0, 0, 1):
        loader.sampler.set_epoch(epoch)
        orders.append(list(loader.sampler))
        batches = [batch[1] for batch in loader]
        assert len(batches) == len(ctx.train_records) // 5 and all(len(b) == 5 for b in batches)
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_clip_handids_channel_mean_gives_every_image_the_same_prompt():
    torch.manual_seed(3)
    images = torch.randn(4, 3, 32, 32)
    texts = {}
    for channel_mean in (False, True):
        model = build_model({"backbone": "tiny-cnn", "prompt": "image", "inversion_channel_mean": channel_mean},
                            {"image_size": [32, 32]}, num_ids=2).eval()
        with torch.no_grad():
            _, _, feat_proj = model.image_features(images)
            texts[channel_mean] = model.image_prompt_features(feat_proj, None, None)
    spread = {k: float((t - t.mean(0)).abs().max() / t.abs().max()) for k, t in texts.items()}
    # Float rounding only with the mean; with the pseudo-words themselves the prompts differ (by little here:
    # a random-init text tower reads one changed word weakly).
    assert spread[True] < 1e-5 < 10 * 1e-5 < spread[False]


def test_shipped_image_prompt_configs_write_out_clip_handids_recipe_and_handclips_combination():
    from pathlib import Path

    from handclip.config import Config, load_config

    folder = Path(__file__).resolve().parents[1] / "configs" / "image_prompts"
    vit = load_config(folder / "clip_handid_vitb16.yaml")
    s = vit.single_stage
    assert s.enabled and (s.epochs, s.batch_size, s.lr, s.new_lr_factor, s.weight_decay) == (70, 20, 5e-6, 10, 5e-4)
    assert (s.warmup_epochs, s.warmup_factor, s.milestones, s.gamma, s.schedule_epochs_from) == (10, 0.01, [40, 60],
                                                                                              0.5, 0)
    assert (s.id_weight, s.text_weight, s.triplet_weight, s.label_smoothing, s.select) == (1, 1, 0, 0.1, "accuracy")
    assert (vit.model.prompt, vit.model.inversion, vit.model.inversion_tokens, vit.model.neck_feat) == (
        "image", "mlp", 1, "after")
    assert vit.model.inversion_grad and not vit.model.inversion_channel_mean and vit.eval.flip
    assert vit.data.pixel_mean == (0.485, 0.456, 0.406) and vit.data.augment.resize_crop == (256, 256)
    assert (vit.data.augment.pad, vit.data.augment.random_erasing_p, vit.data.interpolation.eval) == (0, 0, "bicubic")
    rn = load_config(folder / "rn50" / "clip_handid_rn50.yaml")
    assert (rn.model.backbone, rn.model.rn_last_stride, rn.single_stage.batch_size) == ("RN50-quickgelu", 1, 4)
    plus = load_config(folder / "handclip_plus_vitb16.yaml")
    clipreid = load_config(folder.parent / "clipreid_vitb16.yaml")
    assert not plus.single_stage.enabled and plus.stage1 == clipreid.stage1 and plus.data == clipreid.data
    assert (plus.model.prompt, plus.model.inversion_grad, plus.stage2.image_prompt_weight) == ("image", True, 1.0)
    assert plus.stage2.model_copy(update={"head_lr": None}) == clipreid.stage2
    assert Config().model.prompt == "identity" and not Config().single_stage.enabled
