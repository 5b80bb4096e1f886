"""Gallery search at scale: exact search vs the approximate indexes on a large on-disk gallery.

Enrols N synthetic unit vectors (default 1,000,000 x 1280, ViT-B/16's feature size) into a
``handclip.Gallery``, searches it with Q queries through ``Gallery.search`` (so approximate rows
include the exact re-scoring) and prints, per index and setting: build time, queries per second,
CPU milliseconds per query, recall@10 against exact search, and peak memory. Two more columns say
what an examiner cares about: "same-person recall", the share of the exact top-10 images that show
the query's own identity and that the index also returns, and "identity recall@10", the overlap of
the top-10 people of ``by='identity'`` search with exact search's.

Data (``--data``):
  clustered  N/per_id identities x per_id images (default 5). Identity centres are Gaussian with a
             power-law spectrum (variance of the i-th of 1280 directions ~ 1/i, in a random
             rotation: no hard low-dimensional subspace; the top 128 / 256 directions hold about
             70% / 80% of the energy, participation ratio ~44, as for deep features). Each image is
             centre + ``--spread`` x another draw from the same spectrum, so the same-person cosine
             is about 1 / (1 + spread^2) = 0.70 at the default 0.65, while the best stranger among
             100k images scores about 0.46. Within-person variation sharing the dominant
             directions with between-person differences is the pessimistic case for an index
             (photos of one hand then differ most exactly where people differ), which is why the
             same-person recall is reported on its own. Queries are new images of enrolled people.
  uniform    i.i.d. uniform on the sphere: no structure, the worst case for any approximate
             index (the exact top-10 is barely closer than everything else). Its "identities" are
             arbitrary labels, so same-person recall is not reported.

The earlier clustered generator (64-d identity subspace plus isotropic noise) made every query's
5 same-person images its exact top 5 (cosine 0.66 against 0.43 for the best stranger), so half of
recall@10 was free, and put 84% of the energy in an exact 64-d subspace, which flatters any
projection-based index; it is gone.

Each phase runs in its own process so its peak memory (ru_maxrss) is its own; every phase prints
its progress and the load average to stderr and is killed after ``--phase-timeout`` seconds.

    python benchmarks/bench_gallery.py --threads 2                      # 1M x 1280, clustered
    python benchmarks/bench_gallery.py --n 200000 --threads 1 --indexes pca,ivf,hnsw
    python benchmarks/bench_gallery.py --data uniform --indexes pca,ivf
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from handclip.gallery import Gallery  # noqa: E402

CHUNK = 100_000
K = 10


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def rss_now_gib() -> dict:
    """Resident memory now, split into anonymous (the process's own) and file-backed pages (the
    memory-mapped shards, i.e. reclaimable page cache that ru_maxrss also counts)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 2**20, 2)
    return fields


