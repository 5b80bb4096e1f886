"""Query-to-gallery distance matrices from feature matrices (checked: 2-D, real, finite, same width)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import MetricInputError, read_array

__all__ = ["cosine_distance", "euclidean_distance", "feature_pair"]


def _features(x: Any, name: str) -> np.ndarray:
    a = read_array(x, name, "a feature matrix")
    if a.ndim != 2:
        raise MetricInputError(f"{name} must be 2-D (num_items x feature_dim), got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32 if a.dtype == np.float32 else np.float64, copy=False)
    if not np.isfinite(a).all():
        raise MetricInputError(f"{name} contains NaN or infinite values")
    return a


def feature_pair(q: Any, g: Any) -> tuple[np.ndarray, np.ndarray]:
    qa, ga = _features(q, "query features"), _features(g, "gallery features")
    if qa.shape[1] != ga.shape[1]:
        raise MetricInputError(f"query features have dimension {qa.shape[1]} but gallery features {ga.shape[1]}")
    dtype = np.result_type(qa.dtype, ga.dtype)
    return qa.astype(dtype, copy=False), ga.astype(dtype, copy=False)


def cosine_distance(q: Any, g: Any) -> np.ndarray:
    """1 - cosine similarity, in [0, 2]; rows are L2-normalised here (an all-zero row gives 1)."""
    qa, ga = feature_pair(q, g)
    qa = qa / np.maximum(np.linalg.norm(qa, axis=1, keepdims=True), 1e-12)
    ga = ga / np.maximum(np.linalg.norm(ga, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - qa @ ga.T, 0.0, 2.0)


def euclidean_distance(q: Any, g: Any) -> np.ndarray:
    """Euclidean (not squared) distance; squared would rank identically but read differently."""
    qa, ga = feature_pair(q, g)
    sq = (qa * qa).sum(1)[:, None] + (ga * ga).sum(1)[None, :] - 2.0 * (qa @ ga.T)
    return np.sqrt(np.maximum(sq, 0.0))
