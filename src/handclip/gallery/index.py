"""Ranking a gallery for query embeddings: by image, or by identity (best image per person).

Scores are cosine similarities (inner products of L2-normalised vectors). Searching ``by='identity'``
ranks people by the best score over their enrolled images (max aggregation: one good photo of the
right hand is the evidence an examiner looks for; averaging would penalise people enrolled with
many poor photos). Exact search (``flat``) scans every stored vector; the approximate types only
choose which people get scored (see ``handclip.gallery.ann``), and the scores returned are exact.
``auto`` is exact search up to AUTO_APPROX_THRESHOLD images and the pca index above, unless pca's
self-check finds it unfit for the gallery's embeddings.

``SearchIndexes`` is the search part of one reader (``handclip.gallery.reader``): the in-memory exact
index and the approximate indexes over that reader's generation. When a reader of a later generation
takes it over (``handed_to``), the indexes are extended with the new rows rather than rebuilt.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np

from ..errors import GalleryError
from ..runtime import faiss_with_threads
from .ann import ANN_TYPES, MIN_SELF_RECALL, ApproximateIndexes
from .results import Candidate

# Above this many vectors, index_type='auto' switches from exact search to the pca index.
AUTO_APPROX_THRESHOLD = 200_000

IndexType = Literal["auto", "flat", "pca", "ivf", "hnsw"]
INDEX_TYPES = ("auto", "flat", *ANN_TYPES)
SearchBy = Literal["image", "identity"]


def _checked_queries(queries, dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise GalleryError(f"query embeddings must have shape [M, {dim}], got {list(queries.shape)}")
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    if not np.isfinite(queries).all() or (norms == 0).any():
        raise GalleryError("query embeddings contain NaN, infinite or all-zero rows")
    return np.ascontiguousarray(queries / norms)


def _without_rows(excluded: np.ndarray):
    """faiss search parameters that leave out ``excluded`` rows (redacted identities), or None."""
    if not len(excluded):
        return None
    import faiss

    selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
    params = faiss.SearchParameters(sel=selector)
    params._keep = selector  # the parameters hold a raw pointer: keep the selector alive with them
    return params


def _masked(rows: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """An approximate shortlist with the ``excluded`` rows replaced by -1 (read as "no hit")."""
    if len(excluded):
        rows = np.where(np.isin(rows, excluded), -1, rows)
    return rows


class SearchIndexes:
    """Exact and approximate search over one reader's generation."""

    def __init__(self, reader, flat=None, ann: ApproximateIndexes | None = None):
        self.reader = reader
        self._flat = flat  # faiss.IndexFlatIP over the committed rows, built on first use
        self.ann = ann.handed_to(reader, self.expand_and_score) if ann is not None else \
            ApproximateIndexes(reader, self.expand_and_score)

    def handed_to(self, reader) -> "SearchIndexes":
        """These indexes for ``reader``, a later generation of the same gallery; this object keeps none."""
        keep = reader.uid == self.reader.uid and len(reader) >= len(self.reader)
        flat, self._flat = (self._flat if keep else None), None
        return SearchIndexes(reader, flat, self.ann)

    def resolve_index_type(self, index_type: IndexType = "auto") -> str:
        if index_type not in INDEX_TYPES:
            raise GalleryError(f"unknown index type '{index_type}' (choose {', '.join(INDEX_TYPES)})")
        if index_type != "auto":
            return index_type
        if len(self.reader) <= AUTO_APPROX_THRESHOLD:
            return "flat"
        self.ann.index("pca")  # built once, then cached with its self-check
        check = self.ann.self_check("pca") or {}
        if check.get("recall_at_10") is not None and check["recall_at_10"] < MIN_SELF_RECALL:
            return "flat"
        return "pca"

    def flat(self):
        """Exact inner-product index over every committed row, extended with the rows of later
        generations it is handed to (rows are only ever appended, so it stays a valid prefix).

        A first build reads the shards straight into the index's preallocated storage: adding chunk by
        chunk would grow it by doubling and briefly need twice the gallery's size in memory.
        """
        reader = self.reader
        faiss = faiss_with_threads(reader.threads)
        if self._flat is not None and self._flat.ntotal <= len(reader):
            for chunk in reader.iter_vectors(start_row=self._flat.ntotal):
                self._flat.add(chunk)
            return self._flat
        index = faiss.IndexFlatIP(reader.dim)
        total = len(reader)
        index.codes.resize(total * reader.dim * 4)
        storage = faiss.rev_swig_ptr(index.codes.data(), total * reader.dim * 4).view(np.float32)
        storage = storage.reshape(total, reader.dim)
        row = 0
        for chunk in reader.iter_vectors():
            storage[row:row + len(chunk)] = chunk
            row += len(chunk)
        index.ntotal = total
        self._flat = index
        return index

    def exact_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored float32 vectors of ``rows``: from the exact index if it is loaded, else the shards."""
        if self._flat is not None and self._flat.ntotal == len(self.reader):
            return self._flat.reconstruct_batch(np.asarray(rows, dtype=np.int64))
        return self.reader.gather_rows(rows, verify=True)

    def expand_and_score(self, query: np.ndarray, rows: np.ndarray, top_k: int,
                         exclude: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores and rows of the ``top_k`` best among the shortlisted images and every other
        image of their people (``exclude``: a row to leave out, for the self-check)."""
        identity_of_row, rows_of_identity = self.reader.identity_of_row, self.reader.rows_of_identity
        rows = rows[(rows >= 0) & (rows != exclude)]
        people = dict.fromkeys(identity_of_row[r] for r in rows)
        expanded = np.fromiter((r for person in people for r in rows_of_identity[person] if r != exclude),
                               dtype=np.int64)
        scores = self.exact_rows(expanded) @ query
        order = np.argsort(-scores, kind="stable")[:top_k]
        return scores[order], expanded[order]

    def search(self, queries: np.ndarray, top_k: int = 10, by: SearchBy = "identity",
               index_type: IndexType = "auto") -> list[list[Candidate]]:
        """Rank the gallery for each query embedding; one candidate list per query, best first.

        Every score returned is exact (approximate indexes only choose which images get scored).
        """
        reader = self.reader
        if by not in ("image", "identity"):
            raise GalleryError(f"search by '{by}' is not supported (choose image or identity)")
        if len(reader) == 0:
            raise GalleryError(f"gallery {reader.index_dir} is empty; enrol images before searching")
        if int(top_k) < 1:
            raise GalleryError(f"top_k must be at least 1, got {top_k}")
        queries = _checked_queries(queries, reader.dim)
        excluded = reader.excluded_rows
        if len(excluded) == len(reader):
            raise GalleryError(f"every identity of gallery {reader.index_dir} is redacted; nothing is left to search")
        kind = self.resolve_index_type(index_type)
        n, top_k = len(reader), int(top_k)
        if kind == "flat":
            index = self.flat()
            params = _without_rows(excluded)
            if by == "image":
                scores, rows = index.search(queries, min(top_k, n - len(excluded)), params=params)
                return [self._image_candidates(s, r) for s, r in zip(scores, rows)]
            shortlist = lambda q, depth: index.search(q, depth, params=params)[1]  # noqa: E731
            first_depth = 0
        else:
            index = self.ann.index(kind)
            first_depth = int(self.ann.params[kind].shortlist) * top_k
            shortlist = lambda q, depth: _masked(self.ann.shortlist(kind, index, q, depth), excluded)  # noqa: E731
            if by == "image":
                rows = shortlist(queries, min(n, max(top_k, first_depth)))
                return [self._image_candidates(*self.expand_and_score(q, r, top_k)) for q, r in zip(queries, rows)]
        rows = self._deepened_shortlists(queries, shortlist, first_depth, top_k)
        # In exact order the first top_k people found are the answer; the others are re-ranked.
        limit = 2 * top_k if kind == "flat" else None
        return [self._identity_candidates(q, r, top_k, limit) for q, r in zip(queries, rows)]

    def _deepened_shortlists(self, queries: np.ndarray, shortlist, first_depth: int, top_k: int) -> list:
        """Image shortlists deep enough to hold ``top_k`` distinct people, deepened in batches over the
        queries that still lack them (a person with many close images can fill the first hits alone)."""
        reader = self.reader
        n, people = len(reader), len(reader.identities())
        wanted = min(top_k, people)
        per_identity = -(-n // people)  # mean images per person, rounded up
        depth = min(n, max(first_depth, top_k * max(4, 2 * per_identity)))
        rows = list(shortlist(queries, depth))
        pending = [i for i in range(len(queries)) if self._distinct_identities(rows[i]) < wanted]
        while pending and depth < n:
            depth = min(n, depth * 4)
            deeper = shortlist(queries[pending], depth)
            still = []
            for i, found in zip(pending, deeper):
                grew = (found >= 0).sum() > (rows[i] >= 0).sum()  # an approximate index can run dry
                rows[i] = found
                if grew and self._distinct_identities(found) < wanted:
                    still.append(i)
            pending = still
        return rows

    def _distinct_identities(self, rows: np.ndarray) -> int:
        identity_of_row = self.reader.identity_of_row
        return len({identity_of_row[r] for r in rows if r >= 0})

    def _image_candidates(self, scores: np.ndarray, rows: np.ndarray) -> list[Candidate]:
        reader = self.reader
        out = []
        for score, row in zip(scores, rows):
            if row < 0:
                continue  # approximate indexes may return fewer than k hits
            identity, path = reader.identity_of_row[row], reader.path_of_row[row]
            out.append(Candidate(len(out) + 1, identity, float(score), path,
                                 len(reader.rows_of_identity[identity]), 1, [(path, float(score))]))
        return out

    def _identity_candidates(self, query: np.ndarray, rows: np.ndarray, top_k: int,
                             limit: int | None) -> list[Candidate]:
        reader = self.reader
        rows = rows[rows >= 0]
        found = list(dict.fromkeys(reader.identity_of_row[r] for r in rows))[:limit]
        # Exact scores for every image of these people, in one gather: max aggregation stays exact
        # even when an approximate index missed a person's best image.
        members = [reader.rows_of_identity[identity] for identity in found]
        all_rows = np.fromiter((r for m in members for r in m), dtype=np.int64)
        all_scores = self.exact_rows(all_rows) @ query
        bounds = np.cumsum([0] + [len(m) for m in members])
        owner = np.repeat(np.arange(len(found)), np.diff(bounds))
        matched = Counter(owner[np.argsort(-all_scores, kind="stable")[:top_k]].tolist())
        best = [float(all_scores[lo:hi].max()) for lo, hi in zip(bounds[:-1], bounds[1:])]
        out = []
        for rank, i in enumerate(sorted(range(len(found)), key=lambda i: -best[i])[:top_k], 1):
            scores = all_scores[bounds[i]:bounds[i + 1]]
            order = np.argsort(-scores, kind="stable")
            images = [(reader.path_of_row[members[i][j]], float(scores[j])) for j in order]
            out.append(Candidate(rank, found[i], images[0][1], images[0][0], len(members[i]),
                                 matched[i], images))
        return out
