"""The figures the learning tests assert on, as plain functions of a seed.

A learning outcome (a loss that falls, rank-1 that rises, prompts above chance) depends on the CPU's
kernels as much as on the seed: AVX-512, AVX2 and the scalar kernels sum in other orders, and a few
hundred optimiser steps carry the rounding differences into other weights. The tests call these
functions with their own seed; ``benchmarks/learning_margins.py`` calls them over seeds, thread counts
and ``ATEN_CPU_CAPABILITY`` values to measure the spread each test's threshold must clear.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handclip.config import PretrainConfig, config_from_dict

# The demo pipeline shrunk to ~15 s of CPU: 60 training ids at 48 px, no pretraining (random init), 1 stage-1
# epoch and 18 stage-2 epochs of P x K = 8 x 4 (~160 steps), rank-1 over 10 Monte Carlo runs on 12 unseen
# ids. At 32 px and 12 epochs the gain over random init was 0.13-0.21 and 0.117 on one Intel Xeon (AVX-512 kernels).
DEMO_RECIPE = ["data.synthetic.train_ids=60", "data.synthetic.test_ids=12", "data.synthetic.images_per_id=6",
               "data.synthetic.image_size=48", "data.image_size=[48,48]", "data.augment.pad=3", "data.runs=10",
               "stage1.epochs=1", "stage2.epochs=18", "stage2.ids_per_batch=8", "stage2.images_per_id=4",
               "stage2.milestones=[100]", "stage2.eval_every=100", "pretrain.enabled=false"]

# Enough pretraining (40 steps) for a text tower whose output depends on the prompt and image features that
# carry some identity; fewer steps leave stage 1 nothing to learn even when it works.
SMALL_PRETRAIN = PretrainConfig(first_id=1000, num_ids=64, images_per_id=4, epochs=10, batch_size=64, lr=5e-4,
                                warmup_steps=2)


def demo_recipe_rank1(out_dir, seed: int = 0, threads: int = 1, overrides=()) -> tuple[float, float]:
    """(rank-1 of the random-init model, rank-1 after both stages) on the unseen identities of the shrunk
    demo, mean over its 3 Monte Carlo runs."""
    from handclip.workflows.demo import demo_config, run_demo

    settings = [*DEMO_RECIPE, f"seed={seed}", f"runtime.threads={threads}", *overrides]
    metrics = run_demo(Path(out_dir), demo_config(None, settings), progress=False)
    return metrics["before"]["rank1"]["mean"], metrics["after"]["rank1"]["mean"]


def stage1_config(manifest_path, seed: int = 0):
    """Stage 1 alone (6 epochs, lr 0.01) on the tiny manifest of ``training_helpers``."""
    from training_helpers import base_config

    return base_config(manifest_path, seed=seed, stage1={"epochs": 6, "lr": 0.01, "warmup_epochs": 1})


def stage1_losses(ctx) -> list[float]:
    """Run stage 1 on the training context ``ctx``; its loss per epoch."""
    from handclip.train.stage1 import run_stage1

    run_stage1(ctx)
    return [h["loss"] for h in ctx.state["history"]]


def pretrain_small(out_path, seed: int = 0):
    """The tiny CLIP pretrained for 40 steps on 64 captioned identities (``SMALL_PRETRAIN``)."""
    from handclip.synthetic.pretrain import pretrain_tiny

    return pretrain_tiny(SMALL_PRETRAIN.model_copy(update={"seed": seed}), Path(out_path))


def stage1_prompt_accuracy(weights: str, run_dir, seed: int = 0, overrides=()) -> tuple[float, float]:
    """Stage 1 alone, through ``train()``, on 12 synthetic identities starting from ``weights``; returns
    (prompt top-1 on the training images, chance)."""
    from handclip.data.manifest import Manifest
    from handclip.synthetic.prompts import prompt_top1
    from handclip.model.checkpoint import load_checkpoint
    from handclip.train.engine import train
    from handclip.train.stage1 import encode_training_images

    config = config_from_dict({
        "seed": seed,
        "data": {"synthetic": {"train_ids": 12, "test_ids": 3, "images_per_id": 4, "image_size": 64},
                 "image_size": [64, 64], "runs": 1, "num_workers": 0, "decode_cache": False},
        "model": {"backbone": "tiny-cnn", "weights": weights, "logit_scale": 20.0},
        "stage1": {"epochs": 30, "batch_size": 6, "lr": 0.01, "warmup_epochs": 0, "cache_features": False},
        "losses": {"logits": "cosine"},
        "runtime": {"device": "cpu", "progress": False},
    }, list(overrides))
    result = train(config, run_dir=Path(run_dir), stages=("stage1",))
    model, _, _ = load_checkpoint(result.last_checkpoint)
    manifest = Manifest.read(result.run_dir / "manifest.csv")
    records, label_map = manifest.split("train"), manifest.train_label_map()
    feats, labels = encode_training_images(model, records, label_map, config.data, config.eval, torch.device("cpu"))
    return prompt_top1(model, feats, labels), 1.0 / len(label_map)


def prompt_lr_near_zero(monkeypatch):
    """Breakage: stage 1's prompts get lr 1e-9, so they do not learn."""
    import handclip.train.stage1 as stage1

    real = stage1.build_stage1_optimizer
    monkeypatch.setattr(stage1, "build_stage1_optimizer", lambda model, s1, *a, **k: real(
        model, s1.model_copy(update={"lr": 1e-9, "warmup_lr_init": 1e-9, "lr_min": 0.0}), *a, **k))


def text_read_at_start_token(monkeypatch):
    """Breakage: text features read at the start token, which under the causal mask sees only itself."""
    from handclip.model.handclip import HandCLIP

    def text_features(self, labels):
        prompts = self.prompt_learner(labels.to(self.prompt_learner.ctx.device).long())
        tokens = torch.zeros(prompts.shape[:2], dtype=torch.long)
        tokens[:, 0] = 1  # argmax 0: the start-of-text position
        return self.text_encoder(prompts, tokens, length=self.prompt_learner.prompt_length)

    monkeypatch.setattr(HandCLIP, "text_features", text_features)


BREAKAGES = {"prompt_lr_near_zero": prompt_lr_near_zero, "text_read_at_start_token": text_read_at_start_token}


def broken_stage1_prompt_accuracy(weights: str, run_dir, breakage: str, seed: int = 0) -> tuple[float, float]:
    """``stage1_prompt_accuracy`` with one of ``BREAKAGES`` applied for the run."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        BREAKAGES[breakage](monkeypatch)
        return stage1_prompt_accuracy(weights, run_dir, seed)

