"""Fast paths (issue 6) change speed, never results: decode cache on/off, compiled/eager, inference mode,
the stage-1 feature cache, and the ``runtime`` switches' automatic choices."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from training_helpers import base_config, make_context, tiny_manifest  # noqa: F401 - fixture

from handclip.config import RuntimeConfig


def _train_steps(trainer, loader, steps: int) -> list[float]:
    loader.batch_sampler.set_epoch(0)
    losses = []
    for _, (images, labels, _) in zip(range(steps), loader):
        terms = trainer.train_step(images, labels)
        losses.append(float(sum(t.detach() for t in terms.values())))
    return losses


# ------------------------------------------------------------------------------------- decode cache
def test_decode_cache_on_or_off_gives_the_same_training_and_metrics(tiny_manifest, tmp_path):
    from handclip.data.loaders import build_eval_loader
    from handclip.data.manifest import Manifest
    from handclip.evaluate.protocol import evaluate_manifest
    from handclip.model.inference import Encoder
    from handclip.train.stage2 import Stage2Trainer

    outcomes = {}
    for cached in (False, True):
        cache_dir = tmp_path / f"cache-{cached}"
        cfg = base_config(tiny_manifest, data={"decode_cache": cached, "cache_dir": str(cache_dir)})
        if cached:
            # Fill the cache first, so training and evaluation below read every image back from it
            # (before make_context seeds: creating a DataLoader iterator draws from the global RNG).
            records = Manifest.read(tiny_manifest).records
            for _ in build_eval_loader(cfg.data, records, 64):
                pass
            assert len(list(cache_dir.rglob("*.px"))) == len({r.path for r in records})
        ctx = make_context(cfg)
        trainer = Stage2Trainer(ctx)
        losses = _train_steps(trainer, ctx.build_train_loader(), steps=2)
        result = evaluate_manifest(Encoder.for_model(ctx.model, cfg.data, "cpu"), ctx.manifest, cfg.eval)
        features = np.stack([result.features[p] for p in sorted(result.features)])
        outcomes[cached] = (losses, result.aggregate, features)
    (loss_off, agg_off, feat_off), (loss_on, agg_on, feat_on) = outcomes[False], outcomes[True]
    assert len(loss_off) == 2
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(feat_on, feat_off, rtol=0, atol=1e-6)
    for metric in ("rank1", "rank5", "mAP", "mINP"):
        assert agg_on[metric]["mean"] == pytest.approx(agg_off[metric]["mean"], abs=1e-9), metric


# ------------------------------------------------------------------------------------- torch.compile
def _same_training(tiny_manifest, switch: dict, backbone: str = "tiny-vit"):
    """Three stage-2 steps with the ``runtime`` defaults and with ``switch``, from the same start: the same
    first-step gradients and the same losses at every step.

    Gradients, not parameters after Adam, are compared tensor by tensor: Adam turns a gradient that is
    numerically zero (e.g. the attention key bias, whose true gradient is exactly 0) into a +-lr step of
    random sign, so parameters only get a bound (no element moves more than one Adam step apart per step).
    """
    from handclip.train.stage2 import Stage2Trainer

    runs = {}
    for switched in (False, True):
        ctx = make_context(base_config(tiny_manifest, model={"backbone": backbone},
                                       runtime=switch if switched else {}))
        trainer = Stage2Trainer(ctx)
        if "compile" in switch:
            assert (trainer.forward_model is not ctx.model) == switched
        if "channels_last" in switch:
            assert trainer.channels_last == (switch["channels_last"] == "on" if switched else backbone == "tiny-rn")
        loader = ctx.build_train_loader()
        loader.batch_sampler.set_epoch(0)
        losses, grads = [], None
        for _, (images, labels, _) in zip(range(3), loader):
            terms = trainer.train_step(images, labels)
            losses.append(float(sum(t.detach() for t in terms.values())))
            if grads is None:
                grads = {n: p.grad.detach().clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
        params = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}
        lr = max(g["lr"] for g in trainer.optimizers.main.param_groups)
        runs[switched] = (losses, grads, params)
    (loss_d, grad_d, p_d), (loss_s, grad_s, p_s) = runs[False], runs[True]
    np.testing.assert_allclose(loss_s, loss_d, rtol=1e-4, atol=1e-5)
    assert grad_s.keys() == grad_d.keys() and len(grad_d) > 10
    largest = max(float(g.norm()) for g in grad_d.values())
    for name, g in grad_d.items():
        assert float((grad_s[name] - g).norm()) <= 1e-3 * float(g.norm()) + 1e-5 * largest, name
    for name, p in p_d.items():
        assert float((p_s[name] - p).abs().max()) <= 3 * 2.01 * lr, name


def test_compiled_stage2_graph_matches_eager(tiny_manifest, monkeypatch):
    """runtime.compile=true, with the graph TorchDynamo captures run through AOTAutograd ("aot_eager"):
    the trainer's compiled forward and its backward give eager's losses and parameters. (Inductor's
    code generation takes ~3 minutes on this 2-core CPU; the slow test below covers it.)"""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    _same_training(tiny_manifest, {"compile": True})


@pytest.mark.slow
def test_compiled_stage2_steps_match_eager_on_cpu_with_inductor(tiny_manifest):
    """The real thing: torch.compile's default inductor backend (generates and compiles C++ on CPU)."""
    pytest.importorskip("torch._inductor")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    _same_training(tiny_manifest, {"compile": True})


