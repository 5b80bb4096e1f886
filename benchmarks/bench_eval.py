"""Evaluation speed: features/second of ``extract_features`` and the metric time for 10,000 x 10,000.

    PYTHONPATH=src python benchmarks/bench_eval.py [--images 512] [--device auto] [--size 10000]

Features: ``handclip.model.inference.extract_features`` (inference mode, ``runtime`` autocast: bf16 on a GPU,
fp32 on CPU, decode cache warm) beside a CLIP-ReID-style extraction loop (``torch.no_grad``, fp32, the same
model, loader and images), timed in alternating passes (median). Default model: tiny-vit at 64x64 on CPU,
ViT-B/16 at 224x224 on a GPU. Images: procedural synthetic hands at the input size.

Metrics: ``evaluate_rank`` against the classic per-query loop on a random 10,000 x 10,000 distance matrix,
using benchmarks/bench_metrics.py's problem and comparison (all metrics checked to agree to 1e-9).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import device_and_model_defaults, machine_line, sync  # noqa: E402
from bench_metrics import compare_metrics, make_problem  # noqa: E402


def reference_extract(model, records, data_cfg, batch_size, device):
    """The extraction loop as CLIP-ReID's inference writes it: no_grad, full precision, L2-normalised after."""
    from handclip.data.loaders import build_eval_loader

    model.eval()
    chunks = []
    with torch.no_grad():
        for images, *_ in build_eval_loader(data_cfg, records, batch_size):
            feats = model.extract(images.to(device))
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=1).cpu())
    return torch.cat(chunks).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default=None, help="default: ViT-B-16 on CUDA, tiny-vit on CPU")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 on CUDA, 64 on CPU")
    parser.add_argument("--images", type=int, default=None, help="default: 2048 on CUDA, 512 on CPU")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--size", type=int, default=10_000, help="queries = gallery items for the metric timing")
    parser.add_argument("--ids", type=int, default=1_000)
    args = parser.parse_args(argv)

    from handclip.config import DataConfig, EvalConfig, ModelConfig
    from handclip.data.manifest import Manifest
    from handclip.model.handclip import build_model
    from handclip.model.inference import extract_features
    from handclip.runtime import resolve_amp_dtype

    device, cuda, backbone, size = device_and_model_defaults(args)
    count = args.images or (2048 if cuda else 512)
    per_id = 8
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="handclip-bench-eval-") as tmp:
        tmp = Path(tmp)
        from _bench_common import synthetic_manifest

        manifest = Manifest.read(synthetic_manifest(tmp / "data", max(2, -(-count // (per_id - 1))), 2, per_id, size))
        records = manifest.split("train")[:count]
        data_cfg = DataConfig(image_size=(size, size), cache_dir=str(tmp / "cache"), num_workers=args.workers)
        eval_cfg = EvalConfig(batch_size=args.batch_size)
        model = build_model(ModelConfig(backbone=backbone), data_cfg, 10).to(device)

        # Warm-up pass: fills the decode cache, cuDNN autotuning, allocator.
        extract_features(model, records, data_cfg, eval_cfg.batch_size, device=device)
        times = {"reference (no_grad, fp32)": [], "extract_features": []}
        for _ in range(args.rounds):
            for name in times:
                sync(device)
                start = time.perf_counter()
                if name == "extract_features":
                    fast = extract_features(model, records, data_cfg, eval_cfg.batch_size, device=device)
                else:
                    ref = reference_extract(model, records, data_cfg, args.batch_size, device)
                sync(device)
                times[name].append(time.perf_counter() - start)
        agreement = float(np.abs(fast - ref).max())

    median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    precision = resolve_amp_dtype(device, "auto") or "fp32"
    print(machine_line(device))
    print(f"features: {backbone} at {size}x{size}, {len(records)} synthetic hand images, batch {args.batch_size}, "
          f"decode cache warm; extract_features precision {precision}; max |feature difference| vs reference "
          f"{agreement:.1e}")
    print()
    ref_s = median["reference (no_grad, fp32)"]
    print(f"| {'feature extraction':<28} | {'seconds':>8} | {'features/s':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 12}|{'-' * 10}|")
    for name, seconds in median.items():
        print(f"| {name:<28} | {seconds:8.2f} | {len(records) / seconds:10.1f} | {ref_s / seconds:7.2f}x |")
    print()

    distmat, q_pids, g_pids, cams = make_problem(args.size, args.ids, seed=0)
    result, times = compare_metrics(distmat, q_pids, g_pids, cams)
    print(f"metrics: {args.size} queries x {args.size} gallery, {args.ids} ids, "
          f"rank1={result.cmc[0]:.4f} mAP={result.mAP:.4f} (all implementations agree to 1e-9)")
    print()
    t_stable = times["stable"][0]
    print(f"| {'metric implementation':<36} | {'CPU s':>7} | {'wall s':>7} | {'speed-up (CPU)':>14} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 9}|{'-' * 16}|")
    for label, key in (("classic loop, stable argsort", "stable"), ("classic loop, quicksort argsort", "quicksort"),
                       ("evaluate_rank (vectorised)", "evaluate_rank")):
        cpu, wall = times[key]
        print(f"| {label:<36} | {cpu:7.2f} | {wall:7.2f} | {t_stable / cpu:13.1f}x |")
    if not cuda:
        print()
        print("No GPU here: CPU figures only (on CPU both extraction loops run fp32; the bf16 path is GPU-only).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
