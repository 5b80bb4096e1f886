"""Cases: a case's searches listed from the audit log, and the case exported as one bundle whose
SHA256SUMS the real ``sha256sum -c`` verifies (and refuses once a file in it is edited)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from serve_helpers import enrolled_gallery, make_assets

from handclip import api, cli
from handclip.forensic.audit import AuditLog
from handclip.forensic.audit_format import record_hash

CASE = "2026/017"


@pytest.fixture(scope="module")
def casework(tmp_path_factory):
    """A gallery with two CLI searches of CASE (one with a report), one of another case, one with no case."""
    root = tmp_path_factory.mktemp("cases")
    assets = make_assets(root / "assets")
    index = enrolled_gallery(assets, root / "gallery")
    queries = root / "exhibits"
    queries.mkdir()
    for name, source in (("item-1.png", "0001/000.png"), ("item-2.png", "0002/001.png"), ("other.png", "0003/000.png")):
        shutil.copy(assets["images"] / source, queries / name)
    cal = str(assets["calibration"])
    for query, case, report in (("item-1.png", CASE, root / "case-item-1.pdf"), ("other.png", "2026/999", None),
                                ("item-2.png", CASE, None), ("item-2.png", None, None)):
        args = ["search", "--index", str(index), "--query", str(queries / query), "--calibration", cal,
                "--top-k", "3", "--device", "cpu"]
        args += ["--case-id", case] if case else []
        args += ["--report", str(report)] if report else []
        assert cli.main(args) == 0
    return {"index": index, "root": root, "queries": queries}


@pytest.fixture
def gallery(casework, tmp_path):
    """A copy of the case gallery (an export appends to its log); the exhibits stay where they were."""
    return Path(shutil.copytree(casework["index"], tmp_path / "gallery"))


def test_list_shows_exactly_the_two_searches_of_the_case(casework, capsys):
    found = api.list_case(casework["index"], CASE)
    assert len(found.searches) == 2
    exhibits = [s.summary()["queries"][0]["exhibit"] for s in found.searches]
    assert exhibits == ["item-1.png", "item-2.png"]
    records = {r["seq"]: r for r in AuditLog(casework["index"]).records()}
    for search in found.searches:
        assert records[search.seq]["arguments"]["case_id"] == CASE
    assert found.head == f"{max(records)}:{records[max(records)]['hash']}"
    assert cli.main(["case", "list", CASE, "--index", str(casework["index"]), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["record"] for s in listed["searches"]] == [s.seq for s in found.searches]
    assert api.list_case(casework["index"], "2026/999").searches[0].summary()["queries"][0]["exhibit"] == "other.png"
    assert api.list_case(casework["index"], "no such case").searches == []


def test_the_answer_rebuilt_from_a_record_words_its_numbers(casework):
    from handclip.gallery.cases import record_answer

    search = api.list_case(casework["index"], CASE).searches[0]
    answer = record_answer(search.record)
    first = answer["queries"][0]["candidates"][0]
    assert first["log10_lr"] == search.record["results"][0]["candidates"][0]["log10_lr"]
    assert "log10" in first["words"]["lr"] and "item-1.png" in first["words"]["statement"]
    assert answer["audit"]["anchor"] == search.anchor and answer["case_id"] == CASE


def _unzip(bundle: Path, into: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(into)
    return into


def _sha256sum_check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)


def test_export_bundle_verifies_with_sha256sum_and_an_edited_file_fails_it(casework, gallery, tmp_path, capsys):
    out = tmp_path / "case.zip"
    before = AuditLog(gallery).records()
    assert cli.main(["case", "export", CASE, "--index", str(gallery), "--out", str(out)]) == 0
    assert "SHA256SUMS" in capsys.readouterr().out
    folder = _unzip(out, tmp_path / "bundle")
    checked = _sha256sum_check(folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = {line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert listed == on_disk  # every file of the bundle, and only those
    case = json.loads((folder / "case.json").read_text())
    searches = case["searches"]
    assert [s["queries"][0]["exhibit"] for s in searches] == ["item-1.png", "item-2.png"]
    # the exhibits are the original bytes; the report of the first search is there, the second had none
    for search, name in zip(searches, ["item-1.png", "item-2.png"]):
        [exhibit] = search["exhibits"]
        assert (folder / exhibit["file"]).read_bytes() == (casework["queries"] / name).read_bytes()
    assert searches[0]["report"] and (folder / searches[0]["report"]).read_bytes()[:5] == b"%PDF-"
    assert searches[1]["report"] is None
    # the records are the log's own lines: each hash recomputes, and the head is the log's at export
    records = [json.loads(line) for line in (folder / "audit" / "records.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == [s["record"] for s in searches]
    assert all(record_hash(r) == r["hash"] for r in records)
    head = json.loads((folder / "audit" / "head.json").read_text())
    assert head["anchor"] == f"{before[-1]['seq']}:{before[-1]['hash']}" == case["head_at_export"]
    fingerprints = json.loads((folder / "fingerprints.json").read_text())
    assert fingerprints["models"][0]["checkpoint_sha256"] == records[0]["model"]["checkpoint_sha256"]
    assert fingerprints["calibrations"][0]["sha256"] == records[0]["calibration"]["sha256"]
    # the export is recorded, and the audit trail still verifies
    after = AuditLog(gallery).records()
    assert len(after) == len(before) + 1 and after[-1]["command"] == "case-export"
    assert after[-1]["bundle"]["sha256sums_sha256"] == __import__("hashlib").sha256(
        (folder / "SHA256SUMS").read_bytes()).hexdigest()
    assert api.verify_audit(gallery).ok
    # one edited byte in any file fails the check, naming the file
    answer = folder / searches[1]["answer"]
    answer.write_text(answer.read_text().replace("item-2.png", "item-3.png", 1))
    edited = _sha256sum_check(folder)
    assert edited.returncode != 0 and f"{searches[1]['answer']}: FAILED" in edited.stdout


def test_an_exhibit_no_longer_kept_is_named_as_left_out(casework, gallery, tmp_path):
    moved = tmp_path / "exhibits"
    shutil.copytree(casework["queries"], moved)
    (casework["queries"] / "item-2.png").unlink()
    try:
        export = api.export_case(gallery, CASE, tmp_path / "case.zip")
    finally:
        shutil.copy(moved / "item-2.png", casework["queries"] / "item-2.png")
    assert any("item-2.png" in note and "no longer kept" in note for note in export.left_out)
    folder = _unzip(tmp_path / "case.zip", tmp_path / "bundle")
    case = json.loads((folder / "case.json").read_text())
    assert case["searches"][1]["exhibits"][0]["file"] is None
    assert "not included" in case["searches"][1]["exhibits"][0]["note"]
    assert _sha256sum_check(folder).returncode == 0


@pytest.mark.parametrize("case_id, message", [("", "case id is empty"), ("a\u202eb", "invisible"),
                                              ("x" * 201, "at most 200")])
def test_bad_case_ids_get_one_line_and_write_nothing(gallery, tmp_path, capsys, case_id, message):
    records = len(AuditLog(gallery).records())
    for action in (["list"], ["export", "--out", str(tmp_path / "case.zip")]):
        assert cli.main(["case", action[0], case_id, "--index", str(gallery), *action[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "case.zip").exists() and len(AuditLog(gallery).records()) == records


def test_a_case_without_searches_or_a_damaged_log_exports_nothing(gallery, tmp_path, capsys):
    assert cli.main(["case", "export", "2026/000", "--index", str(gallery), "--out", str(tmp_path / "c.zip")]) == 2
    assert "no searches" in capsys.readouterr().err
    log = gallery / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[-2] = lines[-2].replace(b'"top_k":3', b'"top_k":4')  # an edited record: its hash no longer holds
    log.write_bytes(b"".join(lines))
    assert cli.main(["case", "export", CASE, "--index", str(gallery), "--out", str(tmp_path / "c.zip")]) == 2
    assert "does not verify" in capsys.readouterr().err
    assert not (tmp_path / "c.zip").exists() and not list(tmp_path.glob(".c.zip.*"))
