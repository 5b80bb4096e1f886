"""Approximate search for large galleries: a projected FAISS index proposes, exact scores decide.

A small FAISS index over the embeddings projected onto their top principal directions proposes a
shortlist (``shortlist`` x top_k images); every image of each person in it is then re-scored exactly
against the stored float32 vectors (``SearchIndexes.expand_and_score``), so a returned score is never
approximate. ``pca`` scans all projected vectors (one matrix product per batch of queries: it never
misses a region of the gallery, about 5x less work than exact search at 1280 -> 256 dims); ``ivf`` and
``hnsw`` only visit part of the gallery (faster, lower recall).

The index is cached under ``ann/`` (derived data: extended with newly enrolled rows, rebuilt with a
new projection once the gallery has grown past REBUILD_GROWTH times the rows it was trained on, and
rebuilt with a warning when damaged). Every build measures its own recall@10 on SELF_CHECK_PROBES of
the gallery's images against exact search and warns below MIN_SELF_RECALL: how well a projection fits
depends on the embeddings, so ``auto`` falls back to exact search for galleries it does not suit.
Defaults were chosen from benchmarks/bench_gallery.py sweeps at 100k-200k x 1280 (README).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_open, atomic_write_json, sha256_file
from ..errors import GalleryError
from ..runtime import faiss_with_threads
from .shards import HashingWriter

ANN_DIR = "ann"
ANN_TYPES = ("pca", "ivf", "hnsw")
ANN_SCHEME = "projected-shortlist-exact-rescore-v1"
# An approximate index is rebuilt (projection and lists retrained) once the gallery has grown past
# this factor times the rows it was trained on; smaller growth is appended to the cached index.
REBUILD_GROWTH = 2
# Rows used to estimate the projection (a 1280 x 1280 second-moment matrix is well determined by far fewer).
PROJECTION_SAMPLE = 100_000
# Each (re)build measures the index on this many of the gallery's own images (left out of their own
# results, like a new photo of an enrolled person) against exact search, and warns below MIN_SELF_RECALL.
SELF_CHECK_PROBES = 200
SELF_CHECK_K = 10
MIN_SELF_RECALL = 0.9
# Parameters read at search time; changing the others invalidates a cached index.
SEARCH_TIME_PARAMS = frozenset({"nprobe", "ef_search", "shortlist"})

log = logging.getLogger(__name__)


@dataclass
class PCAParams:
    """Exhaustive scan of the projected vectors."""

    dims: int = 256  # projection size; 128 loses more same-person photos, 512 doubles the scan
    shortlist: int = 3  # images proposed per requested result, before adding their people's other photos


@dataclass
class IVFParams:
    """Inverted lists over the projected vectors: k-means cells, only the nearest ``nprobe`` scanned."""

    dims: int = 128
    nlist: int | None = None  # default 4 sqrt(N), at most N / 39 (k-means wants >= 39 points per cell)
    nprobe: int | None = None  # default nlist / 16: a fixed share of the gallery, so recall holds as N grows
    points_per_list: int = 40  # k-means training sample = points_per_list * nlist
    shortlist: int = 3


@dataclass
class HNSWParams:
    """Graph over the projected vectors (the projection makes a 1M build affordable)."""

    dims: int = 128
    M: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    shortlist: int = 3



class ApproximateIndexes:
    """The cached approximate indexes of one gallery (one per type), with their parameters."""

    def __init__(self, gallery, rescore):
        """``gallery``: the reader indexed; ``rescore(query, rows, top_k, exclude)``: exact (scores, rows)
        of the best among ``rows`` and every other image of their people (``SearchIndexes.expand_and_score``)."""
        self.gallery = gallery
        self.rescore = rescore
        self.params = {"pca": PCAParams(), "ivf": IVFParams(), "hnsw": HNSWParams()}
        self._built: dict[str, tuple] = {}  # type -> (index, trained rows, build params, self-check)

    def handed_to(self, gallery, rescore) -> "ApproximateIndexes":
        """The same indexes and parameters for a later generation of the same gallery (rows are only
        appended, so an index stays a valid prefix and is extended on next use). This object keeps no
        index afterwards: an index object serves one generation at a time."""
        successor = ApproximateIndexes(gallery, rescore)
        successor.params = self.params
        if gallery.uid == self.gallery.uid and len(gallery) >= len(self.gallery):
            successor._built, self._built = self._built, {}
        return successor

    def self_check(self, index_type: str) -> dict | None:
        """The self-check of the index built (or loaded) for ``index_type``, if any."""
        return self._built[index_type][3] if index_type in self._built else None

    def _build_params(self, index_type: str) -> dict:
        return {k: v for k, v in asdict(self.params[index_type]).items() if k not in SEARCH_TIME_PARAMS}

    def index(self, index_type: str):
        """The approximate index over every committed row: kept in memory, loaded from its on-disk
        cache, extended with rows enrolled since, or (re)built when missing, damaged, configured
        differently or outgrown (more than REBUILD_GROWTH times the rows it was trained on)."""
        if index_type not in ANN_TYPES:
            raise GalleryError(f"'{index_type}' is not an approximate index type (choose pca, ivf or hnsw)")
        gallery = self.gallery
        build = self._build_params(index_type)
        index, trained, built_with, check = self._built.get(index_type, (None, 0, None, None))
        if index is None or built_with != build:
            index, trained, check = self._load_cache(index_type, build)
        if index is not None and len(gallery) > REBUILD_GROWTH * trained:
            log.info("gallery %s grew from %d to %d images since its %s index was trained; rebuilding it",
                     gallery.index_dir, trained, len(gallery), index_type)
            index = None
        exact = None
        if index is None:
            index, trained = self._new(index_type, build), len(gallery)
            probe_rows = np.sort(np.random.default_rng(1).choice(
                len(gallery), size=min(len(gallery), SELF_CHECK_PROBES), replace=False))
            exact = _ExactTopK(gallery.gather_rows(probe_rows), probe_rows, SELF_CHECK_K)
        if index.ntotal < len(gallery):
            row = index.ntotal
            for chunk in gallery.iter_vectors(start_row=index.ntotal):
                index.add(chunk)
                if exact is not None:
                    exact.observe(chunk, row)  # exact answers for the self-check, in the same pass
                row += len(chunk)
            if exact is not None:
                check = self._self_check(index_type, index, exact)
            self._save_cache(index_type, index, build, trained, check)
        self._built[index_type] = (index, trained, build, check)
        return index

    def _self_check(self, index_type: str, index, exact: "_ExactTopK") -> dict:
        """Recall@10 of the finished index on some of the gallery's own images, each left out of
        its own results (so its person keeps only their other photos, as for a new query photo)."""
        gallery = self.gallery
        truth = exact.result()
        depth = min(len(gallery), int(self.params[index_type].shortlist) * SELF_CHECK_K + 1)
        shortlists = self.shortlist(index_type, index, exact.probes, depth)
        recalls, same_found, same_total = [], 0, 0
        for probe, row, shortlist, true_rows in zip(exact.probes, exact.rows, shortlists, truth):
            if not len(true_rows):
                continue
            _, found = self.rescore(probe, shortlist, SELF_CHECK_K, int(row))
            recalls.append(len(set(found.tolist()) & set(true_rows.tolist())) / len(true_rows))
            same = {int(t) for t in true_rows if gallery.identity_of_row[t] == gallery.identity_of_row[row]}
            same_found += len(same & set(found.tolist()))
            same_total += len(same)
        check = {"probes": len(recalls), "recall_at_10": round(float(np.mean(recalls)), 4) if recalls else None,
                 "same_person_recall": round(same_found / same_total, 4) if same_total else None}
        if check["recall_at_10"] is not None and check["recall_at_10"] < MIN_SELF_RECALL:
            log.warning("the %s index of gallery %s finds only %.2f of the exact top-%d for %d of the "
                        "gallery's own images: these embeddings do not suit it, so --index-type auto uses exact "
                        "search (flat) for this gallery", index_type, gallery.index_dir, check["recall_at_10"],
                        SELF_CHECK_K, check["probes"])
        return check

    def _new(self, index_type: str, build: dict):
        """An empty, trained index: projection (and IVF cells) fitted to a sample of the gallery."""
        gallery = self.gallery
        faiss = faiss_with_threads(self.gallery.threads)
        n = len(gallery)
        dims = max(1, min(int(build["dims"]), gallery.dim))
        sample_size = min(n, PROJECTION_SAMPLE)
        if index_type == "ivf":
            nlist = int(build["nlist"] or 4 * math.sqrt(n))
            nlist = max(1, min(nlist, n // 39))
            sample_size = min(n, max(sample_size, int(build["points_per_list"]) * nlist))
        rows = np.sort(np.random.default_rng(0).choice(n, size=sample_size, replace=False))
        sample = gallery.gather_rows(rows)
        transform = _projection(sample, dims) if dims < gallery.dim else None
        if index_type == "pca":
            inner = faiss.IndexFlatIP(dims)
        elif index_type == "hnsw":
            inner = faiss.IndexHNSWFlat(dims, int(build["M"]), faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = int(build["ef_construction"])
        else:
            inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(transform.apply(sample) if transform is not None else sample)
        del sample
        # faiss's Python wrapper keeps the transform and quantizer alive with the index.
        return faiss.IndexPreTransform(transform, inner) if transform is not None else inner

    def _paths(self, index_type: str) -> tuple[Path, Path]:
        base = self.gallery.index_dir / ANN_DIR
        return base / f"{index_type}.faiss", base / f"{index_type}.json"

    def _load_cache(self, index_type: str, build: dict):
        """(index, rows it was trained on, self-check) from the cache, or (None, 0, None) to build afresh.

        The cache is derived data: anything unexpected means a rebuild, never an error, and a
        damaged file (as opposed to a cache made for other settings) is reported as a warning.
        """
        gallery = self.gallery
        faiss = faiss_with_threads(self.gallery.threads)
        index_path, meta_path = self._paths(index_type)
        if not index_path.exists() and not meta_path.exists():
            return None, 0, None

        def damaged(reason: str):
            log.warning("approximate index cache %s is damaged (%s); rebuilding it", index_path, reason)
            return None, 0, None

        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return damaged(f"{meta_path.name} is missing or not valid JSON")
        if not isinstance(meta, dict):
            return damaged(f"{meta_path.name} is not a JSON object")
        if meta.get("uid") != self.gallery.uid or meta.get("scheme") != ANN_SCHEME or meta.get("params") != build:
            return None, 0, None  # made for another gallery, an older HandCLIP or other settings: not damage
        rows, trained = meta.get("rows"), meta.get("trained_rows")
        if not isinstance(rows, int) or not isinstance(trained, int) or not 0 < trained <= rows <= len(gallery):
            return damaged(f"{meta_path.name} lists {rows} rows for a gallery of {len(gallery)}")
        if not index_path.exists():
            return damaged("the index file is missing")
        if gallery.verify and sha256_file(index_path) != meta.get("sha256"):
            return damaged("SHA-256 mismatch")
        try:
            index = faiss.read_index(str(index_path))
        except (RuntimeError, MemoryError):
            return damaged("FAISS cannot read it")
        if index.ntotal != rows or index.d != gallery.dim:
            return damaged(f"it holds {index.ntotal} x {index.d}, expected {rows} x {gallery.dim}")
        # A file with a valid hash can still hold inconsistent fields (an untrained transform, a
        # wrong bias size): one search with a stored vector must work and return a stored row.
        try:
            found = self.shortlist(index_type, index, gallery.gather_rows(np.array([0])), 1)
        except (RuntimeError, MemoryError, ValueError):
            return damaged("FAISS cannot search it")
        if not 0 <= int(found[0][0]) < rows:
            return damaged("a search returned no stored row")
        return index, trained, meta.get("self_check")

    def _save_cache(self, index_type: str, index, build: dict, trained: int, check: dict | None) -> None:
        faiss = faiss_with_threads(self.gallery.threads)
        index_path, meta_path = self._paths(index_type)
        digest = hashlib.sha256()
        try:
            index_path.parent.mkdir(exist_ok=True)
            with atomic_open(index_path, "wb") as handle:
                writer = HashingWriter(handle, digest)
                faiss.write_index(index, faiss.PyCallbackIOWriter(writer.write))
            # The description is written last: a kill in between leaves a hash mismatch, i.e. a rebuild.
            atomic_write_json(meta_path, {"scheme": ANN_SCHEME, "uid": self.gallery.uid, "rows": int(index.ntotal),
                                          "trained_rows": int(trained), "params": build,
                                          "self_check": check, "sha256": digest.hexdigest()})
        except OSError:
            pass  # a read-only gallery still searches; it just rebuilds the index next time

    def _inner(self, index):
        faiss = faiss_with_threads(self.gallery.threads)
        return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index

    @staticmethod
    def _nprobe(nlist: int, params: IVFParams) -> int:
        return int(params.nprobe or max(min(nlist, 8), math.ceil(nlist / 16)))

    def settings(self, index_type: str) -> dict:
        """The approximate index's effective settings (defaults resolved), building it if needed."""
        index = self.index(index_type)
        inner, params = self._inner(index), self.params[index_type]
        out = {"type": index_type, "rows": int(index.ntotal), "trained_rows": self._built[index_type][1],
               "dims": int(inner.d), "shortlist": int(params.shortlist), "self_check": self._built[index_type][3]}
        if index_type == "ivf":
            out.update(nlist=int(inner.nlist), nprobe=self._nprobe(inner.nlist, params))
        elif index_type == "hnsw":
            out.update(M=int(params.M), ef_construction=int(params.ef_construction), ef_search=int(params.ef_search))
        return out

    def shortlist(self, index_type: str, index, queries: np.ndarray, depth: int) -> np.ndarray:
        """Row ids of each query's ``depth`` best candidates by projected inner product (-1: none)."""
        inner = self._inner(index)
        params = self.params[index_type]
        if index_type == "ivf":
            inner.nprobe = self._nprobe(inner.nlist, params)
        elif index_type == "hnsw":
            inner.hnsw.efSearch = max(int(params.ef_search), depth)
        return index.search(queries, depth)[1]


