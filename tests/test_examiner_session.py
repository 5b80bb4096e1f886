"""One examiner session behind `handclip search`, `enrol`, `audit`, the web service and the API: the model and
calibration are reached through it alone, checked once, and a search records the same audit fields
whichever interface asked."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from serve_helpers import add_keys, enrolled_gallery, make_assets

from fastapi.testclient import TestClient  # noqa: E402

from handclip import cli as cli_module  # noqa: E402
from handclip.errors import HandCLIPError  # noqa: E402
from handclip.forensic.audit import AuditLog  # noqa: E402
from handclip.gallery.session import ExaminerSession  # noqa: E402
from handclip.serve.app import create_app  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "handclip"
# Fields a search record may differ in between interfaces: who asked, how, when, and the chain position.
PER_REQUEST = {"arguments", "examiner", "time", "seq", "prev_hash", "hash", "os_user", "host", "handclip",
               "python", "pid"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("session-assets"))


@pytest.fixture
def gallery(assets, tmp_path_factory, tmp_path):
    master = enrolled_gallery(assets, tmp_path_factory.mktemp("session-master") / "gallery")
    return Path(shutil.copytree(master, tmp_path / "gallery"))


def test_cli_search_and_serve_search_record_the_same_audit_fields(assets, gallery):
    query = assets["images"] / "0001" / "002.png"
    keys = add_keys(gallery)
    state = ServiceState(gallery, calibration=str(assets["calibration"]), device="cpu")
    with TestClient(create_app(state), base_url="http://localhost") as client:
        response = client.post("/api/v1/search", files={"image": (query.name, query.read_bytes(), "image/png")},
                               data={"top_k": "3"}, headers={"X-API-Key": keys["search"]})
    assert response.status_code == 200, response.text
    served = AuditLog(gallery).records()[-1]
    stored = served["results"][0]["query"]  # the service keeps the upload; search that very file from the CLI
    assert cli_module.main(["search", "--index", str(gallery), "--query", stored, "--top-k", "3", "--calibration",
                            str(assets["calibration"]), "--device", "cpu"]) == 0
    from_cli = AuditLog(gallery).records()[-1]
    assert from_cli["seq"] == served["seq"] + 1
    assert set(served) == set(from_cli)
    # The exhibit name is the file name the examiner gave: the upload's own name, the stored file's name.
    assert served["results"][0].pop("name") == query.name
    assert from_cli["results"][0].pop("name") == Path(stored).name
    different = sorted(k for k in set(served) - PER_REQUEST if served[k] != from_cli[k])
    assert different == [], {k: (served[k], from_cli[k]) for k in different}
    assert served["calibration"]["sha256"] and served["model"]["checkpoint_sha256"]


def _imports(module: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("module", ["commands/search.py", "commands/enrol.py", "commands/audit.py",
                                    "commands/serve.py", "serve/state.py", "serve/app.py"])
def test_search_enrol_audit_and_serve_reach_model_and_calibration_only_through_the_session(module):
    imported = _imports(SRC / module)
    reaching = {m for m in imported if any(part in m for part in ("model.", "forensic.calibration",
                                                                   "forensic.evidence", "gallery.reader",
                                                                   "gallery.writer", "gallery.folder"))}
    assert not reaching, f"{module} imports {sorted(reaching)} instead of going through ExaminerSession"


def test_a_calibration_of_another_model_is_refused_when_the_session_opens(assets, gallery, tmp_path):
    from handclip.forensic.calibration import ScoreCalibration

    calibration = ScoreCalibration.load(assets["calibration"])
    other = tmp_path / "other.json"
    fingerprint = {**calibration.fingerprint, "checkpoint_sha256": "b" * 64, "weights_sha256": "c" * 64}
    ScoreCalibration(calibration.maps, fingerprint, calibration.summary).save(other)  # fitted for another model
    try:
        ExaminerSession.open(gallery, calibration=other, device="cpu")
    except HandCLIPError as exc:
        assert "model" in str(exc) or "fingerprint" in str(exc) or "SHA-256" in str(exc)
    else:
        pytest.fail("a calibration of another model was accepted")


def test_a_session_without_a_model_verifies_the_audit_trail_but_refuses_to_search(assets, gallery):
    session = ExaminerSession.open(gallery, with_model=False)
    assert session.verify_audit().ok and [r["command"] for r in session.audit_records()] == ["enrol-start", "enrol"]
    with pytest.raises(HandCLIPError, match="without a model"):
        session.search([assets["images"] / "0001" / "000.png"])


def test_every_session_enrolment_and_search_is_audited(assets, gallery):
    session = ExaminerSession.open(gallery, device="cpu")
    before = len(AuditLog(gallery).records())
    found = session.search([assets["images"] / "0002" / "001.png"], top_k=2)
    summary = session.enrol([])
    records = AuditLog(gallery).records()
    assert len(records) == before + 2 and found.audit.seq == records[-2]["seq"]
    assert summary.audit.seq == records[-1]["seq"] and records[-1]["command"] == "enrol"
