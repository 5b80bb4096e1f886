"""Gallery reliability under damage, hostile metadata and concurrency (no model needed: vectors are given).

Race tests start their processes together at a barrier and repeat many trials, as real races need.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from handclip.errors import GalleryError, HandCLIPError
from handclip.gallery import Gallery
from handclip.gallery.writer import COMPACT_FANOUT, writer_lock

DIM = 8
FINGERPRINT = {"architecture": "tiny-rn", "checkpoint_sha256": "a" * 64, "feature_dim": DIM}
CTX = multiprocessing.get_context("fork")


def unit_rows(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_batch(gallery: Gallery, tag: str, n: int = 3, seed: int = 0, identity: str | None = None) -> int:
    return gallery.add(unit_rows(n, seed), [f"/evidence/{tag}_{i}.png" for i in range(n)],
                       [identity or f"id_{tag}"] * n, [f"{tag}-{i}" for i in range(n)])


def populated(path: Path, batches: int = 2) -> Gallery:
    gallery = Gallery.create(path, FINGERPRINT, DIM)
    for b in range(batches):
        add_batch(gallery, f"b{b}", seed=b)
    return gallery


def rehash(gallery_dir: Path) -> None:
    """Make commit.json's shard hashes match the files again (as an attacker or a careless edit would)."""
    commit_path = gallery_dir / "commit.json"
    commit = json.loads(commit_path.read_text())
    for shard in commit.get("shards", []):
        for key, suffix in (("vectors_sha256", ".npy"), ("meta_sha256", ".jsonl")):
            file = gallery_dir / "shards" / f"{shard['name']}{suffix}"
            if file.is_file():
                shard[key] = hashlib.sha256(file.read_bytes()).hexdigest()
    commit_path.write_text(json.dumps(commit))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- damage and cleanup
def test_gallery_without_gallery_json_is_refused_and_nothing_is_deleted(tmp_path):
    g = tmp_path / "G"
    populated(g, batches=3)
    (g / "gallery.json").unlink()
    before = tree(g)
    with pytest.raises(GalleryError, match=r"gallery.json is missing but .* holds gallery files \(commit.json, shards/"):
        Gallery.open_or_create(g, FINGERPRINT, DIM)
    with pytest.raises(GalleryError, match="gallery.json is missing"):
        Gallery.open(g)
    assert tree(g) == before


def test_cleanup_deletes_only_orphans_of_the_gallerys_own_shard_pattern(tmp_path):
    g = tmp_path / "G"
    gallery = populated(g)
    foreign = {g / ".backup.tmp": b"mine", g / "shards" / "results.npy": b"x", g / "shards" / "experiment.jsonl": b"y",
               g / "shards" / "notes.txt": b"z", g / "shards" / "12.npy": b"short name"}
    foreign[g / ".audit.head.json.x1y2z3.tmp"] = b"another process's write in progress"
    foreign[g / "shards" / ".000100.npy.notes.txt"] = b"not a temporary file"
    orphans = [g / "shards" / "000099.npy", g / "shards" / "000099.jsonl", g / "shards" / ".000100.npy.abc123.tmp",
               g / ".commit.json.k_9x2a.tmp"]
    for path, data in foreign.items():
        path.write_bytes(data)
    for path in orphans:
        path.write_bytes(b"left by a killed writer")
    add_batch(gallery, "more", seed=9)
    assert all(path.read_bytes() == data for path, data in foreign.items())
    assert not any(path.exists() for path in orphans)
    assert len(Gallery.open(g)) == 9


def test_interrupted_creation_with_an_empty_commit_is_completed(tmp_path):
    g = tmp_path / "G"
    g.mkdir()
    (g / "commit.json").write_text(json.dumps({"uid": "x", "generation": 0, "rows": 0, "next_shard": 0, "shards": []}))
    gallery = Gallery.open_or_create(g, FINGERPRINT, DIM)
    assert add_batch(gallery, "a") == 3 and len(Gallery.open(g)) == 3


def test_index_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "file.csv"
    file.write_text("path,pid\n")
    with pytest.raises(GalleryError, match="file.csv is not a directory"):
        Gallery.open_or_create(file, FINGERPRINT, DIM)
    with pytest.raises(GalleryError, match="file.csv is not a directory"):
        Gallery.open(file)
    assert file.read_text() == "path,pid\n"


