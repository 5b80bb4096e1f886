"""Hostile or broken input to the non-gallery commands: one line, exit 2, nothing half-written, no run folder."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from training_helpers import base_config, make_context, tiny_manifest  # noqa: F401 - fixture

from handclip import atomic, cli
from handclip.data.manifest import Manifest
from handclip.errors import HandCLIPError, TrainingError


def _one_line(err: str) -> str:
    # Warnings a command gave before it failed (random weights, a small val split) are lines of their own.
    lines = [line for line in err.strip().splitlines() if not line.startswith("handclip: warning: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


def _config_file(tmp_path, manifest, **sections):
    path = tmp_path / "tiny.yaml"
    path.write_text(base_config(manifest, **sections).to_yaml())
    return path


# ---------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override, needle", [
    ("stage1.lr=.inf", "stage1.lr"),
    ("stage2.lr=.nan", "stage2.lr"),
    ("stage1.lr=1e38", "stage1.lr"),
    ("seed=-5", "seed"),
    ("seed=99999999999999999999", "seed"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.pixel_std=[0,0,0]", "data.pixel_std"),
    ("data.image_size=[100000,100000]", "data.image_size"),
    ("data.runs=99999999999999999999", "data.runs"),
    ("name=../../escape", "name"),
    ("stage2.epochs=10000000000", "stage2.epochs"),
])
def test_bad_config_value_is_one_line_and_leaves_no_run_folder(tiny_manifest, tmp_path, capsys, override, needle):
    cfg = _config_file(tmp_path, tiny_manifest)
    out_dir = tmp_path / "runs"
    code = cli.main(["train", "--config", str(cfg), "--set", override, "--set", f"output_dir={out_dir}",
                     "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert needle in line and str(cfg) in line
    assert not out_dir.exists()


def test_yaml_alias_bomb_is_refused_fast_with_a_short_message(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("name: *a9")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines))
    assert len(bomb.read_bytes()) < 1500
    start = time.perf_counter()
    code = cli.main(["train", "--config", str(bomb), "--out", str(tmp_path / "run")])
    elapsed = time.perf_counter() - start
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "alias" in line and len(line) < 400
    assert elapsed < 5


def test_alias_bomb_in_an_override_and_huge_echoed_values_are_capped(tmp_path, capsys):
    bomb = "&a [" + ",".join(["1"] * 50) + "]"
    value = "[" + ",".join(["*a"] * 50) + "]"
    code = cli.main(["train", "--set", f"stage2.milestones=[{bomb}, {value}, {value}, {value}]",
                     "--out", str(tmp_path / "r")])
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert len(line) < 600
    code = cli.main(["train", "--set", "name=" + "x" * 100_000, "--out", str(tmp_path / "r")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "name" in line and len(line) < 600


def test_non_utf8_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert cli.main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(cfg) in line and "UTF-8" in line


# ---------------------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize("argv, command", [
    (["train", "--bogus"], "train"),
    (["evaluate", "--manifest", "m.csv", "--batch-size", "x"], "evaluate"),
    (["prepare"], "prepare"),
    (["nonsense"], None),
])
def test_argument_errors_are_one_line_with_a_help_hint(capsys, argv, command):
    assert cli.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    hint = f"see handclip {command} --help" if command else "see handclip --help"
    assert hint in line and "usage:" not in line


def test_version_is_printed_and_exits_zero(capsys):
    import handclip

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"handclip {handclip.__version__}"


def test_broken_pipe_exits_quietly(monkeypatch, capsys):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    code = cli.main(["prepare", "synthetic", "--root", "unused", "--runs", "0"])
    assert code == 2  # a user error still reports on stderr
    assert "runs" in _one_line(capsys.readouterr().err)
    monkeypatch.setattr(cli, "build_parser", lambda: _PrintingParser())
    code = cli.main(["anything"])
    assert code == 141
    assert capsys.readouterr().err == ""


class _PrintingParser:
    def parse_args(self, argv):
        class Args:
            @staticmethod
            def _run(args):
                print("a line for a closed pipe")
                return 0
        return Args()


# ---------------------------------------------------------------------------------------------- prepare bounds
@pytest.mark.parametrize("extra, needle", [
    (["--runs", "99999999999999999999"], "runs"),
    (["--size", "99999999"], "--size"),
    (["--train-ids", "100000", "--images-per-id", "1000"], "images"),
    (["--seed", "-1"], "--seed"),
])
def test_prepare_bounds_every_count_and_size(tmp_path, capsys, extra, needle):
    start = time.perf_counter()
    assert cli.main(["prepare", "synthetic", "--root", str(tmp_path / "syn"), *extra]) == 2
    assert time.perf_counter() - start < 10
    assert needle in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "syn").exists()


def test_prepare_out_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file.csv"
    blocker.write_text("not a folder\n")
    code = cli.main(["prepare", "synthetic", "--root", str(tmp_path / "syn"), "--train-ids", "4", "--test-ids", "2",
                     "--images-per-id", "3", "--size", "16", "--runs", "1", "--out", str(blocker / "x.csv")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and str(blocker) in line
    assert blocker.read_text() == "not a folder\n"


def test_read_only_file_system_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    out = tmp_path / "m.csv"
    code = cli.main(["prepare", "synthetic", "--root", str(tmp_path / "syn"), "--train-ids", "4", "--test-ids", "2",
                     "--images-per-id", "3", "--size", "16", "--runs", "1", "--out", str(out), "--no-summary"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "read-only file system" in line


# ---------------------------------------------------------------------------------------------- full disk
class _FullDisk(io.FileIO):
    """A file on a disk with 4 KB left."""

    budget = 4096

    def write(self, data):
        size = len(memoryview(data))
        if size > _FullDisk.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        _FullDisk.budget -= size
        return super().write(data)


def test_full_disk_during_torch_save_is_the_documented_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    torch.save({"old": torch.ones(3)}, target)
    before = target.read_bytes()
    monkeypatch.setattr(atomic.io, "FileIO", _FullDisk)
    _FullDisk.budget = 4096
    with pytest.raises(HandCLIPError) as info:
        with atomic.atomic_open(target, "wb") as handle:
            torch.save({"new": torch.zeros(100_000)}, handle)
    assert str(info.value) == f"no space left on device while writing {target}; the previous file was kept"
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_full_disk_in_training_checkpoint_is_one_line(tiny_manifest, tmp_path, capsys, monkeypatch):
    from handclip.model import checkpoint

    real_save = checkpoint.save_checkpoint

    def save_on_full_disk(path, *args, **kwargs):
        monkeypatch.setattr(atomic.io, "FileIO", _FullDisk)
        _FullDisk.budget = 4096
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr("handclip.train.engine.save_checkpoint", save_on_full_disk)
    cfg = _config_file(tmp_path, tiny_manifest)
    run = tmp_path / "run"
    code = cli.main(["train", "--config", str(cfg), "--set", "stage1.epochs=1", "--stage", "stage1",
                     "--out", str(run), "--no-progress"])
    monkeypatch.setattr(atomic.io, "FileIO", io.FileIO)
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "no space left on device while writing" in line and str(run / "best.pt") in line
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_unwritable_feature_cache_warns_and_training_goes_on(tiny_manifest, tmp_path, capsys):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    cfg = _config_file(tmp_path, tiny_manifest, data={"cache_dir": str(blocker / "cache"), "decode_cache": True},
                       stage1={"epochs": 1, "cache_features": True})
    run = tmp_path / "run"
    code = cli.main(["train", "--config", str(cfg), "--stage", "stage1", "--out", str(run), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "cannot write the stage-1 feature cache" in (run / "train.log").read_text()
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------------------------------------- run folders
def test_run_folder_claim_race_has_exactly_one_winner():
    from handclip.errors import ConfigError
    from handclip.train.run_folder import claim_run_folder

    import tempfile

    for trial in range(30):
        root = Path(tempfile.mkdtemp(prefix="claim-race-"))
        barrier = threading.Barrier(4)
        same, unique, errors = [], [], []

        def claim(target, results, is_unique):
            barrier.wait()
            try:
                results.append(claim_run_folder(target, unique=is_unique))
            except ConfigError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=claim, args=(root / "explicit", same, False)) for _ in range(2)]
        threads += [threading.Thread(target=claim, args=(root / "stamped", unique, True)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(same) == 1 and len(errors) == 1 and "already taken" in errors[0], (trial, same, errors)
        assert len(unique) == 2 and len(set(unique)) == 2, (trial, unique)


def test_two_trainings_never_share_a_run_folder(tiny_manifest, tmp_path, capsys, monkeypatch):
    # Two trainings started in the same second get the same timestamped default name.
    monkeypatch.setattr("handclip.train.engine._default_run_dir", lambda config: tmp_path / "runs" / "same-second")
    cfg = _config_file(tmp_path, tiny_manifest, stage1={"epochs": 1})
    for _ in range(2):
        assert cli.main(["train", "--config", str(cfg), "--stage", "stage1", "--no-progress"]) == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["same-second", "same-second-2"]
    assert cli.main(["train", "--config", str(cfg), "--stage", "stage1", "--no-progress",
                     "--out", str(tmp_path / "runs" / "same-second")]) == 2
    assert "--resume" in capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------- non-finite
def test_non_finite_parameters_are_never_saved_and_the_hint_names_the_stage(tiny_manifest, tmp_path):
    from handclip.train.hooks import TrainingState, training_hooks
    from handclip.train.loop import Hook, TrainLoop

    ctx = make_context(base_config(tiny_manifest), run_dir=tmp_path)
    ctx.current_stage = "stage1"

    def stage1_loop(steps):
        hooks = training_hooks(ctx, TrainingState(), None, schedule=Hook(), lr=lambda: 0.0, validate_every=99)
        return TrainLoop("stage1", 1, steps, ctx.model, hooks)

    def poison(terms):
        with torch.no_grad():
            ctx.model.prompt_learner.ctx.fill_(float("inf"))

    with pytest.raises(TrainingError) as info:
        stage1_loop(1).run(lambda epoch: [0], lambda batch: {"i2t": torch.tensor(1.0)}, poison)
    message = str(info.value)
    assert message.startswith("stage1:") and "stage1.lr" in message and "stage2.grad_clip" not in message
    assert not (tmp_path / "last.pt").exists() and ctx.state["history"] == []
    terms = iter([{"i2t": torch.tensor(1.0)}, {"i2t": torch.tensor(float("nan"))}])
    with pytest.raises(TrainingError) as info:
        stage1_loop(2).run(lambda epoch: [0, 1], lambda batch: next(terms), lambda t: None)
    assert "stage1.lr" in str(info.value) and "grad_clip" not in str(info.value) and "step 2" in str(info.value)


def test_status_names_the_stage_that_failed(tiny_manifest, tmp_path, monkeypatch, capsys):
    def diverging_stage2(ctx, resume, joint=False):
        raise TrainingError("stage2: loss term 'id' became nan at epoch 1, step 1")

    monkeypatch.setattr("handclip.train.engine.run_stage2", diverging_stage2)
    cfg = _config_file(tmp_path, tiny_manifest, stage1={"epochs": 1})
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 2
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["stage"] == "stage2"


def test_sigterm_marks_the_run_interrupted_and_leaves_no_temporary_file(tiny_manifest, tmp_path, monkeypatch,
                                                                        capsys):
    from handclip.train import engine

    real_stage2 = engine.run_stage2

    def terminated_stage2(ctx, resume, joint=False):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` does; handled at the next step
        return real_stage2(ctx, resume, joint)

    monkeypatch.setattr(engine, "run_stage2", terminated_stage2)
    cfg = _config_file(tmp_path, tiny_manifest, stage1={"epochs": 1})
    run = tmp_path / "run"
    code = cli.main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"])
    assert code == 143
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"handclip: stopped by SIGTERM; resume with: handclip train --resume {run}"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["stage"] == "stage2" and "--resume" in status["error"]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    monkeypatch.setattr(engine, "run_stage2", real_stage2)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------------------------------------- resume
def test_resume_refuses_a_changed_manifest(tiny_manifest, tmp_path, capsys):
    cfg = _config_file(tmp_path, tiny_manifest, stage1={"epochs": 1})
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--stage", "stage1", "--out", str(run), "--no-progress"]) == 0
    text = (run / "manifest.csv").read_text()
    lines = text.splitlines()
    fields = lines[1].split(",")
    fields[3] = str(int(fields[3]) + 1)  # relabel one training image
    (run / "manifest.csv").write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "manifest.csv changed" in line and "manifest.sha256" in line


# ---------------------------------------------------------------------------------------------- identities
def _overlapping_manifest(tiny_manifest, tmp_path) -> tuple[Path, int]:
    """The tiny manifest with one test identity's images relabelled as a training identity."""
    manifest = Manifest.read(tiny_manifest)
    train_pid = manifest.split("train")[0].pid
    test_pid = manifest.split("query")[0].pid
    from dataclasses import replace

    records = [replace(r, pid=train_pid) if r.pid == test_pid else r for r in manifest.records]
    path = tmp_path / "overlap.csv"
    Manifest(records).write(path)
    return path, train_pid


