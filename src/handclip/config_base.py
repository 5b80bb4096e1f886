"""What every configuration section shares: the base class that refuses unknown keys and non-finite
numbers, and the bounds on counts and sizes (``handclip.config`` builds the sections on it)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Interpolation = Literal["bilinear", "bicubic"]
# Bounds on counts and sizes: beyond them a run would hang or exhaust memory instead of failing clearly.
MAX_SEED = 2**32 - 1          # what NumPy's legacy seeding accepts; torch and Python take it too
MAX_IMAGE_SIDE = 4096
MAX_RUNS = 1000
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LR = 10.0
MAX_IDS = 1_000_000

# How image features may be computed (runtime.inference_precision; --precision and --engine of the commands
# that encode images): docs/method.md, "Feature precision and engines".
InferencePrecision = Literal["auto", "fp32", "bf16"]
INFERENCE_PRECISIONS = get_args(InferencePrecision)
INFERENCE_ENGINES = ("torch", "onnxruntime", "onnxruntime-int8")
# The commands' --precision and --engine options (argparse keyword arguments per flag).
INFERENCE_OPTIONS = {
    "--precision": dict(choices=INFERENCE_PRECISIONS, default="auto",
                        help="feature precision: auto (default) is bf16 where the hardware multiplies bf16 natively "
                             "(AMX or AVX512-BF16 CPUs, bf16 GPUs), else fp32; the command says which it chose"),
    "--engine": dict(choices=INFERENCE_ENGINES, default="torch",
                     help="torch (default), or ONNX Runtime on the model's exported graph (CPU; needs "
                          "pip install 'handclip[onnx]'); onnxruntime-int8 quantises its weights to int8"),
}


class Section(BaseModel):
    # allow_inf_nan=False: an inf or nan anywhere in a config is refused (an inf lr trains to NaN weights).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class IntervalConfig(Section):
    """Identity-level bootstrap intervals of ``handclip evaluate`` (docs/method.md, "Validating the LR method"):
    ``replicates`` people-resamplings (0: no intervals), at confidence ``level``, drawn with ``seed``."""

    replicates: int = Field(100, ge=0, le=5000)
    level: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
