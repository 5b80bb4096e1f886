"""A case's export bundle: one ZIP holding what the case's searches rest on, with a manifest that checks it.

Layout (every name plain ASCII, so ``sha256sum -c`` reads the manifest as written)::

    README.txt                          what the bundle holds and how to check it
    case.json                           the case, its searches, what is included and what is not, the head
    audit/records.jsonl                 the case's audit records, byte for byte as the log holds them
    audit/head.json                     the audit log's head (SEQ:HASH) when the bundle was made
    searches/record-N/answer.json       each search's answer, rebuilt from its record (``cases.record_answer``)
    searches/record-N/handclip-...pdf   its case report, where one was made and is still at hand
    exhibits/SHA256.ext                 the original exhibits, where the gallery or the service kept them
    fingerprints.json                   the model and calibration fingerprints the searches used
    SHA256SUMS                          the SHA-256 of every other file, in ``sha256sum`` format

An exhibit goes in only when the file its record names still holds the bytes the record hashed; a
missing or changed one is listed in case.json with its recorded hash and why it is left out. The
case's records are the log's own lines, so each record's hash can be recomputed from the bundle
(docs/forensic-guide.md says how). The ZIP is written through ``handclip.atomic``: an error leaves no
file. The export is then itself recorded in the audit log (``case-export``: the case, its records, the
head, and the SHA-256 of SHA256SUMS, which pins every file of the bundle), before the ZIP is put in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..atomic import atomic_open
from ..errors import HandCLIPError
from ..forensic.audit import AuditLog, AuditRef, utc_now
from ..forensic.audit_format import AuditError, canonical_json
from .case_report import report_file_name
from .cases import NOT_EXHIBITS, CaseSearch, case_of, check_case, read_case, record_answer
from .session import ExaminerSession

MANIFEST = "SHA256SUMS"
# Where ``handclip serve`` keeps the case reports it made (one folder per report, with report.json).
SERVED_REPORTS = Path("serve") / "reports"
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


@dataclass
class CaseExport:
    """What ``export_case`` wrote: the bundle, its contents and the audit record of the export."""

    out: Path
    case_id: str
    searches: int
    files: list[str]
    left_out: list[str]
    manifest_sha256: str
    head: str | None
    audit: AuditRef

    def lines(self) -> list[str]:
        lines = [f"wrote {self.out}: case {self.case_id!r}, {self.searches} search(es), {len(self.files)} file(s) "
                 f"listed in {MANIFEST} (SHA-256 {self.manifest_sha256})"]
        lines += [f"not included: {note}" for note in self.left_out]
        lines.append(f"audit head at export: {self.head}; the export is audit record {self.audit.seq} "
                     f"(SHA-256 {self.audit.hash})")
        lines.append(f"check it: unzip {self.out.name} -d bundle && cd bundle && sha256sum -c {MANIFEST}")
        return lines


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _served_reports(index_dir: Path) -> dict[tuple[int, str], tuple[Path, str | None]]:
    """(record, record hash) -> (PDF, the key that asked for it) for every report the service stored."""
    found = {}
    for meta_file in sorted((index_dir / SERVED_REPORTS).glob("*/report.json")):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            pdf = meta_file.parent / PurePath(str(meta["file"])).name
            found[(int(meta["record"]), str(meta["record_hash"]))] = (pdf, meta.get("key_id"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a report the service wrote; the service refuses it as well
    return found


def bundle_file_name(case_id: str) -> str:
    """The bundle's file name from its case id, as reports are named: ``handclip-case-2026-017.zip``."""
    return report_file_name(0, case_id).replace("-record-0.pdf", ".zip").replace("handclip-record-0.pdf",
                                                                                   "handclip-case.zip")


def served_report(index_dir: str | os.PathLike, record: dict, key_id: str | None = None) -> Path | None:
    """The case report the service made for search ``record`` (for ``key_id`` when given), if it is kept."""
    stored = _served_reports(Path(index_dir)).get((record["seq"], record["hash"]))
    if stored is None or not stored[0].is_file() or (key_id is not None and stored[1] != key_id):
        return None
    return stored[0]


def _report_of(search: CaseSearch, served: dict, key_id: str | None) -> tuple[Path | None, str | None]:
    """The search's case report file, or None and why it is left out."""
    record = search.record
    stored = served.get((record["seq"], record["hash"]))
    if stored is not None and stored[0].is_file() and (key_id is None or stored[1] == key_id):
        return stored[0], None
    if stored is not None:
        return None, f"the case report of record {record['seq']} is no longer kept by the service"
    arguments = record.get("arguments") if isinstance(record.get("arguments"), dict) else {}
    given = arguments.get("report")
    if isinstance(given, str) and arguments.get("interface") != "serve":
        path = Path(given)
        if path.is_file():
            return path, None
        return None, f"the case report of record {record['seq']} was written to {given}, which is not at hand here"
    return None, None  # no report was asked for


