"""``handclip calibrate`` and ``handclip evaluate`` with forensic figures, end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from handclip import cli
from handclip.config import DataConfig, ModelConfig, SyntheticConfig
from handclip.model.inference import load_encoder
from handclip.forensic.calibration import CalibrationError, ScoreCalibration
from handclip.forensic.verification import split_pairs, verification_metrics
from handclip.model.checkpoint import save_checkpoint
from handclip.model.handclip import build_model
from handclip.synthetic.dataset import prepare_synthetic
from test_evaluation import checkpoint, synthetic  # noqa: F401  (module-scoped fixtures)


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in ("evaluate", "calibrate")})
    return cli.main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handclip: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory, synthetic, checkpoint):  # noqa: F811
    _, manifest_path = synthetic
    out = tmp_path_factory.mktemp("cal") / "calibration.json"
    assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                     "--out", str(out)]) == 0
    return out


def test_calibrate_writes_a_calibration_for_this_model_and_manifest(calibration_file, synthetic, checkpoint):  # noqa: F811
    from handclip.atomic import sha256_file

    _, manifest_path = synthetic
    calibration = ScoreCalibration.load(calibration_file)
    summary = calibration.summary
    assert summary["method"] == "logit" and summary["manifest_sha256"] == sha256_file(manifest_path)
    assert summary["n_identities"] == 8 and summary["n_images"] == 40
    assert summary["n_mated"] == 8 * 10 and summary["n_nonmated"] == 40 * 39 // 2 - 80  # all image pairs
    assert set(summary["kinds"]) == {"image", "identity"} and 0 < summary["cllr"] < 2
    import hashlib

    from handclip.data.manifest import Manifest

    fitted_on = {str(r.pid) for r in Manifest.read(manifest_path).records
                 if r.split in ("query", "gallery") and not r.is_distractor}
    assert summary["identity_sha256"] == sorted(hashlib.sha256(p.encode()).hexdigest() for p in fitted_on)
    calibration.check_model(load_encoder(checkpoint).fingerprint())  # what search will check
    for kind in ("image", "identity"):
        low, high = calibration.bounds(kind)
        lrs = calibration.log10_lr(np.linspace(-1, 1, 50), kind)
        assert low <= lrs.min() and lrs.max() <= high


def test_calibration_of_another_model_is_refused_naming_the_fields(main, calibration_file, synthetic, tmp_path, capsys):  # noqa: F811
    _, manifest_path = synthetic
    torch.manual_seed(7)
    other = build_model(ModelConfig(backbone="tiny-rn", neck_feat="after"), DataConfig(image_size=(64, 64)), num_ids=12)
    other_path = save_checkpoint(tmp_path / "other.pt", other, None, {"epoch": 1})
    with pytest.raises(CalibrationError, match="weights_sha256"):
        ScoreCalibration.load(calibration_file).check_model(load_encoder(other_path).fingerprint())
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(other_path), "--manifest", str(manifest_path), "--out", str(out),
                 "--calibration", str(calibration_file)]) == 2
    line = _error_line(capsys)
    assert "fitted for another model" in line and "weights_sha256" in line and str(calibration_file) in line
    assert not out.exists()


def test_too_few_identities_says_how_many_are_needed(main, checkpoint, tmp_path, capsys):  # noqa: F811
    manifest = prepare_synthetic(tmp_path / "img", SyntheticConfig(train_ids=3, test_ids=5, images_per_id=3,
                                                                   image_size=32, seed=1), runs=1, seed=0)
    path = manifest.write(tmp_path / "five.csv")
    out = tmp_path / "calibration.json"
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--manifest", str(path), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert "has 5 identities with two or more images" in line and "needs at least 6" in line
    assert not out.exists() and not list(tmp_path.glob(".calibration.json*"))


def test_all_equal_scores_stop_with_one_line_and_no_file(main, synthetic, checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    from handclip.model import inference

    _, manifest_path = synthetic

    def constant(model, records, *args, **kwargs):
        return np.tile(np.eye(1, 16, dtype=np.float32), (len(records), 1))  # every image the same feature

    monkeypatch.setattr(inference, "extract_features", constant)
    out = tmp_path / "calibration.json"
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out", str(out)]) == 2
    assert "scores are equal" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_reports_forensic_figures_that_match_a_direct_computation(main, synthetic, checkpoint,  # noqa: F811
                                                                          calibration_file, tmp_path, capsys):
    from handclip.evaluate.protocol import evaluate_manifest
    from handclip.model.inference import Encoder

    manifest, manifest_path = synthetic
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out", str(out),
                 "--show", "0", "--calibration", str(calibration_file)]) == 0
    printed = capsys.readouterr().out
    assert "EER:" in printed and "Cllr:" in printed and "stored calibration: Cllr" in printed
    forensic = json.loads((out / "metrics.json").read_text())["forensic"]
    result = evaluate_manifest(Encoder.from_checkpoint(checkpoint), manifest, keep_distances=True)
    eers = []
    for run in result.distances:
        query, gallery = result.splits[run]
        eers.append(verification_metrics(*split_pairs(1 - result.distances[run], [r.pid for r in query],
                                                      [r.pid for r in gallery])).eer)
    assert forensic["aggregate"]["eer"]["mean"] == pytest.approx(np.mean(eers), abs=1e-9)
    assert forensic["aggregate"]["eer"]["std"] == pytest.approx(np.std(eers), abs=1e-9)
    assert forensic["aggregate"]["cllr"]["runs"] == 3 and forensic["aggregate"]["stored_cllr"]["runs"] == 3
    # 32 queries x 8 gallery images per run: 224 non-mated pairs, too few for FMR 1e-3.
    assert forensic["aggregate"]["fnmr@fmr=0.001"] is None
    markdown = (out / "metrics.md").read_text()
    assert "too few non-mated pairs (224; 1,000 needed)" in markdown
    assert "Likelihood ratios (cross-calibrated by identity)" in markdown and "stored calibration: Cllr" in markdown
    assert "moderately strong support for the same-person proposition" in markdown
    html = (out / "report.html").read_text()
    assert "LR bands and ENFSI" in html and html.count("data:image/png") == 1 + 4
    for name in ("det.png", "fnir_fpir.png", "tippett.png", "lr_calibration.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_no_forensic_keeps_the_plain_report(main, synthetic, checkpoint, tmp_path):  # noqa: F811
    _, manifest_path = synthetic
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out", str(out),
                 "--runs", "0", "--show", "0", "--no-forensic"]) == 0
    assert "forensic" not in json.loads((out / "metrics.json").read_text())
    assert not (out / "det.png").exists()
