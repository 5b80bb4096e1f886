"""The web service's REST API through FastAPI's test client: every endpoint, keys and roles, upload
limits, and equality with `handclip search`."""

from __future__ import annotations

import io
import json
import math
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from serve_helpers import IDENTITY_CLLR, IMAGE_CLLR, add_keys, auth, enrolled_gallery, make_assets, png_bytes

from fastapi.testclient import TestClient  # noqa: E402

from handclip import cli as cli_module  # noqa: E402
from handclip.forensic.audit import AuditLog  # noqa: E402
from handclip.serve.app import create_app  # noqa: E402
from handclip.serve.keys import KeyStore, keys_path  # noqa: E402
from handclip.serve.limits import Limits  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("serve-assets"))


@pytest.fixture(scope="module")
def master_gallery(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("serve-master") / "gallery")


@pytest.fixture
def service(assets, master_gallery, tmp_path):
    index = Path(shutil.copytree(master_gallery, tmp_path / "gallery"))
    keys = add_keys(index)
    state = ServiceState(index, calibration=str(assets["calibration"]), device="cpu",
                         limits=Limits(max_request_bytes=2 * 2**20, max_pixels=1_000_000), batch_size=2)
    with TestClient(create_app(state), base_url="http://localhost") as client:
        yield client, keys, index, state



def upload(path: Path):
    return {"image": (path.name, path.read_bytes(), "image/png")}


def test_health_and_openapi_need_no_key_and_describe_the_service(service):
    client, _, _, _ = service
    health = client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["images"] == 15 and health["identities"] == 5 and health["calibrated"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/search", "/api/v1/enrol", "/api/v1/identities", "/api/v1/identities/{identity}",
                 "/api/v1/reports/{report_id}", "/api/v1/health"):
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and "HandCLIP examiner" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_missing_invalid_and_revoked_keys_get_401_and_are_logged_wrong_role_gets_403(service, assets, caplog):
    client, keys, index, _ = service
    query = assets["images"] / "0002" / "000.png"
    caplog.set_level(logging.WARNING, logger="handclip.serve")
    no_key = client.post("/api/v1/search", files=upload(query))
    assert no_key.status_code == 401 and "API key" in no_key.json()["error"]
    assert client.get("/api/v1/identities", headers=auth("not-a-key")).status_code == 401
    assert "refused GET /api/v1/identities" in caplog.text and "invalid or revoked" in caplog.text
    assert "not-a-key" not in caplog.text  # the presented key is never logged
    # roles: an enrol-only key cannot search, a search-only key cannot enrol
    assert client.post("/api/v1/search", files=upload(query), headers=auth(keys["enrol"])).status_code == 403
    refused = client.post("/api/v1/enrol", data={"identity": "x1"}, files={"images": ("a.png", query.read_bytes())},
                          headers=auth(keys["search"]))
    assert refused.status_code == 403 and "'enrol' role" in refused.json()["error"]
    # a bearer token works like the header; revoking it takes effect without a restart
    assert client.get("/api/v1/identities", headers={"Authorization": f"Bearer {keys['search']}"}).status_code == 200
    KeyStore(index).revoke("Searcher")
    assert client.get("/api/v1/identities", headers=auth(keys["search"])).status_code == 401
    assert client.get("/api/v1/identities", headers=auth(keys["both"])).status_code == 200


def test_search_equals_the_cli_and_records_the_search_with_the_key_holder_as_examiner(service, assets, tmp_path):
    client, keys, index, state = service
    query = assets["images"] / "0003" / "001.png"
    response = client.post("/api/v1/search", files=upload(query), data={"top_k": "4", "report": "true",
                                                                         "case_id": "2026/17"},
                           headers=auth(keys["both"]))
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["candidates"][0]["identity"] == "0003" and len(found["candidates"]) == 4
    record = AuditLog(index).records()[-1]
    assert found["record"] == record["seq"] and found["audit"]["hash"] == record["hash"]
    assert record["examiner"] == "A. Examiner" and record["arguments"]["interface"] == "serve"
    assert record["arguments"]["upload"] == "001.png"
    # the same query file through `handclip search` gives the same candidates, scores and LRs
    stored = record["results"][0]["query"]
    out_json = tmp_path / "cli.json"
    assert cli_module.main(["search", "--index", str(index), "--query", stored, "--top-k", "4", "--calibration",
                            str(assets["calibration"]), "--json", str(out_json), "--device", "cpu"]) == 0
    cli = json.loads(out_json.read_text())["results"][0]["candidates"]
    assert [(c["identity"], c["score"], c["log10_lr"], c["verbal"]) for c in cli] == \
        [(c["identity"], c["score"], c["log10_lr"], c["verbal"]) for c in found["candidates"]]
    assert all(c["log10_lr"] is not None for c in found["candidates"])
    assert str(index) not in response.text  # server paths are not shown to web clients
    # the case report
    pdf = client.get(found["report"], headers=auth(keys["both"]))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF") and pdf.headers["content-type"] == "application/pdf"
    from pypdf import PdfReader

    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "2026/17" in text and "A. Examiner" in text and record["hash"] in text.replace("\n", "").replace(" ", "")
    missing = client.get("/api/v1/reports/" + "0" * 32, headers=auth(keys["search"]))
    assert missing.status_code == 404 and "no such case report" in missing.json()["error"]
    assert client.get(found["report"]).status_code == 401
    # a thumbnail of the first candidate
    thumb = client.get(found["candidates"][0]["thumbnail"], headers=auth(keys["search"]))
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (160, 160)
    assert client.get("/api/v1/images/" + "0" * 64 + "/thumbnail", headers=auth(keys["search"])).status_code == 404


