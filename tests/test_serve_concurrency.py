"""Concurrent enrolments and searches through the service: nothing lost, no torn read."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from serve_helpers import add_keys, enrolled_gallery, make_assets, png_bytes

from fastapi.testclient import TestClient  # noqa: E402

from handclip.gallery import Gallery  # noqa: E402
from handclip.forensic.audit import AuditLog  # noqa: E402
from handclip.serve.app import create_app  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402
from handclip.synthetic.render import render_hand  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("serve-conc"), num_ids=4, images_per_id=2)


def _check_committed(found: dict, final: Gallery, top_k: int) -> int:
    """Assert a search answer is exactly what the committed state of its row count gives."""
    rows = found["gallery"]["rows"]
    committed = final.identity_of_row[:rows]
    assert found["gallery"]["images"] == rows and found["gallery"]["identities"] == len(set(committed))
    for c in found["candidates"]:
        assert c["identity"] in committed and c["num_images"] == committed.count(c["identity"])
    assert len(found["candidates"]) == min(top_k, len(set(committed)))
    return rows


def test_searches_during_enrolments_see_only_committed_states_and_no_image_is_lost(assets, tmp_path):
    index = enrolled_gallery(assets, tmp_path / "gallery")
    keys = add_keys(index)
    state = ServiceState(index, device="cpu", batch_size=2)  # small batches: many commits and compactions
    start_rows = len(Gallery.open(index))
    enrolments = {f"person{i}": [png_bytes(render_hand(100 + i, s)) for s in range(5)] for i in range(2)}
    searchers, query = 4, png_bytes(render_hand(0, 0))
    barrier = threading.Barrier(len(enrolments) + searchers)
    done = threading.Event()
    answers, enrolled, failures = [], [], []

    with TestClient(create_app(state), base_url="http://localhost") as client:
        def enrol(identity, photos):
            barrier.wait()
            try:
                files = [("images", (f"{identity}-{i}.png", data, "image/png")) for i, data in enumerate(photos)]
                r = client.post("/api/v1/enrol", data={"identity": identity}, files=files,
                                headers={"X-API-Key": keys["enrol"]})
                (enrolled if r.status_code == 200 else failures).append(r.json())
            except Exception as exc:  # noqa: BLE001 - collected and asserted on below
                failures.append(repr(exc))

        def search():
            barrier.wait()
            last = False
            while not last:
                last = done.is_set() and len(answers) >= 8  # one more search after the enrolments ended
                try:
                    r = client.post("/api/v1/search", data={"top_k": "20"},
                                    files={"image": ("q.png", query, "image/png")},
                                    headers={"X-API-Key": keys["search"]})
                    (answers if r.status_code == 200 else failures).append(r.json())
                except Exception as exc:  # noqa: BLE001
                    failures.append(repr(exc))
                    return

        threads = [threading.Thread(target=enrol, args=item) for item in enrolments.items()]
        threads += [threading.Thread(target=search) for _ in range(searchers)]
        for t in threads:
            t.start()
        for t in threads[:len(enrolments)]:
            t.join(timeout=300)
        done.set()
        for t in threads:
            t.join(timeout=300)

    assert not failures, failures[:3]
    # nothing lost: every image the enrolments reported added is committed, once
    final = Gallery.open(index)
    assert sum(r["added"] for r in enrolled) == 10 and len(final) == start_rows + 10
    for identity in enrolments:
        assert len(final.images_of(identity)) == 5
    # no torn read: each search saw exactly the rows of one committed state
    seen_rows = set()
    for found in answers:
        seen_rows.add(_check_committed(found, final, 20))
    assert len(answers) >= 8 and max(seen_rows) == len(final)  # the last commit was picked up
    assert len(seen_rows) >= 2  # searches did run while batches were being committed
    # every search and enrolment has its audit record, and the chain verifies
    records = AuditLog(index).records()
    assert sum(r["command"] == "search" for r in records) == len(answers)
    assert AuditLog(index).verify().ok


def test_searches_while_another_process_enrols_and_compacts_see_its_commits(assets, tmp_path):
    """A `handclip enrol` in another process commits one image per batch (so shards are merged and
    deleted under the service) while the service searches: every answer is a committed state."""
    import os
    import subprocess
    import sys

    index = enrolled_gallery(assets, tmp_path / "gallery")
    keys = add_keys(index)
    state = ServiceState(index, device="cpu")
    start_rows = len(Gallery.open(index))
    newcomers = tmp_path / "newcomers"
    for i in range(6):
        (newcomers / f"p{i}").mkdir(parents=True)
        for s in range(2):
            render_hand(200 + i, s).save(newcomers / f"p{i}" / f"{s}.png")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    answers, failures = [], []
    with TestClient(create_app(state), base_url="http://localhost") as client:
        writer = subprocess.Popen([sys.executable, "-m", "handclip", "enrol", "--checkpoint", str(assets["ckpt"]),
                                   "--images", str(newcomers), "--index", str(index), "--batch-size", "1",
                                   "--no-progress", "--device", "cpu"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)

        def search():
            while writer.poll() is None or len(answers) < 4:
                try:
                    r = client.post("/api/v1/search", data={"top_k": "20"},
                                    files={"image": ("q.png", png_bytes(render_hand(0, 0)), "image/png")},
                                    headers={"X-API-Key": keys["search"]})
                    (answers if r.status_code == 200 else failures).append(r.json())
                except Exception as exc:  # noqa: BLE001 - collected and asserted on below
                    failures.append(repr(exc))
                    return

        threads = [threading.Thread(target=search) for _ in range(2)]
        for t in threads:
            t.start()
        output = writer.communicate(timeout=300)[0]
        for t in threads:
            t.join(timeout=300)
    assert writer.returncode == 0, output
    assert not failures, failures[:3]
    final = Gallery.open(index)
    assert len(final) == start_rows + 12
    seen = {_check_committed(found, final, 20) for found in answers}
    assert max(seen) == len(final)  # the other process's last commit was picked up


def test_a_service_killed_during_an_enrolment_keeps_every_committed_batch_and_resumes(assets, tmp_path):
    """SIGKILL the server while a 4-batch enrolment is committing: the gallery holds whole batches
    only, opens, searches, and the same upload again adds exactly the images that were lost."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from handclip.gallery.writer import COMMIT_DELAY_ENV

    index = enrolled_gallery(assets, tmp_path / "gallery")
    keys = add_keys(index)
    start_rows = len(Gallery.open(index))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", COMMIT_DELAY_ENV: "0.5"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "handclip", "serve", "--index", str(index), "--port", str(port),
                               "--batch-size", "2", "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    photos = [("images", (f"{i}.png", png_bytes(render_hand(300, i)), "image/png")) for i in range(8)]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)

        def enrol():
            try:
                httpx.post(url + "/api/v1/enrol", data={"identity": "late"}, files=photos,
                           headers={"X-API-Key": keys["enrol"]}, timeout=120)
            except httpx.HTTPError:
                pass  # the server is killed under this request

        thread = threading.Thread(target=enrol)
        thread.start()
        while len(Gallery.open(index)) < start_rows + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        thread.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    kept = len(Gallery.open(index)) - start_rows
    assert kept in (2, 4, 6), kept  # whole batches only, and the kill came before the last one
    assert AuditLog(index).verify(check_files=False).ok
    state = ServiceState(index, device="cpu", batch_size=2)
    with TestClient(create_app(state), base_url="http://localhost") as client:
        again = client.post("/api/v1/enrol", data={"identity": "late"}, files=photos,
                            headers={"X-API-Key": keys["enrol"]}).json()
        assert again["added"] == 8 - kept and again["already_enrolled"] == kept
        found = client.post("/api/v1/search", files={"image": ("q.png", png_bytes(render_hand(300, 0)), "image/png")},
                            headers={"X-API-Key": keys["search"]}).json()
        assert found["candidates"][0]["identity"] == "late"
    assert len(Gallery.open(index).images_of("late")) == 8
