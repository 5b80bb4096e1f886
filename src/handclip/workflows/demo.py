"""The built-in demo: synthetic hands, a tiny CLIP pretrained on captioned synthetic hands, both stages.

prepare (synthetic images + protocol manifest) -> pretrain the tiny CLIP on other synthetic identities
(``pretrain`` section; read from the cache when these settings were trained before) -> evaluate it
zero-shot on every Monte Carlo run -> stage 1 -> stage 2 -> evaluate the best checkpoint (chosen on the
validation split) on every run -> table, the text-side figures (stage-1 loss, prompt top-1, stage-2 i2t
loss, each with its chance value) and ``metrics.json``. With ``pretrain.enabled: false`` the model starts
from random weights, as the demo did before.

The demo config (``demo.yaml`` beside this module) differs from CLIP-ReID's ViT-B/16
defaults on purpose: those fine-tune a pretrained model with lr 5e-6 for 60 epochs, which would
barely move a tiny network trained from scratch in the few minutes a demo may take on a 2-core CPU.
The demo trains ``tiny-cnn`` at 64x64 on 300 synthetic identities with lr 3e-3, a short warm-up and
24 stage-2 epochs. ``tiny-cnn`` is CLIP's tiny text tower with HandCLIP's small conv image tower
(``handclip.model.backbone.TinyConvNet``): from random init on these synthetic hands, CLIP's own tiny
ViT and ModifiedResNet plateaued at rank-1 0.2-0.3 on unseen identities within a demo's budget of
steps, while the conv tower passes 0.9 (measurements in the README's demo section).

It also sets explicitly every choice where it departs from CLIP-ReID's defaults: cosine image-text
logits at scale 20 (raw dot products of random-init features are on no useful scale), CLIP's
normalisation, bicubic resizing and positional-embedding resize, zero-filled erasing (off here), triplet on
the last two features, schedules numbered from epoch 0 and a sampler that visits every identity each epoch.
Those are the settings its published figures were measured with.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_json
from ..config import Config, load_config
from ..datasets import prepare_from_config
from ..evaluate.metrics import METRIC_KEYS
from ..errors import ConfigError
from ..evaluate.protocol import evaluate_manifest
from ..model.checkpoint import load_checkpoint
from ..model.handclip import build_model
from ..model.inference import Encoder
from ..runtime import resolve_device, seed_everything
from ..synthetic.pretrain import pretrained_weights
from ..synthetic.prompts import prompt_top1
from ..train.engine import train
from ..train.stage1 import encode_training_images

# The demo's config, shipped with the package (the reasons for each setting are in the file).
DEMO_CONFIG_FILE = Path(__file__).with_name("demo.yaml")


def demo_config(path=None, overrides=None) -> Config:
    """The demo's config: ``demo.yaml`` (or another YAML file) with ``--set`` overrides applied."""
    return load_config(path if path is not None else DEMO_CONFIG_FILE, overrides)


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'':14s}" + "".join(f"{m:>16s}" for m in METRIC_KEYS)]
    for label, agg in rows:
        cells = "".join(f"{agg[m]['mean']:>9.4f} ± {agg[m]['std']:.3f}" for m in METRIC_KEYS)
        lines.append(f"{label:14s}{cells}")
    return "\n".join(lines)


def _check_disjoint(config: Config) -> None:
    """The pretraining identities must not be the demo's own (they share the generator seed)."""
    synth, pre = config.data.synthetic, config.pretrain
    used = synth.train_ids + synth.test_ids
    if pre.first_id < used:
        raise ConfigError(f"pretrain.first_id {pre.first_id} overlaps the demo's synthetic identities 0..{used - 1}; "
                          f"set it to {used} or more")


def text_side_report(history: list[dict], num_ids: int, i2t_weight: float, batch_size: int, n_train: int) -> dict:
    """Stage-1 loss and stage-2 i2t loss (first and last epoch) next to their chance values.

    Stage 1's loss is SupCon image->text + text->image over a batch: at uniform logits each term is
    ln(batch size), so chance is twice the mean of ln(batch size) over an epoch's batches. Stage 2's
    i2t loss is cross-entropy over every identity's text feature: chance ln(num_ids) (before its weight).
    """
    report: dict = {}
    s1 = [r for r in history if r.get("stage") == "stage1"]
    if s1:
        sizes = [min(batch_size, n_train - start) for start in range(0, n_train, batch_size)]
        report["stage1_loss"] = {"first": s1[0]["loss_i2t"] + s1[0]["loss_t2i"],
                                 "last": s1[-1]["loss_i2t"] + s1[-1]["loss_t2i"],
                                 "chance": 2 * sum(math.log(b) for b in sizes) / len(sizes)}
    s2 = [r for r in history if r.get("stage") in ("stage2", "joint") and "loss_i2t" in r]
    if s2 and i2t_weight > 0:
        report["stage2_i2t_loss"] = {"first": s2[0]["loss_i2t"] / i2t_weight, "last": s2[-1]["loss_i2t"] / i2t_weight,
                                     "chance": math.log(num_ids)}
    return report


def _prompt_accuracy(config: Config, manifest, start_model, final_checkpoint, device) -> dict:
    """Prompt top-1 over all training identities: the final prompts against the image features stage 1
    aligned them to (the starting encoder's; stage 1 leaves it unchanged) and against the final encoder's."""
    records, label_map = manifest.split("train"), manifest.train_label_map()
    final, _, _ = load_checkpoint(final_checkpoint, map_location=device)
    out = {"chance": 1.0 / len(label_map)}
    for key, encoder in (("stage1_features", start_model), ("final_features", final)):
        feats, labels = encode_training_images(encoder, records, label_map, config.data, config.eval, device)
        out[key] = prompt_top1(final, feats, labels)
    return out


