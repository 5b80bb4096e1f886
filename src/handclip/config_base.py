"""What every configuration section shares: the base class that refuses unknown keys and non-finite
numbers, and the bounds on counts and sizes (``handclip.config`` builds the sections on it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Interpolation = Literal["bilinear", "bicubic"]
# Bounds on counts and sizes: beyond them a run would hang or exhaust memory instead of failing clearly.
MAX_SEED = 2**32 - 1          # what NumPy's legacy seeding accepts; torch and Python take it too
MAX_IMAGE_SIDE = 4096
MAX_RUNS = 1000
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LR = 10.0
MAX_IDS = 1_000_000


class Section(BaseModel):
    # allow_inf_nan=False: an inf or nan anywhere in a config is refused (an inf lr trains to NaN weights).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
