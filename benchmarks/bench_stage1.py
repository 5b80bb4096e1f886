"""Stage 1 timing: the feature-caching pass (nothing cached / decode cache warm / feature cache hit) and the
prompt-training epochs, tiny model on synthetic hands.

    PYTHONPATH=src python benchmarks/bench_stage1.py [--ids 100] [--images-per-id 8] [--epochs 5] [--device auto]

Stage 1 encodes every training image once (eval transform) before training the prompts. CLIP-ReID does
that pass at the start of every run; HandCLIP keys the encoded features by backbone, weights, transform,
precision and images (train/stage1.py: feature_cache_key), so a second experiment on the same data reads
them back instead. Rows:
  1. first run on fresh data: images decoded and encoded (what CLIP-ReID pays every run);
  2. decode cache warm, feature cache empty (another backbone or weights on data seen before);
  3. feature cache hit (a second experiment with the same backbone, weights, transform and manifest).
Then ``run_stage1`` trains the prompts for ``--epochs`` epochs on the cached features; the per-epoch time
is the loop's own ``time_s`` (validation and checkpoint writing excluded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import context_from_config, machine_line, synthetic_manifest  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-vit")
    parser.add_argument("--ids", type=int, default=100, help="training identities")
    parser.add_argument("--images-per-id", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", default="auto")
    args = parser.parse_args(argv)

    from handclip.config import config_from_dict
    from handclip.runtime import resolve_device
    from handclip.train.stage1 import cached_training_features, run_stage1

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="handclip-bench-stage1-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        manifest = synthetic_manifest(tmp / "data", args.ids, 4, args.images_per_id, args.image_size)
        made_s = time.perf_counter() - start
        config = config_from_dict({
            "data": {"manifest": str(manifest), "image_size": [args.image_size] * 2, "cache_dir": str(tmp / "cache"),
                     "num_workers": args.workers},
            "model": {"backbone": args.backbone},
            "stage1": {"epochs": args.epochs, "batch_size": args.batch_size, "warmup_epochs": min(5, args.epochs)},
            "runtime": {"device": str(device), "progress": False},
        })
        ctx = context_from_config(config, tmp / "run", device)
        n = len(ctx.train_records)

        rows = []
        for label in ("nothing cached (CLIP-ReID: every run)", "decode cache warm, features not cached",
                      "feature cache hit (same inputs)"):
            if label.startswith("decode"):
                shutil.rmtree(tmp / "cache" / "features")
            start = time.perf_counter()
            feats, _, hit = cached_training_features(ctx)
            seconds = time.perf_counter() - start
            assert hit == label.startswith("feature cache hit"), label
            rows.append((label, seconds))

        run_stage1(ctx)
        epoch_times = [r["time_s"] for r in ctx.state["history"] if r["stage"] == "stage1"]
        losses = [r["loss"] for r in ctx.state["history"] if r["stage"] == "stage1"]

    print(machine_line(device))
    print(f"stage 1: {args.backbone} at {args.image_size}x{args.image_size}, {n} training images of {args.ids} "
          f"synthetic identities (made in {made_s:.1f} s), feature dim {feats.shape[1]}, batch {args.batch_size}")
    print()
    first = rows[0][1]
    print(f"| {'caching pass':<40} | {'seconds':>8} | {'images/s':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    for label, seconds in rows:
        print(f"| {label:<40} | {seconds:8.3f} | {n / seconds:9.1f} | {first / seconds:7.1f}x |")
    print()
    steps = -(-n // args.batch_size)
    print(f"prompt training: {args.epochs} epochs x {steps} steps; seconds per epoch "
          + ", ".join(f"{t:.2f}" for t in epoch_times)
          + f"; median {sorted(epoch_times)[len(epoch_times) // 2]:.2f} s "
          f"({steps / sorted(epoch_times)[len(epoch_times) // 2]:.1f} steps/s); "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