def run_demo(out_dir, config: Config | None = None, progress: bool = True, runs: int | None = None) -> dict:
    started = time.perf_counter()
    cpu_started = time.process_time()
    out = Path(out_dir)
    config = config or demo_config()
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device = resolve_device(config.runtime.device)
    if config.pretrain.enabled:
        _check_disjoint(config)

    def say(message: str) -> None:
        if progress:
            print(message, flush=True)

    manifest = prepare_from_config(config.data, out / "data")
    manifest_path = out / "manifest.csv"
    manifest.write(manifest_path)
    config = config.model_copy(update={"data": config.data.model_copy(update={"manifest": str(manifest_path)}),
                                       "output_dir": str(out)})
    say(manifest.summary())
    chosen = None if runs is None else list(manifest.runs)[:runs]

    pretrain = None
    if config.pretrain.enabled:
        t = time.perf_counter()
        pretrain = pretrained_weights(config, log=say, progress=progress)
        say(f"pretrained {config.model.backbone}: {pretrain.path} (sha256 {pretrain.sha256[:12]}, "
            f"{'from the cache' if pretrain.cached else f'{time.perf_counter() - t:.1f}s'})")
        config = config.model_copy(update={"model": config.model.model_copy(update={"weights": str(pretrain.path)})})
    start_label = "zero-shot" if pretrain else "before"

    # The model train() starts from: same seed, same constructor, hence the same weights.
    seed_everything(config.seed)
    model = build_model(config.model, config.data, len(manifest.train_label_map())).to(device)
    t = time.perf_counter()
    precision = config.runtime.inference_precision
    before = evaluate_manifest(Encoder.for_model(model, config.data, device, precision=precision), manifest,
                               config.eval, runs=chosen)
    say(f"{start_label}: rank-1 {before.aggregate['rank1']['mean']:.4f} ({time.perf_counter() - t:.1f}s)")

    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts afresh
    t = time.perf_counter()
    result = train(config, run_dir=run_dir, progress=progress)
    train_time = time.perf_counter() - t
    # The demo's own loading settings (no decode cache, no loader workers); the pixels come from the checkpoint.
    trained = Encoder.from_checkpoint(result.best_checkpoint, device, precision=precision).with_loading(
        decode_cache=config.data.decode_cache, num_workers=config.data.num_workers)
    after = evaluate_manifest(trained, manifest, config.eval, runs=chosen)
    text = text_side_report(result.history, len(manifest.train_label_map()), config.stage2.i2t_weight,
                            config.stage1.batch_size, len(manifest.split("train")))
    if config.stage1.enabled or config.runtime.joint:
        text["prompt_top1"] = _prompt_accuracy(config, manifest, model, result.last_checkpoint, device)
    del model
    total = time.perf_counter() - started
    metrics = {
        "before": {m: before.aggregate[m] for m in METRIC_KEYS},
        "after": {m: after.aggregate[m] for m in METRIC_KEYS},
        "start": start_label,
        "text_side": text,
        "time_s": round(total, 1),
        "cpu_time_s": round(time.process_time() - cpu_started, 1),
        "train_time_s": round(train_time, 1),
        "best_checkpoint": str(result.best_checkpoint),
        "best_epoch": result.best,
        "runs": len(after.per_run),
        "device": str(device),
    }
    if pretrain is not None:
        metrics["pretrain"] = {"weights": str(pretrain.path), "sha256": pretrain.sha256, "cached": pretrain.cached,
                               "history": pretrain.history, "time_s": round(pretrain.time_s, 1)}
    atomic_write_json(out / "metrics.json", metrics)
    _print_results(config, metrics, out / "metrics.json")
    return metrics


def _print_results(config: Config, metrics: dict, metrics_path: Path) -> None:
    """The result table, the text-side figures and the times: the point of the demo, so printed even
    without progress output."""
    rows = [(metrics["start"], metrics["before"])]
    if config.stage1.enabled and not config.runtime.joint:
        # Stage 1 trains only the prompts: the image features, hence retrieval, are the starting model's.
        rows.append(("after stage 1", metrics["before"]))
    rows.append(("after stage 2", metrics["after"]))
    print(_table(rows), flush=True)
    for line in _text_lines(metrics["text_side"]):
        print(line, flush=True)
    print(f"total time {metrics['time_s']:.1f}s, CPU time {metrics['cpu_time_s']}s (training "
          f"{metrics['train_time_s']:.1f}s); metrics written to {metrics_path}", flush=True)


def _text_lines(text: dict) -> list[str]:
    lines = []
    if "stage1_loss" in text:
        s = text["stage1_loss"]
        lines.append(f"stage-1 loss {s['first']:.3f} -> {s['last']:.3f} (chance {s['chance']:.3f})")
    if "prompt_top1" in text:
        p = text["prompt_top1"]
        lines.append(f"prompt top-1 on training images {p['stage1_features']:.4f} with the stage-1 image features, "
                     f"{p['final_features']:.4f} with the trained ones (chance {p['chance']:.4f})")
    if "stage2_i2t_loss" in text:
        s = text["stage2_i2t_loss"]
        lines.append(f"stage-2 i2t loss {s['first']:.3f} -> {s['last']:.3f} (chance {s['chance']:.3f})")
    return lines
