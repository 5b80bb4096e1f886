"""The one training loop: epochs of steps, with hooks called around them.

A recipe (stage 1, stage 2, the joint run) builds its optimizer, schedule and data, defines what one
step computes, and hands those to ``TrainLoop``. Everything a recipe does not own runs once, as a hook
(``train.hooks``): the learning-rate schedule, the NaN/inf guard, SIGTERM, the epoch's record,
validation and the best checkpoint, last.pt and resume, the run folder's logs, the progress bar.

One step is split in two so that a hook can look at the loss terms before they move the weights::

    terms = losses(batch)      # the recipe: forward pass and the weighted loss terms (a dict of tensors)
    after_losses hooks         # e.g. the NaN/inf guard
    update(terms)              # the recipe: backward pass and optimizer step
    after_step hooks           # e.g. the epoch's loss sums, the progress bar

Hook points, in the order the loop calls them::

    before_run
    for each epoch from start_epoch:
        model.train(); before_epoch; batches = batches(epoch)
        for each batch: before_step, losses, after_losses, update, after_step
        after_epoch
    after_run
    on_interrupt(exc)          # instead of the rest, when anything raises (then the exception goes on)

Hooks run in list order at every point. They read and write the loop's public attributes: ``name``,
``epochs``, ``steps``, ``start_epoch`` (a resume hook moves it in ``before_run``), ``epoch`` and ``step``
(0-based), ``batch``, ``terms`` and ``record`` (the epoch's line of the run history, built by the hooks
in ``after_epoch``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch


class Hook:
    """A hook does nothing at any point it does not override."""

    def before_run(self, loop: "TrainLoop") -> None:
        pass

    def before_epoch(self, loop: "TrainLoop") -> None:
        pass

    def before_step(self, loop: "TrainLoop") -> None:
        pass

    def after_losses(self, loop: "TrainLoop") -> None:
        pass

    def after_step(self, loop: "TrainLoop") -> None:
        pass

    def after_epoch(self, loop: "TrainLoop") -> None:
        pass

    def after_run(self, loop: "TrainLoop") -> None:
        pass

    def on_interrupt(self, loop: "TrainLoop", exc: BaseException) -> None:
        pass


Batches = Callable[[int], Iterable[Any]]
Losses = Callable[[Any], "dict[str, torch.Tensor]"]
Update = Callable[["dict[str, torch.Tensor]"], None]


class TrainLoop:
    """Runs ``epochs`` epochs of ``steps`` steps each (see the module docstring for the order of the hooks).

    ``steps`` is the number of steps per epoch as the recipe counts it, for per-step schedules and the
    epoch's mean losses; ``model`` is put in training mode at every epoch's start (validation leaves it
    in eval mode).
    """

    def __init__(self, name: str, epochs: int, steps: int, model: torch.nn.Module | None = None,
                 hooks: Sequence[Hook] = ()):
        self.name = name
        self.epochs = int(epochs)
        self.steps = int(steps)
        self.model = model
        self.hooks = list(hooks)
        self.start_epoch = 0
        self.epoch = 0
        self.step = 0
        self.batch: Any = None
        self.terms: dict[str, torch.Tensor] = {}
        self.record: dict = {}

    def run(self, batches: Batches, losses: Losses, update: Update) -> None:
        """Train: ``batches(epoch)`` gives an epoch's batches, ``losses(batch)`` one step's loss terms,
        ``update(terms)`` takes the optimizer step on them."""
        try:
            self._call("before_run")
            for epoch in range(self.start_epoch, self.epochs):
                self.epoch = epoch
                self._run_epoch(batches, losses, update)
            self._call("after_run")
        except BaseException as exc:
            for hook in self.hooks:
                hook.on_interrupt(self, exc)
            raise

    def _run_epoch(self, batches: Batches, losses: Losses, update: Update) -> None:
        if self.model is not None:
            self.model.train()
        self.record = {}
        self._call("before_epoch")
        for step, batch in enumerate(batches(self.epoch)):
            self.step, self.batch = step, batch
            self._call("before_step")
            self.terms = losses(batch)
            self._call("after_losses")
            update(self.terms)
            self._call("after_step")
        self._call("after_epoch")

    def _call(self, point: str) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self)
