"""Searching across hand aspects (docs/method.md, "Aspects of a hand").

A search may state the query's aspect and mirror the query left-right. The gallery images compared are
those of one aspect: the one asked for, else the aspect the (mirrored) query shows; a gallery enrolled
without aspects is searched whole. With a calibration, the scores are weighed by the map of exactly that
pair (``ScoreCalibration.pair_for``): a pair the calibration was not fitted on is refused, never weighed
with another pair's map. A model with an aspect head also says which aspect each query looks like, so a
wrongly stated aspect is noticed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..aspects import mirrored as mirrored_aspect
from ..aspects import normalise_aspect, pair_key
from ..errors import DataError
from .results import Candidate

# The aspect head must give another aspect at least this probability before a search warns.
ASPECT_WARNING_PROBABILITY = 0.5


@dataclass(frozen=True)
class AspectRequest:
    """What a search compares: the query's stated aspect, whether it is mirrored, the gallery aspect
    searched (None: every row), and the calibration pair that weighs the scores (None: the file's own maps)."""

    query: str | None = None
    gallery: str | None = None
    mirrored: bool = False
    pair: str | None = None

    @property
    def stated(self) -> bool:
        return self.query is not None or self.gallery is not None or self.mirrored

    def as_dict(self) -> dict:
        compared = pair_key(self.query, self.gallery, self.mirrored) if self.query and self.gallery else None
        return {"query": self.query, "gallery": self.gallery, "mirrored": self.mirrored, "compared": compared,
                "calibration_pair": self.pair}

    def describe(self) -> str:
        query = self.query or "unstated"
        return (f"query aspect {query}{' (mirrored)' if self.mirrored else ''} against gallery images of "
                f"{self.gallery or 'every aspect'}")


def resolve_aspects(reader, calibration, aspect: str | None = None, mirror: bool = False,
                    gallery_aspect: str | None = None) -> AspectRequest:
    """The comparison a search makes, checked against the gallery and the calibration before any encoding."""
    query = normalise_aspect(aspect, "query aspect") if aspect else None
    stored = {a for a in reader.aspect_of_row if a is not None}
    if gallery_aspect:
        gallery = normalise_aspect(gallery_aspect, "gallery aspect")
        if gallery not in stored:
            raise DataError(f"gallery {reader.index_dir} holds no images of aspect {gallery} (it holds "
                            f"{', '.join(sorted(stored)) or 'no aspect labels'}; enrol with --aspect)")
    elif query is not None and stored:
        gallery = mirrored_aspect(query) if mirror else query
        if gallery not in stored:
            raise DataError(f"gallery {reader.index_dir} holds no images of aspect {gallery}, the one this query "
                            f"{'shows once mirrored' if mirror else 'shows'} (it holds {', '.join(sorted(stored))}); "
                            f"choose the gallery's aspect")
    else:
        gallery = None
    pair = None
    if calibration is not None:
        pair = calibration.calibration.pair_for(query, gallery, mirror)
    return AspectRequest(query, gallery, bool(mirror), pair)


def encode_queries(encoder, paths, request: AspectRequest, batch_size: int) -> np.ndarray:
    """The queries' features: mirrored when asked, labelled with the stated aspect for a model that reads it."""
    if encoder.reads_aspects and request.query is None:
        raise DataError("this model reads each photo's aspect (model.sie: aspect): state the query's aspect")
    aspects = [request.query] * len(paths) if encoder.reads_aspects else None
    return encoder.features(paths, batch_size=batch_size, aspects=aspects, mirror=request.mirrored)


def aspect_checks(encoder, paths, request: AspectRequest, batch_size: int) -> list[dict | None]:
    """Per query, what the model's aspect head reads (None without a head or a stated aspect)."""
    if request.query is None or getattr(encoder.model, "aspect_head", None) is None:
        return [None] * len(paths)
    checks = []
    for predicted, probability in encoder.predict_aspects(paths, batch_size=batch_size):
        doubt = predicted != request.query and probability >= ASPECT_WARNING_PROBABILITY
        warning = (f"the aspect head reads this photo as {predicted} (probability {probability:.2f}), not the "
                   f"stated {request.query}: check the aspect before relying on the result") if doubt else None
        checks.append({"stated": request.query, "predicted": predicted, "probability": round(probability, 4),
                       "warning": warning})
    return checks


def search_gallery(reader, vectors: np.ndarray, request: AspectRequest, top_k: int, by: str, index_type: str):
    """(candidate lists, index type used): the whole gallery through its indexes, or, for one gallery aspect,
    an exact scan of that aspect's rows."""
    if request.gallery is None:
        return reader.search(vectors, top_k=top_k, by=by, index_type=index_type), reader.resolve_index_type(index_type)
    rows = np.flatnonzero(np.array([a == request.gallery for a in reader.aspect_of_row]))
    rows = rows[~np.isin(rows, reader.excluded_rows)]  # redacted identities are never searched
    scores = np.asarray(vectors, np.float32) @ reader.indexes.exact_rows(rows).T
    build = _image_candidates if by == "image" else _identity_candidates
    return [build(reader, rows, s, int(top_k)) for s in scores], "flat"


def _image_candidates(reader, rows: np.ndarray, scores: np.ndarray, top_k: int) -> list[Candidate]:
    per_person = Counter(reader.identity_of_row[r] for r in rows)
    order = np.argsort(-scores, kind="stable")[:top_k]
    out = []
    for rank, i in enumerate(order, 1):
        identity, path = reader.identity_of_row[rows[i]], reader.path_of_row[rows[i]]
        out.append(Candidate(rank, identity, float(scores[i]), path, per_person[identity], 1, [(path, float(scores[i]))]))
    return out


def _identity_candidates(reader, rows: np.ndarray, scores: np.ndarray, top_k: int) -> list[Candidate]:
    """People ranked by their best image of the searched aspect (max aggregation, as the whole-gallery search)."""
    members: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        members.setdefault(reader.identity_of_row[row], []).append(i)
    top_images = Counter(reader.identity_of_row[rows[i]] for i in np.argsort(-scores, kind="stable")[:top_k])
    best = sorted(members, key=lambda person: -float(scores[members[person]].max()))[:top_k]
    out = []
    for rank, person in enumerate(best, 1):
        own = sorted(members[person], key=lambda i: -float(scores[i]))
        images = [(reader.path_of_row[rows[i]], float(scores[i])) for i in own]
        out.append(Candidate(rank, person, images[0][1], images[0][0], len(own), top_images[person], images))
    return out


__all__ = ["AspectRequest", "aspect_checks", "encode_queries", "resolve_aspects", "search_gallery"]
