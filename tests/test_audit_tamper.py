"""Tampering with the audit log itself: every field of every record, the head, the tail, forged and
malformed records, anchors kept elsewhere (--expect) and signed heads."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from handclip.forensic.audit import AUDIT_FILE, GENESIS_HASH, HEAD_FILE, AuditError, AuditLog, record_hash


def _rich_log(directory: Path, count: int = 5, signer=None) -> tuple[AuditLog, list]:
    """A log whose records carry every kind of field a real one does: files, nested results, gallery state."""
    directory.mkdir(parents=True, exist_ok=True)
    log = AuditLog(directory, signer=signer) if signer is not None else AuditLog(directory)
    refs = []
    for n in range(count):
        refs.append(log.append({
            "command": "search" if n % 2 else "enrol", "examiner": f"examiner {n}", "arguments": {"top_k": 3 + n},
            "gallery": {"uid": "u" * 32, "generation": n, "rows": 10 * n, "commit_sha256": f"{n:064x}"},
            "files": [{"role": "query", "path": f"/cases/item-{n}.png", "sha256": f"{n + 1:064x}"},
                      {"role": "checkpoint", "path": "/models/best.pt", "sha256": "c" * 64}],
            "results": [{"query": f"/cases/item-{n}.png", "candidates": [
                {"rank": 1, "identity": "0001", "score": 0.91 + n / 100, "log10_lr": 2.5, "at_bound": None,
                 "matched": True}]}]}))
    return log, refs


def _lines(directory: Path) -> list[bytes]:
    return (directory / AUDIT_FILE).read_bytes().splitlines(keepends=True)


def _records(directory: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(directory)]


def _write(directory: Path, records: list, newline_at_end: bool = True) -> None:
    text = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    (directory / AUDIT_FILE).write_bytes(text if newline_at_end else text[:-1])


def _rechain(records: list[dict]) -> list[dict]:
    """What a careful forger does after editing: recompute every prev_hash and hash from the first on."""
    prev = GENESIS_HASH
    for record in records:
        record["prev_hash"] = prev
        record["hash"] = record_hash(record)
        prev = record["hash"]
    return records


def _set_head(directory: Path, seq: int, digest: str) -> None:
    """Rewrite the (unsigned) head to name ``seq``, as whoever edits the log can."""
    head = json.loads((directory / HEAD_FILE).read_text())
    head.update(seq=seq, hash=digest, pending=None, first_hash=_records(directory)[0]["hash"])
    (directory / HEAD_FILE).write_text(json.dumps(head))


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, path + (key,))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, path + (index,))
    else:
        yield path


def _mutated(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value[:-1] + ("1" if value[-1:] != "1" else "2")
    return "edited"


def _edit(record: dict, path: tuple) -> None:
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _mutated(target[path[-1]])


def _problem_records(result) -> set:
    return {p.record for p in result.problems}


@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
def test_an_edit_of_any_field_of_the_first_middle_or_last_record_is_named(tmp_path, position):
    """Every leaf of the record, envelope and content alike (``files`` included), edited in turn: verify
    names that record; re-hashed by a careful forger, the next record's link or the head still names it."""
    _, _ = _rich_log(tmp_path / "gallery")
    pristine = _records(tmp_path / "gallery")
    paths = list(_leaves(pristine[position]))
    assert ("files", 0, "path") in paths and ("files", 1, "sha256") in paths and ("seq",) in paths
    log = AuditLog(tmp_path / "gallery")
    for path in paths:
        for rehash in (False, True):
            records = copy.deepcopy(pristine)
            _edit(records[position], path)
            if rehash and path != ("hash",):
                records[position]["hash"] = record_hash(records[position])
            _write(tmp_path / "gallery", records)
            result = log.verify(check_files=False)
            assert not result.ok, (path, rehash)
            assert position + 1 in _problem_records(result) or (rehash and position + 1 in
                                                                 {r - 1 for r in _problem_records(result) if r}), \
                (path, rehash, [p.message for p in result.problems])
    _write(tmp_path / "gallery", pristine)
    assert log.verify(check_files=False).ok


def test_a_missing_head_a_head_set_back_and_an_appended_record_are_problems(tmp_path):
    directory = tmp_path / "gallery"
    log, refs = _rich_log(directory)
    records = _records(directory)
    (directory / HEAD_FILE).unlink()  # cut nothing, only the head
    result = log.verify(check_files=False)
    assert not result.ok and "audit.head.json is missing" in result.problems[0].message
    _write(directory, records[:3])  # records 4-5 cut, the head deleted
    assert not log.verify(check_files=False).ok
    # the last record edited and re-hashed, the head set one record back
    log2, refs2 = _rich_log(tmp_path / "second")
    second = _records(tmp_path / "second")
    second[-1]["results"][0]["candidates"][0]["identity"] = "someone else"
    second[-1]["hash"] = record_hash(second[-1])
    _write(tmp_path / "second", second)
    _set_head(tmp_path / "second", 4, second[3]["hash"])
    messages = [p.message for p in log2.verify(check_files=False).problems]
    assert messages == ["record 5 is not covered by audit.head.json, which names record 4: it was added or edited "
                        "after the head was written, or the head was set back"]
    # a forged record chained onto an intact log, the head left alone
    log3, _ = _rich_log(tmp_path / "third")
    third = _records(tmp_path / "third")
    forged = copy.deepcopy(third[-1])
    forged.update(seq=6, examiner="forger")
    _write(tmp_path / "third", _rechain(third + [forged]))
    result = log3.verify(check_files=False)
    assert [p.record for p in result.problems] == [6] and "record 6 is not covered" in result.problems[0].message
    with pytest.raises(AuditError, match="not the one audit.head.json names"):
        log3.append({"command": "search"})  # nothing is appended onto it either