def _pdf_text(content: bytes) -> str:
    """The PDF's text with runs of whitespace (line wraps) made single spaces."""
    from pypdf import PdfReader

    return " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages).split())


@pytest.mark.parametrize("by, figures", [("identity", "Cllr 0.050 (Cllr_min 0.041), 60 identities, 120 mated"),
                                         ("image", "Cllr 0.095 (Cllr_min 0.081), 60 identities, 400 mated")])
def test_the_answer_and_the_report_give_the_rounded_cllr_of_the_score_kind_searched(service, assets, by, figures):
    client, keys, _, _ = service
    query = assets["images"] / "0001" / "002.png"
    found = client.post("/api/v1/search", files=upload(query), data={"by": by, "report": "true"},
                        headers=auth(keys["both"])).json()
    line = found["calibration"]["description"]  # the page shows this text as it comes
    low, high = found["calibration"]["bounds_log10"]
    assert line == f"kde calibration of '{by}' scores: {figures} and {4000 if by == 'image' else 480} non-mated " \
                   f"pairs; log10 LR bounded to [{low:+.2f}, {high:+.2f}]"
    assert str(IMAGE_CLLR) not in line and str(IDENTITY_CLLR) not in line
    pdf = client.get(found["report"], headers=auth(keys["both"]))
    assert line in _pdf_text(pdf.content)


def test_the_report_and_the_record_name_the_uploaded_exhibit_by_its_file_name(service, assets):
    client, keys, index, _ = service
    photo = (assets["images"] / "0002" / "001.png").read_bytes()
    names = {"item-18_unknown.png": "item-18_unknown.png",
             "C:\\cases\\2026\\item-18_unknown.png": "item-18_unknown.png",
             # a right-to-left override and an escape character (httpx sends ESC as it is)
             "../../\u202egnp.exe\x1b" + "x" * 300 + ".png": None}
    for given, expected in names.items():
        response = client.post("/api/v1/search", files={"image": (given, photo, "image/png")},
                               data={"report": "true", "case_id": "2026/17 (Smith)"}, headers=auth(keys["both"]))
        assert response.status_code == 200, response.text
        found = response.json()
        pdf = client.get(found["report"], headers=auth(keys["both"]))
        assert pdf.status_code == 200
        text = _pdf_text(pdf.content)
        if expected is not None:
            assert f"File {expected}" in text
        name = found["queries"][0]["name"]
        if expected is not None:
            assert name == expected
        else:  # no path, no control or bidirectional characters, bounded, the suffix kept
            assert name.startswith("gnp.exexxx") and name.endswith(".png") and len(name) <= 120
            assert not any(ch in name for ch in "/\\\u202e\x1b")
        assert name[:60] in text and found["queries"][0]["sha256"] in text.replace(" ", "")
        assert found["queries"][0]["query"] == f"{found['queries'][0]['sha256']}.png"  # stored by content
        record = AuditLog(index).records()[-1]
        assert record["seq"] == found["record"] and record["results"][0]["name"] == name
        assert record["arguments"]["upload"] == name
        disposition = pdf.headers["content-disposition"]
        assert f'filename="handclip-case-2026-17-Smith-record-{found["record"]}.pdf"' in disposition
    refused = client.post("/api/v1/search", files={"image": ("a.png", photo, "image/png")},
                          data={"case_id": "2026/\u202e71"}, headers=auth(keys["both"]))
    assert refused.status_code == 422 and "case_id" in refused.json()["error"]


