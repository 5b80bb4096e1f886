"""``handclip case``: list a case's searches (from the gallery's audit log) or export the case as one bundle."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "export"],
                        help="list: the searches recorded under the case id; export: one ZIP bundle of the case "
                             "(exhibits, answers, reports, audit records, fingerprints, SHA256SUMS), recorded")
    parser.add_argument("case_id", metavar="CASE", help="the case id the searches were made with (--case-id)")
    parser.add_argument("--index", required=True, help="gallery directory holding the audit log")
    parser.add_argument("--out", default=None, metavar="CASE.zip", help="export: the bundle to write")
    parser.add_argument("--examiner", default=None, help="export: examiner's name for the audit record "
                                                         "(default: the OS user)")
    parser.add_argument("--json", action="store_true", help="list: print the searches as JSON")


def run(args) -> int:
    from ..errors import HandCLIPError
    from ..preflight import require_folder

    require_folder("--index", args.index, "gallery folder", "make one with `handclip enrol`")
    if args.action == "export" and not args.out:
        raise HandCLIPError("case export needs --out CASE.zip")
    from .. import api

    if args.action == "list":
        found = api.list_case(args.index, args.case_id)
        print(json.dumps(found.as_dict(), indent=2, ensure_ascii=False) if args.json else "\n".join(found.lines()))
        return 0
    arguments = {"interface": "cli", "case_id": args.case_id, "out": args.out}
    export = api.export_case(args.index, args.case_id, args.out, examiner=args.examiner, arguments=arguments)
    print("\n".join(export.lines()))
    return 0
