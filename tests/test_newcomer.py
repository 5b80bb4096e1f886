"""A newcomer's first hour, as the README's researcher quick start has it: their own folder of hands (with
the usual bad files) prepared, scanned, trained with the shipped quick config, evaluated, the report
written; every command run as the README writes it, each bad file named once with what was done about it.
Also: a typo answers before torch loads, and the warnings that replace silent traps."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_datasets import NEWCOMER_BAD_FILES, make_newcomer_folder

from handclip import cli
from handclip.atomic import sha256_file
from handclip.config import load_config
from handclip.data.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quick" / "quick_tiny.yaml"
# A few epochs instead of the config's 20 + 24: the test checks the path, not the accuracy.
SHORT = ["--set", "stage1.epochs=2", "stage2.epochs=2", "stage2.eval_every=1", "--no-progress"]


def researcher_quick_start() -> list[str]:
    """The README's first quick-start block: the commands a researcher with a folder of hands copies."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*Researcher, your own folder of hands\*\*.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip().startswith("handclip ")]


def run(capsys, line: str, *extra: str) -> tuple[int, str, str]:
    code = cli.main(shlex.split(line, comments=True)[1:] + list(extra))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_researcher_quick_start_runs_as_written_on_a_folder_with_bad_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_newcomer_folder(tmp_path / "my_hands", ids=16, per_id=6)
    (tmp_path / "configs" / "quick").mkdir(parents=True)
    (tmp_path / "configs" / "quick" / QUICK.name).write_bytes(QUICK.read_bytes())
    commands = researcher_quick_start()
    assert [shlex.split(c)[1] for c in commands] == ["prepare", "scan", "train", "evaluate"]
    assert f"configs/quick/{QUICK.name}" in commands[2]

    printed = ""
    for line in commands:
        code, out, err = run(capsys, line, *(SHORT if " train " in f" {line} " else ()))
        printed += out + err
        assert code == 0, f"{line}\n{out}\n{err}"
    assert "Traceback" not in printed and "internal error" not in printed

    # Each unusable file named exactly once, with what was done about it; the usable traps are used.
    for name in NEWCOMER_BAD_FILES:
        mentions = [ln for ln in printed.splitlines() if name in ln]
        assert len(mentions) == 1 and "left out" in mentions[0], (name, mentions)
    assert len([ln for ln in printed.splitlines() if ".DS_Store" in ln and "ignored" in ln]) == 1
    assert len([ln for ln in printed.splitlines() if "more/" in ln and "person_00's" in ln]) == 1
    manifest = Manifest.read(tmp_path / "mine.csv")
    paths = {Path(p).name for p in manifest.paths()}
    assert {"cmyk.jpg", "extra_0.jpg", "extra_1.jpg"} <= paths and not paths & set(NEWCOMER_BAD_FILES)
    assert {r.original_id for r in manifest.records if r.path.endswith("extra_0.jpg")} == {"person_00"}
    # prepare explains its counts; scan finds nothing left to complain about.
    assert "train_all = train + val" in printed and "each test image listed once per run" in printed
    assert f"all {len(manifest.paths())} images are usable" in printed

    # train: the small val split is pointed out, epochs are summarised under --no-progress, lr readable.
    assert "handclip: warning: the validation split has only 8 images" in printed
    assert re.search(r"^stage2 epoch 2/2: lr=\d\.\d{3}e-0\d ", printed, re.M)
    log = (tmp_path / "runs" / "mine" / "train.log").read_text(encoding="utf-8")
    assert "lr=0.0000" not in log and "warning: the validation split has only 8 images" in log

    # evaluate: the report exists and names what it was computed from.
    report = tmp_path / "runs" / "mine" / "eval"
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "<title>Evaluation on folder my_hands (mine.csv)</title>" in html
    files = json.loads((report / "metrics.json").read_text(encoding="utf-8"))["files"]
    best = tmp_path / "runs" / "mine" / "best.pt"
    assert files["checkpoint_sha256"] == sha256_file(best) and files["checkpoint_sha256"] in html
    assert files["manifest_sha256"] == sha256_file(tmp_path / "mine.csv") and files["manifest_sha256"] in html

    _bad_images_kept_then_skipped(tmp_path, capsys, best)


