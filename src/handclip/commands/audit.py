"""``handclip audit``: check (verify) or print (show) a gallery's hash-chained audit log."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["verify", "show"],
                        help="verify: check the chain and every recorded file hash; show: print the records")
    parser.add_argument("--index", required=True, help="gallery directory holding audit.jsonl")
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
    return ""


def run(args) -> int:
    from pathlib import Path

    from ..errors import HandCLIPError

    if not Path(args.index).is_dir():
        raise HandCLIPError(f"gallery directory {args.index} does not exist")
    from .. import api

    if args.action == "verify":
        result = api.verify_audit(args.index, check_files=not args.no_files)
        for note in result.notes:
            print(f"note: {note}")
        for problem in result.problems:
            print(f"FAILED: {problem.message}")
        verdict = "verified" if result.ok else f"FAILED ({len(result.problems)} problem(s); first: {result.problems[0].message})"
        print(f"audit log {result.log}: {result.records} record(s), {result.files_checked} file(s) checked: {verdict}")
        return 0 if result.ok else 1
    found = api.read_audit(args.index, seq=args.seq)
    if not found.records:
        print(f"audit log {found.log} holds no records")
    for record in found.records:
        if args.json or args.seq is not None:
            print(json.dumps(record, indent=None if args.json else 2, sort_keys=True, ensure_ascii=False))
            continue
        who = record.get("examiner") or record.get("os_user")
        print(f"{record.get('seq'):5d}  {record.get('time')}  {who}  {record.get('command'):<6}  "
              f"{str(record.get('hash'))[:16]}  {_summary(record)}")
    return 0