def test_identities_and_enrolment_of_new_photos(service, assets):
    client, keys, index, _ = service
    listed = client.get("/api/v1/identities", headers=auth(keys["search"])).json()
    assert [p["identity"] for p in listed["identities"]] == ["0000", "0001", "0002", "0003", "0004"]
    assert all(p["images"] == 3 for p in listed["identities"])
    one = client.get("/api/v1/identities/0002", headers=auth(keys["search"])).json()
    assert [i["name"] for i in one["images"]] == ["0002/000.png", "0002/001.png", "0002/002.png"]
    assert client.get("/api/v1/identities/nobody", headers=auth(keys["search"])).status_code == 404

    from handclip.synthetic.render import render_hand

    photos = [("images", (f"p{i}.png", png_bytes(render_hand(40, i)), "image/png")) for i in range(3)]
    done = client.post("/api/v1/enrol", data={"identity": "newcomer"}, files=photos, headers=auth(keys["enrol"]))
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["added"] == 3 and body["already_enrolled"] == 0 and body["gallery_images"] == 18
    assert body["batches"] == 2  # batch_size 2: each batch committed on its own
    record = AuditLog(index).records()[-1]
    assert record["seq"] == body["record"] and record["command"] == "enrol" and record["examiner"] == "Enroller"
    again = client.post("/api/v1/enrol", data={"identity": "newcomer"}, files=photos, headers=auth(keys["enrol"]))
    assert again.json()["added"] == 0 and again.json()["already_enrolled"] == 3
    query = {"image": ("q.png", png_bytes(render_hand(40, 1)), "image/png")}
    found = client.post("/api/v1/search", files=query, headers=auth(keys["search"])).json()
    assert found["candidates"][0]["identity"] == "newcomer" and found["gallery"]["images"] == 18
    assert client.get("/api/v1/identities/newcomer", headers=auth(keys["search"])).json()["images"][0]["name"] \
        .startswith("serve/enrolled/newcomer/")
    bad = client.post("/api/v1/enrol", data={"identity": "../escape"}, files=photos, headers=auth(keys["enrol"]))
    assert bad.status_code == 422 and "identity" in bad.json()["error"]


def _gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 150, 120)).save(buffer, format="GIF")
    return buffer.getvalue()