def test_identity_overlap_is_refused_by_scan_evaluate_and_train(tiny_manifest, tmp_path, capsys):
    path, pid = _overlapping_manifest(tiny_manifest, tmp_path)
    assert cli.main(["scan", "--manifest", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"pid {pid}" in line and "--allow-id-overlap" in line
    assert cli.main(["scan", "--manifest", str(path), "--allow-id-overlap"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--manifest", str(path), "--backbone", "tiny-rn", "--out", str(out)]) == 2
    assert f"pid {pid}" in _one_line(capsys.readouterr().err)
    assert not out.exists()
    cfg = _config_file(Path(path).parent, path)
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"pid {pid}" in line and "data.allow_id_overlap" in line
    assert not run.exists()


def test_val_image_of_an_unknown_identity_is_refused(tiny_manifest, tmp_path, capsys):
    from dataclasses import replace

    manifest = Manifest.read(tiny_manifest)
    val = manifest.split("val")[0]
    records = [replace(r, pid=999_999) if r == val else r for r in manifest.records]
    path = tmp_path / "stray.csv"
    Manifest(records).write(path)
    cfg = _config_file(tmp_path, path)
    assert cli.main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "999999" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_formula_cells_are_neutralised_and_read_back_exactly(tmp_path):
    from dataclasses import replace

    hostile = '=HYPERLINK("http://evil.example","x")'
    base = Manifest([_rec("train", 1, "/a/1.png"), _rec("train", 1, "/a/2.png"), _rec("val", 1, "/a/3.png")])
    records = [replace(r, original_id=hostile, subset="@sum", dataset="'quoted") for r in base.records]
    path = tmp_path / "m.csv"
    Manifest(records).write(path)
    for line in path.read_text().splitlines()[1:]:
        assert ",=" not in line and ",@" not in line and ",\"=" not in line
    assert Manifest.read(path).records == Manifest(records).records


def _rec(split, pid, path):
    from handclip.data.manifest import ManifestRecord

    return ManifestRecord(split=split, run=None, path=path, pid=pid, camid=None, dataset="", subset="",
                          original_id="", is_distractor=False)


# ---------------------------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("extra, needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--image-size", "0", "0"], "--image-size"),
    (["--calibration-folds", "1"], "--calibration-folds"),
])
def test_evaluate_bad_options_are_one_line(tiny_manifest, tmp_path, capsys, extra, needle):
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--manifest", str(tiny_manifest), "--backbone", "tiny-rn", "--out", str(out),
                     *extra])
    assert code == 2 and needle in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_evaluate_out_that_is_a_file_is_refused_before_any_work(tiny_manifest, tmp_path, capsys):
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    code = cli.main(["evaluate", "--manifest", str(tiny_manifest), "--backbone", "tiny-rn", "--out", str(victim)])
    assert code == 2 and str(victim) in _one_line(capsys.readouterr().err)
    assert victim.read_text() == "root:x:0:0\n"


