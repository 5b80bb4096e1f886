"""Gallery search at scale: exact (FAISS flat) vs approximate (HNSW, IVF) search on a large gallery.

Enrols N random unit vectors (default 1,000,000 x 1280, ViT-B/16's feature size) into a
``handclip.Gallery`` on disk, then searches it with Q queries and prints build time, queries per
second, recall@10 of each approximate index against exact search, and peak memory.

Two kinds of random vectors (``--data``):
  clustered  5 images per identity around random identity centres in a 64-dim subspace plus
             full-dimensional noise; queries are new images of enrolled identities. Real embeddings
             are like this (low intrinsic dimension, grouped by person).
  uniform    i.i.d. uniform on the sphere: no structure at all, the worst case for any approximate
             index (every vector is almost equally far from a query, so the exact top-10 can only be
             found by looking at nearly everything).

Each phase runs in its own process so the reported peak memory (ru_maxrss) is that phase's own.

    python benchmarks/bench_gallery.py                       # 1M x 1280, clustered
    python benchmarks/bench_gallery.py --n 100000 --data uniform
"""

from __future__ import annotations

import argparse
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
LATENT = 64


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def basis(dim: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, LATENT)))
    return q.astype(np.float32)  # [dim, LATENT], orthonormal columns


def make_vectors(kind: str, dim: int, start: int, count: int, per_id: int, seed: int) -> np.ndarray:
    """Rows start..start+count of the gallery (deterministic, generated chunk by chunk)."""
    rng = np.random.default_rng([seed, start])
    if kind == "uniform":
        x = rng.standard_normal((count, dim), dtype=np.float32)
    else:
        ids = np.arange(start, start + count) // per_id
        centres = np.stack([np.random.default_rng([seed, 1, i]).standard_normal(LATENT, dtype=np.float32)
                            for i in np.unique(ids)])
        latent = centres[ids - ids[0]] + 0.5 * rng.standard_normal((count, LATENT), dtype=np.float32)
        x = latent @ basis(dim).T / np.sqrt(LATENT) + 0.5 * rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_queries(kind: str, dim: int, n: int, count: int, per_id: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 99])
    if kind == "uniform":
        x = rng.standard_normal((count, dim), dtype=np.float32)
    else:
        ids = rng.integers(0, n // per_id, count)
        centres = np.stack([np.random.default_rng([seed, 1, i]).standard_normal(LATENT, dtype=np.float32) for i in ids])
        latent = centres + 0.5 * rng.standard_normal((count, LATENT), dtype=np.float32)
        x = latent @ basis(dim).T / np.sqrt(LATENT) + 0.5 * rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def phase_build(a) -> dict:
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    gallery = Gallery.create(work / "gallery", {"architecture": "bench", "feature_dim": a.dim}, a.dim)
    gen = 0.0
    for start in range(0, a.n, CHUNK):
        count = min(CHUNK, a.n - start)
        g0 = time.perf_counter()
        x = make_vectors(a.data, a.dim, start, count, a.per_id, a.seed)
        gen += time.perf_counter() - g0
        rows = range(start, start + count)
        gallery.add(x, [f"/synthetic/{i}.png" for i in rows], [str(i // a.per_id) for i in rows],
                    [f"{a.seed}-{i}" for i in rows])
    np.save(work / "queries.npy", make_queries(a.data, a.dim, a.n, a.queries, a.per_id, a.seed))
    result = {"enrol_s": time.perf_counter() - t0 - gen, "generate_s": gen, "rows": len(gallery),
              "disk_gib": sum(p.stat().st_size for p in (work / "gallery").rglob("*")) / 2**30}
    (work / "build.json").write_text(json.dumps(result))
    return result


def phase_search(a) -> dict:
    work = Path(a.workdir)
    queries = np.load(work / "queries.npy")
    t0 = time.perf_counter()
    gallery = Gallery.open(work / "gallery", threads=a.threads)
    open_s = time.perf_counter() - t0
    out = {"open_s": open_s, "rows": len(gallery), "results": []}
    if a.index == "flat":
        t0 = time.perf_counter()
        index = gallery.flat_index()
        out["build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, truth = index.search(queries, a.k)
        dt = time.perf_counter() - t0
        np.save(work / "truth.npy", truth)
        out["results"].append({"setting": "exact", "qps": len(queries) / dt, "recall": 1.0})
        t0 = time.perf_counter()
        gallery.search(queries[:100], top_k=a.k, by="identity", index_type="flat")
        out["identity_qps"] = 100 / (time.perf_counter() - t0)
    else:
        truth = np.load(work / "truth.npy")
        cache = work / "gallery" / "ann" / f"{a.index}.faiss"
        cached = cache.exists()
        t0 = time.perf_counter()
        index = gallery.ann_index(a.index)
        out["build_s"] = time.perf_counter() - t0
        out["from_cache"] = cached
        out["index_gib"] = cache.stat().st_size / 2**30
        for value in a.sweep:
            if a.index == "hnsw":
                index.hnsw.efSearch = value
            else:
                index.nprobe = value
            t0 = time.perf_counter()
            _, found = index.search(queries, a.k)
            dt = time.perf_counter() - t0
            recall = np.mean([len(set(f) & set(t)) / a.k for f, t in zip(found, truth)])
            name = "efSearch" if a.index == "hnsw" else "nprobe"
            out["results"].append({"setting": f"{name}={value}", "qps": len(queries) / dt, "recall": float(recall)})
    out["peak_gib"] = peak_rss_gib()
    return out


def run_phase(a, phase: str, index: str | None = None, sweep=None) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--n", str(a.n), "--dim", str(a.dim), "--queries",
           str(a.queries), "--k", str(a.k), "--data", a.data, "--workdir", a.workdir, "--seed", str(a.seed),
           "--per-id", str(a.per_id), "--threads", str(a.threads)]
    if index:
        cmd += ["--index", index]
    if sweep:
        cmd += ["--sweep", ",".join(map(str, sweep))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_gib"] = result.get("peak_gib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)
    print(f"  {phase} {index or ''}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    p.add_argument("--per-id", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--indexes", default="hnsw,ivf", help="approximate indexes to compare with exact search")
    p.add_argument("--hnsw-sweep", default="64,128,256,512")
    p.add_argument("--ivf-sweep", default="16,32,64,128")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "handclip-bench-gallery"))
    p.add_argument("--keep", action="store_true", help="keep the gallery on disk afterwards")
    p.add_argument("--reuse", action="store_true", help="reuse the gallery a previous --keep run left in --workdir")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    p.add_argument("--sweep", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        a.sweep = [int(v) for v in (a.sweep or "").split(",") if v]
        result = phase_build(a) if a.phase == "build" else phase_search(a)
        result.setdefault("peak_gib", peak_rss_gib())
        print(json.dumps(result))
        return

    print(f"gallery benchmark: {a.n:,} x {a.dim} {a.data} unit vectors, {a.queries:,} queries, "
          f"top-{a.k}, {a.threads} threads, {os.cpu_count()} CPUs", flush=True)
    build_file = Path(a.workdir) / "build.json"
    if a.reuse and build_file.exists():
        build = json.loads(build_file.read_text())
        shutil.rmtree(Path(a.workdir) / "gallery" / "ann", ignore_errors=True)  # time the index builds afresh
        print(f"  reusing the gallery in {a.workdir}: {json.dumps(build)}", file=sys.stderr, flush=True)
    else:
        build = run_phase(a, "build")
    flat = run_phase(a, "search", "flat")
    rows = [("exact (IndexFlatIP)", flat["build_s"], flat["results"][0], flat["peak_gib"])]
    approx = {}
    for name in [s for s in a.indexes.split(",") if s]:
        sweep = [int(v) for v in (a.hnsw_sweep if name == "hnsw" else a.ivf_sweep).split(",")]
        approx[name] = run_phase(a, "search", name, sweep)
        reload = run_phase(a, "search", name, sweep[-1:])  # second open: loads the on-disk cache
        approx[name]["reload_s"] = reload["build_s"]
        label = "HNSW32" if name == "hnsw" else "IVF-Flat"
        for r in approx[name]["results"]:
            rows.append((f"{label} {r['setting']}", approx[name]["build_s"], r, approx[name]["peak_gib"]))

    print(f"\nenrol into gallery (write shards + SHA-256): {build['enrol_s']:.1f} s "
          f"({build['rows'] / build['enrol_s']:,.0f} vectors/s), on disk {build['disk_gib']:.2f} GiB; "
          f"open {flat['open_s']:.2f} s; by-identity exact search {flat['identity_qps']:.1f} queries/s")
    for name, res in approx.items():
        print(f"{name}: index file {res['index_gib']:.2f} GiB, reopening from the cache {res['reload_s']:.1f} s")
    print()
    print("| search | build s | queries/s | recall@10 vs exact | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|")
    for label, build_s, r, peak in rows:
        print(f"| {label} | {build_s:.1f} | {r['qps']:,.1f} | {r['recall']:.3f} | {peak:.2f} |")
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
