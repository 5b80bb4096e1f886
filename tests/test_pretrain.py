"""Captions, tiny-CLIP pretraining, and stage 1 learning prompts from the pretrained model (shrunk pipeline)."""

from __future__ import annotations

import math

import pytest
import torch

from handclip.config import PretrainConfig, config_from_dict
from handclip.errors import ConfigError
from handclip.synthetic.captions import caption, identity_phrases
from handclip.synthetic.hand_params import identity_params

MICRO = PretrainConfig(first_id=1000, num_ids=16, images_per_id=4, epochs=3, batch_size=32, lr=2e-3, warmup_steps=2)
# Enough pretraining (40 steps) for a text tower whose output depends on the prompt and image features that
# carry some identity; fewer steps leave stage 1 nothing to learn even when it works.
SMALL = PretrainConfig(first_id=1000, num_ids=64, images_per_id=4, epochs=10, batch_size=64, lr=5e-4, warmup_steps=2)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from handclip.synthetic.pretrain import pretrain_tiny

    return pretrain_tiny(MICRO, tmp_path_factory.mktemp("pretrain") / "tiny.pt")


@pytest.fixture(scope="module")
def pretrained_small(tmp_path_factory):
    from handclip.synthetic.pretrain import pretrain_tiny

    return pretrain_tiny(SMALL, tmp_path_factory.mktemp("pretrain_small") / "tiny.pt")


def test_captions_are_deterministic_varied_and_describe_the_hand():
    assert caption(5, 2) == caption(5, 2)
    assert len({caption(5, 2, variant=v) for v in range(6)}) > 3  # other wordings and subsets of one photo
    polished = next(i for i in range(200) if identity_params(i).polished)
    texts = [caption(polished, 0, variant=v) for v in range(20)]
    assert any("nail" in t for t in texts) and all("skin" in t or "nail" in t or "mole" in t or "finger" in t
                                                   or "palm" in t or "hand with" in t for t in texts)
    # Partial information: a single caption never lists every trait of a richly marked hand.
    rich = max(range(100), key=lambda i: len(identity_phrases(i)))
    assert any(sum(any(w in t for w in words) for words in identity_phrases(rich)) < len(identity_phrases(rich))
               for t in (caption(rich, 0, variant=v) for v in range(10)))


def test_caption_scene_sets_how_often_photo_conditions_are_named():
    from handclip.synthetic.captions import nuisance_phrases

    pairs = [(i, n) for i in range(20) for n in range(4)]
    named = {scene: sum(any(w in caption(i, n, scene=scene) for words in nuisance_phrases(i, n) for w in words)
                        for i, n in pairs) for scene in (0.0, 0.1, 1.0)}
    assert named[0.0] == 0 and named[1.0] == len(pairs)  # every photo has a background to name
    assert 0 < named[0.1] < len(pairs) // 2


def test_pretraining_is_bit_identical_for_a_seed_and_loads_as_model_weights(pretrained, tmp_path):
    from handclip.model.handclip import build_model
    from handclip.model.weights import load_weights_file
    from handclip.synthetic.pretrain import pretrain_tiny

    again = pretrain_tiny(MICRO, tmp_path / "again.pt")
    assert again.sha256 == pretrained.sha256
    other = pretrain_tiny(MICRO.model_copy(update={"seed": 1, "epochs": 1}), tmp_path / "other.pt")
    assert other.sha256 != pretrained.sha256
    first = pretrained.history[0]
    assert first["chance"] == pytest.approx(torch.log(torch.tensor(32.0)).item())
    assert len(pretrained.history) == MICRO.epochs and all(r["loss"] > 0 for r in pretrained.history)

    state = load_weights_file(pretrained.path)
    model = build_model({"backbone": "tiny-cnn", "weights": str(pretrained.path)}, {"image_size": [64, 64]}, 4)
    assert torch.equal(model.text_encoder.text_projection.detach(), state["text_projection"])
    assert torch.equal(model.image_encoder.stem[0].weight.detach(), state["visual.stem.0.weight"])


def test_pretraining_refuses_bad_settings(tmp_path):
    from handclip.synthetic.pretrain import pretrain_tiny

    with pytest.raises(ConfigError, match="tiny backbones"):
        pretrain_tiny(MICRO, tmp_path / "x.pt", backbone="ViT-B-16")
    with pytest.raises(ConfigError, match="pretrain.batch_size"):
        pretrain_tiny(MICRO.model_copy(update={"batch_size": 512}), tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="pretrain.first_id"):
        from handclip.workflows.demo import _check_disjoint

        _check_disjoint(config_from_dict({"data": {"synthetic": {"train_ids": 300, "test_ids": 50}},
                                          "pretrain": {"first_id": 200}}))


