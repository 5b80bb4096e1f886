"""The laboratory's validation plan (``criteria.yaml``), read into typed objects.

A plan is written before the run and hashed into the report (docs/method.md, "Validating the LR method"). For
each performance characteristic it names a metric (one of ``forensic.validation_metrics.METRICS``), a graph
and a criterion such as ``< 0.3``. ``decide_on`` says what must meet the criterion: the figure on all the data
(``estimate``) or the whole 95% identity-level bootstrap interval (``interval``, the stricter reading).
configs/validation/example_criteria.yaml is a documented example.
"""

from __future__ import annotations

import math
import operator
import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

CHARACTERISTICS = ("accuracy", "discriminating_power", "calibration", "robustness", "coherence", "generalisation")
# Characteristics a run assesses: all of them. Coherence compares the three calibration methods fitted on the
# validation pairs (cross-calibrated by identity); generalisation is the stored calibration on the validation
# population, another than its own (validate.coherence).
ASSESSED = CHARACTERISTICS
GRAPHS = ("tippett", "ece", "pav", "det", "llr_overestimation", "lr_distribution", "none")
_COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_CRITERION = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
# The names the guideline and the issue tracker use, read as the registry's.
ALIASES = {"rmed(lr>100)": "rmed_strong", "rmep(lr<1/100)": "rmep_strong", "rmed(lr>1)": "rmed",
           "rmep(lr<1)": "rmep", "llr overestimation": "llr_overestimation"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Criterion(_Strict):
    """``value <op> threshold``."""

    op: Literal["<", "<=", ">", ">="]
    threshold: float

    def met(self, value: Optional[float]) -> bool:
        return value is not None and math.isfinite(value) and _COMPARISONS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


class PlanRow(_Strict):
    """One row of the plan: a characteristic, the metric that measures it, the graph that shows it, the criterion."""

    characteristic: Literal[CHARACTERISTICS]  # type: ignore[valid-type]
    metric: str
    graph: Literal[GRAPHS] = "none"  # type: ignore[valid-type]
    criterion: Criterion
    note: str = Field("", max_length=500)

    @field_validator("metric", mode="before")
    @classmethod
    def _known_metric(cls, value):
        from ..forensic.validation_metrics import METRICS

        name = ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
        if name not in METRICS:
            raise ValueError(f"unknown metric {value!r} (choose from {', '.join(METRICS)})")
        return name

    @field_validator("criterion", mode="before")
    @classmethod
    def _parse_criterion(cls, value):
        if isinstance(value, (Criterion, dict)):
            return value
        match = _CRITERION.match(str(value))
        if not match:
            raise ValueError(f"a criterion is a comparison and a number, e.g. '< 0.3' (got {value!r})")
        return {"op": match.group(1), "threshold": float(match.group(2))}


class Bootstrap(_Strict):
    replicates: int = Field(200, ge=20, le=5000)
    level: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0)


class ValidationPlan(_Strict):
    """The whole plan: what is validated, for which population and propositions, and the criteria."""

    title: str = Field(..., min_length=1, max_length=300)
    population: str = Field(..., min_length=1, max_length=1000)
    hp: str = Field("the two hand images come from the same person", max_length=500)
    hd: str = Field("the two hand images come from two different people", max_length=500)
    score_kind: Literal["image", "identity"] = "image"
    decide_on: Literal["estimate", "interval"] = "estimate"
    condition_column: Literal["subset", "dataset"] = "subset"
    bootstrap: Bootstrap = Bootstrap()
    criteria: list[PlanRow] = Field(..., min_length=1, max_length=100)

    @field_validator("criteria")
    @classmethod
    def _coherence_on_lrs(cls, rows):
        from .coherence import SCORE_ONLY

        for index, row in enumerate(rows):
            if row.characteristic == "coherence" and row.metric in SCORE_ONLY:
                raise ValueError(f"criteria[{index}]: coherence compares calibration methods, which cannot differ "
                                 f"in {row.metric} (a figure of the scores alone); use an LR figure such as cllr")
        return rows


def _error_line(exc: ValidationError, path: Path) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {message}")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"invalid validation plan {path}: {problems[0]}{more}"


def read_plan(path) -> ValidationPlan:
    """The plan in ``path``, or ConfigError with one line naming the file and the first bad key."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"validation plan {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"validation plan {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"validation plan {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise ConfigError(f"validation plan {path} is not valid YAML: {first}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read validation plan {path}: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"validation plan {path} must hold a mapping (title, population, criteria, ...)")
    try:
        return ValidationPlan.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_error_line(exc, path)) from None


__all__ = ["ALIASES", "ASSESSED", "CHARACTERISTICS", "GRAPHS", "Criterion", "PlanRow", "ValidationPlan", "read_plan"]