class _ExactTopK:
    """Running exact top-k (plus the probe itself) of a few probe rows over streamed chunks."""

    def __init__(self, probes: np.ndarray, rows: np.ndarray, k: int):
        self.probes, self.rows, self.k = probes, rows, k
        self.best_scores = np.full((len(rows), k + 1), -np.inf, np.float32)
        self.best_rows = np.full((len(rows), k + 1), -1, np.int64)

    def observe(self, chunk: np.ndarray, first_row: int) -> None:
        scores = np.concatenate([self.best_scores, self.probes @ chunk.T], axis=1)
        rows = np.concatenate([self.best_rows, np.broadcast_to(
            np.arange(first_row, first_row + len(chunk)), (len(self.rows), len(chunk)))], axis=1)
        keep = np.argpartition(-scores, self.k, axis=1)[:, :self.k + 1]
        self.best_scores = np.take_along_axis(scores, keep, axis=1)
        self.best_rows = np.take_along_axis(rows, keep, axis=1)

    def result(self) -> list[np.ndarray]:
        """Each probe's exact top-k rows, the probe itself left out."""
        out = []
        for row, scores, rows in zip(self.rows, self.best_scores, self.best_rows):
            ranked = rows[np.argsort(-scores, kind="stable")]
            out.append(ranked[(ranked >= 0) & (ranked != row)][:self.k])
        return out


def _projection(sample: np.ndarray, dims: int):
    """A faiss transform onto the ``dims`` top eigenvectors of the sample's uncentred second moment.

    Not centred (unlike PCA), so the projected inner product is exactly the part of the true inner
    product that lies in the kept directions, which is what the shortlist ranks by.
    """
    import faiss

    moment = (sample.T @ sample).astype(np.float64)
    _, vectors = np.linalg.eigh(moment)  # ascending eigenvalues
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :dims].T, dtype=np.float32)  # [dims, dim]
    transform = faiss.LinearTransform(sample.shape[1], dims, False)
    faiss.copy_array_to_vector(basis.ravel(), transform.A)
    transform.is_trained = True
    return transform

