"""The service's gaps an adversarial sweep found: who may fetch a case report, server paths in answers, error
replies that must stay JSON, web hardening (headers, Host, /docs, exposure), API enrolments of content
enrolled under another identity, uploads left by a killed request, key names and repeated form fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serve_helpers import add_keys, auth, enrolled_gallery, make_assets, png_bytes

from fastapi.testclient import TestClient  # noqa: E402

from handclip import cli as cli_module  # noqa: E402
from handclip.forensic.audit import AuditLog  # noqa: E402
from handclip.serve.app import create_app  # noqa: E402
from handclip.serve.keys import KeyFileError, KeyStore, keys_path  # noqa: E402
from handclip.serve.limits import Limits  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("security-assets")
    assets = make_assets(root, num_ids=4, images_per_id=2)
    # a calibration whose summary names the server paths it was fitted from, as `handclip calibrate` writes it
    from handclip.forensic.calibration import ScoreCalibration

    calibration = ScoreCalibration.load(assets["calibration"])
    calibration.summary.update(manifest=str(root / "data" / "calibration.csv"), checkpoint=str(assets["ckpt"]),
                               identity_sha256=["a" * 64] * 60)
    assets["calibration"] = root / "calibration-with-paths.json"
    calibration.save(assets["calibration"])
    return assets


@pytest.fixture(scope="module")
def master(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("security-master") / "gallery")


@pytest.fixture
def service(assets, master, tmp_path):
    index = Path(shutil.copytree(master, tmp_path / "gallery"))
    keys = add_keys(index)
    try:
        keys["review"] = KeyStore(index).add("Reviewer", ["review", "search"])[0]
    except KeyFileError:  # a service without the review role (so each test still runs on its own)
        keys["review"] = None
    state = ServiceState(index, calibration=str(assets["calibration"]), device="cpu",
                         limits=Limits(max_request_bytes=2 * 2**20, max_pixels=1_000_000), batch_size=2)
    with TestClient(create_app(state), base_url="http://localhost") as client:
        yield client, keys, index



def _photo(assets, identity="0001", n=0) -> bytes:
    return (assets["images"] / identity / f"{n:03d}.png").read_bytes()


def test_a_case_report_is_only_for_the_key_that_asked_or_a_reviewer(service, assets):
    client, keys, _ = service
    found = client.post("/api/v1/search", files={"image": ("q.png", _photo(assets), "image/png")},
                        data={"report": "true"}, headers=auth(keys["both"])).json()
    url = found["report"]
    assert url.startswith("/api/v1/reports/") and len(url.rsplit("/", 1)[1]) == 32  # 128 random bits
    assert client.get(url, headers=auth(keys["both"])).content.startswith(b"%PDF")
    assert client.get(url, headers=auth(keys["review"])).status_code == 200
    other = client.get(url, headers=auth(keys["search"]))  # another examiner's search key
    assert other.status_code == 404 and "no such case report" in other.json()["error"]
    assert client.get(f"/api/v1/search/{found['record']}/report.pdf", headers=auth(keys["search"])).status_code == 404
    assert client.get("/api/v1/reports/../keys.json", headers=auth(keys["review"])).status_code in (404, 422)


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_answers_and_errors_name_no_server_path(service, assets, caplog):
    client, keys, index = service
    found = client.post("/api/v1/search", files={"image": ("q.png", _photo(assets), "image/png")},
                        headers=auth(keys["both"]))
    assert found.status_code == 200
    roots = [str(Path(assets["ckpt"]).parent), str(index.resolve()), str(index)]
    leaks = [s for s in _strings(found.json()) if any(root in s for root in roots) or s.startswith("/tmp")]
    assert leaks == [], leaks
    summary = found.json()["calibration"]["summary"]
    assert summary["manifest"] == "calibration.csv" and summary["checkpoint"] == "model.pt"
    assert "identity_sha256" not in summary and found.json()["audit"]["anchor"].startswith(f"{found.json()['record']}:")
    keys_path(index).write_text("{damaged")
    damaged = client.get("/api/v1/identities", headers=auth(keys["both"]))
    assert damaged.status_code == 503 and str(index) not in damaged.text and "keys.json" not in damaged.text
    assert str(keys_path(index)) in caplog.text  # the administrator finds the file in the service log


def test_error_replies_are_json_and_the_schema_declares_keys_and_errors(service, assets):
    client, keys, _ = service
    as_text = client.post("/api/v1/search", data={"image": "notafile"}, headers=auth(keys["both"]))
    assert as_text.status_code == 422 and as_text.json()["error"].startswith("image")
    assert all(set(issue) == {"loc", "msg", "type"} for issue in as_text.json()["detail"])
    schema = client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"ApiKey", "BearerKey"}
    search = schema["paths"]["/api/v1/search"]["post"]
    assert {"ApiKey": []} in search["security"]
    assert {"401", "403", "413", "415", "422"} <= set(search["responses"])
    assert "application/pdf" in schema["paths"]["/api/v1/reports/{report_id}"]["get"]["responses"]["200"]["content"]


def test_every_answer_carries_security_headers_and_foreign_hosts_are_refused(service):
    client, keys, _ = service
    for path in ("/", "/api/v1/health", "/openapi.json", "/api/v1/identities", "/static/app.js", "/nowhere"):
        headers = client.get(path).headers
        assert "default-src 'self'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    rebound = client.get("/api/v1/health", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400 and "Host" in rebound.json()["error"]
    assert client.get("/api/v1/health", headers={"Host": "127.0.0.1:8080"}).status_code == 200


def test_serve_warns_off_loopback_and_serves_tls_when_asked(master, tmp_path, monkeypatch, capsys):
    import uvicorn

    from handclip.serve.security import allowed_hosts, exposure_warning

    assert exposure_warning("127.0.0.1", tls=False) is None and exposure_warning("::1", tls=False) is None
    assert "without TLS" in exposure_warning("0.0.0.0", tls=False)
    assert allowed_hosts("0.0.0.0", ["examiner.lab"]) == ("localhost", "127.0.0.1", "::1", "examiner.lab")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    index = Path(shutil.copytree(master, tmp_path / "gallery"))
    assert cli_module.main(["serve", "--index", str(index), "--host", "0.0.0.0", "--device", "cpu"]) == 0
    assert "without TLS" in capsys.readouterr().err and calls[-1]["ssl_certfile"] is None
    assert cli_module.main(["serve", "--index", str(index), "--host", "10.0.0.5", "--tls-cert", "c.pem",
                            "--tls-key", "k.pem", "--device", "cpu"]) == 0
    assert calls[-1]["ssl_certfile"] == "c.pem" and calls[-1]["ssl_keyfile"] == "k.pem"
    assert "without TLS" not in capsys.readouterr().err
    assert cli_module.main(["serve", "--index", str(index), "--tls-cert", "c.pem", "--device", "cpu"]) == 2


def test_an_api_enrolment_of_content_enrolled_as_someone_else_names_them(service, assets):
    client, keys, index = service
    photo = _photo(assets, "0002", 1)
    done = client.post("/api/v1/enrol", data={"identity": "walk-in"},
                       files=[("images", ("mine.png", photo, "image/png"))], headers=auth(keys["enrol"]))
    assert done.status_code == 200
    body = done.json()
    assert body["added"] == 0 and body["other_identity"] == [
        {"name": "mine.png", "identity": "walk-in", "enrolled_identity": "0002", "enrolled_name": "0002/001.png"}]
    record = AuditLog(index).records()[-1]
    assert record["results"]["other_identity"][0]["enrolled_identity"] == "0002"
    assert record["results"]["other_identity"][0]["identity"] == "walk-in"


def test_repeated_form_fields_and_key_names_with_a_newline_are_refused(service, assets):
    client, keys, index = service
    two = [("image", ("a.png", _photo(assets, "0001"), "image/png")), ("image", ("b.png", _photo(assets, "0002"),
                                                                                  "image/png"))]
    before = len(AuditLog(index).records())
    refused = client.post("/api/v1/search", files=two, headers=auth(keys["both"]))
    assert refused.status_code == 422 and "image: given 2 times" in refused.json()["error"]
    assert len(AuditLog(index).records()) == before
    with pytest.raises(KeyFileError):
        KeyStore(index).add("examiner\n", ["search"])


def test_uploads_no_record_names_are_removed_when_the_service_starts(service, assets):
    client, keys, index = service
    kept = client.post("/api/v1/search", files={"image": ("q.png", _photo(assets), "image/png")},
                       headers=auth(keys["both"])).json()["queries"][0]["query"]
    serve = index / "serve"
    orphans = [serve / "queries" / f"{'1' * 64}.png", serve / "enrolled" / "walk-in" / f"{'2' * 64}.jpg",
               serve / "enrolled" / "walk-in" / f".{'3' * 64}.png.x1y2.tmp"]
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(png_bytes(__import__("PIL.Image").Image.new("RGB", (20, 20))))
    foreign = serve / "queries" / "notes.txt"
    foreign.write_text("not an upload")
    state = ServiceState(index, device="cpu")
    assert not any(p.exists() for p in orphans) and not (serve / "enrolled" / "walk-in").exists()
    assert (serve / "queries" / kept).exists() and foreign.exists()
    assert state.remove_unrecorded_uploads() == 0
