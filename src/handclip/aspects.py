"""The four aspects of a hand (docs/method.md, "Aspects of a hand"): dorsal or palmar, left or right.

One vocabulary for every workflow: the 11k protocol, the synthetic generator, the model's aspect
embeddings (SIE), evaluation across aspects, the gallery, calibration per aspect pair and search.
An aspect's index in ``ASPECTS`` is its manifest ``camid`` and its row of the model's aspect embedding.

Mirroring a photo turns a left hand into something that looks like a right hand seen from the same
side (and back), so ``mirrored`` swaps the side and keeps dorsal/palmar.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from .errors import DataError

# Order matters: index = manifest camid = aspect-embedding row (11k's own order of the four aspects).
ASPECTS = ("dorsal_r", "dorsal_l", "palmar_r", "palmar_l")
ASPECT_NAMES = {"dorsal_r": "dorsal right", "dorsal_l": "dorsal left", "palmar_r": "palmar right",
                "palmar_l": "palmar left"}
_BY_NAME = {name: key for key, name in ASPECT_NAMES.items()}
_MIRROR = {"dorsal_r": "dorsal_l", "dorsal_l": "dorsal_r", "palmar_r": "palmar_l", "palmar_l": "palmar_r"}


def normalise_aspect(aspect, what: str = "aspect") -> str:
    """'dorsal_r', 'dorsal right', 'Dorsal-Right' -> 'dorsal_r'; DataError naming ``what`` otherwise."""
    text = str(aspect).strip().lower()
    if text in ASPECT_NAMES:
        return text
    spaced = re.sub(r"[\s_\-]+", " ", text)
    if spaced in _BY_NAME:
        return _BY_NAME[spaced]
    raise DataError(f"unknown {what} {str(aspect)[:40]!r} (expected one of {', '.join(ASPECTS)})")


def aspect_index(aspect: str) -> int:
    return ASPECTS.index(normalise_aspect(aspect))


def mirrored(aspect: str) -> str:
    """The aspect a mirrored photo of ``aspect`` looks like: left and right swap, dorsal/palmar stay."""
    return _MIRROR[normalise_aspect(aspect)]


def is_left(aspect: str) -> bool:
    return normalise_aspect(aspect).endswith("_l")


def is_palmar(aspect: str) -> bool:
    return normalise_aspect(aspect).startswith("palmar")


def parse_aspects(text, what: str = "--aspects") -> tuple[str, ...]:
    """A comma-separated list (or an iterable) of aspects, each once, in ``ASPECTS`` order."""
    parts = [p for p in (text.split(",") if isinstance(text, str) else list(text)) if str(p).strip()]
    if not parts:
        raise DataError(f"{what} names no aspect (expected some of {', '.join(ASPECTS)})")
    chosen = {normalise_aspect(p, f"aspect in {what}") for p in parts}
    return tuple(a for a in ASPECTS if a in chosen)


def record_aspect(record) -> Optional[str]:
    """The aspect of a manifest record: its ``subset`` when that names an aspect (the 11k and synthetic
    protocols write it there, and the aspect's index as ``camid``), else None (no aspect known)."""
    subset = getattr(record, "subset", "")
    return subset if subset in ASPECT_NAMES else None


def aspects_of(records: Iterable) -> list[str]:
    """The distinct aspects of ``records`` in ``ASPECTS`` order (records without one are left out)."""
    found = {record_aspect(r) for r in records}
    return [a for a in ASPECTS if a in found]


def pair_key(query_aspect: str, gallery_aspect: str, mirrored: bool = False) -> str:
    """How a pair of aspects is named in files and reports: ``dorsal_l->dorsal_r``, or
    ``dorsal_l(mirrored)->dorsal_r`` when the query is mirrored left-right before the comparison."""
    return f"{normalise_aspect(query_aspect)}{'(mirrored)' if mirrored else ''}->{normalise_aspect(gallery_aspect)}"


__all__ = ["ASPECTS", "ASPECT_NAMES", "aspect_index", "aspects_of", "is_left", "is_palmar", "mirrored",
           "normalise_aspect", "pair_key", "parse_aspects", "record_aspect"]