def test_bad_uploads_get_a_json_4xx_and_store_nothing(service, assets):
    client, keys, index, _ = service
    headers = auth(keys["both"])
    good = (assets["images"] / "0001" / "000.png").read_bytes()
    before = len(AuditLog(index).records())

    def search(data: bytes, name="x.png", **form):
        return client.post("/api/v1/search", files={"image": (name, data, "application/octet-stream")},
                           data=form, headers=headers)

    cases = {
        "too big": (search(b"\0" * (3 * 2**20)), 413, "larger than the limit"),
        # 3000 x 3000 pixels in a few kilobytes: refused from its header, never decoded
        "bomb": (search(png_bytes(Image.new("1", (3000, 3000)))), 413, "pixels, more than the limit"),
        "gif": (search(_gif_bytes(), "x.gif"), 415, "is GIF"),
        "text": (search(b"hello, not an image", "x.jpg"), 415, "not an image"),
        "truncated": (search(good[: len(good) // 2]), 422, "truncated or corrupt"),
        "tiny": (search(png_bytes(Image.new("RGB", (8, 8)))), 422, "at least 16 pixels"),
        "empty": (search(b""), 422, "empty"),
        "top_k": (search(good, top_k="0"), 422, "top_k"),
        "by": (search(good, by="hand"), 422, "by"),
    }
    for name, (response, status, text) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        assert text in response.json()["error"], (name, response.json())
    # a chunked body declares no length: it is counted as it arrives
    chunks = iter([b"\0" * 2**20] * 3)
    chunked = client.post("/api/v1/search", content=chunks,
                          headers={**headers, "content-type": "multipart/form-data; boundary=xyz"})
    assert chunked.status_code == 413 and "larger than the limit" in chunked.json()["error"], chunked.text
    no_file = client.post("/api/v1/search", data={"top_k": "3"}, headers=headers)
    assert no_file.status_code == 422 and "image" in no_file.json()["error"]
    assert len(AuditLog(index).records()) == before  # nothing refused reached the audit log
    assert not (index / "serve" / "queries").exists()


def test_serve_keys_command_stores_only_hashes(tmp_path, master_gallery, capsys):
    index = Path(shutil.copytree(master_gallery, tmp_path / "gallery"))
    assert cli_module.main(["serve-keys", "add", "--index", str(index), "--name", "J. Doe", "--role", "search"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    stored = keys_path(index).read_text()
    assert secret not in stored and KeyStore(index).authenticate(secret).name == "J. Doe"
    assert cli_module.main(["serve-keys", "list", "--index", str(index)]) == 0
    listing = capsys.readouterr().out
    assert "J. Doe" in listing and "search" in listing and "live" in listing and secret not in listing
    assert cli_module.main(["serve-keys", "revoke", "--index", str(index), "J. Doe"]) == 0
    assert KeyStore(index).authenticate(secret) is None
    assert cli_module.main(["serve-keys", "revoke", "--index", str(index), "J. Doe"]) == 2
    assert "no live API key" in capsys.readouterr().err
    # an unknown role is refused by the argument parser, in one line with a help hint
    assert cli_module.main(["serve-keys", "add", "--index", str(index), "--name", "x", "--role", "admin"]) == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err
    assert cli_module.main(["serve-keys", "add", "--index", str(index), "--name", "../x", "--role", "enrol"]) == 2
    assert cli_module.main(["serve-keys", "list", "--index", str(tmp_path / "nowhere")]) == 2


def test_serve_command_refuses_bad_settings_in_one_line(tmp_path, master_gallery, capsys):
    assert cli_module.main(["serve", "--index", str(tmp_path / "nowhere")]) == 2
    assert "does not exist; pass --checkpoint" in capsys.readouterr().err
    assert cli_module.main(["serve", "--index", str(master_gallery), "--port", "0"]) == 2
    assert "--port must be 1-65535" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    from serve_helpers import make_checkpoint

    make_checkpoint(other, seed=1)
    assert cli_module.main(["serve", "--index", str(master_gallery), "--checkpoint", str(other)]) == 2
    assert "different model" in capsys.readouterr().err


def _stranger(path: Path) -> Path:
    """A synthetic hand of a person not enrolled whose candidates all get LR < 1 under the helpers'
    calibration (its best score, 0.9979, lies well below the 0.9993 that LR 1 takes)."""
    from handclip.synthetic.render import render_hand

    render_hand(68, 1).save(path)
    return path


def test_the_answer_says_when_no_candidate_reaches_the_threshold_and_words_every_number(service, assets, tmp_path):
    from handclip.forensic.reading import lr_text, matched_text

    client, keys, index, _ = service
    stranger = client.post("/api/v1/search", files=upload(_stranger(tmp_path / "stranger.png")),
                           data={"top_k": "5"}, headers=auth(keys["both"])).json()
    lrs = [c["log10_lr"] for c in stranger["candidates"]]
    assert max(lrs) < 0  # every candidate's LR is below 1
    answer = stranger["open_set"]
    assert answer["none_reached"] and answer["reached"] == [] and answer["threshold"] == "LR > 1"
    assert answer["answer"].startswith("No candidate reaches the threshold (LR > 1).")
    assert answer["threshold_score"] > max(c["score"] for c in stranger["candidates"])
    for c in stranger["candidates"]:
        assert c["words"]["lr"] == lr_text(c["log10_lr"]) and c["verbal"] in c["words"]["statement"]
        assert c["words"]["matched"] == matched_text(c["matched"], c["num_images"], 5)
        assert (c["words"]["bound"] is None) == (c["at_bound"] is None)
    assert "not a probability" in stranger["reading"]["score"]
    assert stranger["reading"]["calibration"].startswith(stranger["calibration"]["description"] + ". Cllr measures")

    enrolled = client.post("/api/v1/search", files=upload(assets["images"] / "0003" / "002.png"),
                           headers=auth(keys["both"])).json()
    reached = [c["rank"] for c in enrolled["candidates"] if c["log10_lr"] > 0]
    assert reached and enrolled["open_set"]["reached"] == reached and not enrolled["open_set"]["none_reached"]
    assert "No candidate" not in enrolled["open_set"]["answer"]
    # a threshold above every candidate's LR: the same search now answers that none reaches it
    strict = client.post("/api/v1/search", files=upload(assets["images"] / "0003" / "002.png"),
                         data={"threshold_lr": "3"}, headers=auth(keys["both"])).json()
    assert max(c["log10_lr"] for c in strict["candidates"]) > 0 and strict["open_set"]["threshold"] == "LR > 3"
    assert strict["open_set"]["reached"] == [c["rank"] for c in strict["candidates"] if c["log10_lr"] > math.log10(3)]
    # the audit record keeps the answer with the numbers it came from
    record = AuditLog(index).records()[-1]
    assert record["results"][0]["open_set"] == strict["open_set"] and record["arguments"]["threshold_lr"] == 3.0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", "1e13"])
def test_an_unusable_threshold_is_refused_with_422_before_anything_is_recorded(service, assets, value):
    client, keys, index, _ = service
    before = len(AuditLog(index).records())
    refused = client.post("/api/v1/search", files=upload(assets["images"] / "0003" / "002.png"),
                          data={"threshold_lr": value}, headers=auth(keys["both"]))
    assert refused.status_code == 422 and refused.json()["error"].startswith("threshold_lr: ")
    assert len(AuditLog(index).records()) == before
