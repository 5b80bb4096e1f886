"""Training stages, run folder, bad input and numerical faults, with the tiny model on tiny synthetic hands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from learning_figures import demo_recipe_rank1, stage1_config, stage1_losses
from training_helpers import base_config, make_context, tiny_manifest  # noqa: F401 - fixture

from handclip import api
from handclip.config import config_from_dict
from handclip.errors import CheckpointError, ConfigError, DataError, TrainingError


def _params(model, prefix):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def _changed(before: dict, model) -> set[str]:
    now = dict(model.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, now[n].detach())}


# --------------------------------------------------------------------------------------- stage 1
@pytest.mark.learning
def test_stage1_lowers_loss_changes_only_prompts_and_separates_identities(tiny_manifest):
    """Stage 1 trains only the prompts, and its loss falls: last / first epoch 0.426-0.693 measured with
    ``benchmarks/learning_margins.py`` (ATen default, AVX2, AVX-512 kernels; seeds 0-2 on 1 thread, seed 0
    on 2), threshold 0.9. Seed 0 gives 0.6933 on every kernel family (they differ in the 6th digit)."""
    ctx = make_context(stage1_config(tiny_manifest))
    before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    buffers = {n: b.clone() for n, b in ctx.model.named_buffers()}
    losses = stage1_losses(ctx)
    changed = _changed(before, ctx.model)
    assert changed == {"prompt_learner.ctx"}
    assert all(torch.equal(b, dict(ctx.model.named_buffers())[n]) for n, b in buffers.items())
    assert losses[-1] < 0.9 * losses[0], losses
    with torch.no_grad():
        text = torch.nn.functional.normalize(ctx.model.all_text_features(), dim=-1)
    sims = text @ text.T
    off_diagonal = sims[~torch.eye(len(sims), dtype=torch.bool)]
    # Distinct identities have distinct text features (the start-token bug made them all equal).
    assert off_diagonal.max() < 0.999
    assert torch.cdist(text, text).min() >= 0 and (torch.cdist(text, text) + torch.eye(len(text))).min() > 1e-3


def test_stage1_feature_cache_reused_across_runs(tiny_manifest):
    from handclip.train.stage1 import cached_training_features

    ctx = make_context(base_config(tiny_manifest))
    feats, labels, hit = cached_training_features(ctx)
    assert not hit
    ctx2 = make_context(base_config(tiny_manifest))
    feats2, labels2, hit2 = cached_training_features(ctx2)
    assert hit2 and torch.equal(feats, feats2) and torch.equal(labels, labels2)
    # Another image size is another transform: a different key, so no stale hit.
    ctx3 = make_context(base_config(tiny_manifest, data={"image_size": [48, 48]}))
    _, _, hit3 = cached_training_features(ctx3)
    assert not hit3


# --------------------------------------------------------------------------------------- stage 2
def test_stage2_leaves_prompts_and_text_encoder_untouched(tiny_manifest):
    from handclip.train.stage2 import run_stage2

    ctx = make_context(base_config(tiny_manifest))
    frozen = {**_params(ctx.model, "prompt_learner"), **_params(ctx.model, "text_encoder")}
    image = _params(ctx.model, "image_encoder")
    run_stage2(ctx)
    assert not _changed(frozen, ctx.model)
    assert _changed(image, ctx.model)


def test_stage2_with_unfrozen_prompt_trains_prompt_not_text_encoder(tiny_manifest):
    from handclip.train.stage2 import run_stage2

    ctx = make_context(base_config(tiny_manifest, stage2={"freeze_prompt": False}))
    text = _params(ctx.model, "text_encoder")
    prompt = _params(ctx.model, "prompt_learner")
    run_stage2(ctx)
    assert not _changed(text, ctx.model)
    assert _changed(prompt, ctx.model) == {"prompt_learner.ctx"}


SWITCHES = {
    "linear": {},
    "arcface": {"model": {"id_head": "arcface"}},
    "text_head": {"model": {"id_head": "text"}},
    "center": {"stage2": {"center_weight": 0.01}},
    "supcon": {"stage2": {"supcon_weight": 0.5}},
    "prompt_l2": {"stage2": {"freeze_prompt": False, "prompt_l2": 0.1}},
    "unfreeze_last_n": {"model": {"unfreeze_last_n": 1}},
    "per_batch_text": {"stage2": {"text_features": "per_batch"}},
    "joint": {"runtime": {"joint": True}, "stage1": {"prompt_l2": 0.1}},
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_every_switch_trains_every_parameter_it_needs(tiny_manifest, switch):
    from handclip.train.stage2 import Stage2Trainer

    cfg = base_config(tiny_manifest, **SWITCHES[switch])
    ctx = make_context(cfg)
    trainer = Stage2Trainer(ctx, joint=cfg.runtime.joint)
    images, labels, _ = next(iter(ctx.build_train_loader()))
    terms = trainer.compute_losses(images, labels)
    sum(terms.values()).backward()
    in_optimizer = {id(p) for p in trainer.optimizers.parameters()}
    named = dict(ctx.model.named_parameters())
    if trainer.center is not None:
        named.update({f"center.{n}": p for n, p in trainer.center.named_parameters()})
    got_grad = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    # Every parameter an enabled loss reaches is trained...
    assert all(id(named[n]) in in_optimizer for n in got_grad), sorted(n for n in got_grad if id(named[n]) not in in_optimizer)
    # ...and every trainable head / loss parameter really receives a gradient.
    heads = [n for n, p in named.items() if id(p) in in_optimizer and not n.startswith("image_encoder.")]
    assert set(heads) <= got_grad, sorted(set(heads) - got_grad)
    assert heads or switch == "text_head"  # text-score ID logits need no head of their own
    image_trainable = [n for n, p in named.items() if n.startswith("image_encoder.") and id(p) in in_optimizer]
    assert image_trainable and set(image_trainable) <= {n for n, p in named.items() if p.grad is not None}
    # Frozen parts stay out of the optimizer.
    assert not any(id(p) in in_optimizer for n, p in named.items() if n.startswith("text_encoder."))
    if switch in ("prompt_l2", "joint"):
        assert "prompt_learner.ctx" in got_grad and "prompt_l2" in terms
    else:
        assert id(named["prompt_learner.ctx"]) not in in_optimizer
    if switch == "center":
        assert "center.centers" in got_grad and "center" in terms
    if switch == "arcface":
        assert "classifier.weight" in got_grad and "classifier_proj.weight" in got_grad
    if switch == "unfreeze_last_n":
        frozen = [n for n in named if n.startswith("image_encoder.") and id(named[n]) not in in_optimizer]
        assert frozen, "unfreeze_last_n=1 must leave the early blocks frozen"
    if switch == "joint":
        assert "stage1_supcon" in terms


# --------------------------------------------------------------------------------------- whole runs
def test_train_writes_a_complete_run_folder(tiny_manifest, tmp_path):
    cfg = base_config(tiny_manifest)
    result = api.train(cfg, run_dir=tmp_path / "run")
    run = result.run_dir
    for name in ("config.yaml", "train.log", "metrics.jsonl", "manifest.csv", "manifest.sha256",
                 "used_images.txt", "best.pt", "last.pt", "status.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(l["stage"], l["epoch"]) for l in lines] == [("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2)]
    assert all("lr" in l and "time_s" in l and "loss" in l for l in lines)
    assert {"loss_id", "loss_triplet", "loss_i2t", "val_rank1", "val_mAP"} <= set(lines[-1])
    from handclip.atomic import sha256_file
    from handclip.config import load_config
    from handclip.data.manifest import Manifest

    assert (run / "manifest.sha256").read_text().split()[0] == Manifest.read(run / "manifest.csv").sha256()
    assert load_config(run / "config.yaml") == cfg
    used = (run / "used_images.txt").read_text().split()
    assert len(used) == len(Manifest.read(tiny_manifest).split("train")) + len(Manifest.read(tiny_manifest).split("val"))
    assert result.best_checkpoint == run / "best.pt" and result.last_checkpoint == run / "last.pt"
    assert sha256_file(run / "best.pt")


def test_best_checkpoint_is_saved_when_found_not_kept_by_reference(tiny_manifest, tmp_path, monkeypatch):
    from handclip.model.checkpoint import load_checkpoint
    from handclip.train import engine

    scores = iter([0.2, 0.9, 0.5, 0.1])  # stage-1 end, stage-2 epochs 1..3: best is stage 2 epoch 1
    monkeypatch.setattr(engine.TrainContext, "validate",
                        lambda self: {"rank1": next(scores), "mAP": 0.5, "rank5": 1.0, "rank10": 1.0, "mINP": 0.1})
    result = api.train(base_config(tiny_manifest, stage2={"epochs": 3}), run_dir=tmp_path / "run")
    best, _, best_extra = load_checkpoint(result.best_checkpoint)
    last, _, _ = load_checkpoint(result.last_checkpoint)
    assert best_extra["stage"] == "stage2" and best_extra["epoch"] == 1
    assert result.best["rank1"] == 0.9
    differs = [n for n, p in best.state_dict().items() if not torch.equal(p, last.state_dict()[n])]
    assert any(n.startswith("image_encoder.") for n in differs)


def test_nan_loss_stops_naming_epoch_step_and_term_and_keeps_last_good(tiny_manifest, tmp_path, monkeypatch):
    from handclip.train import losses

    cfg = base_config(tiny_manifest)
    steps_per_epoch = len(make_context(cfg).build_train_loader())
    original = losses.TripletLoss.forward
    calls = {"n": 0}

    per_step = len(cfg.stage2.triplet_features)

    def poisoned(self, features, labels):
        # Stage 2 calls the triplet loss once per triplet feature per step; from stage-2 epoch 2 on it returns NaN.
        calls["n"] += 1
        value = original(self, features, labels)
        return value * float("nan") if calls["n"] > per_step * steps_per_epoch else value

    monkeypatch.setattr(losses.TripletLoss, "forward", poisoned)
    with pytest.raises(TrainingError) as info:
        api.train(cfg, run_dir=tmp_path / "run")
    message = str(info.value)
    assert "'triplet'" in message and "epoch 2" in message and "step 1" in message
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "triplet" in status["error"]
    from handclip.model.checkpoint import load_checkpoint

    model, _, extra = load_checkpoint(tmp_path / "run" / "last.pt")
    assert extra["run_state"]["stage"] == "stage2" and extra["run_state"]["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


# --------------------------------------------------------------------------------------- bad input
def _no_run_folder(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def test_identity_with_one_training_image_is_refused_before_anything_is_written(tiny_manifest, tmp_path):
    from handclip.data.manifest import Manifest

    manifest = Manifest.read(tiny_manifest)
    train = manifest.split("train")
    victim = train[0].pid
    keep = [r for r in manifest.records if not (r.split == "train" and r.pid == victim)] + [train[0]]
    path = tmp_path / "thin.csv"
    Manifest(keep).write(path)
    with pytest.raises(DataError, match=f"training identity {victim} has 1"):
        api.train(base_config(path), run_dir=tmp_path / "run")
    assert _no_run_folder(tmp_path / "run")


def test_more_ids_per_batch_than_identities_is_refused(tiny_manifest, tmp_path):
    with pytest.raises(ConfigError, match="stage2.ids_per_batch"):
        api.train(base_config(tiny_manifest, stage2={"ids_per_batch": 500}), run_dir=tmp_path / "run")
    assert _no_run_folder(tmp_path / "run")


def test_unknown_backbone_and_mismatched_weights_are_refused(tiny_manifest, tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone"):
        api.train(base_config(tiny_manifest, model={"backbone": "ViT-Q-99"}), run_dir=tmp_path / "run")
    assert _no_run_folder(tmp_path / "run")
    # A weights file of another architecture (tiny-rn weights for tiny-vit).
    from handclip.model.backbone import create_clip

    weights = tmp_path / "rn.pt"
    torch.save(create_clip("tiny-rn").state_dict(), weights)
    with pytest.raises(CheckpointError):
        api.train(base_config(tiny_manifest, model={"weights": str(weights)}), run_dir=tmp_path / "run2")
    assert _no_run_folder(tmp_path / "run2")


def test_existing_run_folder_is_not_overwritten(tiny_manifest, tmp_path):
    run = tmp_path / "run"
    api.train(base_config(tiny_manifest, stage2={"enabled": False}), run_dir=run)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        api.train(base_config(tiny_manifest), run_dir=run)
    assert (run / "last.pt").read_bytes() == before


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stage2\.ids_per_batch"):
        config_from_dict({"stage2": {"ids_per_batch": 1}})
    with pytest.raises(ConfigError, match=r"stage1\.schedule"):
        config_from_dict({"stage1": {"schedule": "hourly"}})
    with pytest.raises(ConfigError, match=r"stage2\.lossweight: unknown key"):
        config_from_dict({"stage2": {"lossweight": 1}})
    with pytest.raises(ConfigError, match=r"model\.logit_scale"):
        config_from_dict({"model": {"logit_scale": -1}})
    with pytest.raises(ConfigError, match=r"stage2\.milestones"):
        config_from_dict({"stage2": {"milestones": [50, 30]}})


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    from handclip.config import load_config
    from handclip.workflows.demo import demo_config

    for path in sorted(root.rglob("*.yaml")):
        if path.parent.name == "validation":  # validation plans, not training configs (tests/test_validation_plan.py)
            continue
        base = path.name.startswith("clipreid_")  # a recipe without a dataset
        cfg = load_config(path, [] if base else ["data.root=/data"])
        assert cfg.stage1.epochs >= 1
    vit = load_config(root / "11k_dorsal_r_vitb16.yaml", ["data.root=/data"])
    assert (vit.stage2.lr, vit.stage2.id_weight, vit.stage2.milestones, vit.stage1.lr) == (5e-6, 0.25, [30, 50], 3.5e-4)
    with pytest.raises(ConfigError, match="data.root"):
        load_config(root / "hd_vitb16.yaml")
    assert demo_config().model.backbone == "tiny-cnn"


@pytest.mark.learning
def test_demo_recipe_makes_unseen_identities_retrievable(tmp_path):
    """The whole demo pipeline, shrunk (``DEMO_RECIPE``: 60 training ids at 48 px, ~160 stage-2 steps): training
    must lift rank-1 on the unseen identities well above the random-init model's. It stays flat if a head, a
    loss or the features stop learning.

    Gain measured with ``benchmarks/learning_margins.py`` (ATen default, AVX2, AVX-512 kernels; seeds
    0-2 on 1 thread, seed 0 on 2): 0.238-0.417 rank-1 (before 0.167-0.192, after 0.427-0.588); seed 0,
    which this test runs, 0.288-0.417. Threshold 0.12. At 32 px and 12 epochs (the earlier recipe) it was
    0.117 on an Intel Xeon on its AVX-512 kernels, which failed.
    """
    before, after = demo_recipe_rank1(tmp_path / "demo", seed=0)
    assert after >= before + 0.12, (before, after)