def test_stale_staging_folders_of_killed_evaluations_are_removed(tmp_path):
    from handclip.evaluate.report import STAGING_OWNER, remove_stale_staging

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / ".eval.abc123.staging"
    stale.mkdir()
    (stale / STAGING_OWNER).write_text(dead.stdout)
    (stale / "metrics.json").write_text("{}")
    alive = tmp_path / ".eval.def456.staging"
    alive.mkdir()
    (alive / STAGING_OWNER).write_text(f"{os.getppid()}\n")
    other = tmp_path / ".eval.notes"
    other.mkdir()
    remove_stale_staging(tmp_path / "eval")
    assert not stale.exists() and alive.exists() and other.exists()


def test_relative_input_paths_in_a_config_file_are_relative_to_that_file(tmp_path, monkeypatch):
    from handclip.config import load_config

    sub = tmp_path / "configs" / "sub"
    sub.mkdir(parents=True)
    (sub / "base.yaml").write_text("data: {manifest: ../../data/m.csv, cache_dir: cache}\nmodel: {weights: openai}\n")
    (tmp_path / "configs" / "exp.yaml").write_text("_BASE_: sub/base.yaml\nmodel: {weights: w/ViT-B-16.pt}\n"
                                                   "output_dir: runs\n")
    monkeypatch.chdir(tmp_path / "configs" / "sub")
    cfg = load_config(tmp_path / "configs" / "exp.yaml", ["data.root=here"])
    assert cfg.data.manifest == str(tmp_path / "data" / "m.csv")
    assert cfg.data.cache_dir == str(sub / "cache")
    assert cfg.model.weights == str(tmp_path / "configs" / "w" / "ViT-B-16.pt")
    assert cfg.data.root == "here" and cfg.output_dir == "runs"  # command line and outputs: the current folder
    assert load_config(sub / "base.yaml").model.weights == "openai"  # an open_clip tag, not a path