def _exhibits(search: CaseSearch) -> list[dict]:
    """The exhibit files of a search record: each with its recorded hash and the file now at its path."""
    names = {q.get("sha256"): q.get("name") for q in search.queries()}
    out = []
    for entry in search.record.get("files") or []:
        if entry.get("role") in NOT_EXHIBITS:
            continue
        suffix = PurePath(entry["path"]).suffix.lower()
        out.append({"role": entry["role"], "name": names.get(entry["sha256"]), "sha256": entry["sha256"],
                    "path": entry["path"], "bundle_name": f"exhibits/{entry['sha256']}"
                    + (suffix if _SUFFIX.fullmatch(suffix) else "")})
    return out


def _fingerprints(searches: list[CaseSearch]) -> dict:
    models, calibrations = {}, {}
    for search in searches:
        model = search.record.get("model") if isinstance(search.record.get("model"), dict) else {}
        if model:
            models[str(model.get("checkpoint_sha256"))] = {
                "checkpoint": PurePath(str(model.get("checkpoint"))).name,
                "checkpoint_sha256": model.get("checkpoint_sha256"), "fingerprint": model.get("fingerprint")}
        cal = search.record.get("calibration")
        if isinstance(cal, dict):
            calibrations[str(cal.get("sha256"))] = {"file": PurePath(str(cal.get("path"))).name,
                                                    **{k: cal.get(k) for k in ("sha256", "kind", "bounds_log10",
                                                                               "description")}}
    return {"models": list(models.values()), "calibrations": list(calibrations.values())}


class _Bundle:
    """The files of a bundle in the order they are written, each hashed as it goes in."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive
        self.sums: list[tuple[str, str]] = []

    def add(self, name: str, data: bytes) -> None:
        self.archive.writestr(name, data)
        self.sums.append((hashlib.sha256(data).hexdigest(), name))

    def add_file(self, name: str, path: Path, expected: str | None = None) -> bool:
        """Add ``path`` if it still holds ``expected`` (its recorded SHA-256); False otherwise."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            return False
        self.archive.writestr(name, data)
        self.sums.append((digest, name))
        return True

    def close(self) -> bytes:
        manifest = "".join(f"{digest}  {name}\n" for digest, name in self.sums).encode("ascii")
        self.archive.writestr(MANIFEST, manifest)
        return manifest


def _case_records(records: list[dict], case_id: str, seqs: set[int]) -> list[dict]:
    """The records of the case: its searches, reports that failed for them, and its earlier exports."""
    return [r for r in records if r["seq"] in seqs
            or (r.get("command") == "report" and r.get("search_record") in seqs)
            or (r.get("command") == "case-export" and case_of(r) == case_id)]


def _write(bundle: _Bundle, index_dir: Path, case_id: str, searches: list[CaseSearch], records: list[dict],
           head, key_id: str | None) -> tuple[list[dict], list[str]]:
    """Every file but the manifest; returns the searches' entries for case.json and what was left out."""
    served, left_out, entries, seen = _served_reports(index_dir), [], [], set()
    for search in searches:
        folder = f"searches/record-{search.seq}"
        bundle.add(f"{folder}/answer.json", _json(record_answer(search.record)))
        exhibits = _exhibits(search)
        for exhibit in exhibits:
            included = exhibit["bundle_name"] in seen or (
                Path(exhibit["path"]).is_file() and bundle.add_file(exhibit["bundle_name"], Path(exhibit["path"]),
                                                                     exhibit["sha256"]))
            if included:
                seen.add(exhibit["bundle_name"])
            else:
                why = "changed since" if Path(exhibit["path"]).is_file() else "no longer kept at its path since"
                exhibit["note"] = f"not included: the file was {why} the search (recorded SHA-256 {exhibit['sha256']})"
                left_out.append(f"{exhibit['role']} {exhibit['name'] or exhibit['path']} of record {search.seq}: "
                                f"{why.replace(' since', '')} the search")
            exhibit["file"] = exhibit.pop("bundle_name") if included else None
        pdf, why = _report_of(search, served, key_id)
        report = None
        if pdf is not None:
            report = f"{folder}/{report_file_name(search.seq, case_id)}"
            bundle.add_file(report, pdf)
        elif why:
            left_out.append(why)
        entries.append({**search.summary(), "answer": f"{folder}/answer.json", "report": report, "exhibits": exhibits})
    bundle.add("audit/records.jsonl", b"".join(canonical_json(r) + b"\n" for r in records))
    bundle.add("audit/head.json", _json(None if head is None else {"anchor": f"{head.seq}:{head.hash}",
                                                                   **head.payload(), "signature": head.signature}))
    bundle.add("fingerprints.json", _json(_fingerprints(searches)))
    return entries, left_out