def test_channels_last_resnet_trains_like_nchw(tiny_manifest):
    """runtime.channels_last (auto: on for ResNets) changes the memory layout, not the training."""
    _same_training(tiny_manifest, {"channels_last": "off"}, backbone="tiny-rn")


# ------------------------------------------------------------------------------------- inference mode
def test_feature_extraction_runs_under_inference_mode(tiny_manifest):
    from handclip.model.inference import extract_features
    from handclip.train.stage1 import encode_training_images

    ctx = make_context(base_config(tiny_manifest))
    model = ctx.model
    seen = []
    original_extract, original_forward = model.extract, model.forward

    def spy_extract(images):
        seen.append(("extract", torch.is_inference_mode_enabled(), model.training))
        return original_extract(images)

    def spy_forward(images, labels=None):
        seen.append(("forward", torch.is_inference_mode_enabled(), model.training))
        return original_forward(images, labels)

    model.extract, model.forward = spy_extract, spy_forward
    model.train()
    feats = extract_features(model, ctx.manifest.split("val"), ctx.config.data, ctx.config.eval.batch_size, device="cpu")
    encode_training_images(model, ctx.train_records, ctx.label_map, ctx.config.data, ctx.config.eval,
                           torch.device("cpu"))
    assert feats.shape[0] == len(ctx.manifest.split("val"))
    assert {kind for kind, *_ in seen} == {"extract", "forward"}
    assert all(inference and not training for _, inference, training in seen)
    assert model.training  # the caller's mode is restored


# ------------------------------------------------------------------------------------- stage-1 cache
@pytest.fixture()
def own_images(tiny_manifest, tmp_path):
    """A private copy of the tiny data set (images may be rewritten without touching the shared one)."""
    from handclip.data.manifest import Manifest

    manifest = Manifest.read(tiny_manifest)
    records = []
    for r in manifest.records:
        target = tmp_path / "images" / f"{r.pid}" / f"{abs(hash(r.path)) % 10**8}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy(r.path, target)
        records.append(type(r)(**{**r.__dict__, "path": str(target)}))
    path = tmp_path / "manifest.csv"
    Manifest(records).write(path)
    return path


def test_stage1_feature_cache_hits_only_when_nothing_it_depends_on_changed(own_images, monkeypatch):
    from handclip.train import stage1

    encodes = []
    real_encode = stage1.encode_training_images

    def counting_encode(*args, **kwargs):
        encodes.append(1)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(stage1, "encode_training_images", counting_encode)

    def run(ctx):
        before = len(encodes)
        feats, labels, hit = stage1.cached_training_features(ctx)
        assert hit == (len(encodes) == before)  # a hit never encodes, a miss always does
        return feats, labels, hit

    def fresh(**sections):
        return make_context(base_config(own_images, **sections))

    feats, labels, hit = run(fresh())
    assert not hit
    feats2, labels2, hit2 = run(fresh())
    assert hit2 and torch.equal(feats, feats2) and torch.equal(labels, labels2)

    # Encoder weights.
    ctx = fresh()
    with torch.no_grad():
        next(ctx.model.image_encoder.parameters()).add_(1e-3)
    assert not run(ctx)[2]
    # Backbone.
    assert not run(fresh(model={"backbone": "tiny-rn"}))[2]
    # Transform: normalisation, input size, interpolation, pre-shrink resolution.
    assert not run(fresh(data={"pixel_mean": [0.4, 0.5, 0.5]}))[2]
    assert not run(fresh(data={"interpolation": {"train": "bilinear", "eval": "bicubic"}}))[2]
    assert not run(fresh(data={"image_size": [48, 48]}))[2]
    assert not run(fresh(data={"cache_resolution": 40}))[2]
    # Manifest: one training image fewer.
    ctx = fresh()
    ctx.train_records = ctx.train_records[:-1]
    assert not run(ctx)[2]
    # An image rewritten in place (same path): new size/mtime, so it is encoded again.
    ctx = fresh()
    target = ctx.train_records[0].path
    from PIL import Image

    with Image.open(target) as img:
        img.transpose(Image.FLIP_LEFT_RIGHT).save(target)
    feats3, _, hit3 = run(ctx)
    assert not hit3 and not torch.equal(feats3[0], feats[0])
    # Unchanged inputs still hit after all those entries were written.
    assert run(fresh())[2]