def test_a_committed_record_stripped_of_its_newline_is_a_removal_not_a_torn_tail(tmp_path):
    directory = tmp_path / "gallery"
    log, refs = _rich_log(directory)
    data = (directory / AUDIT_FILE).read_bytes()
    (directory / AUDIT_FILE).write_bytes(data[:-1])
    (directory / HEAD_FILE).unlink()
    result = log.verify(check_files=False)
    assert "record 5 at the end of audit.jsonl lacks its final newline" in " ".join(p.message for p in result.problems)
    with pytest.raises(AuditError):
        log.append({"command": "search"})
    assert (directory / AUDIT_FILE).read_bytes() == data[:-1]  # record 5 was not set aside as a torn tail
    assert not (directory / "audit.torn").exists()
    # with the head still there the cut record is named the same way
    (directory / AUDIT_FILE).write_bytes(data)
    log2, _ = _rich_log(tmp_path / "second")
    data2 = (tmp_path / "second" / AUDIT_FILE).read_bytes()
    (tmp_path / "second" / AUDIT_FILE).write_bytes(data2[:-1])
    assert 5 in _problem_records(log2.verify(check_files=False))


def test_a_kill_between_the_record_and_its_head_is_an_interrupted_append_not_a_problem(tmp_path, monkeypatch):
    import handclip.forensic.audit as audit

    directory = tmp_path / "gallery"
    log, refs = _rich_log(directory, 3)
    written = []
    real = audit.AuditLog._write_head

    def dies_after_the_record(self, seq, digest, first, pending):
        if pending is None and written:
            raise KeyboardInterrupt  # the process dies before the head names the record as committed
        written.append(seq)
        real(self, seq, digest, first, pending)

    monkeypatch.setattr(audit.AuditLog, "_write_head", dies_after_the_record)
    with pytest.raises(KeyboardInterrupt):
        log.append({"command": "search", "n": 3})
    monkeypatch.setattr(audit.AuditLog, "_write_head", real)
    result = log.verify(check_files=False)
    assert result.ok and "record 4 was written but audit.head.json not yet updated" in result.notes[0]
    assert log.append({"command": "search", "n": 4}).seq == 5 and log.verify(check_files=False).ok


