"""The enrolment gallery: search correctness, persistence, duplicate detection, fingerprints, faults."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from handclip.errors import GalleryError, HandCLIPError
from handclip.gallery import Gallery, GalleryWriter
from handclip.gallery import ann as ann_module
from handclip.gallery import index as search_module
from handclip.gallery.writer import COMMIT_DELAY_ENV

DIM = 32
FINGERPRINT = {"architecture": "tiny-rn", "checkpoint_sha256": "a" * 64, "feature_dim": DIM,
               "normalisation": "l2", "neck_feat": "before", "image_size": [64, 64]}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(num_ids: int, per_id: int, noise: float = 0.3, seed: int = 0, dim: int = DIM):
    """Unit vectors around one random centre per identity (like embeddings of one person's hand)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((num_ids, dim)))
    ids = np.repeat(np.arange(num_ids), per_id)
    vectors = unit(centres[ids] + noise * rng.standard_normal((len(ids), dim)) / np.sqrt(dim))
    return vectors, [f"person{i:03d}" for i in ids], centres


def enrol(gallery: Gallery, vectors, identities, prefix="img"):
    paths = [f"/evidence/{prefix}{i:05d}.png" for i in range(len(vectors))]
    hashes = [f"{prefix}-hash-{i}" for i in range(len(vectors))]
    return gallery.add(vectors, paths, identities, hashes)


@pytest.fixture
def gallery_dir(tmp_path):
    return tmp_path / "gallery"


def test_enrolled_image_finds_its_identity_first_by_identity_and_by_image(gallery_dir):
    vectors, identities, _ = clustered(40, 5)
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    assert enrol(gallery, vectors, identities) == 200
    queries = vectors[[0, 57, 199]]
    by_identity = gallery.search(queries, top_k=5, by="identity")
    by_image = gallery.search(queries, top_k=5, by="image")
    for q, row in enumerate([0, 57, 199]):
        assert by_identity[q][0].identity == identities[row]
        assert by_identity[q][0].score == pytest.approx(1.0, abs=1e-5)
        assert by_image[q][0].path == f"/evidence/img{row:05d}.png"
        assert [c.rank for c in by_identity[q]] == [1, 2, 3, 4, 5]
        assert len({c.identity for c in by_identity[q]}) == 5  # one entry per person
        scores = [c.score for c in by_identity[q]]
        assert scores == sorted(scores, reverse=True)


def test_by_identity_takes_the_best_image_and_counts_matches(gallery_dir):
    rng = np.random.default_rng(1)
    query = unit(rng.standard_normal(DIM))
    other = unit(rng.standard_normal((30, DIM)))
    other -= 0.9 * (other @ query)[:, None] * query  # 30 unrelated people, nearly orthogonal to the query
    other = unit(other)
    # "alice": three images at similarities ~0.95, ~0.9 and one poor photo; "bob": one image at ~0.93.
    def at(sim, seed):
        noise = unit(np.random.default_rng(seed).standard_normal(DIM))
        noise = unit(noise - (noise @ query) * query)
        return unit(sim * query + np.sqrt(1 - sim**2) * noise)
    vectors = np.stack([at(0.95, 2), at(0.90, 3), at(0.10, 4), at(0.93, 5), *other])
    identities = ["alice", "alice", "alice", "bob"] + [f"p{i}" for i in range(30)]
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    enrol(gallery, vectors, identities)
    [ranked] = gallery.search(query, top_k=3, by="identity")
    assert [c.identity for c in ranked[:2]] == ["alice", "bob"]
    alice = ranked[0]
    assert alice.score == pytest.approx(0.95, abs=1e-4)  # max over her images, not the mean
    assert alice.num_images == 3 and alice.matched == 2  # two of her photos are in the top-3 image hits
    assert [round(s, 2) for _, s in alice.images] == [0.95, 0.9, 0.1]
    assert alice.path == "/evidence/img00000.png"
    assert ranked[1].matched == 1 and ranked[1].num_images == 1


def test_by_identity_returns_top_k_people_when_one_person_fills_the_image_hits(gallery_dir):
    rng = np.random.default_rng(2)
    query = unit(rng.standard_normal(DIM))
    # 100 near-identical photos of one person outrank everyone else: the search must go deeper.
    crowd = unit(query + 0.05 * rng.standard_normal((100, DIM)))
    rest = unit(rng.standard_normal((20, DIM)))
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    enrol(gallery, np.concatenate([crowd, rest]), ["crowd"] * 100 + [f"p{i}" for i in range(20)])
    [ranked] = gallery.search(query, top_k=5, by="identity")
    assert ranked[0].identity == "crowd" and ranked[0].matched == 5 and ranked[0].num_images == 100
    assert len(ranked) == 5 and len({c.identity for c in ranked}) == 5
    exact = sorted(((float(rest[i] @ query), f"p{i}") for i in range(20)), reverse=True)[:4]
    assert [c.identity for c in ranked[1:]] == [name for _, name in exact]


def test_incremental_enrolment_appends_and_survives_reopening(gallery_dir):
    vectors, identities, _ = clustered(20, 4)
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    enrol(gallery, vectors[:40], identities[:40], prefix="a")
    gallery.search(vectors[:1], top_k=1)  # builds the in-memory index, which must then grow
    enrol(gallery, vectors[40:], identities[40:], prefix="b")
    assert len(gallery) == 80
    assert gallery.search(vectors[79:80], top_k=1, by="image")[0][0].path == "/evidence/b00039.png"
    reopened = Gallery.open(gallery_dir)
    assert len(reopened) == 80 and reopened.identities() == sorted(set(identities))
    np.testing.assert_array_equal(reopened.vectors(), vectors)
    assert reopened.paths[:2] == ["/evidence/a00000.png", "/evidence/a00001.png"]


def test_duplicate_file_content_is_detected_and_skipped(gallery_dir):
    vectors, identities, _ = clustered(5, 4)
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    hashes = [f"h{i}" for i in range(20)]
    paths = [f"/x/{i}.png" for i in range(20)]
    assert gallery.add(vectors[:10], paths[:10], identities[:10], hashes[:10]) == 10
    # A batch overlapping the first, with one file repeated inside the batch too.
    batch = list(range(5, 20)) + [12]
    added = gallery.add(vectors[batch], [f"/copy/{i}.png" for i in batch], [identities[i] for i in batch],
                        [hashes[i] for i in batch])
    assert added == 10 and len(gallery) == 20
    assert gallery.contains("h0") and gallery.contains("h19") and not gallery.contains("h20")
    assert gallery.add(vectors[:3], paths[:3], identities[:3], hashes[:3]) == 0
    assert len(Gallery.open(gallery_dir)) == 20


def test_persistence_across_processes(gallery_dir):
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {SRC!r})
        from handclip.gallery import Gallery
        mode, path = sys.argv[1], sys.argv[2]
        rng = np.random.default_rng(7)
        v = rng.standard_normal((30, {DIM})).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if mode == "enrol":
            g = Gallery.create(path, {FINGERPRINT!r}, {DIM})
            g.add(v, [f"/img/{{i}}.png" for i in range(30)], [f"id{{i // 3}}" for i in range(30)],
                  [f"h{{i}}" for i in range(30)])
        else:
            g = Gallery.open(path)
            r = g.search(v[[4, 29]], top_k=2, by="identity")
            print(json.dumps([[c.as_dict() for c in q] for q in r]))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", script, "enrol", str(gallery_dir)], check=True, env=env)
    out = subprocess.run([sys.executable, "-c", script, "search", str(gallery_dir)], check=True, env=env,
                         capture_output=True, text=True).stdout
    result = json.loads(out)
    assert result[0][0]["identity"] == "id1" and result[0][0]["path"] == "/img/4.png"
    assert result[1][0]["identity"] == "id9" and result[1][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert Gallery.open(gallery_dir).fingerprint == FINGERPRINT


def test_a_different_model_is_refused_naming_the_differing_fields(gallery_dir):
    Gallery.create(gallery_dir, FINGERPRINT, DIM, checkpoint="/models/a.pt")
    other = dict(FINGERPRINT, architecture="ViT-B-16", checkpoint_sha256="b" * 64)
    with pytest.raises(GalleryError) as info:
        Gallery.open_or_create(gallery_dir, other, DIM)
    message = str(info.value)
    assert "architecture 'tiny-rn' vs 'ViT-B-16'" in message
    assert "checkpoint_sha256" in message and "aaaa" in message and "bbbb" in message
    assert "image_size" not in message  # only the fields that differ
    with pytest.raises(GalleryError, match="dim 32 vs 64"):
        Gallery.open(gallery_dir).check_model(dict(FINGERPRINT, feature_dim=64), 64)
    # The same model (even from another path) is accepted and its path recorded.
    same = Gallery.open_or_create(gallery_dir, dict(FINGERPRINT, checkpoint_path="/elsewhere.pt"), DIM,
                                  checkpoint="/models/b.pt")
    assert Gallery.open(gallery_dir).checkpoint == "/models/b.pt" and len(same) == 0


def test_empty_gallery_and_bad_inputs_give_clear_errors(gallery_dir, tmp_path):
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    with pytest.raises(GalleryError, match="is empty; enrol images"):
        gallery.search(unit(np.ones(DIM)))
    with pytest.raises(GalleryError, match="already holds a gallery"):
        Gallery.create(gallery_dir, FINGERPRINT, DIM)
    with pytest.raises(GalleryError, match="does not exist"):
        Gallery.open(tmp_path / "nowhere")
    with pytest.raises(GalleryError, match=r"gallery\.json is missing"):
        Gallery.open(tmp_path)
    with pytest.raises(GalleryError, match="L2-normalised"):
        gallery.add(np.ones((2, DIM), np.float32), ["a", "b"], ["x", "x"], ["h1", "h2"])
    with pytest.raises(GalleryError, match=r"shape \[N, 32\]"):
        gallery.add(unit(np.ones((2, 8))), ["a", "b"], ["x", "x"], ["h1", "h2"])
    with pytest.raises(GalleryError, match="one path, identity and file hash"):
        gallery.add(unit(np.ones((2, DIM))), ["a", "b"], ["x"], ["h1", "h2"])
    enrol(gallery, unit(np.eye(DIM)[:3] + 0.01), ["x", "y", "z"])
    with pytest.raises(GalleryError, match=r"shape \[M, 32\]"):
        gallery.search(np.ones((1, 5), np.float32))
    with pytest.raises(GalleryError, match="unknown index type"):
        gallery.search(unit(np.ones(DIM)), index_type="lsh")
    assert issubclass(GalleryError, HandCLIPError)


def _populated(gallery_dir, batches=3):
    vectors, identities, _ = clustered(10, 3 * batches)
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    per = len(vectors) // batches
    for b in range(batches):
        sl = slice(b * per, (b + 1) * per)
        enrol(gallery, vectors[sl], identities[sl], prefix=f"b{b}_")
    return gallery, vectors


def test_truncated_or_corrupted_files_are_named_in_the_error(gallery_dir):
    gallery, vectors = _populated(gallery_dir)
    shard = gallery_dir / "shards" / f"{gallery.shards[1].name}.npy"
    meta = shard.with_suffix(".jsonl")
    commit = gallery_dir / "commit.json"
    original = {p: p.read_bytes() for p in (shard, meta, commit, gallery_dir / "gallery.json")}

    def damaged(path, data):
        path.write_bytes(data)
        try:
            with pytest.raises(GalleryError) as info:
                Gallery.open(gallery_dir).search(vectors[:1], top_k=1)
            assert str(path) in str(info.value)
            return str(info.value)
        finally:
            path.write_bytes(original[path])

    assert "truncated" in damaged(shard, original[shard][:-100])
    assert "truncated" in damaged(shard, original[shard][:50])
    flipped = bytearray(original[shard])
    flipped[-7] ^= 0xFF  # same size, silently wrong numbers: caught by the SHA-256
    assert "SHA-256" in damaged(shard, bytes(flipped))
    assert "corrupt" in damaged(meta, original[meta][:-10])
    assert "truncated" in damaged(commit, original[commit][: len(original[commit]) // 2])
    assert "not valid JSON" in damaged(gallery_dir / "gallery.json", b"\x00\x01garbage")
    shard.unlink()
    with pytest.raises(GalleryError, match=f"{shard}.*missing"):
        Gallery.open(gallery_dir)
    shard.write_bytes(original[shard])
    assert len(Gallery.open(gallery_dir)) == len(vectors)


def test_approximate_indexes_agree_with_exact_search_on_clustered_data(gallery_dir):
    vectors, identities, centres = clustered(150, 12, noise=0.6, seed=3, dim=64)
    fp = dict(FINGERPRINT, feature_dim=64)
    gallery = Gallery.create(gallery_dir, fp, 64)
    gallery.add(vectors, [f"/g/{i}" for i in range(len(vectors))], identities, [str(i) for i in range(len(vectors))])
    rng = np.random.default_rng(4)
    true_ids = rng.integers(0, 150, 100)
    queries = unit(centres[true_ids] + 0.6 * rng.standard_normal((100, 64)) / 8)
    exact_img = gallery.search(queries, top_k=10, by="image", index_type="flat")
    exact_ids = gallery.search(queries, top_k=5, by="identity", index_type="flat")
    assert np.mean([r[0].identity == f"person{t:03d}" for r, t in zip(exact_ids, true_ids)]) > 0.95
    gallery.ann.params["ivf"].nprobe = 8
    for kind in ("pca", "hnsw", "ivf"):
        approx_img = gallery.search(queries, top_k=10, by="image", index_type=kind)
        recall = np.mean([len({c.path for c in a} & {c.path for c in e}) / 10
                          for a, e in zip(approx_img, exact_img)])
        assert recall >= 0.9, (kind, recall)
        approx_ids = gallery.search(queries, top_k=5, by="identity", index_type=kind)
        assert [r[0].identity for r in approx_ids] == [r[0].identity for r in exact_ids], kind
        # Identity scores are exact rescoring, so the top person's score matches exact search.
        np.testing.assert_allclose([r[0].score for r in approx_ids], [r[0].score for r in exact_ids], atol=1e-5)


def test_approximate_index_is_cached_on_disk_and_extended_when_the_gallery_grows(gallery_dir):
    vectors, identities, _ = clustered(30, 10)
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    gallery.add(vectors[:200], [f"/g/{i}" for i in range(200)], identities[:200], [str(i) for i in range(200)])
    gallery.search(vectors[:2], index_type="hnsw")
    meta_path = gallery_dir / "ann" / "hnsw.json"
    assert json.loads(meta_path.read_text())["rows"] == 200
    built = []
    original_new = ann_module.ApproximateIndexes._new
    ann_module.ApproximateIndexes._new = lambda self, *a: built.append(1) or original_new(self, *a)
    try:
        reopened = Gallery.open(gallery_dir)
        reopened.search(vectors[:2], index_type="hnsw")
        assert built == []  # loaded from the cache, not rebuilt
        reopened.add(vectors[200:], [f"/g/{i}" for i in range(200, 300)], identities[200:],
                     [str(i) for i in range(200, 300)])
        [hits] = Gallery.open(gallery_dir).search(vectors[299:300], top_k=1, by="image", index_type="hnsw")
        assert hits[0].path == "/g/299" and built == []  # extended with the 100 new rows
        assert json.loads(meta_path.read_text())["rows"] == 300
        index_path = gallery_dir / "ann" / "hnsw.faiss"
        index_path.write_bytes(index_path.read_bytes()[:1000])  # damaged cache: rebuilt, never trusted
        [hits] = Gallery.open(gallery_dir).search(vectors[10:11], top_k=1, by="image", index_type="hnsw")
        assert hits[0].path == "/g/10" and built == [1]
    finally:
        ann_module.ApproximateIndexes._new = original_new
    assert gallery.resolve_index_type("auto") == "flat"


APPROX_KINDS = ("pca", "ivf", "hnsw")


def _projected_gallery(gallery_dir, num_ids=150, per_id=6, dims=16):
    """A 64-d gallery whose approximate indexes project to ``dims`` (so the projection is exercised)."""
    vectors, identities, centres = clustered(num_ids, per_id, noise=0.6, seed=5, dim=64)
    gallery = Gallery.create(gallery_dir, dict(FINGERPRINT, feature_dim=64), 64)
    gallery.add(vectors, [f"/g/{i}.png" for i in range(len(vectors))], identities,
                [str(i) for i in range(len(vectors))])
    for params in (gallery.ann.params["pca"], gallery.ann.params["ivf"], gallery.ann.params["hnsw"]):
        params.dims = dims
    return gallery, vectors, identities


@pytest.mark.parametrize("kind", APPROX_KINDS)
def test_approximate_search_puts_an_enrolled_image_first_with_its_exact_score(gallery_dir, kind):
    gallery, vectors, identities = _projected_gallery(gallery_dir)
    rows = np.arange(0, len(vectors), 17)
    exact_img = gallery.search(vectors[rows], top_k=5, by="image", index_type="flat")
    approx_img = gallery.search(vectors[rows], top_k=5, by="image", index_type=kind)
    approx_ids = gallery.search(vectors[rows], top_k=5, by="identity", index_type=kind)
    assert gallery.ann.settings(kind)["dims"] == 16
    for row, exact, approx, people in zip(rows, exact_img, approx_img, approx_ids):
        assert exact[0].path == approx[0].path == f"/g/{row}.png"
        assert approx[0].score == pytest.approx(1.0, abs=1e-5)
        assert people[0].identity == identities[row] and people[0].score == pytest.approx(1.0, abs=1e-5)
        # Whatever an approximate index returns carries the exact score.
        for c in approx:
            assert c.score == pytest.approx(float(vectors[int(c.path[3:-4])] @ vectors[row]), abs=1e-5)


@pytest.mark.parametrize("kind", ["pca", "ivf"])
def test_cached_index_is_extended_with_new_rows_and_rebuilt_once_the_gallery_doubles(gallery_dir, kind, monkeypatch):
    vectors, identities, _ = clustered(90, 10, seed=6)
    built = []
    original_new = ann_module.ApproximateIndexes._new
    monkeypatch.setattr(ann_module.ApproximateIndexes, "_new",
                        lambda self, *a: built.append(len(self.gallery)) or original_new(self, *a))
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)

    def add(lo, hi):
        Gallery.open(gallery_dir).add(vectors[lo:hi], [f"/g/{i}.png" for i in range(lo, hi)], identities[lo:hi],
                                      [str(i) for i in range(lo, hi)])

    def top_path(row):
        [hits] = Gallery.open(gallery_dir).search(vectors[row:row + 1], top_k=1, by="image", index_type=kind)
        return hits[0].path

    meta_path = gallery_dir / "ann" / f"{kind}.json"
    add(0, 300)
    assert top_path(5) == "/g/5.png" and built == [300]
    add(300, 550)  # 550 <= 2 x 300: the cached index gains the 250 new rows
    assert top_path(549) == "/g/549.png" and built == [300]
    meta = json.loads(meta_path.read_text())
    assert (meta["rows"], meta["trained_rows"]) == (550, 300)
    add(550, 700)  # past twice the training rows: projection and lists are fitted again
    assert top_path(699) == "/g/699.png" and built == [300, 700]
    meta = json.loads(meta_path.read_text())
    assert (meta["rows"], meta["trained_rows"]) == (700, 700)
    # A process that already holds the index in memory extends it with rows enrolled elsewhere.
    reader = Gallery.open(gallery_dir)
    reader.search(vectors[:1], top_k=1, index_type=kind)
    add(700, 800)
    reader.refresh()
    [hits] = reader.search(vectors[799:800], top_k=1, by="image", index_type=kind)
    assert hits[0].path == "/g/799.png" and len(reader) == 800 and built == [300, 700]
    assert gallery.resolve_index_type("auto") == "flat"


def test_damaged_approximate_cache_is_rebuilt_with_a_warning_naming_it(gallery_dir, caplog):
    gallery, vectors, _ = _projected_gallery(gallery_dir, num_ids=40, per_id=5)
    gallery.search(vectors[:1], index_type="pca")
    index_path, meta_path = gallery_dir / "ann" / "pca.faiss", gallery_dir / "ann" / "pca.json"
    good = {index_path: index_path.read_bytes(), meta_path: meta_path.read_bytes()}
    flipped = bytearray(good[index_path])
    flipped[len(flipped) // 2] ^= 0xFF
    longer = json.loads(good[meta_path])
    longer["rows"] = 900
    damage = {"truncated index": (index_path, good[index_path][:100]),
              "flipped byte": (index_path, bytes(flipped)),
              "garbage description": (meta_path, b"\x00{not json"),
              "description of a longer gallery": (meta_path, json.dumps(longer).encode())}
    for what, (path, data) in damage.items():
        path.write_bytes(data)
        caplog.clear()
        with caplog.at_level("WARNING", logger="handclip.gallery.ann"):
            reopened = Gallery.open(gallery_dir)
            reopened.ann.params["pca"].dims = 16
            [hits] = reopened.search(vectors[33:34], top_k=1, by="image", index_type="pca")
        assert hits[0].path == "/g/33.png", what
        assert any(str(index_path) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records), what
        assert _sha256(index_path) == json.loads(meta_path.read_text())["sha256"], what  # rewritten whole
    # A cache made with other settings is replaced without a warning: nothing was damaged.
    caplog.clear()
    with caplog.at_level("WARNING", logger="handclip.gallery.ann"):
        reopened = Gallery.open(gallery_dir)
        reopened.ann.params["pca"].dims = 8
        reopened.search(vectors[:1], index_type="pca")
    assert not caplog.records and json.loads(meta_path.read_text())["params"]["dims"] == 8


def test_approximate_search_names_a_corrupted_shard_before_using_its_vectors(gallery_dir):
    gallery, vectors, _ = _projected_gallery(gallery_dir, num_ids=40, per_id=5)
    gallery.search(vectors[:1], index_type="pca")  # cache built while every shard was still intact
    shard = gallery_dir / "shards" / f"{gallery.shards[0].name}.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size: only the SHA-256 can tell
    shard.write_bytes(bytes(data))
    reopened = Gallery.open(gallery_dir)
    reopened.ann.params["pca"].dims = 16
    with pytest.raises(GalleryError, match=f"{shard}.*SHA-256 mismatch"):
        reopened.search(vectors[:1], index_type="pca")


def test_auto_index_switches_to_pca_above_the_threshold_unless_it_is_unfit(gallery_dir, tmp_path, monkeypatch):
    gallery, vectors, _ = _projected_gallery(gallery_dir, num_ids=40, per_id=5, dims=48)
    assert gallery.resolve_index_type("auto") == "flat"
    monkeypatch.setattr(search_module, "AUTO_APPROX_THRESHOLD", 199)
    assert gallery.resolve_index_type("auto") == "pca"
    [hits] = gallery.search(vectors[7:8], top_k=3, by="image")
    assert hits[0].path == "/g/7.png" and (gallery_dir / "ann" / "pca.faiss").exists()
    # Where the pca index fails its self-check, auto keeps exact search.
    noise = unit(np.random.default_rng(0).standard_normal((600, 64)))
    other = Gallery.create(tmp_path / "noise", dict(FINGERPRINT, feature_dim=64), 64)
    other.add(noise, [f"/n/{i}.png" for i in range(600)], [str(i // 3) for i in range(600)], [str(i) for i in range(600)])
    other.ann.params["pca"].dims = 8
    assert other.resolve_index_type("auto") == "flat" and other.resolve_index_type("pca") == "pca"
    assert (tmp_path / "noise" / "ann" / "pca.faiss").exists()


def test_each_build_measures_its_recall_on_the_gallery_and_warns_when_it_is_low(gallery_dir, tmp_path, caplog):
    gallery, vectors, _ = _projected_gallery(gallery_dir, dims=48)
    with caplog.at_level("WARNING", logger="handclip.gallery.ann"):
        check = gallery.ann.settings("pca")["self_check"]
    assert check["probes"] == 200 and check["recall_at_10"] >= 0.95 and check["same_person_recall"] == 1.0
    assert not caplog.records
    reopened = Gallery.open(gallery_dir)  # kept in the cache: no rebuild needed to report it
    reopened.ann.params["pca"].dims = 48
    assert reopened.ann.settings("pca")["self_check"] == check
    # Structureless vectors squeezed into 8 of 64 dims: the index says it is unfit, and how to avoid it.
    noise = unit(np.random.default_rng(0).standard_normal((600, 64)))
    other = Gallery.create(tmp_path / "noise", dict(FINGERPRINT, feature_dim=64), 64)
    other.add(noise, [f"/n/{i}.png" for i in range(600)], [str(i // 3) for i in range(600)], [str(i) for i in range(600)])
    other.ann.params["pca"].dims = 8
    with caplog.at_level("WARNING", logger="handclip.gallery.ann"):
        low = other.ann.settings("pca")["self_check"]["recall_at_10"]
    assert low < 0.6
    [message] = [r.getMessage() for r in caplog.records]
    assert f"finds only {low:.2f} of the exact top-10" in message and "auto uses exact search" in message


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compaction_keeps_rows_and_order_and_cleans_crash_leftovers(gallery_dir, monkeypatch):
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM)
    vectors, identities, _ = clustered(10, 40)
    for b in range(40):  # 40 batches of 10: the tail is merged every 16 batches
        sl = slice(b * 10, (b + 1) * 10)
        enrol(gallery, vectors[sl], identities[sl], prefix=f"b{b:02d}_")
    assert len(gallery.shards) < 40 and [s.level for s in gallery.shards][:2] == [1, 1]
    assert len(list((gallery_dir / "shards").glob("*.npy"))) == len(gallery.shards)
    # A crash inside a full compaction, after the merged shard is written but before the commit.
    monkeypatch.setattr(GalleryWriter, "_commit", lambda self, *args: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        gallery.compact()
    monkeypatch.undo()
    reopened = Gallery.open(gallery_dir)
    np.testing.assert_array_equal(reopened.vectors(), vectors)
    assert len(list((gallery_dir / "shards").glob("*.npy"))) == len(reopened.shards) + 1  # one orphan
    reopened.compact()
    assert len(reopened.shards) == 1 and sorted(p.name for p in (gallery_dir / "shards").iterdir()) == [
        f"{reopened.shards[0].name}.jsonl", f"{reopened.shards[0].name}.npy"]
    final = Gallery.open(gallery_dir)
    np.testing.assert_array_equal(final.vectors(), vectors)
    assert final.paths == [f"/evidence/b{b:02d}_{i:05d}.png" for b in range(40) for i in range(10)]


def test_a_second_writer_waits_for_the_lock_then_gives_up_naming_it(gallery_dir, caplog):
    gallery = Gallery.create(gallery_dir, FINGERPRINT, DIM, lock_timeout=0.3)
    with open(gallery_dir / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(GalleryError, match="being written by another process.*still held after 0.3 s"):
            enrol(gallery, unit(np.ones((1, DIM))), ["x"])
        assert time.monotonic() - started >= 0.3
    assert "waiting for it" in caplog.text
    assert enrol(gallery, unit(np.ones((1, DIM))), ["x"]) == 1


KILL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {src!r})
    from handclip.gallery import Gallery
    path, batches, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    g = Gallery.open_or_create(path, {fp!r}, {dim})
    for b in range(batches):
        v = np.random.default_rng(b).standard_normal((per, {dim})).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        added = g.add(v, [f"/img/{{b}}_{{i}}.png" for i in range(per)], [f"id{{b}}"] * per,
                      [f"{{b}}-{{i}}" for i in range(per)])
        print(f"committed {{b}} {{added}}", flush=True)
""")


def _expected_batch(b, per):
    v = np.random.default_rng(b).standard_normal((per, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_killed_enrolment_keeps_every_committed_batch_and_a_rerun_completes(gallery_dir, tmp_path):
    script = tmp_path / "enrol_batches.py"
    script.write_text(KILL_SCRIPT.format(src=SRC, fp=FINGERPRINT, dim=DIM))
    batches, per = 40, 8
    env = dict(os.environ, OMP_NUM_THREADS="1", **{COMMIT_DELAY_ENV: "0.03"})
    proc = subprocess.Popen([sys.executable, str(script), str(gallery_dir), str(batches), str(per)],
                            stdout=subprocess.PIPE, text=True, env=env)
    printed = []
    # Let 18 batches commit (one tiered compaction happens at 16), then kill inside the next write.
    while len(printed) < 18:
        line = proc.stdout.readline()
        assert line, "the enrolment process ended early"
        printed.append(line)
    time.sleep(0.015)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    printed += proc.stdout.readlines()
    assert proc.returncode == -signal.SIGKILL

    after_kill = Gallery.open(gallery_dir)
    committed = len(after_kill) // per
    assert len(after_kill) == committed * per  # whole batches only, nothing half-written
    assert len(printed) <= committed <= len(printed) + 1  # every reported batch, at most one more
    np.testing.assert_array_equal(after_kill.vectors(),
                                  np.concatenate([_expected_batch(b, per) for b in range(committed)]))
    assert after_kill.paths == [f"/img/{b}_{i}.png" for b in range(committed) for i in range(per)]

    env.pop(COMMIT_DELAY_ENV)
    rerun = subprocess.run([sys.executable, str(script), str(gallery_dir), str(batches), str(per)],
                           env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert [int(line.split()[2]) for line in rerun] == [0] * committed + [per] * (batches - committed)
    final = Gallery.open(gallery_dir)
    assert len(final) == batches * per and len({e['sha256'] for e in final.entries()}) == batches * per
    np.testing.assert_array_equal(final.vectors(), np.concatenate([_expected_batch(b, per) for b in range(batches)]))
    live = {s.name for s in final.shards}
    assert {p.name.split(".")[0] for p in (gallery_dir / "shards").iterdir()} == live  # leftovers removed
    assert not list(gallery_dir.glob(".*.tmp"))