def test_scan_bounds_the_pixels_decoded_at_once(tmp_path, monkeypatch):
    from PIL import Image

    from handclip.data import images

    budget = images._PixelBudget(3 * 400 * 400)
    monkeypatch.setattr(images, "_SCAN_BUDGET", budget)
    active, peak, lock = [0], [0], threading.Lock()
    real_load = Image.Image.load

    def watched_load(self):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.02)
            return real_load(self)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(Image.Image, "load", watched_load)
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (400, 400), (i, 0, 0)).save(path)
        paths.append(str(path))
    big = tmp_path / "big.png"
    Image.new("RGB", (1000, 1000)).save(big)  # above the budget alone: decoded alone, not refused
    assert images.scan_images([*paths, str(big)], workers=8) == []
    assert 1 <= peak[0] <= 3 and budget.used == 0  # three 400x400 images fit the budget at once, never more


def test_read_only_run_folder_and_report_folder_are_one_line(tiny_manifest, tmp_path, capsys, monkeypatch):
    from handclip.evaluate import report
    from handclip.train.run_folder import CLAIM_NAME

    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).endswith(CLAIM_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    cfg = _config_file(tmp_path, tiny_manifest, stage1={"epochs": 1})
    code = cli.main(["train", "--config", str(cfg), "--stage", "stage1", "--out", str(tmp_path / "run"),
                     "--no-progress"])
    monkeypatch.setattr(os, "open", real_open)
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "read-only file system" in line and str(tmp_path / "run") in line

    def read_only_mkdtemp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(report, "tempfile", type("ReadOnly", (), {"mkdtemp": staticmethod(read_only_mkdtemp)}))
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--manifest", str(tiny_manifest), "--backbone", "tiny-rn", "--image-size", "32", "32",
                     "--no-forensic", "--show", "0", "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "read-only file system" in line and str(out) in line


def test_output_into_a_closed_pipe_is_quiet(tiny_manifest):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "handclip", "scan", "--manifest", str(tiny_manifest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # as `| head` does once it has what it wants
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


@pytest.mark.parametrize("extra, needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-5"], "--seed"),
    (["--folds", "99999999999"], "--folds"),
])
def test_calibrate_bounds_its_options(tmp_path, capsys, extra, needle):
    code = cli.main(["calibrate", "--checkpoint", str(tmp_path / "none.pt"), "--manifest", str(tmp_path / "m.csv"),
                     *extra])
    assert code == 2 and needle in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("extra", [["--workers", "-5"], ["--workers", "100000"], ["--min-size", "0"]])
