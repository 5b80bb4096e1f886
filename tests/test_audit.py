"""The hash-chained audit log on its own: chaining, tamper detection, torn tails, concurrency, kills."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handclip.forensic.audit import (AUDIT_FILE, GENESIS_HASH, HEAD_FILE, TORN_FILE, TORN_WRITE_DELAY_ENV, AuditError,
                            AuditLog, file_entry, record_hash)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _append_many(directory: str, worker: int, count: int) -> None:
    log = AuditLog(directory)
    for i in range(count):
        log.append({"command": "search", "worker": worker, "i": i, "results": [{"score": 0.5 + i / 1000}]})


def _lines(directory: Path) -> list[bytes]:
    return (directory / AUDIT_FILE).read_bytes().splitlines(keepends=True)


def _write_lines(directory: Path, lines: list[bytes]) -> None:
    (directory / AUDIT_FILE).write_bytes(b"".join(lines))


def _messages(result) -> list[str]:
    return [p.message for p in result.problems]


def test_chain_links_every_record_and_verifies_after_many_appends(tmp_path):
    log = AuditLog(tmp_path)
    refs = [log.append({"command": "search", "n": n}) for n in range(30)]
    assert [r.seq for r in refs] == list(range(1, 31))
    records = log.records()
    assert records[0]["prev_hash"] == GENESIS_HASH
    for before, after in zip(records, records[1:]):
        assert after["prev_hash"] == before["hash"]
    assert all(r["hash"] == record_hash(r) == ref.hash for r, ref in zip(records, refs))
    assert {"time", "os_user", "software", "format"} <= set(records[0])
    head = json.loads((tmp_path / HEAD_FILE).read_text())
    assert (head["seq"], head["hash"], head["first_hash"], head["pending"]) == (30, refs[-1].hash, refs[0].hash, None)
    result = log.verify()
    assert result.ok and result.records == 30


def test_concurrent_appenders_are_serialised(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 15)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    records = AuditLog(tmp_path).records()
    assert [r["seq"] for r in records] == list(range(1, 46))
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(3) for i in range(15)]
    assert AuditLog(tmp_path).verify().ok


def test_an_edited_record_is_named_whether_or_not_its_hash_was_recomputed(tmp_path):
    log = AuditLog(tmp_path)
    for n in range(6):
        log.append({"command": "search", "results": [{"identity": f"p{n}", "score": 0.9}]})
    lines = _lines(tmp_path)
    edited = json.loads(lines[3])
    edited["results"][0]["identity"] = "someone else"
    _write_lines(tmp_path, lines[:3] + [json.dumps(edited).encode() + b"\n"] + lines[4:])
    assert _messages(log.verify()) == ["record 4 was altered: its content no longer matches its hash"]
    edited["hash"] = record_hash(edited)  # a careful forger re-hashes it: the next record's link breaks
    _write_lines(tmp_path, lines[:3] + [json.dumps(edited).encode() + b"\n"] + lines[4:])
    assert _messages(log.verify()) == ["record 4 was altered or replaced: record 5 does not chain to it"]
    _write_lines(tmp_path, lines[:2] + [b"{not json\n"] + lines[3:])
    assert _messages(log.verify())[0].startswith("line 3 of audit.jsonl is not a valid record (record 3")


def test_a_removed_record_is_named_in_the_middle_and_at_the_end(tmp_path):
    log = AuditLog(tmp_path)
    for n in range(5):
        log.append({"command": "enrol", "n": n})
    lines = _lines(tmp_path)
    _write_lines(tmp_path, lines[:2] + lines[3:])
    assert _messages(log.verify()) == ["record 3 removed: the log goes from record 2 to record 4"]
    _write_lines(tmp_path, lines[:4])
    assert _messages(log.verify()) == ["record 5 removed from the end: audit.head.json names record 5 "
                                       "but the log ends at record 4"]
    _write_lines(tmp_path, lines[1:])
    assert _messages(log.verify()) == ["record 1 removed: the log goes from record 0 to record 2"]


def test_changed_and_removed_files_are_named_with_their_record(tmp_path):
    query, other = tmp_path / "query.png", tmp_path / "other.png"
    query.write_bytes(b"query bytes")
    other.write_bytes(b"other bytes")
    log = AuditLog(tmp_path / "gallery")
    (tmp_path / "gallery").mkdir()
    log.append({"command": "enrol", "files": [file_entry("enrolled image", other)]})
    log.append({"command": "search", "files": [file_entry("query", query)]})
    result = log.verify()
    assert result.ok and result.files_checked == 2
    query.write_bytes(b"query bytes, edited")
    other.unlink()
    messages = _messages(log.verify())
    assert len(messages) == 2
    assert messages[0] == f"enrolled image file {other} (record 1) was removed"
    assert messages[1].startswith(f"query file {query} (record 2) was changed: SHA-256 ")
    assert log.verify(check_files=False).ok


def test_a_torn_tail_is_set_aside_by_the_next_append_and_no_record_is_lost(tmp_path):
    log = AuditLog(tmp_path)
    for n in range(3):
        log.append({"command": "search", "n": n})
    committed = (tmp_path / AUDIT_FILE).read_bytes()
    torn = b'{"command":"search","n":3,"resu'
    with open(tmp_path / AUDIT_FILE, "ab") as handle:
        handle.write(torn)
    result = log.verify()
    assert result.ok and result.records == 3
    assert "ends with 31 bytes of an interrupted append" in result.notes[0]
    ref = log.append({"command": "search", "n": 4})
    assert ref.seq == 4
    data = (tmp_path / AUDIT_FILE).read_bytes()
    assert data.startswith(committed) and torn not in data
    newest = log.records()[-1]
    assert newest["torn_tail_set_aside"]["bytes"] == len(torn)
    assert newest["torn_tail_set_aside"]["offset"] == len(committed)
    import base64

    aside = json.loads((tmp_path / TORN_FILE).read_text())
    assert base64.b64decode(aside["data_base64"]) == torn
    assert log.verify().ok


def test_a_log_truncated_inside_a_committed_record_refuses_appends_and_keeps_every_byte(tmp_path):
    log = AuditLog(tmp_path)
    for n in range(4):
        log.append({"command": "search", "n": n})
    data = (tmp_path / AUDIT_FILE).read_bytes()
    cut = data[:len(data) - 40]  # record 4 torn by a copy or a disk fault, not by its own writer
    (tmp_path / AUDIT_FILE).write_bytes(cut)
    with pytest.raises(AuditError) as excinfo:
        log.append({"command": "search", "n": 5})
    message = str(excinfo.value)
    assert "\n" not in message and "lost committed records" in message and "names record 4" in message
    assert (tmp_path / AUDIT_FILE).read_bytes() == cut
    assert not (tmp_path / TORN_FILE).exists()
    assert _messages(log.verify()) == ["record 4 removed from the end: audit.head.json names record 4 "
                                       "but the log ends at record 3"]


def test_a_corrupt_last_record_or_a_lost_head_refuses_appends_until_reanchored(tmp_path):
    log = AuditLog(tmp_path)
    log.append({"command": "search"})
    before = (tmp_path / AUDIT_FILE).read_bytes()
    (tmp_path / AUDIT_FILE).write_bytes(before + b"garbage\n")
    with pytest.raises(AuditError, match="its last record is corrupt"):
        log.append({"command": "search"})
    (tmp_path / AUDIT_FILE).write_bytes(before)
    (tmp_path / HEAD_FILE).write_text("{")
    with pytest.raises(AuditError, match="audit head .* is corrupt"):
        log.append({"command": "search"})
    (tmp_path / HEAD_FILE).unlink()
    with pytest.raises(AuditError, match="audit.head.json is missing"):
        log.append({"command": "search"})
    assert (tmp_path / AUDIT_FILE).read_bytes() == before
    assert "audit.head.json is missing" in _messages(log.verify())[0]
    ref = log.reanchor("head lost in a disk fault")  # the documented way on: a record says so
    assert log.records()[-1]["reanchored"] == "missing" and ref.seq == 2
    result = log.verify()
    assert result.ok and "record 2 re-anchored the log after its head was missing" in result.notes[0]
    with pytest.raises(AuditError, match="intact"):
        log.reanchor("again")
    log.append({"command": "search"})
    assert log.verify().ok


_KILLED_APPENDER = """
import sys
from handclip.forensic.audit import AuditLog
AuditLog(sys.argv[1]).append({"command": "search", "note": "killed mid-write" * 50})
"""


def test_sigkill_in_the_middle_of_an_append_leaves_a_verifiable_log(tmp_path):
    log = AuditLog(tmp_path)
    for n in range(3):
        log.append({"command": "search", "n": n})
    committed = (tmp_path / AUDIT_FILE).read_bytes()
    env = dict(os.environ, PYTHONPATH=SRC, **{TORN_WRITE_DELAY_ENV: "30"})
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_APPENDER, str(tmp_path)], env=env)
    deadline = time.monotonic() + 60
    while (tmp_path / AUDIT_FILE).stat().st_size == len(committed):  # half the record is on disk
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    result = log.verify()
    assert result.ok and result.records == 3 and "interrupted append" in result.notes[0]
    assert log.append({"command": "search", "n": 3}).seq == 4
    assert (tmp_path / AUDIT_FILE).read_bytes().startswith(committed)
    assert log.verify().ok and [r["seq"] for r in log.records()] == [1, 2, 3, 4]