# ---------------------------------------------------------------------- hostile metadata
def test_shard_name_with_path_traversal_is_refused_and_victim_files_survive(tmp_path):
    g = tmp_path / "data" / "G"
    victim = tmp_path / "victimdir"
    victim.mkdir()
    populated(g)
    # The victim files are valid shard files (copies), so only the name check can stop them.
    for suffix in (".npy", ".jsonl"):
        (victim / f"user_data{suffix}").write_bytes((g / "shards" / f"000000{suffix}").read_bytes())
    commit = json.loads((g / "commit.json").read_text())
    commit["shards"][0]["name"] = "../../../victimdir/user_data"
    (g / "commit.json").write_text(json.dumps(commit))
    rehash(g)
    with pytest.raises(GalleryError, match="commit.json is corrupt .*is not a gallery shard name"):
        Gallery.open(g)
    with pytest.raises(GalleryError, match="not a gallery shard name"):
        Gallery.open_or_create(g, FINGERPRINT, DIM)
    assert sorted(p.name for p in victim.iterdir()) == ["user_data.jsonl", "user_data.npy"]


def test_shard_name_not_below_next_shard_is_refused(tmp_path):
    g = tmp_path / "G"
    populated(g)
    commit = json.loads((g / "commit.json").read_text())
    commit["next_shard"] = 1  # a new batch would be written over committed shard 000001
    (g / "commit.json").write_text(json.dumps(commit))
    with pytest.raises(GalleryError, match="repeated or not below next_shard"):
        Gallery.open(g)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "gallery.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "gallery.json").write_text("[1, 2]"), "expected a JSON object"),
    (lambda d: (d / "gallery.json").write_bytes(b'{"format": "\xff\xfe"}'), "not UTF-8"),
    (lambda d: _edit_json(d / "gallery.json", lambda j: j.pop("uid")), "malformed uid"),
    (lambda d: _edit_json(d / "gallery.json", lambda j: j.update(dim="32")), "dim must be a positive integer"),
    (lambda d: _edit_json(d / "commit.json", lambda j: j.pop("shards")), "shards must be a list"),
    (lambda d: _edit_json(d / "commit.json", lambda j: j.update(generation=None)), "non-negative integers"),
    (lambda d: _edit_jsonl(d, lambda row: row.update(identity=7)), "must be non-empty strings"),
    (lambda d: _edit_jsonl(d, lambda row: row.pop("sha256")), "must be non-empty strings"),
    (lambda d: (d / "shards" / "000000.jsonl").write_bytes(b"\xff\n\xfe\n\xfd\n"), "not UTF-8"),
    (lambda d: (d / "shards" / "000000.jsonl").write_text("[]\n[]\n[]\n"), "expected a JSON object"),
    (lambda d: (d / "shards" / "000000.jsonl").write_text("{\n{\n{\n"), "line 1: not valid JSON"),
])
def test_damaged_metadata_with_consistent_hashes_is_one_gallery_error(tmp_path, damage, message):
    g = tmp_path / "G"
    populated(g)
    damage(g)
    rehash(g)
    with pytest.raises(GalleryError, match=message):
        Gallery.open(g)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_jsonl(gallery_dir: Path, edit) -> None:
    path = gallery_dir / "shards" / "000000.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows[0])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_byte_patched_pca_cache_with_a_consistent_hash_is_rebuilt(tmp_path, caplog):
    g = tmp_path / "G"
    gallery = Gallery.create(g, FINGERPRINT, DIM)
    gallery.add(unit_rows(300, 0), [f"/e/{i}.png" for i in range(300)], [f"id{i % 30}" for i in range(300)],
                [f"h{i}" for i in range(300)])
    gallery.ann.params["pca"].dims = 4
    expected = gallery.search(unit_rows(2, 5), index_type="pca")
    cache, meta = g / "ann" / "pca.faiss", g / "ann" / "pca.json"
    data = bytearray(cache.read_bytes())
    data[32] = 0  # clears the transform's is_trained flag: FAISS reads it, then refuses to search
    cache.write_bytes(bytes(data))
    _edit_json(meta, lambda j: j.update(sha256=hashlib.sha256(bytes(data)).hexdigest()))
    reopened = Gallery.open(g)
    reopened.ann.params["pca"].dims = 4
    with caplog.at_level(logging.WARNING):
        again = reopened.search(unit_rows(2, 5), index_type="pca")
    assert "FAISS cannot search it" in caplog.text
    assert [[c.identity for c in q] for q in again] == [[c.identity for c in q] for q in expected]


