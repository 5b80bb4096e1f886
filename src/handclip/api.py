"""The Python API: what the ``handclip train`` and ``handclip demo`` commands call, usable from a notebook.

    from handclip import api
    result = api.train("configs/11k_dorsal_r_vitb16.yaml", run_dir="runs/dr")
    result.best_checkpoint, result.history[-1]
    api.train(resume="runs/dr")          # continue a killed run
    api.demo("demo_out")                 # synthetic hands, tiny model, before/after table
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .train.engine import STAGES, RunResult
from .train.engine import train as _train

__all__ = ["train", "demo", "RunResult"]


def train(config=None, run_dir: str | Path | None = None, stages: Sequence[str] = STAGES, *,
          resume: str | Path | None = None, device: str | None = None, progress: bool = False) -> RunResult:
    """Train HandCLIP: stage 1 (prompts) then stage 2 (image encoder), or one of them, or a joint run.

    ``config``: a ``handclip.config.Config``, a YAML path or a dict. ``run_dir``: the run folder
    (default ``<output_dir>/<name>-<UTC time>``). ``resume``: a run folder to continue instead.
    Returns ``RunResult(run_dir, best_checkpoint, last_checkpoint, history, best)``.
    """
    return _train(config, run_dir=run_dir, stages=stages, resume=resume, device=device, progress=progress)


def demo(out_dir: str | Path = "demo_out", config=None, progress: bool = True, runs: int | None = None):
    """Synthetic hands, tiny model, random init: evaluate, train both stages, evaluate again.

    Writes ``<out_dir>/metrics.json`` and returns it as a dict (see ``handclip.train.demo``).
    """
    from .train.demo import run_demo

    return run_demo(out_dir, config=config, progress=progress, runs=runs)
