"""Gallery management: redacting an identity (an audited tombstone that search honours while the audit trail
still verifies) and re-encoding a gallery with a new model into a new, linked gallery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serve_helpers import add_keys, enrolled_gallery, make_assets, make_checkpoint

from fastapi.testclient import TestClient  # noqa: E402

from handclip import cli as cli_module  # noqa: E402
from handclip.errors import GalleryError  # noqa: E402
from handclip.forensic.audit import AUDIT_FILE, AuditLog  # noqa: E402
from handclip.gallery.audit_check import verify_gallery_audit  # noqa: E402
from handclip.gallery.enrol import EnrolItem  # noqa: E402
from handclip.gallery.management import redact_identity, reembed_gallery  # noqa: E402
from handclip.gallery.metadata import COMMIT_FILE  # noqa: E402
from handclip.gallery.reader import GalleryReader  # noqa: E402
from handclip.gallery.session import ExaminerSession  # noqa: E402
from handclip.serve.app import create_app  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("manage-assets"))


@pytest.fixture(scope="module")
def master(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("manage-master") / "gallery")


@pytest.fixture
def index(master, tmp_path) -> Path:
    return Path(shutil.copytree(master, tmp_path / "gallery"))


def _query(assets) -> Path:
    return assets["images"] / "0001" / "002.png"


def _search_identities(index: Path, assets, query: Path, top_k: int = 10) -> list[str]:
    session = ExaminerSession.open(index, assets["ckpt"], device="cpu")
    return [c.identity for c in session.search([query], top_k=top_k).queries[0].candidates]


def _verify(capsys, index: Path) -> tuple[int, str]:
    capsys.readouterr()
    code = cli_module.main(["audit", "verify", "--index", str(index)])
    return code, capsys.readouterr().out


def test_redaction_through_the_cli_removes_the_identity_from_search_and_keeps_verify_passing(index, assets, capsys):
    query = _query(assets)
    assert _search_identities(index, assets, query)[0] == "0001"
    rows_before = len(GalleryReader.open(index))
    assert cli_module.main(["gallery", "redact", "--index", str(index), "--identity", "0001",
                            "--reason", "consent withdrawn", "--examiner", "E. Xaminer"]) == 0
    assert "redacted identity '0001'" in capsys.readouterr().out
    reader = GalleryReader.open(index)
    assert len(reader) == rows_before  # append-only: no row removed
    assert "0001" not in reader.identities() and reader.redacted == {"0001"}
    found = _search_identities(index, assets, query)
    assert "0001" not in found and len(found) == 4
    image_hits = ExaminerSession.open(index, assets["ckpt"], device="cpu").search([query], top_k=20, by="image")
    assert all(c.identity != "0001" for c in image_hits.queries[0].candidates)
    vectors = reader.vectors()[list(reader.rows_of_identity["0001"])]
    for kind in ("flat", "hnsw", "ivf", "pca"):  # exact and approximate indexes alike leave the rows out
        for by in ("image", "identity"):
            hits = [c.identity for hit in reader.search(vectors, top_k=20, by=by, index_type=kind) for c in hit]
            assert hits and "0001" not in hits, (kind, by)
    record = [r for r in AuditLog(index).records() if r["command"] == "redact"][-1]
    assert (record["identity"], record["reason"], record["examiner"]) == ("0001", "consent withdrawn", "E. Xaminer")
    assert len(record["rows"]) == 3 and {r["identity"] for r in record["rows"]} == {"0001"}
    code, out = _verify(capsys, index)
    assert code == 0, out
    # A later enrolment (which commits again) keeps the tombstone; the redacted identity is never enrolled again.
    session = ExaminerSession.open(index, assets["ckpt"], device="cpu")
    with pytest.raises(GalleryError, match="was redacted"):
        session.enrol([EnrolItem(str(assets["images"] / "0002" / "000.png"), "0001")], examiner="x")
    assert cli_module.main(["gallery", "redact", "--index", str(index), "--identity", "0001", "--reason", "again"]) == 2
    assert "already redacted" in capsys.readouterr().err


def test_redacting_an_unknown_identity_or_without_reason_is_one_line(index, capsys):
    assert cli_module.main(["gallery", "redact", "--index", str(index), "--identity", "nobody", "--reason", "x"]) == 2
    err = capsys.readouterr().err
    assert "'nobody' is not enrolled" in err and len(err.strip().splitlines()) == 1
    assert cli_module.main(["gallery", "redact", "--index", str(index), "--identity", "0002"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert redact_identity and GalleryReader.open(index).redacted == frozenset()


def test_an_edited_redact_record_is_caught_by_verify(index, capsys):
    redact_identity(index, "0002", "court order 17", examiner="E")
    log = index / AUDIT_FILE
    lines = log.read_text(encoding="utf-8").splitlines()
    edited = [line.replace("court order 17", "court order 18") if '"redact"' in line else line for line in lines]
    assert edited != lines
    log.write_text("\n".join(edited) + "\n", encoding="utf-8")
    code, out = _verify(capsys, index)
    assert code != 0 and "record" in out


def test_a_redaction_undone_by_hand_is_caught_by_verify(index, capsys):
    redact_identity(index, "0002", "court order 17", examiner="E")
    commit = json.loads((index / COMMIT_FILE).read_text())
    del commit["redactions"]
    commit["generation"] += 1
    (index / COMMIT_FILE).write_text(json.dumps(commit))
    assert "0002" in GalleryReader.open(index).identities()
    problems = [p.message for p in verify_gallery_audit(index).problems]
    assert any("no longer holds that redaction" in p for p in problems), problems


@pytest.mark.parametrize("edit", ["rows", "identity", "reason", "extra", "not-a-list"])
def test_a_hand_edited_redaction_list_is_refused_on_read_naming_the_file(index, capsys, edit):
    redact_identity(index, "0002", "court order 17", examiner="E")
    path = index / COMMIT_FILE
    commit = json.loads(path.read_text())
    entry = commit["redactions"][0]
    if edit == "rows":
        entry["rows"] = 2
    elif edit == "identity":
        entry["identity"] = "nobody"
    elif edit == "reason":
        entry["reason"] = ""
    elif edit == "extra":
        entry["hidden"] = True
    else:
        commit["redactions"] = {"identity": "0002"}
    path.write_text(json.dumps(commit))
    with pytest.raises(GalleryError, match=f"gallery commit file {path} is corrupt"):
        GalleryReader.open(index)
    capsys.readouterr()
    assert cli_module.main(["gallery", "redact", "--index", str(index), "--identity", "0003", "--reason", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and len(err.splitlines()) == 1


def test_rest_redaction_needs_the_enrol_role_and_removes_the_identity(index, assets):
    keys = add_keys(index)
    state = ServiceState(index, device="cpu", batch_size=2)
    query = _query(assets)
    with TestClient(create_app(state), base_url="http://localhost") as client:
        url = "/api/v1/identities/0001/redact"
        assert client.post(url, json={"reason": "x"}).status_code == 401
        assert client.post(url, json={"reason": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post(url, json={"reason": "x"}, headers={"X-API-Key": keys["search"]}).status_code == 403
        enrol = {"X-API-Key": keys["enrol"]}
        assert client.post("/api/v1/identities/nobody/redact", json={"reason": "x"}, headers=enrol).status_code == 404
        assert client.post(url, json={}, headers=enrol).status_code == 422
        assert client.post(url, json={"reason": ""}, headers=enrol).status_code == 422
        assert client.post(url, json={"reason": "   "}, headers=enrol).status_code == 422
        assert client.post(url, json={"reason": "x" * 2001}, headers=enrol).status_code == 422
        assert client.post(url, json={"reason": "x", "more": 1}, headers=enrol).status_code == 422
        both = {"X-API-Key": keys["both"]}
        thumbnail = client.get("/api/v1/identities/0001", headers=both).json()["images"][0]["thumbnail"]
        reply = client.post(url, json={"reason": "consent withdrawn"}, headers=both)
        assert reply.status_code == 200, reply.text
        assert reply.json()["images"] == 3 and reply.json()["identities_left"] == 4
        assert client.post(url, json={"reason": "again"}, headers=both).status_code == 409
        listed = client.get("/api/v1/identities", headers=both).json()["identities"]
        assert "0001" not in [p["identity"] for p in listed] and len(listed) == 4
        assert client.get("/api/v1/identities/0001", headers=both).status_code == 404
        assert client.get(thumbnail, headers=both).status_code == 404
        found = client.post("/api/v1/search", files={"image": (query.name, query.read_bytes(), "image/png")},
                            data={"top_k": "10"}, headers=both)
        assert found.status_code == 200, found.text
        assert "0001" not in [c["identity"] for c in found.json()["queries"][0]["candidates"]]
    record = AuditLog(index).records()[-2]
    assert record["command"] == "redact" and record["examiner"] == "A. Examiner"
    assert verify_gallery_audit(index).ok


def _copied_gallery(assets, root: Path) -> tuple[Path, Path]:
    images = Path(shutil.copytree(assets["images"], root / "hands"))
    return enrolled_gallery({**assets, "images": images}, root / "gallery"), images


def test_reembed_ranks_as_a_fresh_enrolment_with_the_new_model_and_links_both_logs(assets, tmp_path, capsys):
    old, images = _copied_gallery(assets, tmp_path)
    new_ckpt = make_checkpoint(tmp_path / "new.pt", seed=1)
    redact_identity(old, "0004", "consent withdrawn")
    (images / "0003" / "001.png").unlink()  # missing since enrolment
    changed = images / "0002" / "000.png"
    changed.write_bytes(changed.read_bytes() + b"\0")  # bytes changed since enrolment
    head = AuditLog(old).read_head()
    assert cli_module.main(["gallery", "reembed", "--index", str(old), "--checkpoint", str(new_ckpt),
                            "--out", str(tmp_path / "new"), "--device", "cpu", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "file missing or unreadable" in out and "file changed since enrolment" in out
    new = GalleryReader.open(tmp_path / "new")
    assert new.fingerprint != GalleryReader.open(old).fingerprint
    assert set(new.identities()) == {"0000", "0001", "0002", "0003"} and len(new) == 15 - 3 - 2

    kept = [e for e in GalleryReader.open(old).entries(0)
            if e["identity"] != "0004" and Path(e["path"]).name + e["identity"] not in ("001.png0003", "000.png0002")]
    fresh = ExaminerSession.open(tmp_path / "fresh", new_ckpt, device="cpu", create=True)
    fresh.enrol([EnrolItem(e["path"], e["identity"]) for e in reversed(kept)], examiner="fresh")
    reembedded = ExaminerSession.open(tmp_path / "new", device="cpu")
    for query in (images / "0001" / "002.png", images / "0000" / "000.png"):
        a = reembedded.search([query], top_k=10).queries[0].candidates
        b = fresh.search([query], top_k=10).queries[0].candidates
        assert [c.identity for c in a] == [c.identity for c in b]
        assert [round(c.score, 6) for c in a] == [round(c.score, 6) for c in b]

    first = AuditLog(tmp_path / "new").records()[0]
    assert first["command"] == "reembed-from" and first["planned"] == len(new)
    assert first["source"]["audit_head"] == {"seq": head.seq, "hash": head.hash}
    assert first["source"]["uid"] == GalleryReader.open(old).uid
    assert {e["reason"] for e in first["left_out"]} == {"file missing or unreadable",
                                                       "file changed since enrolment (SHA-256 differs)"}
    link = AuditLog(old).records()[-1]
    assert link["command"] == "reembed-to" and link["target"]["uid"] == new.uid
    assert link["target"]["first_record"]["hash"] == first["hash"]
    assert verify_gallery_audit(tmp_path / "new").ok
    # The old gallery's own check names the files that went missing or changed, nothing else.
    problems = [p.message for p in verify_gallery_audit(old).problems]
    assert problems and all("001.png" in p or "000.png" in p for p in problems), problems


def test_reembed_refuses_an_existing_output_folder(index, assets, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    assert cli_module.main(["gallery", "reembed", "--index", str(index), "--checkpoint", str(assets["ckpt"]),
                            "--out", str(tmp_path / "taken"), "--device", "cpu"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert cli_module.main(["gallery", "reembed", "--index", str(index), "--out", str(tmp_path / "n")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
