"""The hooks every HandCLIP training recipe runs with (``train.loop``), each doing one job once.

- ``LrSchedule``: moves an epoch-position schedule (``optim.EpochSchedule``) before each epoch or step.
- ``StepLr``: sets every group's lr from the run's step count before each step (a per-step schedule).
- ``Progress``: a tqdm bar per epoch.
- ``FiniteGuard``: stops on a NaN/inf loss term (checked before the update; on a GPU every 20 steps, to
  avoid a host sync per step) and on a non-finite parameter at the epoch's end.
- ``EpochRecord``: the epoch's line of the run history: stage, epoch, lr, the mean of each loss term, their
  sum, throughput and time.
- ``Validation``: validates every N epochs and at the last one; saves best.pt when the score improves.
- ``Checkpoint``: restores a recipe's ``TrainingState`` and the RNG states on resume; writes last.pt with
  them at every epoch's end.
- ``RunLog``: the epoch's line in train.log, metrics.jsonl and status.json.
- SIGTERM: ``run_folder.TerminationWatch`` is itself a hook (it stops the run before the next step).

``training_hooks`` lists them in the order a HandCLIP stage needs. The training context ``ctx`` they are
given is ``engine.TrainContext`` (model, device, run folder, run state, ``validate`` and ``save``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..errors import TrainingError
from ..runtime import restore_rng_if_resuming, rng_state
from .loop import Hook, TrainLoop

# A GPU runs ahead of the host; reading a loss there waits for it. Checking every 20 steps keeps that rare.
_GPU_CHECK_EVERY = 20


def stability_hint(stage: str) -> str:
    """What to change when ``stage`` diverged (stage 1 has no gradient clipping)."""
    if stage == "stage1":
        return "lower stage1.lr"
    if stage == "joint":
        return "lower stage1.lr and stage2.lr, or set stage2.grad_clip"
    if stage == "single_stage":
        return "lower single_stage.lr"
    return "lower stage2.lr or set stage2.grad_clip"


def check_parameters(model: torch.nn.Module, stage: str, name: str, epoch: int | None) -> None:
    """Refuse (TrainingError) to write checkpoint ``name`` when a parameter of ``model`` is not finite."""
    bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        when = f" after epoch {epoch}" if epoch is not None else ""
        raise TrainingError(f"{stage}: parameter '{bad}' became non-finite{when}; stopped without saving "
                            f"{name}, last good checkpoint kept ({stability_hint(stage)})")


def nonfinite_loss(stage: str, name: str, value: torch.Tensor, epoch: int, step: int) -> Exception:
    """The error for loss term ``name`` of ``stage`` becoming ``value`` at (0-based) ``epoch`` and ``step``."""
    return TrainingError(f"{stage}: loss term '{name}' became {float(value.float().sum())} at epoch {epoch + 1}, "
                         f"step {step + 1}; stopped, last good checkpoint kept ({stability_hint(stage)})")


class TrainingState:
    """What a recipe restores to continue mid-run: its optimizers, schedule, grad scaler, loss modules, by name
    (each with ``state_dict`` / ``load_state_dict``; None entries are left out)."""

    def __init__(self, **parts: Any):
        self.parts = {name: part for name, part in parts.items() if part is not None}

    def state_dict(self, epoch: int) -> dict:
        return {**{name: part.state_dict() for name, part in self.parts.items()}, "epoch": epoch}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            if name in state:
                part.load_state_dict(state[name])


class LrSchedule(Hook):
    """Sets ``schedule``'s position to ``epoch + first`` before each epoch (``every='epoch'``), or to
    ``epoch + first + step / steps`` before each step (``every='step'``)."""

    def __init__(self, schedule, every: str, first: int):
        self.schedule, self.every, self.first = schedule, every, first

    def before_epoch(self, loop: TrainLoop) -> None:
        if self.every == "epoch":
            self.schedule.set_position(loop.epoch + self.first)

    def before_step(self, loop: TrainLoop) -> None:
        if self.every == "step":
            self.schedule.set_position(loop.epoch + self.first + loop.step / loop.steps)


class StepLr(Hook):
    """Sets every parameter group's lr to ``lr_at(step)`` before each step, ``step`` counted from the run's
    first step (``epoch * steps + step``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float]):
        self.optimizer, self.lr_at = optimizer, lr_at

    def before_step(self, loop: TrainLoop) -> None:
        lr = self.lr_at(loop.epoch * loop.steps + loop.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr


class Progress(Hook):
    """A progress bar over each epoch's steps (nothing when ``enabled`` is false)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def before_epoch(self, loop: TrainLoop) -> None:
        if self.enabled:
            self.bar = tqdm(total=loop.steps, desc=f"{loop.name} {loop.epoch + 1}/{loop.epochs}", unit="step",
                            leave=False)

    def after_step(self, loop: TrainLoop) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def after_epoch(self, loop: TrainLoop) -> None:
        self._close()

    def on_interrupt(self, loop: TrainLoop, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class FiniteGuard(Hook):
    """Stops on a NaN/inf loss term, and (given ``model``) on a non-finite parameter at the epoch's end.

    Loss terms are checked after the forward pass and before the update: on the CPU at every step, on a
    GPU every 20 steps and at the epoch's end. ``error(stage, term, value, epoch, step)`` makes the
    exception (default: ``nonfinite_loss``).
    """

    def __init__(self, device: torch.device, model: torch.nn.Module | None = None,
                 error: Callable[[str, str, torch.Tensor, int, int], Exception] = nonfinite_loss):
        self.device = device
        self.model = model
        self.error = error
        self._pending: list[tuple[str, int, int, dict]] = []

    def after_losses(self, loop: TrainLoop) -> None:
        self._pending.append((loop.name, loop.epoch, loop.step, {k: v.detach() for k, v in loop.terms.items()}))
        if self.device.type != "cuda" or len(self._pending) >= _GPU_CHECK_EVERY:
            self.flush()

    def after_epoch(self, loop: TrainLoop) -> None:
        self.flush()
        if self.model is not None:
            # Before any bookkeeping, so status.json and the history still describe the last good epoch.
            check_parameters(self.model, loop.name, "last.pt", loop.epoch + 1)

    def flush(self) -> None:
        """Check every loss term seen since the last check (one host sync for all of them)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        flags = torch.stack([torch.stack([torch.isfinite(v).all() for v in t.values()]).all() for *_, t in pending])
        if bool(flags.all()):
            return
        for stage, epoch, step, terms in pending:
            for name, value in terms.items():
                if not bool(torch.isfinite(value).all()):
                    raise self.error(stage, name, value, epoch, step)


class EpochRecord(Hook):
    """Builds ``loop.record``: stage, epoch, ``lr()``, ``loss_<term>`` (mean over the epoch's steps) for each
    term, ``loss`` (their sum), ``images_per_s`` (with ``count_images(batch)``) and ``time_s``."""

    def __init__(self, lr: Callable[[], float], count_images: Callable[[Any], int] | None = None,
                 world_size: int = 1):
        self.lr = lr
        self.count_images = count_images
        self.world_size = world_size
        self.sums: dict[str, torch.Tensor] = {}
        self.images = 0
        self.started = 0.0

    def before_epoch(self, loop: TrainLoop) -> None:
        self.sums, self.images, self.started = {}, 0, time.perf_counter()

    def after_step(self, loop: TrainLoop) -> None:
        for key, value in loop.terms.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        if self.count_images is not None:
            self.images += self.count_images(loop.batch)

    def after_epoch(self, loop: TrainLoop) -> None:
        elapsed = time.perf_counter() - self.started
        record = {"stage": loop.name, "epoch": loop.epoch + 1, "lr": self.lr()}
        record.update({f"loss_{k}": float(v) / loop.steps for k, v in self.sums.items()})
        record["loss"] = sum(record[f"loss_{k}"] for k in self.sums)
        if self.count_images is not None:
            record["images_per_s"] = round(self.images * self.world_size / max(elapsed, 1e-9), 2)
        record["time_s"] = round(elapsed, 3)
        loop.record.update(record)


class Validation(Hook):
    """Validates every ``every`` epochs and after the last one; keeps best.pt on disk, chosen by the metrics
    ``select`` names in order (default rank-1, then mAP). ``validate``: what gives the metrics (default
    ``ctx.validate``, retrieval on the validation split)."""

    def __init__(self, ctx, every: int, select: tuple[str, ...] = ("rank1", "mAP"),
                 validate: Callable[[], dict] | None = None):
        self.ctx = ctx
        self.every = every
        self.select = tuple(select)
        self.validate = validate or ctx.validate

    def after_epoch(self, loop: TrainLoop) -> None:
        epoch = loop.epoch + 1
        if epoch % self.every and epoch != loop.epochs:
            return
        state = self.ctx.state
        metrics = self.validate()
        loop.record.update({f"val_{k}": v for k, v in metrics.items()})
        score = tuple(metrics.get(k, 0.0) for k in self.select)
        best = state.get("best")
        if best is None or score > tuple(best.get(k, 0.0) for k in self.select):
            state["best"] = {"stage": loop.name, "epoch": epoch, "rank1": metrics.get("rank1", 0.0),
                             "mAP": metrics.get("mAP", 0.0), **dict(zip(self.select, score))}
            # Saved now, to disk: a "best" model kept by reference would really be the last epoch
            # (docs/method.md, "Pitfalls").
            self.ctx.save("best.pt", {"stage": loop.name, "epoch": epoch, "val": metrics}, epoch)
            loop.record["best"] = True


class Checkpoint(Hook):
    """Resume and last.pt: before the run, restores ``training_state`` and the RNG states from ``resume``
    (last.pt's ``resume`` entry plus its RNG states as ``_rng``) and continues at its epoch; after each
    epoch, adds the record to the run history and writes last.pt with everything a resume needs."""

    def __init__(self, ctx, training_state: TrainingState, resume: dict | None):
        self.ctx = ctx
        self.training_state = training_state
        self.resume = resume

    def before_run(self, loop: TrainLoop) -> None:
        if self.resume is not None:
            self.training_state.load_state_dict(self.resume)
            loop.start_epoch = self.resume["epoch"]
            # Last, after every constructor that draws random numbers (those draws were already made
            # before the checkpoint in the original run).
            restore_rng_if_resuming(self.resume)

    def after_epoch(self, loop: TrainLoop) -> None:
        state, epoch = self.ctx.state, loop.epoch + 1
        state["stage"] = loop.name
        state["epoch"] = epoch
        if epoch >= loop.epochs and loop.name not in state["completed"]:
            state["completed"].append(loop.name)
        state["history"].append(loop.record)
        extra = {"run_state": state, "resume": self.training_state.state_dict(epoch), "rng": rng_state()}
        self.ctx.save("last.pt", extra, epoch)


class RunLog(Hook):
    """After each epoch: the record as a train.log line, metrics.jsonl and status.json (rank 0 only)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def after_epoch(self, loop: TrainLoop) -> None:
        ctx, epoch = self.ctx, loop.epoch + 1
        parts = [f"{k}={_log_number(k, v)}" for k, v in loop.record.items() if k not in ("stage", "epoch")]
        ctx.log(f"{loop.name} epoch {epoch}/{loop.epochs}: " + " ".join(parts))
        if ctx.is_main:
            ctx.run.write_metrics(ctx.state["history"])
            ctx.run.flush_log()
            ctx.run.write_status("running", stage=loop.name, epoch=epoch)


def _log_number(key: str, value) -> str:
    """A record's value for train.log: learning rates in scientific notation (5e-6 is not ``0.0000``),
    other floats to 4 decimals."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3e}" if key == "lr" or key.endswith("_lr") else f"{value:.4f}"


def training_hooks(ctx, training_state: TrainingState, resume: dict | None, schedule: Hook,
                   lr: Callable[[], float], validate_every: int,
                   count_images: Callable[[Any], int] | None = None, validation: Validation | None = None) -> list[Hook]:
    """The hooks of a HandCLIP stage, in order (``schedule``: the hook that moves the learning rate, such as
    ``LrSchedule``; ``validation``: a recipe's own ``Validation``, default retrieval every ``validate_every``
    epochs). At an epoch's end: the guard first (nothing is recorded
    from a diverged epoch, and on a GPU its check is the sync that makes the epoch's time true), then the
    record, validation, last.pt, the logs."""
    return [
        ctx.termination,
        schedule,
        Progress(ctx.progress),
        FiniteGuard(ctx.device, ctx.model),
        EpochRecord(lr, count_images, ctx.world_size),
        validation or Validation(ctx, validate_every),
        Checkpoint(ctx, training_state, resume),
        RunLog(ctx),
    ]