def _bad_images_kept_then_skipped(tmp_path: Path, capsys, best: Path) -> None:
    """The other side of the policy, on the same run: prepare --keep-bad keeps (and names) them; evaluate and
    calibrate stop on them naming the file and --skip-bad, and with --skip-bad leave each out, named once."""
    code, out, err = run(capsys, "handclip prepare folder --root my_hands --out kept.csv --keep-bad --no-summary")
    assert code == 0 and all(f"kept {tmp_path / 'my_hands'}" in err and name in err for name in NEWCOMER_BAD_FILES)
    code, out, err = run(capsys, "handclip evaluate --checkpoint runs/mine/best.pt --manifest kept.csv "
                                 "--out runs/mine/eval-kept --no-forensic --show 0")
    assert code == 2 and "--skip-bad" in err and any(name in err for name in NEWCOMER_BAD_FILES)
    kept = Manifest.read(tmp_path / "kept.csv")
    bad_in_test = {Path(r.path).name for r in kept.records if r.split in ("query", "gallery")} & set(NEWCOMER_BAD_FILES)
    code, out, err = run(capsys, "handclip evaluate --checkpoint runs/mine/best.pt --manifest kept.csv "
                                 "--out runs/mine/eval-kept --no-forensic --show 0 --skip-bad")
    assert code == 0 and "Traceback" not in err
    for name in bad_in_test:
        assert len([ln for ln in err.splitlines() if name in ln and "left out" in ln]) == 1
    metrics = json.loads((tmp_path / "runs/mine/eval-kept/metrics.json").read_text(encoding="utf-8"))
    assert {Path(p).name for p in metrics["options"]["images_left_out"]} == bad_in_test

    code, out, err = run(capsys, "handclip calibrate --checkpoint runs/mine/best.pt --images my_hands "
                                 "--out cal.json --folds 2")
    assert code == 2 and "--skip-bad" in err and "Traceback" not in err and not (tmp_path / "cal.json").exists()
    code, out, err = run(capsys, "handclip calibrate --checkpoint runs/mine/best.pt --images my_hands "
                                 "--out cal.json --folds 2 --skip-bad")
    assert code == 0 and (tmp_path / "cal.json").is_file()
    for name in NEWCOMER_BAD_FILES:
        assert len([ln for ln in err.splitlines() if name in ln and "left out" in ln]) == 1
    summary = json.loads((tmp_path / "cal.json").read_text(encoding="utf-8"))["summary"]
    assert summary["n_identities"] == 16 and summary["images"] == "my_hands" and len(summary["images_sha256"]) == 64


