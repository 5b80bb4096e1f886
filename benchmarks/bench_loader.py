"""Training-loader throughput from 1600x1200 JPEGs (like 11k Hands), without and with the decode cache.

Both loaders use the same transforms (224x224 train augmentation), the same P x K sampler and the same
worker count; only ``data.decode_cache`` differs. The cached loader's first epoch fills the cache; its
later epochs are the steady state that every further epoch and every further run sees. The ratio compares
steady-state epochs (the last epoch of each loader, workers already started).

    PYTHONPATH=src python benchmarks/bench_loader.py [--images 200] [--epochs 2] [--workers auto]

The JPEGs and the cache live in a temporary directory that is removed afterwards. Source files sit in the
page cache, so this measures decoding and resizing, not the disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Record:
    path: str
    pid: int


def make_jpegs(directory: Path, count: int, ids: int, size=(1600, 1200), seed: int = 0) -> list[Record]:
    """Hand-photo-like JPEGs: light background, a smooth skin-coloured hand shape, skin texture, sensor noise.

    Shapes are drawn at quarter resolution and enlarged (fast); the noise comes from one tile shifted per
    image, so every file has photo-like high-frequency content (~350 KB at quality 92).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    noise = rng.normal(0, 5, (height, width, 3)).astype(np.int16)
    texture = np.kron(rng.normal(0, 8, (height // 8, width // 8)), np.ones((8, 8))).astype(np.int16)[..., None]
    records = []
    per_id = max(1, count // ids)
    for i in range(count):
        small = Image.new("RGB", (width // 4, height // 4), (235, 235, 232))
        draw = ImageDraw.Draw(small)
        cx, cy = int(rng.integers(125, 275)), int(rng.integers(130, 200))
        skin = tuple(int(c) for c in rng.integers([150, 100, 80], [230, 170, 140]))
        draw.ellipse([cx - 75, cy - 80, cx + 75, cy + 95], fill=skin)
        for finger in range(5):
            x = cx - 70 + finger * 32
            top = cy - 160 + int(rng.integers(0, 40))
            draw.rounded_rectangle([x, top, x + 24, cy - 40], radius=11, fill=skin)
        large = small.filter(ImageFilter.GaussianBlur(1.5)).resize(size, Image.BICUBIC)
        shift = tuple(int(v) for v in rng.integers(0, [height, width]))
        pixels = np.asarray(large, np.int16) + np.roll(noise, shift, axis=(0, 1)) + np.roll(texture, shift, axis=(0, 1))
        pid = i // per_id
        path = directory / f"{pid:04d}_{i:05d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=92)
        records.append(Record(str(path), pid))
    return records


def run_epoch(loader, epoch: int) -> tuple[int, float]:
    """(images, seconds) for one pass of the loader."""
    loader.batch_sampler.set_epoch(epoch)
    start = time.perf_counter()
    images = 0
    for batch, _, _ in loader:
        images += batch.shape[0]
    return images, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--ids", type=int, default=50, help="identities (images split evenly; a multiple of K per id means every epoch reads every image)")
    parser.add_argument("--ids-per-batch", type=int, default=8)
    parser.add_argument("--images-per-id", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", default="auto", help="DataLoader workers (int or auto)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cache-resolution", type=int, default=None,
                        help="data.cache_resolution (default: none, the cache holds the resize to --size)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first cached epoch fills the cache)")

    from handclip.config import DataConfig
    from handclip.data.loaders import build_train_loader, first_resize, resolve_num_workers

    workers = args.workers if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory(prefix="handclip-bench-loader-") as tmp:
        tmp = Path(tmp)
        (tmp / "jpegs").mkdir()
        t0 = time.perf_counter()
        records = make_jpegs(tmp / "jpegs", args.images, args.ids)
        print(f"made {len(records)} 1600x1200 JPEGs in {time.perf_counter() - t0:.1f} s")
        label_map = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
        loaders = {}
        for name, cached in (("uncached", False), ("decode cache", True)):
            cfg = DataConfig(image_size=(args.size, args.size), decode_cache=cached, num_workers=workers,
                             cache_dir=str(tmp / "cache"), cache_resolution=args.cache_resolution)
            loaders[name] = build_train_loader(cfg, records, label_map, args.ids_per_batch, args.images_per_id, seed=0)
        # Epochs alternate between the two loaders so load from other users hits both alike.
        rows = {name: [] for name in loaders}
        for epoch in range(args.epochs):
            for name, loader in loaders.items():
                rows[name].append(run_epoch(loader, epoch))
        loaders.clear()
        cache_bytes = sum(f.stat().st_size for f in (tmp / "cache").rglob("*.px"))

    print()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs available "
          f"(shared with other users; timings vary), python {sys.version.split()[0]}")
    print(f"input {args.size}x{args.size}, train augmentation, P x K = {args.ids_per_batch} x {args.images_per_id}, "
          f"workers = {resolve_num_workers(workers)}, cached first resize {first_resize(cfg, train=True).tag} "
          f"({cache_bytes / len(records) / 1024:.0f} KiB/image on disk)")
    print()
    header = f"{'loader':<14}" + "".join(f"{f'epoch {e + 1} img/s':>16}" for e in range(args.epochs))
    print(header)
    print("-" * len(header))
    for name, epochs in rows.items():
        print(f"{name:<14}" + "".join(f"{n / s:>16.1f}" for n, s in epochs))
    steady_uncached = rows["uncached"][-1][0] / rows["uncached"][-1][1]
    steady_cached = rows["decode cache"][-1][0] / rows["decode cache"][-1][1]
    print()
    print(f"steady-state ratio (last epoch, cached / uncached): {steady_cached / steady_uncached:.2f}x "
          f"(target >= 5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