def test_stage1_feature_cache_can_be_switched_off(own_images, tmp_path):
    from handclip.train import stage1

    cfg = base_config(own_images, stage1={"cache_features": False})
    for _ in range(2):
        *_, hit = stage1.cached_training_features(make_context(cfg))
        assert not hit
    assert not list(tmp_path.rglob("features/*.pt"))


# ------------------------------------------------------------------------------------- runtime switches
def test_runtime_auto_switches_pick_the_fast_correct_path_per_device(monkeypatch):
    from handclip import runtime

    auto = RuntimeConfig()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    vit, rn = SimpleNamespace(kind="vit"), SimpleNamespace(kind="rn")
    # CPU: fp32, foreach Adam, channels_last for ResNets only (measured faster in bench_stage2.py).
    assert runtime.resolve_amp_dtype(cpu, auto.amp) is None
    assert runtime.use_fused_optimizer(auto, cpu) is False
    assert runtime.use_channels_last(auto, cpu, rn) is True
    assert runtime.use_channels_last(auto, cpu, vit) is False
    assert runtime.pin_memory(cpu) is False
    assert isinstance(runtime.autocast(cpu, auto.amp), type(runtime.autocast(cpu, None)))
    # CUDA (the decisions only; no GPU needed): bf16 where supported else fp16, fused Adam,
    # channels_last for ResNets only, pinned memory.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_amp_dtype(cuda, "auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_amp_dtype(cuda, "auto") is torch.float16
    assert runtime.make_grad_scaler(cpu, torch.float16) is not None
    assert runtime.make_grad_scaler(cpu, torch.bfloat16) is None
    assert runtime.resolve_amp_dtype(cuda, "off") is None
    assert runtime.use_fused_optimizer(auto, cuda) is True
    assert runtime.use_channels_last(auto, cuda, rn) is True
    assert runtime.use_channels_last(auto, cuda, vit) is False
    assert runtime.pin_memory(cuda) is True
    # Explicit settings win over auto.
    assert runtime.use_fused_optimizer(RuntimeConfig(fused_optimizer="on"), cpu) is True
    assert runtime.use_channels_last(RuntimeConfig(channels_last="on"), cpu, vit) is True
    assert runtime.use_channels_last(RuntimeConfig(channels_last="off"), cuda, rn) is False


def test_fused_optimizer_switch_reaches_the_optimizer(tiny_manifest):
    from handclip.train.stage2 import Stage2Trainer

    on = Stage2Trainer(make_context(base_config(tiny_manifest, runtime={"fused_optimizer": "on"})))
    auto = Stage2Trainer(make_context(base_config(tiny_manifest)))
    assert on.optimizers.main.defaults["fused"] is True  # CPU has a fused Adam kernel in this torch
    assert not auto.optimizers.main.defaults.get("fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stage2_step_never_waits_for_the_host(tiny_manifest):
    """On a GPU the auto fast path (bf16, fused Adam) runs steps without a device->host sync."""
    from handclip.train.stage2 import Stage2Trainer

    if not torch.cuda.is_bf16_supported():
        pytest.skip("fp16 needs a GradScaler, whose step reads the inf check on the host")
    cfg = base_config(tiny_manifest, runtime={"device": "cuda"})
    ctx = make_context(cfg)
    ctx.model.cuda()
    ctx.device = torch.device("cuda")
    trainer = Stage2Trainer(ctx)
    assert trainer.dtype is torch.bfloat16 and trainer.scaler is None
    assert trainer.optimizers.main.defaults["fused"] is True
    images = torch.randn(8, 3, 32, 32, device="cuda")
    labels = torch.arange(4, device="cuda").repeat_interleave(2)
    trainer.train_step(images, labels)  # first step: lazy optimizer state, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step(images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
