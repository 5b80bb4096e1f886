"""``handclip benchmark``: train + evaluate per subset, the zero-shot row, quoted references, JSON = evaluations."""

import json

import pytest
import yaml
from helpers_datasets import make_11k_tree, make_hd_tree  # noqa: E402

from handclip import cli  # noqa: E402
from handclip.data.manifest import Manifest  # noqa: E402
from handclip.evaluate.protocol import evaluate_manifest  # noqa: E402
from handclip.evaluate.references import QUOTED_RESULTS  # noqa: E402
from handclip.model.inference import Encoder  # noqa: E402

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def tiny_config(dataset: str, aspect=None) -> dict:
    """A tiny ModifiedResNet at 64x64, one epoch per stage, 2 x 2 batches: seconds, not hours."""
    data = {"dataset": dataset, "runs": 2, "image_size": [64, 64], "decode_cache": False, "num_workers": 0,
            "augment": {"hflip_p": 0.0, "pad": 2, "random_erasing_p": 0.0}}
    if aspect:
        data["aspect"] = aspect
    return {
        "name": f"tiny_{dataset}", "seed": 0,
        "data": data,
        "model": {"backbone": "tiny-rn"},
        "stage1": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0},
        "stage2": {"epochs": 1, "ids_per_batch": 2, "images_per_id": 2, "lr": 1e-3, "warmup_epochs": 0,
                   "milestones": [5]},
        "runtime": {"device": "cpu", "amp": "off", "progress": False},
        "eval": {"batch_size": 64},
    }


@pytest.mark.slow
def test_benchmark_table_json_and_evaluations_agree(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {"benchmark": cli.COMMANDS["benchmark"]})
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "11k_dorsal_r_tiny.yaml").write_text(yaml.safe_dump(tiny_config("11k", "dorsal_r")))
    (configs / "hd_tiny.yaml").write_text(yaml.safe_dump(tiny_config("hd")))
    hands = make_11k_tree(tmp_path / "11k", image_size=(40, 30))
    # P x K batches need >= 2 training images per identity (after the val image): 3+ per training id.
    hd = make_hd_tree(tmp_path / "hd", main={1: 4, 5: 3, 446: 3, 447: 5, 448: 3, 460: 2, 501: 4},
                      image_size=(32, 32))
    out = tmp_path / "bench"

    assert cli.main(["benchmark", "--config-dir", str(configs), "--data-11k", str(hands), "--data-hd", str(hd),
                     "--subsets", "11k_dorsal_r", "hd", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "benchmark.md").read_text()
    assert table.splitlines()[-1] in printed  # the printed table is the written one

    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    measured = [label for label, line in rows.items() if line.rstrip().endswith("| measured here |")]
    assert len(measured) == 2
    trained_label = next(label for label in measured if not label.startswith("zero-shot"))
    zero_label = next(label for label in measured if label.startswith("zero-shot"))
    assert "tiny-rn" in trained_label and "tiny-rn" in zero_label
    for method, _, source in QUOTED_RESULTS:  # every reference is there, marked as quoted
        assert f"quoted, not measured: {source}" in rows[method]
    assert "97.45" in rows["MBA-Net (ResNet-50 + attention, 2022)"]

    data = json.loads((out / "benchmark.json").read_text())
    assert [row["method"] for row in data["rows"]] == [trained_label, zero_label]
    assert set(data["runs"]) == {"11k_dorsal_r", "hd"}
    for subset in ("11k_dorsal_r", "hd"):
        run = data["runs"][subset]
        # The JSON's numbers are those of evaluating the run's best checkpoint on its own manifest again.
        manifest = Manifest.read(f"{run['run_dir']}/manifest.csv")
        again = evaluate_manifest(Encoder.from_checkpoint(f"{run['run_dir']}/best.pt"), manifest)
        for key in METRICS:
            assert run["trained"]["aggregate"][key]["mean"] == pytest.approx(again.aggregate[key]["mean"], abs=1e-9)
            assert data["rows"][0]["subsets"][subset][key]["mean"] == run["trained"]["aggregate"][key]["mean"]
            assert data["rows"][1]["subsets"][subset][key]["mean"] == run["zero_shot"]["aggregate"][key]["mean"]
        assert [r["run"] for r in run["trained"]["per_run"]] == [0, 1]
        # Table cells are the JSON's numbers in percent.
        r1 = run["trained"]["aggregate"]["rank1"]
        assert f"{100 * r1['mean']:.2f} ± {100 * r1['std']:.2f}" in rows[trained_label]
    # 11k is evaluated against gallery_all by default (the other aspects' galleries as distractors); HD always
    # has its 502-712 distractors.
    for subset in ("11k_dorsal_r", "hd"):
        per_run = data["runs"][subset]["trained"]["per_run"][0]
        assert per_run["num_gallery_ids"] > len({r.pid for r in Manifest.read(
            f"{data['runs'][subset]['run_dir']}/manifest.csv").split("query", 0)})
    # The zero-shot row is the untrained backbone (seeded random init here) through the same evaluation code.
    import torch

    from handclip.config import load_config
    from handclip.model.handclip import build_model

    config = load_config(configs / "hd_tiny.yaml", [f"data.root={hd}"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        base = build_model(config.model, config.data, num_ids=1).eval()
    zs = evaluate_manifest(Encoder.for_model(base, config.data), Manifest.read(f"{data['runs']['hd']['run_dir']}/manifest.csv"),
                           config.eval)
    assert data["runs"]["hd"]["zero_shot"]["aggregate"]["mAP"]["mean"] == pytest.approx(zs.aggregate["mAP"]["mean"], abs=1e-9)
    assert "random init" in zero_label
    assert "gallery_all" in table and "502-712" in table and "CLIP-HandID" in table
    # Subsets not run show a dash, not a number.
    assert "–" in rows[trained_label]
    # The forensic table (EER, FNIR@FPIR per subset) holds the JSON's per-subset figures, and is printed.
    forensic_table = (out / "benchmark_forensic.md").read_text()
    eer = data["runs"]["hd"]["trained"]["forensic"]["aggregate"]["eer"]
    assert f"{100 * eer['mean']:.2f} ± {100 * eer['std']:.2f}" in forensic_table.splitlines()[4]
    assert forensic_table.splitlines()[4] in printed and zero_label in forensic_table


def test_benchmark_refuses_missing_dataset_and_config_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {"benchmark": cli.COMMANDS["benchmark"]})
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "hd_tiny.yaml").write_text(yaml.safe_dump(tiny_config("hd")))
    out = tmp_path / "bench"
    assert cli.main(["benchmark", "--config-dir", str(configs), "--subsets", "hd", "--out", str(out)]) == 2
    assert "--data-hd" in capsys.readouterr().err
    hd = make_hd_tree(tmp_path / "hd")
    assert cli.main(["benchmark", "--config-dir", str(configs), "--data-hd", str(hd), "--data-11k", str(hd),
                     "--subsets", "hd", "11k_palmar_l", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "11k_palmar_l" in err and str(configs) in err
    assert not out.exists()  # nothing was trained
