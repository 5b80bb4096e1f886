"""The ``data.synthetic`` section: procedural hands made on the fly (docs/method.md, "Synthetic hands"),
in one or several hand aspects (docs/method.md, "Aspects of a hand")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .aspects import ASPECTS
from .config_base import MAX_SEED, Section


class SyntheticConfig(Section):
    """Procedural hands made on the fly (docs/method.md, "Synthetic hands")."""

    train_ids: int = Field(100, ge=2, le=100_000)
    test_ids: int = Field(50, ge=2, le=100_000)
    images_per_id: int = Field(8, ge=3, le=1000)
    image_size: int = Field(64, ge=16, le=1024)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    aspects: tuple[Literal["dorsal_r", "dorsal_l", "palmar_r", "palmar_l"], ...] = Field(
        ("dorsal_r",), description="hand aspects drawn per identity (default: right dorsal only, the images "
                                   "HandCLIP always drew); several give one manifest with all of them")

    @field_validator("aspects")
    @classmethod
    def _aspects(cls, value):
        if not value or len(set(value)) != len(value):
            raise ValueError("must name at least one aspect, each once")
        return tuple(sorted(value, key=ASPECTS.index))  # index = manifest camid


__all__ = ["SyntheticConfig"]
