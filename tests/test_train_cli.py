"""``handclip train`` through the real entry point: exit codes, one-line errors, run folders."""

from __future__ import annotations

import json

import pytest
from training_helpers import base_config, tiny_manifest  # noqa: F401 - fixture

from handclip import cli


@pytest.fixture(autouse=True)
def _only_training_commands(monkeypatch):
    # The parser imports every listed command module; these tests need only train and demo.
    monkeypatch.setattr(cli, "COMMANDS", {k: v for k, v in cli.COMMANDS.items() if k in ("train", "demo")})


def _config_file(tmp_path, manifest, **sections):
    path = tmp_path / "tiny.yaml"
    path.write_text(base_config(manifest, **sections).to_yaml())
    return path


def test_train_cli_runs_and_reports_checkpoints(tiny_manifest, tmp_path, capsys):
    cfg = _config_file(tmp_path, tiny_manifest)
    code = cli.main(["train", "--config", str(cfg), "--set", "stage2.epochs=1", "--out", str(tmp_path / "run"),
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "best checkpoint" in out and str(tmp_path / "run" / "best.pt") in out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["stage"] for l in lines] == ["stage1", "stage1", "stage2"]
    # A completed run resumed has nothing left to do and says so without error.
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0


def test_train_cli_stage_selection(tiny_manifest, tmp_path):
    cfg = _config_file(tmp_path, tiny_manifest)
    assert cli.main(["train", "--config", str(cfg), "--stage", "stage1", "--out", str(tmp_path / "s1"),
                     "--no-progress"]) == 0
    stages = {json.loads(l)["stage"] for l in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"stage1"}


@pytest.mark.parametrize("override, needle", [
    ("stage2.ids_per_batch=1", "stage2.ids_per_batch"),
    ("stage2.nonsense=3", "stage2.nonsense: unknown key"),
    ("model.backbone=ViT-Q-99", "unknown backbone 'ViT-Q-99'"),
    ("stage2.ids_per_batch=64", "stage2.ids_per_batch is 64 but the training split has only 8 identities"),
])
def test_train_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_manifest, tmp_path, capsys, override, needle):
    cfg = _config_file(tmp_path, tiny_manifest)
    run = tmp_path / "run"
    code = cli.main(["train", "--config", str(cfg), "--set", override, "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()


def test_train_cli_resume_errors(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"run folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "not a HandCLIP run folder" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path), "--set", "stage2.epochs=3"]) == 2
    assert "do not combine" in capsys.readouterr().err


def test_demo_cli_writes_before_after_metrics(tmp_path, capsys):
    overrides = ["data.synthetic.train_ids=8", "data.synthetic.test_ids=4", "data.synthetic.images_per_id=4",
                 "data.synthetic.image_size=32", "data.image_size=[32,32]", "data.runs=3", "stage1.epochs=1",
                 "stage2.epochs=1", "stage2.ids_per_batch=4", "stage2.images_per_id=2", "stage2.milestones=[1]",
                 "pretrain.enabled=false"]  # the pretrained start has its own test in test_pretrain.py
    args = ["demo", "--out", str(tmp_path / "demo"), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    assert cli.main(args) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for phase in ("before", "after"):
        for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
            assert set(metrics[phase][key]) >= {"mean", "std"}
            assert len(metrics[phase][key]["values"]) == 3
    assert metrics["time_s"] > 0 and metrics["runs"] == 3
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
