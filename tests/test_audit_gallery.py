"""The audit log against the gallery it records: anchors kept elsewhere and signed heads end to end, every
committed row attributed to a record, gallery states compared by commit generation, enrolments of
content already enrolled under another identity, and case reports that cannot fail after their record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import enrolled_gallery, make_assets

from handclip import cli as cli_module
from handclip.forensic.audit import AUDIT_FILE, HEAD_FILE, AuditLog


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("audit-assets"), num_ids=4, images_per_id=3)


@pytest.fixture(scope="module")
def master(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("audit-master") / "gallery")


@pytest.fixture
def index(master, tmp_path) -> Path:
    return Path(shutil.copytree(master, tmp_path / "gallery"))


def _session(index: Path, assets, **kwargs):
    from handclip.gallery.session import ExaminerSession

    return ExaminerSession.open(index, assets["ckpt"], device="cpu", batch_size=2, **kwargs)


def _verify(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = cli_module.main(["audit", "verify", *map(str, args)])
    return code, capsys.readouterr().out


def test_a_gallery_whose_log_and_head_were_deleted_fails_verify(index, capsys):
    (index / AUDIT_FILE).unlink()
    (index / HEAD_FILE).unlink()
    code, out = _verify(capsys, "--index", index)
    assert code == 1, out
    assert "FAILED: the gallery holds 12 image(s) but its audit log has no enrolment record" in out
    assert "12 gallery row(s) are named by no enrolment record: row 0 (0000/000.png, identity '0000')" in out


def test_expect_and_a_signed_head_catch_what_a_consistent_rewrite_hides(index, assets, tmp_path, capsys, monkeypatch):
    key = tmp_path / "keys" / "lab.pem"
    assert cli_module.main(["audit", "keygen", "--out", str(key)]) == 0
    assert "HANDCLIP_AUDIT_SIGNING_KEY=" in capsys.readouterr().out
    monkeypatch.setenv("HANDCLIP_AUDIT_SIGNING_KEY", str(key))
    found = _session(index, assets).search([assets["images"] / "0002" / "001.png"], top_k=2)
    assert found.audit.key_id and found.as_dict()["audit"]["anchor"] == f"{found.audit.seq}:{found.audit.hash}"
    public = f"{key}.pub"
    code, out = _verify(capsys, "--index", index, "--expect", found.audit.anchor, "--public-key", public)
    assert code == 0 and f"head: {found.audit.anchor}, signed by key {found.audit.key_id}" in out, out
    # the search record cut, the head rewritten to match the rest (unsigned: the key is not the forger's)
    lines = (index / AUDIT_FILE).read_bytes().splitlines(keepends=True)
    previous = json.loads(lines[-2])
    (index / AUDIT_FILE).write_bytes(b"".join(lines[:-1]))
    head = json.loads((index / HEAD_FILE).read_text())
    head.update(seq=previous["seq"], hash=previous["hash"], pending=None, signature=None)
    (index / HEAD_FILE).write_text(json.dumps(head))
    code, out = _verify(capsys, "--index", index, "--expect", found.audit.anchor)
    assert code == 1 and f"record {found.audit.seq} given by --expect is not in the log" in out
    code, out = _verify(capsys, "--index", index, "--public-key", public)
    assert code == 1 and "audit.head.json is not signed" in out
    assert cli_module.main(["audit", "verify", "--index", str(index), "--expect", "3:nothex"]) == 2
    # a signing key kept inside the gallery folder is refused
    inside = index / "lab.pem"
    shutil.copyfile(key, inside)
    monkeypatch.setenv("HANDCLIP_AUDIT_SIGNING_KEY", str(inside))
    assert cli_module.main(["audit", "show", "--index", str(index)]) == 2
    assert "inside the gallery folder" in capsys.readouterr().err


class _Killed(Exception):
    pass


def test_rows_of_a_killed_enrolment_are_attributed_and_rows_no_record_names_fail(index, assets, capsys):
    from handclip.gallery import Gallery
    from handclip.gallery.enrol import EnrolItem
    from handclip.synthetic.render import render_hand

    photos = []
    for i in range(6):
        photos.append(index.parent / "new" / f"{i}.png")
        photos[-1].parent.mkdir(exist_ok=True)
        render_hand(60 + i // 3, i % 3).save(photos[-1])
    items = [EnrolItem(str(p), f"walk-in-{i // 3}") for i, p in enumerate(photos)]
    batches = []

    def dies_after_two_batches(summary):
        batches.append(summary.batches)
        if summary.batches == 2:
            raise _Killed  # the process dies after its second batch was committed, before its record

    with pytest.raises(_Killed):
        _session(index, assets).enrol(items, on_batch=dies_after_two_batches)
    code, out = _verify(capsys, "--index", index)
    assert code == 0, out
    assert "the enrolment started in record 3 did not finish (no enrol record closes it): 4 of its 6 planned " \
           "image(s) are in the gallery; enrol the rest again to finish it" in out
    summary = _session(index, assets).enrol(items)
    assert (summary.added, summary.already_enrolled) == (2, 4)
    # rows written into the gallery outside the audited session: named by row and image
    gallery = Gallery.open(index)
    vectors = np.eye(gallery.reader.dim, dtype=np.float32)[:2]
    gallery.add(vectors, [str(index.parent / "x.png"), str(index.parent / "y.png")], ["intruder", "intruder"],
                ["e" * 64, "f" * 64])
    code, out = _verify(capsys, "--index", index)
    assert code == 1
    assert "2 gallery row(s) are named by no enrolment record: row 18 (x.png, identity 'intruder'), row 19 " \
           "(y.png, identity 'intruder')" in out


def test_gallery_states_are_compared_by_generation_not_record_order(index, assets, capsys, monkeypatch):
    from handclip.synthetic.render import render_hand

    session = _session(index, assets)
    older = session.snapshot()  # the snapshot a concurrent search still ranks
    backup = index.parent / "backup"
    shutil.copytree(index, backup)
    newcomer = index.parent / "people" / "newcomer"
    newcomer.mkdir(parents=True)
    render_hand(70, 0).save(newcomer / "a.png")
    from handclip.gallery.enrol import collect_images

    session.enrol(collect_images(newcomer.parent))
    monkeypatch.setattr(session, "snapshot", lambda: older)
    session.search([assets["images"] / "0001" / "000.png"], top_k=2)  # recorded after the newer enrolment
    monkeypatch.undo()
    result = session.verify_audit()
    assert result.ok and result.notes == [], (result.notes, [p.message for p in result.problems])
    # the gallery restored from the backup under its newer log: rolled back, a problem
    for name in ("commit.json", "gallery.json"):
        shutil.copyfile(backup / name, index / name)
    shutil.rmtree(index / "shards")
    shutil.copytree(backup / "shards", index / "shards")
    code, out = _verify(capsys, "--index", index, "--no-files")
    assert code == 1 and "it was rolled back or restored from a backup" in out, out


def test_an_image_already_enrolled_under_another_identity_is_recorded_with_both(index, assets):
    from handclip.gallery.enrol import EnrolItem

    known = assets["images"] / "0003" / "001.png"
    copy = index.parent / "copy.png"
    shutil.copyfile(known, copy)
    summary = _session(index, assets).enrol([EnrolItem(str(copy), "someone-else")])
    assert summary.added == 0 and summary.already_enrolled == 1
    record = AuditLog(index).records()[-1]
    assert record["results"]["other_identity"] == [{"path": str(copy), "identity": "someone-else",
                                                    "enrolled_identity": "0003", "enrolled_path": str(known.resolve())}]


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return " ".join(" ".join(page.extract_text() for page in PdfReader(str(path)).pages).split())


def test_case_reports_of_hostile_names_are_made_and_bounded(assets, tmp_path, capsys):
    from bidi import get_display

    images = tmp_path / "hands"
    shutil.copytree(assets["images"], images)
    names = {"0000": "x" + "\n" * 200 + "y", "0001": "\u202eevil\u202c RLO", "0002": "שלום כהן",
             "0003": "hand \U0001F91A"}
    for folder, name in names.items():
        (images / folder).rename(images / name)
    index = tmp_path / "gallery"
    assert cli_module.main(["enrol", "--checkpoint", str(assets["ckpt"]), "--images", str(images), "--index",
                            str(index), "--no-progress", "--device", "cpu"]) == 0
    log = (index / AUDIT_FILE).read_bytes()
    query = str(images / names["0002"] / "000.png")
    report = tmp_path / "case.pdf"
    too_long = "C" * 100_000
    assert cli_module.main(["search", "--index", str(index), "--query", query, "--report", str(report),
                            "--case-id", too_long, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--case-id is 100000 characters long" in err
    assert (index / AUDIT_FILE).read_bytes() == log and not report.exists()  # refused before any record
    case_id = "2026/" + "9" * 195
    page = tmp_path / "hits.html"
    assert cli_module.main(["search", "--index", str(index), "--query", query, "--report", str(report),
                            "--case-id", case_id, "--top-k", "4", "--device", "cpu", "--html", str(page)]) == 0
    assert "\\u202eevil\\u202c RLO" in page.read_text() and "\u202e" not in page.read_text()
    text = _pdf_text(report)
    # pypdf reads right-to-left runs back in reading order: the name as a reader sees it on the page
    assert "שלום כהן" in text and get_display("שלום כהן") not in text
    assert "[U+1F91A]" in text and "\\u202eevil\\u202c RLO" in text and "x\\n\\n\\n" in text
    assert "x" + "\\n" * 200 + "y" not in text  # bounded
    assert case_id in text.replace(" ", "")
    from pypdf import PdfReader

    for page in PdfReader(str(report)).pages:  # the footer's case id is shortened to fit the page
        footer = [line for line in page.extract_text().splitlines() if "HandCLIP case report ·" in line]
        assert footer and "…" in footer[0] and len(footer[0]) < 160
    import pypdfium2

    pypdfium2.PdfDocument(str(report))[0].render(scale=1.4).to_pil().save(tmp_path / "hostile_page1.png")


def test_a_case_report_that_cannot_be_made_is_recorded_as_not_made(index, assets, tmp_path, monkeypatch):
    import handclip.gallery.case_report as case_report
    from handclip.errors import HandCLIPError

    session = _session(index, assets)
    found = session.search([assets["images"] / "0001" / "001.png"], top_k=2)

    def fails(*args, **kwargs):
        raise RuntimeError("LayoutError: a flowable too large")

    monkeypatch.setattr(case_report, "write_case_report", fails)
    with pytest.raises(HandCLIPError) as refused:
        session.report(found, tmp_path / "case.pdf", case_id="2026/1")
    record = AuditLog(index).records()[-1]
    assert record["command"] == "report" and record["made"] is False and record["search_record"] == found.audit.seq
    assert record["search_hash"] == found.audit.hash and "LayoutError" in record["error"]
    assert f"audit record {record['seq']} says so" in str(refused.value)
    assert not (tmp_path / "case.pdf").exists() and session.verify_audit().ok
