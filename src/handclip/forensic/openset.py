"""Open-set 1:N identification figures (as NIST FRTE reports them).

Each query is searched twice against the run's gallery ranked by identity (an identity's score is its
best-scoring gallery image, as ``handclip search --by identity`` ranks): a mated search with its own
identity enrolled, and a non-mated search with its identity's gallery images removed.

- Identification mode: a mated search succeeds when its own identity is at rank 1 with a score at or
  above the threshold; FNIR is the share that fail. FPIR is the share of non-mated searches whose top
  candidate reaches the threshold. The threshold for a target FPIR is the lowest one that keeps FPIR
  at or below it.
- Investigation mode: no threshold; FNIR at rank R is the share of mated searches whose identity is
  not among the first R candidates.

Ties are counted against the mated identity: a stranger with the same score ranks above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .verification import ForensicMetricError, level_key, needed_pairs

FPIR_LEVELS = (0.1, 0.01, 0.003)
RANKS = (1, 5, 10, 20)


def identity_scores(scores: np.ndarray, gallery_pids) -> tuple[np.ndarray, np.ndarray]:
    """(identities, query x identity matrix of each identity's best image score)."""
    scores = np.asarray(scores, dtype=np.float64)
    pids = np.asarray(gallery_pids)
    order = np.argsort(pids, kind="stable")
    identities, starts = np.unique(pids[order], return_index=True)
    return identities, np.maximum.reduceat(scores[:, order], starts, axis=1)


@dataclass
class SearchOutcomes:
    """Per mated search: the mate's rank and score; per non-mated search: the top candidate's score."""

    mated_rank: np.ndarray
    mated_score: np.ndarray
    nonmated_top: np.ndarray
    num_identities: int = 0

    @property
    def rank1_score(self) -> np.ndarray:
        """A mated search's score for identification mode: its mate's score at rank 1, -inf otherwise."""
        return np.where(self.mated_rank == 1, self.mated_score, -np.inf)


def search_outcomes(scores: np.ndarray, query_pids, gallery_pids) -> SearchOutcomes:
    identities, by_identity = identity_scores(scores, gallery_pids)
    return outcomes_of_identity_scores(by_identity, identities, query_pids)


def outcomes_of_identity_scores(by_identity: np.ndarray, identities, query_pids) -> SearchOutcomes:
    """The searches' outcomes from a query x identity score matrix (``identity_scores``)."""
    identities, query_pids = np.asarray(identities), np.asarray(query_pids)
    own = query_pids[:, None] == identities[None, :]
    enrolled = own.any(axis=1)
    mate_score = np.where(own, by_identity, -np.inf).max(axis=1)
    strangers = np.where(own, -np.inf, by_identity)
    ranks = 1 + (strangers >= mate_score[:, None]).sum(axis=1)
    top_stranger = strangers.max(axis=1) if identities.size else np.full(len(query_pids), -np.inf)
    has_stranger = (~own).any(axis=1)
    return SearchOutcomes(ranks[enrolled].astype(np.int64), mate_score[enrolled], top_stranger[has_stranger],
                          int(identities.size))


def fnir_at_fpir(outcomes: SearchOutcomes, level: float) -> tuple[float, float]:
    """(FNIR, threshold) at the lowest threshold with FPIR <= ``level``; a mated search must score
    above ``threshold`` (strictly) at rank 1 to count as found."""
    tops = np.sort(outcomes.nonmated_top)[::-1]
    allowed = int(math.floor(level * tops.size + 1e-9))  # false positives the level permits
    if allowed >= tops.size:
        return float(np.mean(outcomes.mated_rank > 1)), -math.inf
    threshold = float(tops[allowed])
    return float(np.mean(outcomes.rank1_score <= threshold)), threshold


def fpir_fnir_curve(outcomes: SearchOutcomes) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) at every threshold between distinct non-mated top scores, from strict to lax."""
    tops = np.sort(outcomes.nonmated_top)[::-1]
    found = np.sort(outcomes.rank1_score)
    # Threshold just above each distinct top score: FPIR counts the tops strictly above it.
    distinct = np.unique(tops)[::-1]
    fpir = np.searchsorted(-tops, -distinct, side="left") / tops.size
    fnir = np.searchsorted(found, distinct, side="right") / found.size
    return np.concatenate([fpir, [1.0]]), np.concatenate([fnir, [np.mean(outcomes.mated_rank > 1)]])


@dataclass
class OpenSetResult:
    n_mated_searches: int
    n_nonmated_searches: int
    num_identities: int
    fnir_at_fpir: dict
    thresholds_at_fpir: dict
    fnir_by_rank: dict
    notes: list = field(default_factory=list)
    curve: tuple = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"n_mated_searches": self.n_mated_searches, "n_nonmated_searches": self.n_nonmated_searches,
                "num_identities": self.num_identities, "fnir_at_fpir": dict(self.fnir_at_fpir),
                "thresholds_at_fpir": dict(self.thresholds_at_fpir), "fnir_by_rank": dict(self.fnir_by_rank),
                "notes": list(self.notes)}


def openset_metrics(scores: np.ndarray, query_pids, gallery_pids, levels=FPIR_LEVELS, ranks=RANKS) -> OpenSetResult:
    outcomes = search_outcomes(scores, query_pids, gallery_pids)
    if outcomes.mated_rank.size == 0:
        raise ForensicMetricError("no mated searches (no query's identity is in the gallery)")
    if outcomes.nonmated_top.size == 0:
        raise ForensicMetricError("no non-mated searches (the gallery holds only one identity)")
    at, where, notes = {}, {}, []
    for level in levels:
        key = level_key(level)
        if outcomes.nonmated_top.size < needed_pairs(level):
            at[key] = where[key] = None
            notes.append(f"FNIR at FPIR {key}: too few non-mated searches ({outcomes.nonmated_top.size}; "
                         f"at least {needed_pairs(level)} needed)")
            continue
        at[key], where[key] = fnir_at_fpir(outcomes, level)
    by_rank = {str(r): float(np.mean(outcomes.mated_rank > r)) for r in ranks if r <= max(outcomes.num_identities, 1)}
    return OpenSetResult(int(outcomes.mated_rank.size), int(outcomes.nonmated_top.size), outcomes.num_identities,
                         at, where, by_rank, notes, fpir_fnir_curve(outcomes))
