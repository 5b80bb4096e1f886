"""Cases through the REST API: a case's searches, one search reopened, and the case's export bundle, with
keys, roles (a key sees its own searches, the review role every one) and bad case ids."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from serve_helpers import auth, enrolled_gallery, make_assets, reviewed_service

from handclip.forensic.audit import AuditLog
from handclip.serve.keys import KeyStore

CASE = "2026/017"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("cases-assets"))


@pytest.fixture(scope="module")
def master_gallery(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("cases-master") / "gallery")


@pytest.fixture
def service(assets, master_gallery, tmp_path):
    with reviewed_service(assets, master_gallery, tmp_path) as served:
        yield served


def search(client, key: str, path: Path, case_id: str | None, report: bool = False) -> dict:
    data = {"top_k": "3", **({"case_id": case_id} if case_id else {}), **({"report": "true"} if report else {})}
    response = client.post("/api/v1/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                           data=data, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def case(service, assets):
    """Two searches of CASE by the search key (the first with a report), one of another case, one of CASE
    by another key."""
    client, keys, index = service
    images = assets["images"]
    first = search(client, keys["search"], images / "0001" / "000.png", CASE, report=True)
    search(client, keys["search"], images / "0003" / "000.png", "2026/999")
    second = search(client, keys["search"], images / "0002" / "001.png", CASE)
    other = search(client, keys["both"], images / "0004" / "000.png", CASE)
    return client, keys, index, [first, second], other


def test_a_key_lists_exactly_its_two_searches_of_the_case_and_review_sees_all(case):
    client, keys, _, (first, second), other = case
    listed = client.get(f"/api/v1/cases/{CASE}/searches", headers=auth(keys["search"]))
    assert listed.status_code == 200
    body = listed.json()
    assert [s["record"] for s in body["searches"]] == [first["record"], second["record"]]
    assert [s["queries"][0]["exhibit"] for s in body["searches"]] == ["000.png", "001.png"]
    assert body["case_id"] == CASE and body["head"].startswith(f"{other['record']}:")
    everyone = client.get(f"/api/v1/cases/{CASE}/searches", headers=auth(keys["review"])).json()
    assert [s["record"] for s in everyone["searches"]] == [first["record"], second["record"], other["record"]]
    assert client.get("/api/v1/cases/2026%2F999/searches", headers=auth(keys["search"])).json()["searches"]


def test_a_search_reopens_with_the_answer_it_gave(case):
    client, keys, _, (first, _), other = case
    url = f"/api/v1/cases/{CASE}/searches/{first['record']}"
    reopened = client.get(url, headers=auth(keys["search"]))
    assert reopened.status_code == 200
    answer = reopened.json()
    assert answer["audit"]["anchor"] == first["audit"]["anchor"] and answer["report"] == first["report"]
    for then, now in zip(first["candidates"], answer["candidates"]):
        assert (now["identity"], now["score"], now["log10_lr"], now["name"], now["thumbnail"]) == \
               (then["identity"], then["score"], then["log10_lr"], then["name"], then["thumbnail"])
        assert now["words"] == then["words"]
    assert answer["open_set"] == first["open_set"]
    assert "/" not in answer["queries"][0]["query"] and "dir" not in answer["gallery"]
    assert str(Path.cwd()) not in json.dumps(answer)
    # another key's search, and one of another case, are not found for this key
    assert client.get(f"/api/v1/cases/{CASE}/searches/{other['record']}", headers=auth(keys["search"])).status_code == 404
    assert client.get(f"/api/v1/cases/{CASE}/searches/{other['record']}", headers=auth(keys["review"])).status_code == 200
    assert client.get(f"/api/v1/cases/2026/999/searches/{first['record']}", headers=auth(keys["search"])).status_code == 404


def _bundle(response, into: Path) -> Path:
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(into)
    return into


def test_the_export_holds_the_keys_searches_with_exhibits_and_report_and_verifies(case, assets, tmp_path):
    client, keys, index, (first, second), _ = case
    response = client.get(f"/api/v1/cases/{CASE}/export", headers=auth(keys["search"]))
    assert 'filename="handclip-case-2026-017.zip"' in response.headers["content-disposition"]
    folder = _bundle(response, tmp_path / "bundle")
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    info = json.loads((folder / "case.json").read_text())
    assert [s["record"] for s in info["searches"]] == [first["record"], second["record"]]
    exhibit = info["searches"][0]["exhibits"][0]
    assert (folder / exhibit["file"]).read_bytes() == (assets["images"] / "0001" / "000.png").read_bytes()
    assert exhibit["name"] == "000.png"
    report = client.get(first["report"], headers=auth(keys["search"])).content
    assert (folder / info["searches"][0]["report"]).read_bytes() == report
    # the export is recorded with the key that asked for it; the trail still verifies
    record = AuditLog(index).records()[-1]
    assert record["command"] == "case-export" and record["arguments"]["api_key"] == KeyStore(index).authenticate(
        keys["search"]).id and record["records"] == [first["record"], second["record"]]
    from handclip import api

    assert api.verify_audit(index).ok
    (folder / "case.json").write_text((folder / "case.json").read_text() + " ")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode != 0


def test_review_exports_every_search_other_keys_only_their_own(case, tmp_path):
    client, keys, _, (first, second), other = case
    reviewed = json.loads((_bundle(client.get(f"/api/v1/cases/{CASE}/export", headers=auth(keys["review"])),
                                   tmp_path / "review") / "case.json").read_text())
    assert [s["record"] for s in reviewed["searches"]] == [first["record"], second["record"], other["record"]]
    mine = json.loads((_bundle(client.get(f"/api/v1/cases/{CASE}/export", headers=auth(keys["both"])),
                               tmp_path / "both") / "case.json").read_text())
    assert [s["record"] for s in mine["searches"]] == [other["record"]]
    assert client.get("/api/v1/cases/no-such-case/export", headers=auth(keys["review"])).status_code == 404


@pytest.mark.parametrize("url", [f"/api/v1/cases/{CASE}/searches", f"/api/v1/cases/{CASE}/searches/5",
                                 f"/api/v1/cases/{CASE}/export"])
def test_case_endpoints_need_a_key_with_the_search_role(service, url):
    client, keys, _ = service
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth("not-a-key")).status_code == 401
    assert client.get(url, headers=auth(keys["enrol"])).status_code == 403


@pytest.mark.parametrize("case_id", ["", "a%E2%80%AEb", "a%00b", "x" * 201])
def test_bad_case_ids_get_422_and_record_nothing(service, case_id):
    client, keys, index = service
    records = len(AuditLog(index).records())
    for url in (f"/api/v1/cases/{case_id}/searches", f"/api/v1/cases/{case_id}/export",
                f"/api/v1/cases/{case_id}/searches/1"):
        response = client.get(url, headers=auth(keys["review"]))
        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"].startswith("case_id")
    assert len(AuditLog(index).records()) == records