def test_scan_bounds_its_options(tiny_manifest, capsys, extra):
    assert cli.main(["scan", "--manifest", str(tiny_manifest), *extra]) == 2
    assert extra[0] in _one_line(capsys.readouterr().err)


def test_ctrl_c_prints_the_exact_resume_command_or_that_nothing_can_be_resumed(tiny_manifest, tmp_path, monkeypatch,
                                                                             capsys):
    """Ctrl-C (SIGINT, a KeyboardInterrupt) ends with the command that continues the run, exit 130; before the
    first epoch ended there is no last.pt, and the message says so instead of naming a resume that would fail."""
    from handclip.train import engine

    def ctrl_c(ctx, resume, joint=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run_stage2", ctrl_c)
    cfg = _config_file(tmp_path, tiny_manifest, stage1={"epochs": 1})
    run = tmp_path / "my run"
    assert cli.main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 130
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"handclip: interrupted (Ctrl-C); resume with: handclip train --resume '{run}'"
    monkeypatch.setattr(engine, "run_stage1", ctrl_c)
    early = tmp_path / "early"
    assert cli.main(["train", "--config", str(cfg), "--out", str(early), "--no-progress"]) == 130
    last = capsys.readouterr().err.splitlines()[-1]
    assert "before the first epoch ended, so there is nothing to resume" in last and str(early) in last
    assert "--resume" not in last


def test_an_interrupt_outside_training_is_one_plain_line(monkeypatch, capsys):
    from handclip.commands import scan

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan, "run", interrupted)
    assert cli.main(["scan", "--manifest", "m.csv"]) == 130
    assert capsys.readouterr().err == "handclip: interrupted\n"