def stage1_prompt_accuracy(weights: str, tmp_path, overrides=()) -> tuple[float, float]:
    """Stage 1 alone, through ``train()``, on 12 synthetic identities starting from ``weights``; returns
    (prompt top-1 on the training images, chance)."""
    from handclip.data.manifest import Manifest
    from handclip.model.checkpoint import load_checkpoint
    from handclip.synthetic.prompts import prompt_top1
    from handclip.train.engine import train
    from handclip.train.stage1 import encode_training_images

    config = config_from_dict({
        "data": {"synthetic": {"train_ids": 12, "test_ids": 3, "images_per_id": 4, "image_size": 64},
                 "image_size": [64, 64], "runs": 1, "num_workers": 0, "decode_cache": False},
        "model": {"backbone": "tiny-cnn", "weights": weights, "logit_scale": 20.0},
        "stage1": {"epochs": 30, "batch_size": 6, "lr": 0.01, "warmup_epochs": 0, "cache_features": False},
        "losses": {"logits": "cosine"},
        "runtime": {"device": "cpu", "progress": False},
    }, list(overrides))
    result = train(config, run_dir=tmp_path / "run", stages=("stage1",))
    model, _, _ = load_checkpoint(result.last_checkpoint)
    manifest = Manifest.read(result.run_dir / "manifest.csv")
    records, label_map = manifest.split("train"), manifest.train_label_map()
    feats, labels = encode_training_images(model, records, label_map, config.data, config.eval, torch.device("cpu"))
    return prompt_top1(model, feats, labels), 1.0 / len(label_map)


@pytest.mark.slow
def test_stage1_prompts_name_their_identity_far_above_chance(pretrained_small, tmp_path):
    """Fails when stage 1 is broken: prompts that do not learn (lr ~0) or text features read from the
    start token (every prompt then gives the same feature) stay near chance, 1/12."""
    # The pretraining loss itself fell below its chance value ln(64).
    assert pretrained_small.history[-1]["loss"] < pretrained_small.history[-1]["chance"]
    accuracy, chance = stage1_prompt_accuracy(str(pretrained_small.path), tmp_path)
    assert accuracy >= 0.45 > 5 * chance, (accuracy, chance)


@pytest.mark.slow
def test_demo_starts_from_the_pretrained_model_and_reports_the_text_side(tmp_path, capsys):
    """The demo pipeline, shrunk, with a tiny pretraining: it starts from the pretrained file (zero-shot row),
    reports the text-side figures next to their chance values, and a second run reads the file from the cache."""
    from handclip.synthetic.pretrain import pretrained_weights
    from handclip.workflows.demo import demo_config, run_demo

    overrides = ["data.synthetic.train_ids=20", "data.synthetic.test_ids=6", "data.synthetic.images_per_id=4",
                 "data.synthetic.image_size=32", "data.image_size=[32,32]", "data.augment.pad=3", "data.runs=2",
                 "stage1.epochs=2", "stage1.batch_size=16", "stage2.epochs=2", "stage2.ids_per_batch=8",
                 "stage2.images_per_id=2", "stage2.eval_every=100", "pretrain.num_ids=16", "pretrain.images_per_id=2",
                 "pretrain.epochs=1", "pretrain.batch_size=16", "pretrain.warmup_steps=1"]
    config = demo_config(None, overrides)
    metrics = run_demo(tmp_path / "demo", config, progress=False)
    assert metrics["start"] == "zero-shot" and not metrics["pretrain"]["cached"]
    text = metrics["text_side"]  # 20 x 3 = 60 training images in batches of 16, 16, 16, 12
    assert text["stage1_loss"]["chance"] == pytest.approx(2 * (3 * math.log(16) + math.log(12)) / 4)
    assert text["stage2_i2t_loss"]["chance"] == pytest.approx(math.log(20))
    assert text["prompt_top1"]["chance"] == pytest.approx(1 / 20)
    assert "zero-shot" in capsys.readouterr().out
    again = pretrained_weights(config)
    assert again.cached and again.sha256 == metrics["pretrain"]["sha256"]


def _prompt_lr_near_zero(monkeypatch):
    import handclip.train.stage1 as stage1

    real = stage1.build_stage1_optimizer
    monkeypatch.setattr(stage1, "build_stage1_optimizer", lambda model, s1, *a, **k: real(
        model, s1.model_copy(update={"lr": 1e-9, "warmup_lr_init": 1e-9, "lr_min": 0.0}), *a, **k))


def _text_read_at_start_token(monkeypatch):
    from handclip.model.handclip import HandCLIP

    def text_features(self, labels):
        prompts = self.prompt_learner(labels.to(self.prompt_learner.ctx.device).long())
        tokens = torch.zeros(prompts.shape[:2], dtype=torch.long)
        tokens[:, 0] = 1  # argmax 0: the start-of-text position, which under the causal mask sees only itself
        return self.text_encoder(prompts, tokens, length=self.prompt_learner.prompt_length)

    monkeypatch.setattr(HandCLIP, "text_features", text_features)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [_prompt_lr_near_zero, _text_read_at_start_token])
def test_broken_stage1_stays_near_chance(pretrained_small, tmp_path, monkeypatch, breakage):
    """The check above has teeth: with either breakage the same run stays below its threshold."""
    breakage(monkeypatch)
    accuracy, chance = stage1_prompt_accuracy(str(pretrained_small.path), tmp_path)
    assert accuracy < 2 * chance, (accuracy, chance)


@pytest.mark.parametrize("key, value", [("seed", -1), ("seed", 2**40), ("epochs", 10**9), ("lr", 1e38),
                                        ("batch_size", 10**7), ("num_ids", 10**9)])
def test_pretraining_settings_are_bounded_like_the_rest_of_the_config(key, value):
    with pytest.raises(ConfigError, match=f"pretrain.{key}"):
        config_from_dict({"pretrain": {key: value}})