def test_typos_are_refused_before_torch_loads(tmp_path):
    """A missing config, manifest, checkpoint or gallery answers in one line, without importing torch (which
    takes seconds): checked in-process through sys.modules, not by a clock."""
    (tmp_path / "m.csv").write_text("split,path,pid\ntrain,a.jpg,0\n")
    (tmp_path / "cfg.yaml").write_text("data: {manifest: nowhere.csv}\n")
    lines = [
        ["train", "--config", "missing.yaml"],
        ["train", "--config", "cfg.yaml"],
        ["train", "--resume", "runs/none"],
        ["evaluate", "--checkpoint", "missing.pt", "--manifest", "m.csv"],
        ["evaluate", "--checkpoint", "m.csv", "--manifest", "missing.csv"],
        ["calibrate", "--checkpoint", "missing.pt", "--images", "."],
        ["enrol", "--checkpoint", "missing.pt", "--images", ".", "--index", "g"],
        ["search", "--index", "no_gallery", "--query", "q.jpg"],
        ["serve", "--index", "g", "--calibration", "missing.json"],
    ]
    code = ("import sys, json; from handclip import cli\n"
            f"codes = [cli.main(line) for line in {lines!r}]\n"
            "print(json.dumps([codes, 'torch' in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                           check=True)
    codes, torch_loaded = json.loads(shown.stdout.splitlines()[-1])
    assert codes == [2] * len(lines) and torch_loaded is False, shown.stderr
    errors = shown.stderr.splitlines()
    assert len(errors) == len(lines) and all(e.startswith("handclip: error: ") for e in errors)
    for fragment, error in zip(["missing.yaml", "nowhere.csv", "runs/none", "missing.pt",
                                "missing.csv", "missing.pt", "missing.pt", "no_gallery", "missing.json"], errors):
        assert fragment in error and ("does not exist" in error or "not found" in error), error


def test_the_quick_config_is_the_demos_model_without_a_section_train_ignores(tmp_path):
    from handclip.preflight import ignored_settings
    from handclip.workflows.demo import DEMO_CONFIG_FILE

    manifest = tmp_path / "mine.csv"
    manifest.write_text("split,path,pid\n")
    quick = load_config(QUICK, [f"data.manifest={manifest}"])
    demo = load_config(DEMO_CONFIG_FILE)
    assert quick.model == demo.model and quick.stage1 == demo.stage1
    assert quick.stage2.model_copy(update={"eval_every": 8, "ids_per_batch": 16}) == demo.stage2
    assert ignored_settings(quick) == []
    notes = ignored_settings(load_config(DEMO_CONFIG_FILE, [f"data.manifest={manifest}", "data.dataset=folder"]))
    assert any(n.startswith("the pretrain section is ignored by `handclip train`") for n in notes)
    assert any(n.startswith("data.synthetic is ignored") for n in notes)
    # The demo itself: it pretrains, then trains from those weights on the synthetic manifest it made.
    demo_run = load_config(DEMO_CONFIG_FILE, [f"data.manifest={manifest}", "model.weights=tiny.pt"])
    assert ignored_settings(demo_run, "train", {"synthetic"}) == []
    # A section that asks for no pretraining (the demo from random init) is not worth a warning.
    no_pretraining = load_config(DEMO_CONFIG_FILE, [f"data.manifest={manifest}", "pretrain.enabled=false"])
    assert ignored_settings(no_pretraining, "train", {"synthetic"}) == []
    notes = ignored_settings(load_config(QUICK, [f"data.manifest={manifest}", "data.runs=3"]))
    assert notes == [f"data.runs is ignored: data.manifest {manifest} already holds the splits (set them in "
                     "`handclip prepare` instead)"]


def test_training_notices_name_what_to_look_at(tmp_path):
    from handclip.train.notices import best_checkpoint_notice, interruption_message, setting_notices

    rows = "".join(f"train,{k}.jpg,{k % 5}\n" for k in range(10)) + "".join(f"val,v{k}.jpg,{k}\n" for k in range(5))
    (tmp_path / "m.csv").write_text("split,path,pid\n" + rows)
    manifest = Manifest.read(tmp_path / "m.csv")
    vit = load_config(None, [f"data.manifest={tmp_path / 'm.csv'}"])
    notes = setting_notices(vit, manifest)
    assert any("model.weights is not set: ViT-B-16-quickgelu starts from random weights" in n for n in notes)
    assert any("the validation split has only 5 images" in n for n in notes)
    tiny = load_config(QUICK, [f"data.manifest={tmp_path / 'm.csv'}"])
    assert not any("random weights" in n for n in setting_notices(tiny, manifest))

    state = {"best": {"stage": "stage1", "epoch": 5, "rank1": 0.3}, "completed": ["stage1", "stage2"],
             "history": [{"stage": "stage1"}] * 5 + [{"stage": "stage2"}] * 40}
    notice = best_checkpoint_notice(state, ["stage1", "stage2"])
    assert "best.pt is from stage 1 epoch 5" in notice and "none of the 40 stage-2 epochs" in notice
    assert best_checkpoint_notice({**state, "best": {"stage": "stage2", "epoch": 3}}, ["stage1", "stage2"]) is None
    assert best_checkpoint_notice(state, ["stage1"]) is None

    assert "nothing to resume" in interruption_message("interrupted", tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert interruption_message("interrupted", tmp_path) == f"interrupted; resume with: handclip train --resume {tmp_path}"


@pytest.mark.parametrize("value, shown", [(5e-6, "5.000e-06"), (0.003, "3.000e-03"), (0.25, "0.2500")])
def test_learning_rates_are_logged_in_scientific_notation(value, shown):
    from handclip.train.hooks import _log_number

    assert _log_number("lr" if shown.count("e") else "loss", value) == shown
