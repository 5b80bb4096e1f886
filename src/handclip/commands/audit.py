"""``handclip audit``: check (verify) or print (show) a gallery's hash-chained audit log, re-anchor a log
whose head was lost, or make a key pair for signing heads (keygen)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["verify", "show", "reanchor", "keygen"],
                        help="verify: check the chain, the head and every recorded file hash; show: print the "
                             "records; reanchor: write a new head after audit.head.json was lost (recorded); "
                             "keygen: make an Ed25519 key pair for signing heads")
    parser.add_argument("--index", default=None, help="gallery directory holding audit.jsonl")
    parser.add_argument("--expect", action="append", default=[], metavar="SEQ:HASH",
                        help="verify: the log must hold this record (a record hash kept elsewhere, as a case "
                             "report or search answer prints it); repeat for several")
    parser.add_argument("--public-key", default=None, metavar="KEY.pub",
                        help="verify: the head must be signed by this Ed25519 public key")
    parser.add_argument("--reason", default=None, help="reanchor: why the head was lost (recorded)")
    parser.add_argument("--out", default=None, metavar="KEY.pem",
                        help="keygen: private key file to write (kept outside any gallery); KEY.pem.pub gets "
                             "the public key")
    parser.add_argument("--seq", type=int, default=None, help="show: only this record, in full")
    parser.add_argument("--json", action="store_true", help="show: print records as JSON lines")
    parser.add_argument("--no-files", action="store_true",
                        help="verify: check the chain only, not the files the records name")


def _summary(record: dict) -> str:
    results = record.get("results")
    if record.get("command") == "search" and isinstance(results, list):
        parts = []
        for query in results:
            top = (query.get("candidates") or [{}])[0]
            lr = f", log10 LR {top['log10_lr']:+.2f}" if top.get("log10_lr") is not None else ""
            parts.append(f"{query.get('query')} -> {top.get('identity')} ({top.get('score', 0):.4f}{lr})")
        return "; ".join(parts)
    if record.get("command") == "enrol" and isinstance(results, dict):
        return (f"added {len(results.get('added') or [])}, already enrolled {results.get('already_enrolled')}, "
                f"gallery {results.get('gallery_images')} images")
    if record.get("command") == "enrol-start" and isinstance(record.get("planned"), list):
        return f"plans to add {len(record['planned'])} image(s)"
    if record.get("command") == "report":
        return f"no case report made for record {record.get('search_record')}: {record.get('error')}"
    if record.get("command") == "reanchor":
        return f"head re-anchored (it was {record.get('head_was')}): {record.get('reason')}"
    return ""


def _printable(text: str) -> str:
    """``text`` with control and bidirectional characters shown as escapes (a record is untrusted input)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _verify(api, args) -> int:
    result = api.verify_audit(args.index, check_files=not args.no_files, expect=args.expect,
                              public_key=args.public_key)
    for note in result.notes:
        print(f"note: {note}")
    for problem in result.problems:
        print(f"FAILED: {problem.message}")
    if result.anchor:
        signed = f", signed by key {result.head.key_id}" if result.head.key_id else ""
        print(f"head: {result.anchor}{signed} (keep it; check later with --expect {result.anchor})")
    verdict = "verified" if result.ok else f"FAILED ({len(result.problems)} problem(s); first: {result.problems[0].message})"
    print(f"audit log {result.log}: {result.records} record(s), {result.files_checked} file(s) checked: {verdict}")
    return 0 if result.ok else 1


def _keygen(args) -> int:
    from .. import api
    from ..errors import HandCLIPError

    if not args.out:
        raise HandCLIPError("audit keygen needs --out KEY.pem (a file outside any gallery folder)")
    key = api.make_signing_key(args.out)
    print(f"wrote private key {key.private} (mode 600) and public key {key.public}; key id {key.key_id}")
    print(f"sign heads with it: export {key.environment}={key.private.resolve()}")
    return 0


def run(args) -> int:
    from pathlib import Path

    from ..errors import HandCLIPError

    if args.action == "keygen":
        return _keygen(args)
    if not args.index:
        raise HandCLIPError(f"audit {args.action} needs --index GALLERY")
    if not Path(args.index).is_dir():
        raise HandCLIPError(f"gallery directory {args.index} does not exist")
    from .. import api

    if args.action == "verify":
        return _verify(api, args)
    if args.action == "reanchor":
        if not args.reason:
            raise HandCLIPError("audit reanchor needs --reason TEXT (it is recorded)")
        ref = api.reanchor_audit(args.index, args.reason)
        print(f"re-anchored {ref.log}: record {ref.seq} says why; new head {ref.anchor}")
        return 0
    found = api.read_audit(args.index, seq=args.seq)
    if not found.records:
        print(f"audit log {found.log} holds no records")
    for record in found.records:
        if args.json or args.seq is not None:
            print(json.dumps(record, indent=None if args.json else 2, sort_keys=True, ensure_ascii=False))
            continue
        who = record.get("examiner") or record.get("os_user")
        print(_printable(f"{record.get('seq'):5d}  {record.get('time')}  {who}  {record.get('command'):<11}  "
                        f"{str(record.get('hash'))[:16]}  {_summary(record)}"))
    return 0
