"""Enrolment throughput: images per second into a gallery, by model and batch size.

Each setting enrols the same synthetic 64x64 hand photos into a fresh gallery with
``ExaminerSession.enrol`` (hash each file, decode, eval transform, ``model.extract``,
L2-normalise, commit the batch atomically), so the figure is what ``handclip enrol`` achieves,
per-batch commits included. The models are the tiny random-weight test models.

    python benchmarks/bench_enrol.py                 # tiny-rn and tiny-vit, batch 1, 8, 32, 64
    python benchmarks/bench_enrol.py --images 512 --models tiny-rn --batch-sizes 64,128
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_checkpoint(backbone: str, path: Path, size: int) -> Path:
    from handclip.config import load_config
    from handclip.model.checkpoint import save_checkpoint
    from handclip.model.handclip import build_model

    cfg = load_config(None, [f"model.backbone={backbone}", f"data.image_size=[{size},{size}]"])
    save_checkpoint(path, build_model(cfg.model, cfg.data, 10), cfg, {})
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--models", default="tiny-rn,tiny-vit")
    p.add_argument("--batch-sizes", default="1,8,32,64")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()

    import torch

    from handclip.synthetic.dataset import write_synthetic_dataset
    from handclip.gallery.enrol import collect_images
    from handclip.gallery.session import ExaminerSession
    from handclip.model.inference import load_encoder

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="handclip-bench-enrol-"))
    per_id = 8
    images = write_synthetic_dataset(work / "hands", num_ids=-(-args.images // per_id), images_per_id=per_id,
                                     size=args.size, seed=0)
    items = collect_images(images)[: args.images]
    print(f"enrolment throughput: {len(items)} synthetic {args.size}x{args.size} images, CPU, "
          f"{args.threads} torch threads, {os.cpu_count()} CPUs", flush=True)
    rows = []
    for backbone, batch in [(m, int(b)) for m in args.models.split(",") for b in args.batch_sizes.split(",")]:
        ckpt = make_checkpoint(backbone, work / f"{backbone}.pt", args.size)
        loaded = load_encoder(ckpt, device="cpu")
        ExaminerSession.open(work / "warmup", encoder=loaded, create=True, batch_size=batch).enrol(
            items[:batch])  # first-call costs out of the timing
        shutil.rmtree(work / "warmup")
        session = ExaminerSession.open(work / "gallery", encoder=loaded, create=True, batch_size=batch)
        start = time.perf_counter()
        summary = session.enrol(items)
        elapsed = time.perf_counter() - start
        assert summary.added == len(items), summary
        rows.append((backbone, batch, len(items) / elapsed, 1000 * elapsed / summary.batches))
        print(f"  {backbone} batch {batch}: {rows[-1][2]:.1f} images/s", file=sys.stderr, flush=True)
        shutil.rmtree(work / "gallery")
    print()
    base = {m: r for m, b, r, _ in rows if b == rows[0][1]}
    print(f"| model | batch | images/s | vs batch {rows[0][1]} | ms per committed batch |")
    print("|---|---:|---:|---:|---:|")
    for backbone, batch, rate, per_batch in rows:
        print(f"| {backbone} | {batch} | {rate:.1f} | {rate / base[backbone]:.1f}x | {per_batch:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
