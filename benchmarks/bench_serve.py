"""Load on the examiner web service: N concurrent search clients with one enrolment client alongside.

Starts ``handclip serve`` as its own process on 127.0.0.1 with the demo's model (``demo.yaml``: tiny-cnn
at 64x64; random weights unless ``--checkpoint`` is given, which changes no timing) over a gallery of
the demo's synthetic hands, then for each client count searches for ``--seconds`` from that many
threads (HTTP keep-alive, one query photo each, ``top_k`` 10 by identity, no PDF) while one more
client keeps enrolling new identities (4 photos per request, committed in batches). Prints
requests/s, latency percentiles, errors, and the images the enrolment responses reported added
against the rows the gallery committed (they must be equal).

    python benchmarks/bench_serve.py                       # 1, 4, 16 clients, 15 s each
    python benchmarks/bench_serve.py --clients 4 --seconds 5 --ids 100
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def demo_checkpoint(path: Path, num_ids: int) -> Path:
    from handclip.model.checkpoint import save_checkpoint
    from handclip.model.handclip import build_model
    from handclip.workflows.demo import demo_config

    cfg = demo_config()
    save_checkpoint(path, build_model(cfg.model, cfg.data, num_ids), cfg, {"epoch": 0})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, key: str, clients: int, seconds: float, queries: list[bytes], next_identity) -> dict:
    import httpx

    latencies, errors, lock = [], [], threading.Lock()
    enrolled = {"added": 0, "enrol_requests": 0}
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients + 1)

    def searcher(i: int):
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
            barrier.wait()
            n = i
            while time.monotonic() < stop:
                files = {"image": ("q.png", queries[n % len(queries)], "image/png")}
                started = time.perf_counter()
                try:
                    r = client.post("/api/v1/search", files=files, data={"top_k": "10"})
                    ok = r.status_code == 200
                except httpx.HTTPError as exc:
                    ok, r = False, exc
                elapsed = time.perf_counter() - started
                with lock:
                    (latencies.append(elapsed) if ok else errors.append(str(getattr(r, "text", r))[:200]))
                n += clients

    def enroller():
        from handclip.synthetic.render import render_hand

        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
            barrier.wait()
            while time.monotonic() < stop:
                number = next_identity()
                files = [("images", (f"{s}.png", png(render_hand(number, s)), "image/png")) for s in range(4)]
                r = client.post("/api/v1/enrol", data={"identity": f"walkin{number:05d}"}, files=files)
                if r.status_code == 200:
                    enrolled["added"] += r.json()["added"]
                    enrolled["enrol_requests"] += 1
                else:
                    with lock:
                        errors.append("enrol: " + r.text[:200])

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=enroller))
    for t in threads:
        t.start()
    began = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall, "wall": wall,
            "p50": percentile(latencies, 50) * 1e3, "p95": percentile(latencies, 95) * 1e3,
            "p99": percentile(latencies, 99) * 1e3, "errors": len(errors), "error_examples": errors[:3],
            **enrolled}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a trained demo checkpoint (default: demo model, random weights)")
    p.add_argument("--ids", type=int, default=300, help="identities in the gallery (default 300)")
    p.add_argument("--images-per-id", type=int, default=4)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--workdir", default=None, help="keep the gallery here (default: a temporary folder)")
    args = p.parse_args()

    from handclip.synthetic.dataset import write_synthetic_dataset
    from handclip.synthetic.render import render_hand
    from handclip.gallery.enrol import collect_images
    from handclip.gallery.folder import Gallery
    from handclip.gallery.session import ExaminerSession
    from handclip.serve.keys import KeyStore

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_serve_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else demo_checkpoint(work / "demo_model.pt", args.ids)
    images = write_synthetic_dataset(work / "hands", num_ids=args.ids, images_per_id=args.images_per_id, size=64)
    index = work / "gallery"
    started = time.perf_counter()
    session = ExaminerSession.open(index, ckpt, device="cpu", create=True, batch_size=64)
    session.enrol(collect_images(images), examiner="bench")
    gallery = session.snapshot()
    print(f"gallery: {len(gallery)} images of {len(gallery.identities())} identities "
          f"(enrolled in {time.perf_counter() - started:.1f} s)")
    key = KeyStore(index).add("bench", ["search", "enrol"])[0]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server_log = open(work / "server.log", "w")  # a pipe nobody reads would fill up and stall the server
    server = subprocess.Popen([sys.executable, "-m", "handclip", "serve", "--index", str(index), "--port", str(port),
                               "--device", "cpu"], env=env, stdout=server_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + (work / "server.log").read_text())
            time.sleep(0.2)
        queries = [png(render_hand(i, 1)) for i in range(0, args.ids, max(1, args.ids // 32))]
        counter = iter(range(10**6))
        rows_before = len(Gallery.open(index))
        results = []
        for clients in [int(c) for c in args.clients.split(",")]:
            level_before = len(Gallery.open(index))
            result = run_level(url, key, clients, args.seconds, queries, lambda: next(counter))
            result["committed"] = len(Gallery.open(index)) - level_before
            results.append(result)
            print(f"  {clients} client(s): wall {result['wall']:.1f} s, {result['requests']} searches, {result['added']} images enrolled")
            for example in result["error_examples"]:
                print("  error:", example)
        print(f"\n{os.cpu_count()} CPU(s) visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
              f"{args.seconds:g} s per level; gallery {rows_before} images at start")
        print(f"{'clients':>7} {'searches':>9} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'enrolled':>8} {'committed':>9}")
        for r in results:
            print(f"{r['clients']:>7} {r['requests']:>9} {r['rps']:>7.1f} {r['p50']:>8.0f} {r['p95']:>8.0f} "
                  f"{r['p99']:>8.0f} {r['errors']:>6} {r['added']:>8} {r['committed']:>9}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()


if __name__ == "__main__":
    main()