def test_records_are_read_against_their_schema_and_verify_never_crashes_or_hangs(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    bad_files = {"path null": [{"role": "query", "path": None, "sha256": "a" * 64}],
                 "path a list of ints": [{"role": "query", "path": [1, 2], "sha256": "a" * 64}],
                 "files a string": "/etc/passwd",
                 "relative path": [{"role": "query", "path": "item.png", "sha256": "a" * 64}],
                 "sha256 not hex": [{"role": "query", "path": "/x.png", "sha256": "zz"}]}
    for name, files in bad_files.items():
        log, _ = _rich_log(tmp_path / name, 3)
        records = _records(tmp_path / name)
        records[1]["files"] = files
        _write(tmp_path / name, _rechain(records))
        _set_head(tmp_path / name, 3, records[2]["hash"])
        messages = [p.message for p in log.verify().problems]  # with the files: nothing is hashed from record 2
        assert any(m.startswith("line 2 of audit.jsonl is not a valid record (record 2 was altered or damaged: files")
                   for m in messages), (name, messages)
        assert not any("(record 2)" in m for m in messages), (name, messages)
    for name, edit in {"seq true": lambda r: r.update(seq=True), "format missing": lambda r: r.pop("format")}.items():
        log, _ = _rich_log(tmp_path / name, 3)
        records = _records(tmp_path / name)
        edit(records[1])
        _write(tmp_path / name, _rechain(records))
        assert not log.verify(check_files=False).ok, name
    log, _ = _rich_log(tmp_path / "list", 3)
    lines = _lines(tmp_path / "list")
    (tmp_path / "list" / AUDIT_FILE).write_bytes(lines[0] + b"[1, 2, 3]\n" + lines[2])
    assert 2 in _problem_records(log.verify(check_files=False))
    # a device and a FIFO named in schema-valid records: named as unreadable, never read (no hang)
    log, _ = _rich_log(tmp_path / "devices", 3)
    records = _records(tmp_path / "devices")
    records[1]["files"] = [{"role": "query", "path": "/dev/zero", "sha256": "a" * 64},
                           {"role": "query", "path": str(fifo), "sha256": "b" * 64}]
    records[0]["files"] = records[2]["files"] = []
    _write(tmp_path / "devices", _rechain(records))
    _set_head(tmp_path / "devices", 3, records[2]["hash"])
    messages = [p.message for p in log.verify().problems]
    assert messages == ["query file /dev/zero (record 2) is unreadable (not a regular file)",
                        f"query file {fifo} (record 2) is unreadable (not a regular file)"]


def test_expect_catches_a_rewritten_log_whose_head_was_rewritten_too(tmp_path):
    from handclip.forensic.audit_format import parse_anchor

    directory = tmp_path / "gallery"
    log, refs = _rich_log(directory)
    kept = [parse_anchor(refs[2].anchor), parse_anchor(refs[-1].anchor)]  # printed in two case reports
    assert log.verify(check_files=False, expect=kept).ok
    records = _records(directory)
    attacks = {
        "cut and head rewritten": records[:3],
        "edited and re-chained": _rechain([{**r, "examiner": "forger"} if r["seq"] == 2 else r
                                           for r in copy.deepcopy(records)]),
        "replaced wholesale": _rechain([{**r, "results": []} for r in copy.deepcopy(records)]),
    }
    for name, forged in attacks.items():
        _write(directory, forged)
        head = json.loads((directory / HEAD_FILE).read_text())
        head.update(seq=forged[-1]["seq"], hash=forged[-1]["hash"], first_hash=forged[0]["hash"], pending=None)
        (directory / HEAD_FILE).write_text(json.dumps(head))
        assert log.verify(check_files=False).ok, name  # consistent: only an anchor kept elsewhere tells
        result = log.verify(check_files=False, expect=kept)
        assert not result.ok and "--expect" in result.problems[0].message, name
    with pytest.raises(AuditError, match="is not SEQ:HASH"):
        parse_anchor("12:abc")


def test_signed_heads_refuse_a_log_rewritten_without_the_key(tmp_path):
    from handclip.forensic.audit_head import HeadSigner, generate_key, load_public_key

    private, public, key_id = generate_key(tmp_path / "keys" / "lab.pem")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    signer = HeadSigner.load(private)
    directory = tmp_path / "gallery"
    log, refs = _rich_log(directory, signer=signer)
    lab_key = load_public_key(public)
    result = log.verify(check_files=False, public_key=lab_key)
    assert result.ok and result.head.key_id == key_id and refs[-1].key_id == key_id
    records = _records(directory)
    # edited and re-chained, head rewritten with the forger's own key: signed, but not by the lab
    forger_private, forger_public, _ = generate_key(tmp_path / "keys" / "forger.pem")
    forged = _rechain([{**r, "examiner": "forger"} for r in copy.deepcopy(records)])
    _write(directory, forged)
    from handclip.forensic.audit_head import head_payload

    payload = head_payload(5, forged[-1]["hash"], forged[0]["hash"], None)
    (directory / HEAD_FILE).write_text(json.dumps(HeadSigner.load(forger_private).sign(payload)))
    assert "is signed by key" in log.verify(check_files=False, public_key=lab_key).problems[0].message
    # the head's content changed under the lab's signature
    _write(directory, records)
    head = json.loads((directory / HEAD_FILE).read_text())
    lab_head = HeadSigner.load(private).sign(head_payload(5, records[-1]["hash"], records[0]["hash"], None))
    (directory / HEAD_FILE).write_text(json.dumps({**lab_head, "seq": 4, "hash": records[3]["hash"]}))
    assert "signature that does not match" in log.verify(check_files=False).problems[0].message
    # cut to record 4 with an unsigned head: the records say they were signed
    _write(directory, records[:4])
    (directory / HEAD_FILE).write_text(json.dumps({**head_payload(4, records[3]["hash"], records[0]["hash"], None),
                                                   "signature": None}))
    messages = [p.message for p in log.verify(check_files=False).problems]
    assert messages == [f"record 4 was appended with signing key {key_id} but audit.head.json is not signed"]
    assert "is not signed" in log.verify(check_files=False, public_key=lab_key).problems[0].message


def test_a_signing_key_inside_the_gallery_or_of_another_kind_is_refused(tmp_path):
    from handclip.forensic.audit_head import HeadSigner, check_key_location, generate_key

    gallery = tmp_path / "gallery"
    inside, _, _ = generate_key(gallery / "keys" / "lab.pem")
    with pytest.raises(AuditError, match="inside the gallery folder"):
        check_key_location(inside, gallery)
    with pytest.raises(AuditError, match="already exists"):
        generate_key(inside)
    (tmp_path / "not-a-key.pem").write_text("hello")
    with pytest.raises(AuditError, match="not an unencrypted PEM private key"):
        HeadSigner.load(tmp_path / "not-a-key.pem")