def export_case_bundle(log: AuditLog, index_dir: str | os.PathLike, case_id: str, out: str | os.PathLike, *,
                       key_id: str | None = None, examiner: str | None = None,
                       arguments: dict | None = None) -> CaseExport:
    """Write the bundle of ``case_id`` (only ``key_id``'s searches when given) to ``out`` and record the
    export in ``log``; see the module's docstring for what it holds."""
    index_dir, out = Path(index_dir), Path(out)
    searches, all_records, head = read_case(log, case_id, key_id)
    if not searches:
        raise HandCLIPError(f"case {case_id!r} has no searches in {log.path} (nothing was written)")
    verdict = log.verify(check_files=False)
    if not verdict.ok:
        raise AuditError(f"audit log {log.path} does not verify ({verdict.problems[0].message}); run `handclip audit "
                         f"verify` (nothing was written)")
    seqs = {s.seq for s in searches}
    records = _case_records(all_records, case_id, seqs)
    anchor = f"{head.seq}:{head.hash}" if head else None
    with atomic_open(out, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            bundle = _Bundle(archive)
            entries, left_out = _write(bundle, index_dir, case_id, searches, records, head, key_id)
            case = {"case_id": case_id, "exported": utc_now(), "examiner": examiner, "head_at_export": anchor,
                    "scope": "every search of the case" if key_id is None else f"the searches made with API key {key_id}",
                    "records": [r["seq"] for r in records], "searches": entries, "not_included": left_out,
                    "gallery": {k: v for k, v in (searches[-1].record.get("gallery") or {}).items() if k != "dir"}}
            bundle.add("case.json", _json(case))
            bundle.add("README.txt", _readme(case_id, anchor, len(searches), left_out).encode("utf-8"))
            manifest = bundle.close()
        manifest_sha256 = hashlib.sha256(manifest).hexdigest()
        ref = log.append({"command": "case-export", "case_id": case_id, "examiner": examiner,
                          "arguments": arguments or {}, "records": [r["seq"] for r in records],
                          "head_at_export": anchor, "scope": case["scope"],
                          "bundle": {"name": out.name, "files": len(bundle.sums) + 1,
                                     "sha256sums_sha256": manifest_sha256}})
    return CaseExport(out, case_id, len(searches), [name for _, name in bundle.sums] + [MANIFEST], left_out,
                      manifest_sha256, anchor, ref)


def _readme(case_id: str, anchor: str | None, searches: int, left_out: list[str]) -> str:
    missing = "".join(f"  - {note}\n" for note in left_out) or "  nothing\n"
    return (f"HandCLIP case bundle\n\ncase: {case_id}\nsearches: {searches}\naudit head at export: {anchor}\n\n"
            f"Check every file: cd into the unzipped folder and run  sha256sum -c {MANIFEST}\n"
            f"case.json lists the searches, their exhibits and reports; audit/records.jsonl holds the case's\n"
            f"audit records exactly as the gallery's log holds them (each record's hash is the SHA-256 of\n"
            f"its canonical JSON without 'hash'); keep the head above to check the log later with\n"
            f"`handclip audit verify --expect {anchor}`.\n\nNot included:\n{missing}")


def export_case(index_dir: str | os.PathLike, case_id: str, out: str | os.PathLike, *, examiner: str | None = None,
                arguments: dict | None = None) -> CaseExport:
    """Write one ZIP bundle of the case ``case_id`` of the gallery at ``index_dir`` to ``out``: its
    exhibits, each search's answer and report, its audit records with the log's head, the model and
    calibration fingerprints and a ``SHA256SUMS`` manifest (``sha256sum -c`` checks it). Recorded in
    the audit log; nothing is written when the case has no searches or the log does not verify."""
    check_case(case_id)
    out = Path(out)
    if out.is_dir():
        raise HandCLIPError(f"--out {out} is a directory; give a file name (e.g. {out / 'case.zip'})")
    session = ExaminerSession.open(index_dir, with_model=False)
    return export_case_bundle(session.audit_log, index_dir, case_id, out, examiner=examiner, arguments=arguments)


__all__ = ["CaseExport", "MANIFEST", "bundle_file_name", "export_case", "export_case_bundle", "served_report"]
