"""The comparison's images through the REST API: an enrolled image at full resolution by its SHA-256, a
search's query (prepared or original) for the key that made the search or the review role only, their
keys, roles, limits and refusals, and the search's ``compare`` field for the report's comparison pages."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_helpers import add_keys, auth, enrolled_gallery, make_assets, reviewed_service

from handclip.atomic import sha256_bytes, sha256_file
from handclip.forensic.audit import AuditLog
from handclip.serve.app import create_app
from handclip.serve.limits import Limits
from handclip.serve.state import ServiceState


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("compare-serve-assets"))


@pytest.fixture(scope="module")
def master_gallery(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("compare-serve-master") / "gallery")


@pytest.fixture
def service(assets, master_gallery, tmp_path):
    with reviewed_service(assets, master_gallery, tmp_path) as served:
        yield served


def search(client, key: str, path: Path, **fields) -> dict:
    response = client.post("/api/v1/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                           data={"top_k": "3", **fields}, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_an_enrolled_image_comes_whole_by_its_hash_for_a_search_key_only(service, assets):
    client, keys, index = service
    path = assets["images"] / "0001" / "002.png"
    digest = sha256_file(path)
    url = f"/api/v1/images/{digest}"
    got = client.get(url, headers=auth(keys["search"]))
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == path.read_bytes()  # as enrolled, full resolution, not a thumbnail
    assert client.get(url.upper().replace("/API/V1/IMAGES/", "/api/v1/images/"), headers=auth(keys["search"])).content \
        == path.read_bytes()  # the hash in either case
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth("not-a-key")).status_code == 401
    assert client.get(url, headers=auth(keys["enrol"])).status_code == 403
    unknown = client.get(f"/api/v1/images/{'0' * 64}", headers=auth(keys["search"]))
    assert unknown.status_code == 404 and "no enrolled image" in unknown.json()["error"]
    assert str(index) not in unknown.text and str(assets["images"]) not in unknown.text
    assert client.get("/api/v1/images/not-a-hash", headers=auth(keys["search"])).status_code == 422
    # the identity's images, as the page's strip lists them, each come whole by their hash
    listed = client.get("/api/v1/identities/0001", headers=auth(keys["search"])).json()["images"]
    for image in listed:
        body = client.get(f"/api/v1/images/{image['sha256']}", headers=auth(keys["search"])).content
        assert sha256_bytes(body) == image["sha256"]


def test_an_image_larger_than_the_limit_is_not_sent(assets, master_gallery, tmp_path):
    index = Path(shutil.copytree(master_gallery, tmp_path / "gallery"))
    keys = add_keys(index)
    path = assets["images"] / "0002" / "000.png"
    limit = path.stat().st_size - 1
    state = ServiceState(index, device="cpu", limits=Limits(max_request_bytes=limit))
    with TestClient(create_app(state), base_url="http://localhost") as client:
        got = client.get(f"/api/v1/images/{sha256_file(path)}", headers=auth(keys["search"]))
    assert got.status_code == 413 and f"limit of {limit}" in got.json()["error"]


def test_a_searchs_query_is_shown_to_its_key_and_the_review_role_only(service, assets):
    client, keys, index = service
    query = assets["images"] / "0003" / "001.png"
    found = search(client, keys["search"], query, crop="2,2,60,60", mirror="true")
    record = found["record"]
    url = f"/api/v1/searches/{record}/query"
    prepared = client.get(url, headers=auth(keys["search"]))
    assert prepared.status_code == 200 and prepared.headers["content-type"] == "image/png"
    assert sha256_bytes(prepared.content) == found["queries"][0]["prepared"]["sha256"]
    original = client.get(url, params={"image": "original"}, headers=auth(keys["search"]))
    assert original.content == query.read_bytes() and sha256_bytes(original.content) == found["queries"][0]["sha256"]
    assert client.get(url, headers=auth(keys["review"])).content == prepared.content
    other = client.get(url, headers=auth(keys["both"]))  # another key with the search role
    assert other.status_code == 404 and other.json()["error"] == "no such search for this key"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth(keys["enrol"])).status_code == 403
    assert client.get(url, params={"image": "thumbnail"}, headers=auth(keys["search"])).status_code == 422
    assert client.get(f"/api/v1/searches/{record + 5}/query", headers=auth(keys["search"])).status_code == 404
    assert client.get("/api/v1/searches/1/query", headers=auth(keys["review"])).status_code == 404  # an enrolment
    assert client.get("/api/v1/searches/0/query", headers=auth(keys["search"])).status_code == 422
    # a search without preparation: its query is the upload itself
    plain = search(client, keys["search"], query)
    got = client.get(f"/api/v1/searches/{plain['record']}/query", headers=auth(keys["search"]))
    assert got.content == query.read_bytes()
    # a stored query changed since its search is refused, not shown as the one compared
    stored = next((index / "serve" / "queries").glob(f"{plain['queries'][0]['sha256']}.*"))
    stored.write_bytes(stored.read_bytes() + b"tampered")
    changed = client.get(f"/api/v1/searches/{plain['record']}/query", headers=auth(keys["search"]))
    assert changed.status_code == 409 and "no longer holds the bytes recorded" in changed.json()["error"]
    assert str(index) not in changed.text


def _comparison_ranks(pdf: bytes) -> list[int]:
    from pypdf import PdfReader

    pages = [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]
    return sorted(int(m.group(1)) for text in pages for m in [re.search(r"Comparison: .* and rank (\d+),", text)] if m)


def test_the_search_compare_field_picks_the_reports_comparison_pages(service, assets):
    client, keys, index = service
    query = assets["images"] / "0004" / "000.png"
    found = search(client, keys["search"], query, report="true")
    pdf = client.get(found["report"], headers=auth(keys["search"])).content
    assert _comparison_ranks(pdf) == [1, 2, 3]  # the top 3 by default
    found = search(client, keys["search"], query, report="true", compare="2-3")
    assert _comparison_ranks(client.get(found["report"], headers=auth(keys["search"])).content) == [2, 3]
    before = len(AuditLog(index).records())
    for bad, message in (("4", "rank 4 is beyond the 3 candidate(s) asked for (top_k 3)"), ("0,2", "ranks run from 1"),
                         ("3-1", "runs backwards")):
        refused = client.post("/api/v1/search", files={"image": (query.name, query.read_bytes(), "image/png")},
                              data={"top_k": "3", "report": "true", "compare": bad}, headers=auth(keys["search"]))
        assert refused.status_code == 422 and message in refused.json()["error"], refused.text
    refused = client.post("/api/v1/search", files={"image": (query.name, query.read_bytes(), "image/png")},
                          data={"compare": "top three"}, headers=auth(keys["search"]))
    assert refused.status_code == 422
    assert len(AuditLog(index).records()) == before  # nothing recorded for a refused compare