# ---------------------------------------------------------------------- fuzzing the metadata
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True)
    | st.sampled_from(["", "../../outside/victim", "000000", "000001", "/etc/passwd", "a" * 64, "\x00", "\u202e"])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
TARGETS = ["gallery.json", "commit.json", "shards/000000.jsonl", "shards/000001.jsonl", "shards/000000.npy"]


def _mutate(value, data, depth=0):
    """Replace, delete or keep parts of a parsed JSON document, as drawn by hypothesis."""
    if isinstance(value, dict) and value and depth < 4:
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["descend", "replace", "delete"]))
        if action == "delete":
            del value[key]
        elif action == "replace":
            value[key] = data.draw(JSON_VALUES)
        else:
            value[key] = _mutate(value[key], data, depth + 1)
        return value
    if isinstance(value, list) and value and depth < 4:
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = _mutate(value[i], data, depth + 1) if data.draw(st.booleans()) else data.draw(JSON_VALUES)
        return value
    return data.draw(JSON_VALUES)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_fuzzed_metadata_gives_a_valid_gallery_or_one_clear_error_and_deletes_nothing_outside(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        g = root / "G"
        populated(g)
        sentinels = {root / "sentinel.npy": b"outside", root / "outside" / "victim.npy": b"victim",
                     root / "outside" / "victim.jsonl": b"victim", g / "shards" / "notes.txt": b"inside"}
        for path, content in sentinels.items():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
        for _ in range(data.draw(st.integers(1, 3))):
            target = g / data.draw(st.sampled_from(TARGETS))
            try:
                text = target.read_text()
                parsed = ([json.loads(line) for line in text.splitlines()] if target.suffix == ".jsonl"
                          else [json.loads(text)])
            except ValueError:
                parsed = None  # damaged by an earlier step: only raw edits apply
            if parsed is None or data.draw(st.integers(0, 4)) == 0:  # raw bytes: truncation or a flipped byte
                raw = bytearray(target.read_bytes())
                if raw:
                    pos = data.draw(st.integers(0, len(raw) - 1))
                    raw = raw[:pos] if data.draw(st.booleans()) else raw[:pos] + bytes([data.draw(st.integers(0, 255))]) + raw[pos + 1:]
                target.write_bytes(bytes(raw))
            elif target.suffix == ".jsonl":
                i = data.draw(st.integers(0, len(parsed) - 1)) if parsed else 0
                parsed[i:i + 1] = [_mutate(parsed[i] if parsed else {}, data)]
                target.write_text("".join(json.dumps(row) + "\n" for row in parsed))
            else:
                target.write_text(json.dumps(_mutate(parsed[0] if parsed else {}, data)))
        try:
            rehash(g)  # make the damage pass the hash checks where commit.json still allows it
        except Exception:  # noqa: BLE001 - the fuzzer may have made commit.json unusable for that
            pass
        try:
            gallery = Gallery.open(g)
            gallery.verify_files()
            if len(gallery):
                gallery.search(unit_rows(1, 3), top_k=2)
            add_batch(gallery, "new", seed=7)
            assert len(Gallery.open(g)) == len(gallery)
        except HandCLIPError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600
        try:
            Gallery.open_or_create(g, FINGERPRINT, DIM)
        except HandCLIPError:
            pass
        for path, content in sentinels.items():
            assert path.read_bytes() == content


# ---------------------------------------------------------------------- concurrency
def _create_and_add(path: str, tag: str, barrier) -> None:
    barrier.wait()
    gallery = Gallery.open_or_create(path, FINGERPRINT, DIM)
    add_batch(gallery, tag, seed=hash(tag) % 1000)


def _run_together(targets) -> list[int]:
    barrier = CTX.Barrier(len(targets))
    procs = [CTX.Process(target=fn, args=(*args, barrier)) for fn, args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def test_two_processes_creating_the_same_new_gallery_make_one_gallery_with_both_batches(tmp_path):
    for trial in range(12):
        g = tmp_path / f"G{trial}"
        codes = _run_together([(_create_and_add, (str(g), "a")), (_create_and_add, (str(g), "b"))])
        assert codes == [0, 0], f"trial {trial}"
        gallery = Gallery.open(g)
        assert sorted(gallery.identities()) == ["id_a", "id_b"] and len(gallery) == 6, f"trial {trial}"


def _enrol_many(path: str, tag: str, batches: int, barrier) -> None:
    gallery = Gallery.open(path)
    barrier.wait()
    for b in range(batches):
        add_batch(gallery, f"{tag}{b}", n=2, seed=b)


def test_concurrent_writers_wait_for_each_other_and_both_complete(tmp_path):
    for trial in range(4):
        g = tmp_path / f"G{trial}"
        Gallery.create(g, FINGERPRINT, DIM)
        codes = _run_together([(_enrol_many, (str(g), "x", 20)), (_enrol_many, (str(g), "y", 20))])
        assert codes == [0, 0]
        gallery = Gallery.open(g)
        assert len(gallery) == 80 and len(set(gallery.paths)) == 80
        gallery.verify_files()


def _search_repeatedly(path: str, stop, failures, barrier) -> None:
    barrier.wait()
    while not stop.is_set():
        try:
            gallery = Gallery.open(path)
            if len(gallery):
                gallery.search(unit_rows(1, 1), top_k=3)
                gallery.verify_files()
        except Exception as exc:  # noqa: BLE001 - counted and reported by the test
            failures.put(f"{type(exc).__name__}: {exc}")


def test_searches_during_enrolment_with_compaction_always_see_a_committed_state(tmp_path):
    g = tmp_path / "G"
    Gallery.create(g, FINGERPRINT, DIM)
    stop, failures = CTX.Event(), CTX.Queue()
    barrier = CTX.Barrier(3)
    readers = [CTX.Process(target=_search_repeatedly, args=(str(g), stop, failures, barrier)) for _ in range(2)]
    for r in readers:
        r.start()
    writer = Gallery.open(g)
    barrier.wait()
    for b in range(3 * COMPACT_FANOUT + 2):  # several tiered compactions while the readers search
        add_batch(writer, f"w{b}", n=2, seed=b)
    stop.set()
    for r in readers:
        r.join(60)
    seen = []
    while not failures.empty():
        seen.append(failures.get())
    assert seen == [] and [r.exitcode for r in readers] == [0, 0]


def test_an_open_reader_keeps_its_generation_through_compaction_and_refreshes_to_the_new_one(tmp_path):
    g = tmp_path / "G"
    writer = Gallery.create(g, FINGERPRINT, DIM)
    for b in range(COMPACT_FANOUT - 1):
        add_batch(writer, f"w{b}", n=2, seed=b)
    reader = Gallery.open(g)
    old_files = {s.name for s in reader.shards}
    add_batch(writer, "last", n=2, seed=99)  # the 16th batch: all shards merged, old files deleted
    assert not any((g / "shards" / f"{name}.npy").exists() for name in old_files)
    hits = reader.search(unit_rows(1, 0), top_k=1, by="image")  # still reads its (deleted) shards
    assert hits[0][0].path == "/evidence/w0_0.png" and len(reader) == 2 * (COMPACT_FANOUT - 1)
    reader.verify_files()
    reader.refresh()
    assert len(reader) == 2 * COMPACT_FANOUT and len(reader.shards) == 1


def _hold_lock_and_die(path: str, barrier) -> None:
    with writer_lock(Path(path)):
        barrier.wait()
        os.kill(os.getpid(), signal.SIGKILL)


def test_the_lock_of_a_killed_writer_is_released(tmp_path):
    g = tmp_path / "G"
    gallery = Gallery.create(g, FINGERPRINT, DIM, lock_timeout=20)
    codes = _run_together([(_hold_lock_and_die, (str(g),)), (lambda barrier: barrier.wait(), ())])
    assert codes[0] == -signal.SIGKILL
    started = time.monotonic()
    assert add_batch(gallery, "after", seed=1) == 3
    assert time.monotonic() - started < 5


def test_opening_a_gallery_many_times_does_not_leak_file_descriptors(tmp_path):
    g = tmp_path / "G"
    populated(g, batches=4)
    fd_dir = Path("/proc/self/fd")
    before = len(list(fd_dir.iterdir()))
    for _ in range(50):
        Gallery.open(g).search(unit_rows(1, 0), top_k=1)
    with Gallery.open(g) as gallery:
        assert len(gallery) == 12
    gc.collect()  # a gallery and its index cache refer to each other, so the cycle collector frees them
    assert len(list(fd_dir.iterdir())) <= before + 1
