"""``handclip validate`` end to end on a tiny model: calibrated on some people, validated on others. The overlap
refusal, the report's files and hashes, and the matrix's pass/fail as the plan's criteria say."""

from __future__ import annotations

import json

import pytest

from handclip import cli
from handclip.atomic import sha256_file
from test_evaluation import checkpoint, synthetic  # noqa: F401  (module-scoped fixtures)

PLAN = """title: tiny test plan
population: synthetic test hands
bootstrap: {replicates: 30, seed: 1}
criteria:
  - {characteristic: accuracy, metric: cllr, graph: ece, criterion: "< 5"}
  - {characteristic: calibration, metric: rmed_strong, graph: lr_distribution, criterion: "< 1.5"}
  - {characteristic: discriminating_power, metric: auc, graph: det, criterion: "> 1.0"}
  - {characteristic: robustness, metric: cllr, criterion: "< 5"}
  - {characteristic: coherence, metric: cllr, criterion: "< 5"}
  - {characteristic: generalisation, metric: cllr, graph: tippett, criterion: "< 5"}
"""


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in ("calibrate", "validate")})
    return cli.main


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, synthetic, checkpoint):  # noqa: F811
    """A calibration on the test identities (query, gallery) and a plan file."""
    _, manifest_path = synthetic
    folder = tmp_path_factory.mktemp("validate")
    assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                     "--out", str(folder / "cal.json")]) == 0
    (folder / "plan.yaml").write_text(PLAN, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def report(calibrated, synthetic, checkpoint):  # noqa: F811
    """The validation on the training identities (train, val splits): people the calibration never saw."""
    _, manifest_path = synthetic
    out = calibrated / "report"
    assert cli.main(["validate", "--checkpoint", str(checkpoint), "--calibration", str(calibrated / "cal.json"),
                     "--manifest", str(manifest_path), "--criteria", str(calibrated / "plan.yaml"),
                     "--splits", "train,val", "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_validation_on_the_calibration_people_is_refused_with_the_count(main, calibrated, synthetic, checkpoint,  # noqa: F811
                                                                        tmp_path, capsys):
    _, manifest_path = synthetic
    code = main(["validate", "--checkpoint", str(checkpoint), "--calibration", str(calibrated / "cal.json"),
                 "--manifest", str(manifest_path), "--criteria", str(calibrated / "plan.yaml"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "8 of the 8 identities" in err[0] and "were in the calibration" in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_overlap_counts_people_not_images(calibrated, synthetic):  # noqa: F811
    from handclip.data.manifest import Manifest
    from handclip.forensic.calibration import ScoreCalibration
    from handclip.validate.workflow import ValidationError, check_disjoint

    manifest, _ = synthetic
    calibration = ScoreCalibration.load(calibrated / "cal.json")
    people = {r.pid for r in manifest.records if r.split in ("query", "gallery")}
    one = min(people)
    mixed = [r for r in manifest.records if r.split == "train"] + [r for r in manifest.records if r.pid == one]
    with pytest.raises(ValidationError, match=r"^1 of the 13 identities"):
        check_disjoint(mixed, calibration, "mixed")
    check_disjoint([r for r in manifest.records if r.split == "train"], calibration, "train")  # disjoint: passes
    assert Manifest  # imported for the type of records only


def test_the_report_hashes_are_those_of_the_files(report, calibrated, synthetic, checkpoint):  # noqa: F811
    out, data = report
    _, manifest_path = synthetic
    files = data["files"]
    assert files["model"]["sha256"] == sha256_file(checkpoint)
    assert files["calibration"]["sha256"] == sha256_file(calibrated / "cal.json")
    assert files["manifest"]["sha256"] == sha256_file(manifest_path)
    assert files["criteria"]["sha256"] == sha256_file(calibrated / "plan.yaml")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert all(item["sha256"] in html for item in files.values())
    pdf = out / "report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 20_000
    for file in data["graphs"].values():
        assert (out / file).read_bytes().startswith(b"\x89PNG")


def test_the_matrix_decides_as_the_plan_says(report):
    _, data = report
    rows = {(row["characteristic"], row["metric"], row["condition"]): row for row in data["matrix"]}
    cllr = rows[("accuracy", "cllr", "all")]
    assert cllr["passed"] is True and cllr["result"]["low"] <= cllr["result"]["estimate"] <= cllr["result"]["high"]
    assert rows[("discriminating_power", "auc", "all")]["passed"] is False  # an AUC is never above 1
    assert rows[("calibration", "rmed_strong", "all")]["passed"] is True  # a rate is never above 1.5
    coherence = rows[("coherence", "cllr", "methods compared")]
    assert coherence["passed"] is True and coherence["result"]["estimate"] >= 0
    assert coherence["note"].startswith("logit ") and "cross-calibrated by identity" in coherence["note"]
    assert coherence["meaning"].startswith("largest difference between the methods of")
    general = rows[("generalisation", "cllr", "calibration -> validation")]
    assert general["passed"] is True and general["result"] == cllr["result"]  # the stored calibration's LRs
    assert general["note"].startswith("casework-condition check")
    populations = [line for line in data["summary"] if line.startswith("Calibration and validation populations: ")]
    assert len(populations) == 1 and "a calibration fitted on manifest manifest.csv" in populations[0]
    assert "8 identities" in populations[0] and "12 other identities" in populations[0]
    assert data["passed"] is False  # one assessed criterion failed
    robustness = [row for row in data["matrix"] if row["characteristic"] == "robustness"]
    assert [row["condition"] for row in robustness] == ["synthetic"]  # the manifest's one subset
    counts = data["counts"]
    assert counts["identities_used"] == 12 and counts["failed_to_acquire"] == 0 and counts["failed_to_enrol"] == 0
    assert data["misleading_evidence"]["n_mated"] == counts["n_mated"] == 12 * 10  # 5 images: 10 pairs each
    assert any("NOT meet 1 of the 6" in line for line in data["summary"])


def test_with_index_the_validation_is_recorded_in_the_gallerys_audit_log(calibrated, synthetic, checkpoint,  # noqa: F811
                                                                         tmp_path, capsys):
    import shutil

    from handclip import api

    manifest, manifest_path = synthetic
    people = tmp_path / "people"
    for record in [r for r in manifest.records if r.split == "gallery"][:4]:
        (people / f"p{record.pid}").mkdir(parents=True, exist_ok=True)
        shutil.copy(record.path, people / f"p{record.pid}" / "1.png")
    index = tmp_path / "gallery"
    api.enrol_images(index, people, checkpoint)
    out = tmp_path / "report"
    argv = ["validate", "--checkpoint", str(checkpoint), "--calibration", str(calibrated / "cal.json"), "--manifest",
            str(manifest_path), "--criteria", str(calibrated / "plan.yaml"), "--splits", "train,val", "--out", str(out)]
    assert cli.main([*argv, "--index", str(tmp_path / "no-gallery")]) == 2  # refused before anything is written
    assert "--index" in capsys.readouterr().err and not out.exists()
    assert cli.main([*argv, "--index", str(index), "--examiner", "V. Alidator"]) == 0
    assert "audit record " in capsys.readouterr().out
    record = api.read_audit(index).records[-1]
    assert record["command"] == "validate" and record["examiner"] == "V. Alidator"
    files = {entry["role"]: entry for entry in record["files"]}
    for role, path in (("model", checkpoint), ("calibration", calibrated / "cal.json"), ("manifest", manifest_path),
                       ("criteria", calibrated / "plan.yaml"), ("report:report.pdf", out / "report.pdf"),
                       ("report:report.json", out / "report.json"), ("report:report.html", out / "report.html")):
        assert files[role]["sha256"] == sha256_file(path), role
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert record["decision"]["passed"] is report["passed"] is False
    assert record["decision"]["criteria_met"] == record["decision"]["criteria_assessed"] - 1
    assert api.verify_audit(index).problems == []  # the chain, head and files all check out
