"""The one training loop and its hooks: the order hooks are called in, the NaN/inf guard's GPU batching,
and a recipe the loop was not written for (one stage, Adam, warm-up + multi-step, batches of random
images) that gets checkpoints, validation, logs and a bit-identical resume from the same hooks."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader
from training_helpers import StopBefore, base_config, make_context, tiny_manifest  # noqa: F401 - fixture

from handclip.errors import TrainingError
from handclip.train.loop import Hook, TrainLoop

POINTS = ("before_run", "before_epoch", "before_step", "after_losses", "after_step", "after_epoch", "after_run")


class Recorder(Hook):
    """Records every call as (point, epoch, step)."""

    def __init__(self, calls: list):
        self.calls = calls
        for point in POINTS:
            setattr(self, point, self._recording(point))

    def _recording(self, point):
        return lambda loop: self.calls.append((point, loop.epoch, loop.step))

    def on_interrupt(self, loop, exc):
        self.calls.append(("on_interrupt", type(exc).__name__))


def test_hooks_are_called_in_order_around_losses_and_update():
    calls = []
    hooks = [Recorder(calls)]

    def losses(batch):
        calls.append(("losses", batch))
        return {"x": torch.tensor(float(batch))}

    def update(terms):
        calls.append(("update", float(terms["x"])))

    loop = TrainLoop("demo", epochs=2, steps=2, hooks=hooks)
    loop.run(lambda epoch: [10 * epoch, 10 * epoch + 1], losses, update)
    step = [("before_step",), ("losses",), ("after_losses",), ("update",), ("after_step",)]
    expected = [("before_run",)]
    for epoch in range(2):
        expected.append(("before_epoch",))
        expected += step * 2
        expected.append(("after_epoch",))
    expected.append(("after_run",))
    assert [c[:1] for c in calls] == expected
    assert [c for c in calls if c[0] == "losses"] == [("losses", 0), ("losses", 1), ("losses", 10), ("losses", 11)]
    assert ("after_epoch", 1, 1) in calls  # epoch and step as the hooks see them


def test_an_error_reaches_on_interrupt_of_every_hook_and_is_raised():
    calls, others = [], []

    def losses(batch):
        if batch == 3:
            raise KeyboardInterrupt
        return {}

    loop = TrainLoop("demo", epochs=3, steps=2, hooks=[Recorder(calls), Recorder(others)])
    with pytest.raises(KeyboardInterrupt):
        loop.run(lambda epoch: [2 * epoch, 2 * epoch + 1], losses, lambda terms: None)
    assert calls[-1] == ("on_interrupt", "KeyboardInterrupt") and others[-1] == calls[-1]
    assert ("after_run", 1, 1) not in calls and [c for c in calls if c[0] == "after_epoch"] == [("after_epoch", 0, 1)]


def test_a_hook_can_move_the_start_epoch_before_the_run():
    class Resume(Hook):
        def before_run(self, loop):
            loop.start_epoch = 2

    seen = []
    TrainLoop("demo", epochs=4, steps=1, hooks=[Resume()]).run(lambda epoch: [epoch], seen.append, lambda t: None)
    assert seen == [2, 3]


@pytest.mark.parametrize("device,updates", [("cpu", 3), ("cuda", 19)])
def test_guard_checks_every_step_on_cpu_and_every_20_steps_on_a_gpu(device, updates):
    from handclip.train.hooks import FiniteGuard

    done = []

    def losses(batch):
        return {"id": torch.tensor(float("nan") if batch == 3 else 1.0)}

    loop = TrainLoop("stage2", epochs=1, steps=30, hooks=[FiniteGuard(torch.device(device))])
    with pytest.raises(TrainingError) as info:
        loop.run(lambda epoch: range(30), losses, done.append)
    # The bad term is named with its own epoch and step, however late the check came.
    assert "'id'" in str(info.value) and "epoch 1, step 4" in str(info.value)
    # On the CPU the bad step never updates the weights; on a GPU the steps run on until the 20th term
    # is checked (no host sync per step), still before that step's update.
    assert len(done) == updates


def test_guard_flushes_at_the_end_of_an_epoch_on_a_gpu():
    from handclip.train.hooks import FiniteGuard

    loop = TrainLoop("stage1", epochs=2, steps=3, hooks=[FiniteGuard(torch.device("cuda"))])
    with pytest.raises(TrainingError, match="stage1: loss term 'i2t'.*epoch 1, step 3.*stage1.lr"):
        loop.run(lambda epoch: range(3), lambda b: {"i2t": torch.tensor(float("inf") if b == 2 else 0.5)},
                 lambda terms: None)


# ------------------------------------------------------------- a fourth recipe, written on the same loop
def random_batches_recipe(ctx, resume=None, epochs=3):
    """One stage: Adam on the image encoder and its heads, warm-up + multi-step lr moved every epoch,
    identity cross-entropy on batches of 8 random training images (a shuffled loader, not P x K)."""
    from handclip.data.dataset import ManifestDataset
    from handclip.data.transforms import build_transforms
    from handclip.train.hooks import LrSchedule, TrainingState, training_hooks
    from handclip.train.optim import WarmupMultiStepLR

    model = ctx.model
    params = [p for n, p in model.named_parameters() if not n.startswith(("text_encoder.", "prompt_learner."))]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    schedule = WarmupMultiStepLR(optimizer, milestones=[2], gamma=0.1, warmup_factor=0.1, warmup_epochs=1)
    dataset = ManifestDataset(ctx.train_records, build_transforms(ctx.config.data, train=True), ctx.label_map)
    loader = DataLoader(dataset, batch_size=8, shuffle=True)  # its order comes from the global torch RNG

    def losses(batch):
        out = model(batch[0], batch[1])
        return {"id": torch.nn.functional.cross_entropy(out.logits[0], batch[1])}

    def update(terms):
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()

    hooks = training_hooks(ctx, TrainingState(optimizer=optimizer, schedule=schedule), resume,
                           schedule=LrSchedule(schedule, "epoch", 0), lr=lambda: optimizer.param_groups[0]["lr"],
                           validate_every=2, count_images=lambda batch: len(batch[1]))
    TrainLoop("random_batches", epochs, len(loader), model, hooks).run(lambda epoch: loader, losses, update)


def test_a_new_recipe_gets_checkpoints_validation_logs_and_a_bit_identical_resume(tiny_manifest, tmp_path,
                                                                                  monkeypatch):
    from handclip.model.checkpoint import load_checkpoint
    from handclip.train import hooks

    config = base_config(tiny_manifest)
    full = make_context(config, run_dir=tmp_path / "full")
    random_batches_recipe(full)
    history = full.state["history"]
    assert [(r["stage"], r["epoch"]) for r in history] == [("random_batches", e) for e in (1, 2, 3)]
    assert [r["lr"] for r in history] == pytest.approx([1e-4, 1e-3, 1e-4])  # warm-up, full, after the milestone
    assert "val_rank1" in history[1] and "val_rank1" in history[2] and "val_rank1" not in history[0]
    assert all(r["images_per_s"] > 0 and r["loss"] == r["loss_id"] for r in history)
    assert full.state["completed"] == ["random_batches"] and (tmp_path / "full" / "best.pt").is_file()
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    assert json.loads((tmp_path / "full" / "status.json").read_text())["status"] == "running"  # the engine ends runs

    # Stopped before its third epoch, then resumed from last.pt in a fresh context: the same model.
    cut = make_context(config, run_dir=tmp_path / "cut")
    real = hooks.training_hooks
    monkeypatch.setattr(hooks, "training_hooks", lambda *a, **k: real(*a, **k) + [StopBefore(2)])
    with pytest.raises(KeyboardInterrupt):
        random_batches_recipe(cut)
    monkeypatch.setattr(hooks, "training_hooks", real)
    model, _, extra = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert extra["resume"]["epoch"] == 2
    resumed = make_context(config, run_dir=tmp_path / "cut")
    resumed.model, resumed.state = model, extra["run_state"]
    torch.manual_seed(12345)  # whatever the process drew since: the hook restores the checkpoint's RNG states
    random_batches_recipe(resumed, resume=dict(extra["resume"], _rng=extra["rng"]))
    ours, theirs = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "resumed parameters differ"
    strip = [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in history]
    assert [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")}
            for r in resumed.state["history"]] == strip