class AnonPeak:
    """Samples the process's anonymous resident memory (its own allocations, without the page
    cache of memory-mapped shards that ru_maxrss includes) every 0.1 s and keeps the maximum."""

    def __init__(self):
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_now_gib().get("RssAnon", 0.0))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_now_gib().get("RssAnon", 0.0))


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def progress(message: str) -> None:
    print(f"    [{time.strftime('%H:%M:%S')} load {load()}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- data
@functools.lru_cache(maxsize=2)
def rotation(dim: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(54321).standard_normal((dim, dim)))
    return q.astype(np.float32)


def spectrum(dim: int) -> np.ndarray:
    """Per-direction standard deviations, variance ~ 1/i, total variance 1."""
    s = np.arange(1, dim + 1, dtype=np.float64) ** -0.5
    return (s / np.sqrt((s**2).sum())).astype(np.float32)


def centres(dim: int, identities: np.ndarray, seed: int) -> np.ndarray:
    return np.stack([np.random.default_rng([seed, 1, int(i)]).standard_normal(dim, dtype=np.float32)
                     for i in identities])


def clustered_rows(dim: int, identities: np.ndarray, rng, spread: float, seed: int) -> np.ndarray:
    unique, inverse = np.unique(identities, return_inverse=True)
    z = centres(dim, unique, seed)[inverse] + spread * rng.standard_normal((len(identities), dim), dtype=np.float32)
    x = (z * spectrum(dim)) @ rotation(dim).T
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_vectors(a, start: int, count: int) -> np.ndarray:
    """Rows start..start+count of the gallery (deterministic, generated chunk by chunk)."""
    rng = np.random.default_rng([a.seed, start])
    if a.data == "uniform":
        x = rng.standard_normal((count, a.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return clustered_rows(a.dim, np.arange(start, start + count) // a.per_id, rng, a.spread, a.seed)


def make_queries(a) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([a.seed, 99])
    identities = rng.integers(0, a.n // a.per_id, a.queries)
    if a.data == "uniform":
        x = rng.standard_normal((a.queries, a.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), identities
    return clustered_rows(a.dim, identities, rng, a.spread, a.seed), identities


# ---------------------------------------------------------------------- phases
def phase_build(a) -> dict:
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gallery = Gallery.create(work / "gallery", {"architecture": "bench", "feature_dim": a.dim}, a.dim)
    generate = enrol = 0.0
    for start in range(0, a.n, CHUNK):
        count = min(CHUNK, a.n - start)
        t0 = time.perf_counter()
        x = make_vectors(a, start, count)
        t1 = time.perf_counter()
        rows = range(start, start + count)
        gallery.add(x, [f"/synthetic/{i}.png" for i in rows], [str(i // a.per_id) for i in rows],
                    [f"{a.seed}-{i}" for i in rows])
        generate += t1 - t0
        enrol += time.perf_counter() - t1
        progress(f"enrolled {start + count:,} / {a.n:,} (generate {generate:.0f} s, enrol {enrol:.0f} s)")
    queries, identities = make_queries(a)
    np.savez(work / "queries.npz", queries=queries, identities=identities)
    result = {"enrol_s": enrol, "generate_s": generate, "rows": len(gallery),
              "disk_gib": sum(p.stat().st_size for p in (work / "gallery").rglob("*")) / 2**30}
    (work / "build.json").write_text(json.dumps(result))
    return result


def timed_search(gallery: Gallery, queries: np.ndarray, by: str, kind: str):
    w0, c0 = time.perf_counter(), time.process_time()
    hits = gallery.search(queries, top_k=K, by=by, index_type=kind)
    return hits, time.perf_counter() - w0, time.process_time() - c0


def image_rows(hits) -> list[list[int]]:
    return [[int(Path(c.path).stem) for c in q] for q in hits]


def phase_search(a) -> dict:
    work = Path(a.workdir)
    data = np.load(work / "queries.npz")
    queries, identities = data["queries"], data["identities"]
    t0 = time.perf_counter()
    gallery = Gallery.open(work / "gallery", threads=a.threads)
    out = {"open_s": time.perf_counter() - t0, "rows": len(gallery), "results": [], "load_start": load()}
    kind = a.index
    cache = work / "gallery" / "ann" / f"{kind}.faiss"
    if kind == "flat":
        t0 = time.perf_counter()
        gallery.flat_index()
        out["build_s"] = time.perf_counter() - t0
        progress(f"exact: vectors loaded in {out['build_s']:.1f} s")
    else:
        out["from_cache"] = cache.exists()
        t0 = time.perf_counter()
        gallery.ann.index(kind)
        out["build_s"] = time.perf_counter() - t0
        out["index_gib"] = cache.stat().st_size / 2**30
        progress(f"{kind}: index {'loaded' if out['from_cache'] else 'built'} in {out['build_s']:.1f} s")
    params = gallery.ann.params.get(kind)
    knob = {"pca": "shortlist", "ivf": "nprobe", "hnsw": "ef_search"}.get(kind)
    if kind != "flat":
        out["settings"] = gallery.ann.settings(kind)
    if not a.cold:
        # Like exact search's loading, first touch every shard (SHA-256 check, memory map) untimed.
        t0 = time.perf_counter()
        gallery.search(queries[:20], top_k=K, by="image", index_type=kind)
        gallery.search(queries[:20], top_k=K, by="identity", index_type=kind)
        out["warm_s"] = time.perf_counter() - t0
    settings = [None] + (a.sweep or [])
    truth = None if kind == "flat" else json.loads((work / "truth.json").read_text())
    for value in settings:
        if value is not None:
            setattr(params, knob, value)
        label = "exact" if kind == "flat" else f"{knob} {gallery.ann.settings(kind)[knob]}"
        if value is None and kind != "flat":
            label += " (default)"
        hits, wall, cpu = timed_search(gallery, queries, "image", kind)
        found = image_rows(hits)
        ident_hits, ident_wall, _ = timed_search(gallery, queries, "identity", kind)
        people = [[c.identity for c in q] for q in ident_hits]
        row = {"setting": label, "qps": len(queries) / wall, "cpu_ms": 1000 * cpu / len(queries),
               "identity_qps": len(queries) / ident_wall}
        if kind == "flat":
            truth = {"rows": found, "people": people}
            (work / "truth.json").write_text(json.dumps(truth))
            row.update(recall=1.0, mates=1.0 if a.data == "clustered" else None, identity_recall=1.0)
        else:
            row["recall"] = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth["rows"])]))
            row["identity_recall"] = float(np.mean([len(set(f) & set(t)) / len(t)
                                                    for f, t in zip(people, truth["people"])]))
            if a.data == "clustered":
                mates = [{r for r in t if r // a.per_id == i} for t, i in zip(truth["rows"], identities)]
                row["mates"] = float(sum(len(m & set(f)) for m, f in zip(mates, found)) / sum(map(len, mates)))
            else:
                row["mates"] = None
        out["results"].append(row)
        progress(f"{kind} {label}: {row['qps']:.1f} queries/s, recall@10 {row['recall']:.3f}")
    out["peak_gib"] = peak_rss_gib()
    out["rss_end_gib"] = rss_now_gib()
    out["load_end"] = load()
    return out


def run_phase(a, phase: str, index: str | None = None, sweep=None, cold: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--n", str(a.n), "--dim", str(a.dim), "--queries",
           str(a.queries), "--data", a.data, "--workdir", a.workdir, "--seed", str(a.seed),
           "--per-id", str(a.per_id), "--spread", str(a.spread), "--threads", str(a.threads)]
    if index:
        cmd += ["--index", index]
    if sweep:
        cmd += ["--sweep", ",".join(map(str, sweep))]
    if cold:
        cmd += ["--cold"]
    progress(f"phase {phase} {index or ''} starts")
    try:
        proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, timeout=a.phase_timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"phase {phase} {index or ''} ran past --phase-timeout {a.phase_timeout} s; stopped")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {phase} {index or ''}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    p.add_argument("--per-id", type=int, default=5)
    p.add_argument("--spread", type=float, default=0.65, help="within-person / between-person amplitude (clustered)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--indexes", default="pca,ivf,hnsw", help="approximate indexes to compare with exact search")
    p.add_argument("--pca-sweep", default="1,6", help="shortlist values tried besides the default")
    p.add_argument("--ivf-sweep", default="", help="nprobe values tried besides the default (nlist/16)")
    p.add_argument("--hnsw-sweep", default="512", help="ef_search values tried besides the default")
    p.add_argument("--phase-timeout", type=int, default=3600, help="seconds any one phase may run")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "handclip-bench-gallery"))
    p.add_argument("--keep", action="store_true", help="keep the gallery on disk afterwards")
    p.add_argument("--reuse", action="store_true", help="reuse the gallery a previous --keep run left in --workdir")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    p.add_argument("--sweep", help=argparse.SUPPRESS)
    p.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        a.sweep = [int(v) for v in (a.sweep or "").split(",") if v]
        sampler = AnonPeak()
        result = phase_build(a) if a.phase == "build" else phase_search(a)
        result.setdefault("peak_gib", peak_rss_gib())
        result["peak_anon_gib"] = sampler.stop()
        print(json.dumps(result))
        return

    print(f"gallery benchmark: {a.n:,} x {a.dim} {a.data} unit vectors"
          f"{f' ({a.per_id} per identity, spread {a.spread})' if a.data == 'clustered' else ''}, "
          f"{a.queries:,} queries, top-{K}, {a.threads} threads, {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load at start {load()}", flush=True)
    build_file = Path(a.workdir) / "build.json"
    if a.reuse and build_file.exists():
        build = json.loads(build_file.read_text())
        shutil.rmtree(Path(a.workdir) / "gallery" / "ann", ignore_errors=True)  # time the index builds afresh
        print(f"  reusing the gallery in {a.workdir}: {json.dumps(build)}", file=sys.stderr, flush=True)
    else:
        build = run_phase(a, "build")
    flat = run_phase(a, "search", "flat")
    rows = [("exact (IndexFlatIP)", flat)]
    approx = {}
    for name in [s for s in a.indexes.split(",") if s]:
        sweep = [int(v) for v in getattr(a, f"{name}_sweep").split(",") if v]
        approx[name] = run_phase(a, "search", name, sweep)
        rows.append((name, approx[name]))
    reload = None
    if approx:
        first = next(iter(approx))
        reload = run_phase(a, "search", first, cold=True)  # a fresh process: loads the cache, checks the shards

    print(f"\nenrol into gallery (write shards + SHA-256): {build['enrol_s']:.1f} s "
          f"({build['rows'] / build['enrol_s']:,.0f} vectors/s), on disk {build['disk_gib']:.2f} GiB; "
          f"exact search loads the vectors in {flat['build_s']:.1f} s")
    for name, res in approx.items():
        print(f"{name}: index file {res['index_gib']:.2f} GiB, settings {json.dumps(res['settings'])}")
    if reload:
        r = reload["results"][0]
        print(f"{first} from its cache in a new process: open {reload['open_s']:.1f} s, load index "
              f"{reload['build_s']:.1f} s, then {r['qps']:.1f} queries/s for the first {a.queries} queries "
              f"(includes checking every shard's SHA-256 once)")
    for name, res in rows:
        print(f"{name}: peak RSS {res['peak_gib']:.2f} GiB, of which its own (anonymous) memory peaked at "
              f"{res['peak_anon_gib']:.2f} GiB; resident at the end {json.dumps(res['rss_end_gib'])}")
    print()
    print("| search | setting | build s | queries/s | CPU ms/query | recall@10 | same-person recall "
          "| identity recall@10 | by-identity queries/s | peak RSS GiB (own) | load (start, end) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, res in rows:
        for r in res["results"]:
            mates = "-" if r.get("mates") is None else f"{r['mates']:.3f}"
            print(f"| {name} | {r['setting']} | {res['build_s']:.1f} | {r['qps']:,.1f} | {r['cpu_ms']:.2f} "
                  f"| {r['recall']:.3f} | {mates} | {r['identity_recall']:.3f} | {r['identity_qps']:,.1f} "
                  f"| {res['peak_gib']:.2f} ({res['peak_anon_gib']:.2f}) "
                  f"| {res['load_start'].split('/')[0]}, {res['load_end'].split('/')[0]} |")
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
