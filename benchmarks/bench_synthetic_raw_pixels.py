"""How hard is the synthetic hand set for features that have not learned anything?

Renders 100 training identities (unused here) + 50 unseen test identities x 8 images at 64 px, then,
over 10 Monte Carlo gallery draws (one random gallery image per test identity, the rest query),
reports nearest-neighbour rank-1 and mAP on raw pixels and on a random-init small conv net.
Raw pixels should score far below what a trained model reaches (well below 0.30 rank-1).

    PYTHONPATH=src python benchmarks/bench_synthetic_raw_pixels.py [--out DIR]

2026-11-26, renderer v1: raw pixels rank-1 0.043 +- 0.010 / mAP 0.127, random conv net 0.031 / 0.112,
chance 0.020 (a tiny CNN trained 500 steps reaches 0.866 / 0.923: learn_synthetic_tiny_cnn.py).
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
from _synthetic_common import load_split, monte_carlo_retrieval  # noqa: E402

from handclip.synthetic.dataset import write_synthetic_dataset  # noqa: E402

TRAIN_IDS, TEST_IDS, PER_ID, SIZE = 100, 50, 8, 64


def random_conv_features(images: np.ndarray, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
    ).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    with torch.no_grad():
        return net(x).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the rendered images (default: a temporary folder)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp) / "synthetic"
        start = time.perf_counter()
        write_synthetic_dataset(root, TRAIN_IDS + TEST_IDS, PER_ID, size=SIZE, seed=0)
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        write_synthetic_dataset(root, TRAIN_IDS + TEST_IDS, PER_ID, size=SIZE, seed=0)
        again = time.perf_counter() - start
        images, labels = load_split(root, TRAIN_IDS + TEST_IDS, PER_ID)
    test = labels >= TRAIN_IDS
    images, labels = images[test], labels[test]
    print(f"wrote {TRAIN_IDS + TEST_IDS} ids x {PER_ID} images at {SIZE}px in {elapsed:.2f} s "
          f"(second call, already complete: {again:.3f} s)")
    print(f"test set: {TEST_IDS} unseen ids x {PER_ID} images, {args.runs} Monte Carlo gallery draws\n")
    rows = [
        ("raw pixels (cosine)", images.reshape(len(images), -1).astype(np.float64)),
        ("raw pixels, mean-centred per image", (lambda f: f - f.mean(axis=1, keepdims=True))(
            images.reshape(len(images), -1).astype(np.float64))),
        ("random-init conv net (3 conv, 512-d)", random_conv_features(images)),
    ]
    print("| features | rank-1 | mAP |\n|---|---|---|")
    for name, feats in rows:
        r1, r1_sd, m, m_sd = monte_carlo_retrieval(feats, labels, runs=args.runs)
        print(f"| {name} | {r1:.3f} ± {r1_sd:.3f} | {m:.3f} ± {m_sd:.3f} |")
    print(f"| chance | {1 / TEST_IDS:.3f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
