"""Stage-2 training throughput: HandCLIP's step against a CLIP-ReID-style reference step, side by side.

    PYTHONPATH=src python benchmarks/bench_stage2.py                 # auto: ViT-B/16 224x224 on a GPU, tiny-vit on CPU
    PYTHONPATH=src python benchmarks/bench_stage2.py --compile       # add a torch.compile row
    PYTHONPATH=src python benchmarks/bench_stage2.py --backbone tiny-rn --channels-last   # channels_last row

Both steps train the same model (identical copies of one random-init HandCLIP), on the same P x K batch
(already on the device, as in design.md section 6), with the same losses (ID cross-entropy with label
smoothing on both BNNeck heads x 0.25, batch-hard triplet summed over CLIP-ReID's three features,
image->text cross-entropy on raw dot products against fixed text features) and the same Adam parameter groups.

- reference: the step as CLIP-ReID's stage-2 processor runs it, written here from its description:
  zero the grads, forward + losses under fp16 autocast, GradScaler scale/backward/step/update, plain
  (non-fused) Adam, accuracy of the i2t logits, ``loss.item()`` for the running meter and a device
  synchronisation every step, no compile. On CPU it runs in fp32 (CPU has no fp16 autocast worth using).
- HandCLIP: ``Stage2Trainer.train_step``, the losses and update ``handclip train`` runs per batch (its
  loop's hooks around them are left out: on CUDA they read nothing back per step), with the
  ``runtime`` switches at their defaults (``auto``: bf16 autocast, fused Adam, no per-step host sync on
  CUDA; fp32 on CPU), optionally with ``runtime.compile`` or ``runtime.channels_last``.

Steps are timed in alternating rounds (median per step). FLOPs of one step are counted with
torch.utils.flop_counter.FlopCounterMode; model FLOP utilisation = achieved FLOP/s / peak (bf16 dense
data-sheet peak by GPU name; on CPU a measured fp32 matmul, for orientation only).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (  # noqa: E402
    count_flops,
    device_and_model_defaults,
    interleaved_timing,
    machine_line,
    peak_flops,
    pk_batch,
    stage2_config,
    sync,
    training_context,
)


class ReferenceStage2Step:
    """A stage-2 step the way CLIP-ReID's processor does it (fp16 AMP + GradScaler, plain Adam, sync per step)."""

    def __init__(self, model, config, text_features: torch.Tensor, scale: float, device: torch.device):
        from handclip.train.losses import CrossEntropyLabelSmooth, TripletLoss
        from handclip.train.optim import stage2_param_groups
        from handclip.train.stage2 import configure_stage2_trainable

        self.model = model
        self.s2 = config.stage2
        self.device = device
        configure_stage2_trainable(model, config.model, self.s2, joint=False)
        groups = [g for g in stage2_param_groups(model, self.s2) if g["params"]]
        self.optimizer = torch.optim.Adam(groups, fused=False)  # torch's default Adam, as CLIP-ReID builds it
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.text_features = text_features
        self.scale = scale
        self.id_loss = CrossEntropyLabelSmooth(self.s2.label_smoothing)
        self.triplet = TripletLoss(self.s2.triplet_margin)
        self.loss_sum = 0.0
        self.acc_sum = 0.0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from handclip.train.losses import i2t_cross_entropy

        s2 = self.s2
        self.model.train()
        self.optimizer.zero_grad()
        images = images.to(self.device)
        labels = labels.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.model(images)
            logits = out.image_proj @ self.text_features.t()
            features = {"mid": out.feat_mid, "last": out.feat_last, "proj": out.feat_proj}
            loss = (s2.id_weight * sum(self.id_loss(score, labels) for score in out.logits)
                    + s2.triplet_weight * sum(self.triplet(features[name], labels) for name in s2.triplet_features)
                    + s2.i2t_weight * i2t_cross_entropy(out.image_proj, self.text_features, labels, self.scale,
                                                        s2.label_smoothing))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        acc = (logits.max(1)[1] == labels).float().mean()
        self.loss_sum += loss.item()  # the running loss meter: a host sync every step
        self.acc_sum += float(acc)
        sync(self.device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default=None, help="default: ViT-B-16 on CUDA, tiny-vit on CPU")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 on CUDA, 64 on CPU")
    parser.add_argument("--ids-per-batch", type=int, default=16)
    parser.add_argument("--images-per-id", type=int, default=4)
    parser.add_argument("--num-ids", type=int, default=200, help="training identities (classifier size)")
    parser.add_argument("--rounds", type=int, default=None, help="default: 5 on CUDA, 3 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--compile", action="store_true", help="also time HandCLIP with runtime.compile=true")
    parser.add_argument("--channels-last", action="store_true", help="also time HandCLIP with runtime.channels_last=on")
    args = parser.parse_args(argv)

    from handclip.model.handclip import build_model
    from handclip.runtime import seed_everything
    from handclip.train.stage2 import Stage2Trainer

    device, cuda, backbone, size = device_and_model_defaults(args)
    rounds = args.rounds or (5 if cuda else 3)
    steps = args.steps or (20 if cuda else 3)
    P, K = args.ids_per_batch, args.images_per_id
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    seed_everything(0)
    base_cfg = stage2_config(backbone, size, P, K, str(device))
    base = build_model(base_cfg.model, base_cfg.data, args.num_ids)
    images, labels = pk_batch(args.num_ids, P, K, size, device)

    variants = {"HandCLIP (runtime auto)": {}}
    if args.compile:
        variants["HandCLIP + torch.compile"] = {"compile": True}
    if args.channels_last:
        variants["HandCLIP + channels_last"] = {"channels_last": "on"}
    trainers = {}
    for name, switches in variants.items():
        cfg = stage2_config(backbone, size, P, K, str(device), **switches)
        model = copy.deepcopy(base).to(device)
        trainers[name] = Stage2Trainer(training_context(cfg, model, args.num_ids, device))
    first = next(iter(trainers.values()))
    ref_model = copy.deepcopy(base).to(device)
    reference = ReferenceStage2Step(ref_model, base_cfg, first.fixed_text.clone(), first.scale, device)
    del base

    steppers = {"reference (CLIP-ReID style)": lambda: reference(images, labels)}
    for name, trainer in trainers.items():
        steppers[name] = (lambda t: (lambda: t.train_step(images, labels)))(trainer)

    # FLOPs of one training step (forward + backward), counted on the eager HandCLIP step.
    step_flops = count_flops(lambda: first.train_step(images, labels))
    # Warm-up: cuDNN autotuning, allocator, compilation (timed separately: it is paid once per run).
    import time

    compile_s = {}
    for name, step in steppers.items():
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            step()
        sync(device)
        compile_s[name] = time.perf_counter() - start

    per_step = interleaved_timing(steppers, rounds, steps, device)
    peak, peak_source = peak_flops(device)

    batch = P * K
    # The ratio uses wall time on a GPU and this process's CPU time on a (shared) CPU.
    basis = 0 if cuda else 1
    ref_time = per_step["reference (CLIP-ReID style)"][basis]
    print(machine_line(device))
    print(f"stage 2: {backbone} at {size}x{size}, batch {batch} ({P} ids x {K}), {args.num_ids} identities, "
          f"{sum(p.numel() for p in first.model.parameters() if p.requires_grad) / 1e6:.1f} M trainable parameters; "
          f"HandCLIP precision {first.dtype or 'fp32'}, fused Adam {'yes' if first.optimizers.main.defaults.get('fused') else 'no'}, "
          f"channels_last {'yes' if first.channels_last else 'no'}; reference precision "
          f"{'fp16 + GradScaler' if cuda else 'fp32'}")
    print(f"{step_flops / batch / 1e9:.2f} GFLOP per training image (FlopCounterMode, forward + backward); "
          f"peak {peak / 1e9:,.0f} GFLOP/s ({peak_source})")
    print(f"timing: {rounds} alternating rounds x {steps} steps, median per step; data already on the device; "
          f"images/s, ratio and MFU from {'wall' if cuda else 'this process CPU'} time")
    print()
    print(f"| {'step':<28} | {'wall ms/step':>12} | {'CPU ms/step':>11} | {'images/s':>9} | {'vs reference':>12} | "
          f"{'MFU':>6} | {'first 3 steps s':>15} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 13}|{'-' * 11}|{'-' * 14}|{'-' * 8}|{'-' * 17}|")
    for name, (wall, cpu) in per_step.items():
        seconds = (wall, cpu)[basis]
        print(f"| {name:<28} | {wall * 1e3:12.1f} | {cpu * 1e3:11.1f} | {batch / seconds:9.1f} | "
              f"{ref_time / seconds:11.2f}x | {step_flops / seconds / peak * 100:5.1f}% | {compile_s[name]:15.1f} |")
    print()
    if not cuda:
        print("No GPU here: only the CPU figures above were measured. On CPU both steps run fp32 with the same "
              "(non-fused) Adam; the one CPU fast path is channels_last for ResNet backbones. The bf16 / "
              "fused-Adam / no-sync / compile fast paths are GPU paths (run this script on a GPU for them).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
