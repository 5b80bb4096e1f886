"""Shared helpers for the synthetic-hand benchmark scripts (not part of the package)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def load_split(root, num_ids: int, images_per_id: int):
    """All images of out_dir/<id>/<n>.png as uint8 [N, H, W, 3] plus identity labels."""
    images, labels = [], []
    for i in range(num_ids):
        for n in range(images_per_id):
            images.append(np.asarray(Image.open(root / f"{i:04d}" / f"{n:03d}.png").convert("RGB")))
            labels.append(i)
    return np.stack(images), np.array(labels)


def monte_carlo_retrieval(features: np.ndarray, labels: np.ndarray, runs: int = 10, seed: int = 0):
    """Mean rank-1 and mAP over ``runs`` gallery draws: one random gallery image per identity, rest query.

    Cosine similarity on L2-normalised features; AP is the mean precision at each correct match.
    """
    feats = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    rng = np.random.default_rng(seed)
    rank1s, maps = [], []
    ids = np.unique(labels)
    for _ in range(runs):
        gallery = np.array([rng.choice(np.flatnonzero(labels == i)) for i in ids])
        query = np.setdiff1d(np.arange(len(labels)), gallery)
        sim = feats[query] @ feats[gallery].T
        order = np.argsort(-sim, axis=1, kind="stable")
        matches = labels[gallery][order] == labels[query][:, None]
        rank1s.append(matches[:, 0].mean())
        # With one gallery image per identity AP = 1 / (rank of the single correct match).
        hit_rank = matches.argmax(axis=1) + 1
        maps.append((1.0 / hit_rank).mean())
    return float(np.mean(rank1s)), float(np.std(rank1s)), float(np.mean(maps)), float(np.std(maps))
