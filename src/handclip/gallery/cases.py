"""A case: the searches an examiner recorded under one case id, read back from the gallery's audit log.

A search carries its case id in its audit record (``arguments.case_id``: ``handclip search --case-id``
and the service's ``case_id`` field both put it there), so the log itself is the case file: listing a
case reads the records and keeps the ``search`` records of that id, oldest first. Nothing else is
trusted: a case's searches are what the hash-chained records say.

A search's answer is rebuilt from its record alone (``record_answer``): the candidates and their
numbers as recorded, with the words a person reads (``forensic.reading``) recomputed from those
numbers, so a reopened search reads as it did when it was made. ``key_id`` limits a listing to the
searches one service key made (the record's ``arguments.api_key``); ``None`` lists them all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HandCLIPError
from ..forensic.audit import AuditLog
from ..forensic.evidence import CalibrationInfo, propositions
from ..forensic.reading import SCORE_MEANING, CLLR_MEANING
from .case_report import check_case_id
from .results import Candidate, printable
from .session import ExaminerSession

# Files of a search record that are not the exhibit itself (the query, and any prepared form of it).
NOT_EXHIBITS = frozenset({"checkpoint", "calibration", "enrolled image"})
_CANDIDATE_FIELDS = {f.name for f in dataclasses.fields(Candidate)}


def check_case(case_id) -> str:
    """A case id to look up: non-empty plain text of at most ``CASE_ID_LIMIT`` characters (HandCLIPError
    naming it otherwise)."""
    if not isinstance(case_id, str) or not case_id.strip():
        raise HandCLIPError("case id is empty; give the case id the searches were made with (--case-id)")
    check_case_id(case_id)
    return case_id


def case_of(record: dict) -> str | None:
    """The case id a record was made under, or None."""
    arguments = record.get("arguments")
    case = record.get("case_id")
    if case is None and isinstance(arguments, dict):
        case = arguments.get("case_id")
    return case if isinstance(case, str) else None


def key_of(record: dict) -> str | None:
    """The service key id that made a record (None for the command line and the Python API)."""
    arguments = record.get("arguments")
    key = arguments.get("api_key") if isinstance(arguments, dict) else None
    return key if isinstance(key, str) else None


@dataclass
class CaseSearch:
    """One search of a case as its audit record holds it."""

    record: dict = field(repr=False)

    @property
    def seq(self) -> int:
        return self.record["seq"]

    @property
    def anchor(self) -> str:
        return f"{self.record['seq']}:{self.record['hash']}"

    def queries(self) -> list[dict]:
        results = self.record.get("results")
        return [q for q in results if isinstance(q, dict)] if isinstance(results, list) else []

    def summary(self) -> dict:
        """What a list of the case's searches shows: when, by whom, which exhibits, the first candidate."""
        out = []
        for query in self.queries():
            candidates = query.get("candidates") or [{}]
            top = candidates[0] if isinstance(candidates[0], dict) else {}
            out.append({"exhibit": query.get("name"), "sha256": query.get("sha256"),
                        "top": {k: top.get(k) for k in ("identity", "score", "log10_lr", "verbal")},
                        "open_set": (query.get("open_set") or {}).get("answer")})
        return {"record": self.seq, "anchor": self.anchor, "time": self.record.get("time"),
                "examiner": self.record.get("examiner"), "by": _by(self.record),
                "calibrated": self.record.get("calibration") is not None, "queries": out}

    def line(self) -> str:
        parts = [f"{q['exhibit']} -> {q['top']['identity']} (score {q['top']['score']:.4f}"
                 + (f", log10 LR {q['top']['log10_lr']:+.2f}" if q["top"].get("log10_lr") is not None else "") + ")"
                 for q in self.summary()["queries"] if isinstance(q["top"].get("score"), (int, float))]
        who = self.record.get("examiner") or self.record.get("os_user") or "?"
        return printable(f"record {self.seq:5d}  {self.record.get('time')}  {who}  " + ("; ".join(parts) or "no candidates"))


@dataclass
class CaseSearches:
    """A case's searches (oldest first) and the audit log's head when they were read."""

    case_id: str
    log: Path
    searches: list[CaseSearch]
    head: str | None
    key_id: str | None = None

    def as_dict(self) -> dict:
        return {"case_id": self.case_id, "head": self.head, "scope": _scope(self.key_id),
                "searches": [s.summary() for s in self.searches]}

    def lines(self) -> list[str]:
        if not self.searches:
            return [printable(f"case {self.case_id!r}: no searches in {self.log} ({_scope(self.key_id)})")]
        return [printable(f"case {self.case_id!r}: {len(self.searches)} search(es) in {self.log}"),
                *(s.line() for s in self.searches), f"audit head when read: {self.head}"]


def _scope(key_id: str | None) -> str:
    return "every search of the case" if key_id is None else f"the searches made with API key {key_id}"


def _by(record: dict) -> str | None:
    arguments = record.get("arguments") if isinstance(record.get("arguments"), dict) else {}
    calibration = record.get("calibration") if isinstance(record.get("calibration"), dict) else {}
    return calibration.get("kind") or arguments.get("by")


def searches_in(records: list[dict], case_id: str, key_id: str | None = None) -> list[CaseSearch]:
    """The ``search`` records of ``case_id`` (made with ``key_id`` when given), oldest first."""
    return [CaseSearch(r) for r in records if r.get("command") == "search" and case_of(r) == case_id
            and (key_id is None or key_of(r) == key_id)]


def read_case(log: AuditLog, case_id: str, key_id: str | None = None) -> tuple[list[CaseSearch], list[dict], object]:
    """(the case's searches, every record up to the head, the head) read from ``log``: the head first, so
    records appended meanwhile are left out and the head names the newest record read."""
    check_case(case_id)
    head = log.read_head()
    records = [r for r in log.records() if head is None or r["seq"] <= head.seq]
    return searches_in(records, case_id, key_id), records, head


def list_case(index_dir: str | os.PathLike, case_id: str, *, key_id: str | None = None) -> CaseSearches:
    """The searches recorded under ``case_id`` in the gallery's audit log, oldest first (``key_id``: only
    those one service key made). A bad case id or a damaged log is refused in one line."""
    check_case(case_id)
    session = ExaminerSession.open(index_dir, with_model=False)
    return case_searches(session.audit_log, case_id, key_id=key_id)


def case_searches(log: AuditLog, case_id: str, *, key_id: str | None = None) -> CaseSearches:
    searches, _, head = read_case(log, case_id, key_id)
    return CaseSearches(case_id, log.path, searches, f"{head.seq}:{head.hash}" if head else None, key_id)


class _RecordedCalibration:
    """A calibration as a search record keeps it: enough to word its propositions again."""

    def __init__(self, summary: dict):
        self.summary = summary if isinstance(summary, dict) else {}

    population = CalibrationInfo.population


def record_answer(record: dict) -> dict:
    """A search's JSON answer rebuilt from its audit record: the recorded numbers, with each candidate's
    ``words`` recomputed from them (as ``SearchResult.as_dict`` gives them)."""
    by = _by(record) or "identity"
    arguments = record.get("arguments") if isinstance(record.get("arguments"), dict) else {}
    top_k = arguments.get("top_k") if isinstance(arguments.get("top_k"), int) else 10
    calibration = record.get("calibration") if isinstance(record.get("calibration"), dict) else None
    props = propositions(_RecordedCalibration(calibration.get("summary"))) if calibration else None
    queries = []
    for query in CaseSearch(record).queries():
        shown = dict(query)
        shown["candidates"] = []
        for raw in query.get("candidates") or []:
            candidate = dict(raw)
            try:
                kept = Candidate(**{k: v for k, v in raw.items() if k in _CANDIDATE_FIELDS})
                candidate["words"] = kept.words(by, top_k, props, str(query.get("name") or ""))
            except (TypeError, ValueError):
                candidate["words"] = None  # a record HandCLIP did not write; shown as recorded
            shown["candidates"].append(candidate)
        queries.append(shown)
    return {"case_id": case_of(record), "time": record.get("time"), "examiner": record.get("examiner"),
            "queries": queries, "by": by, "top_k": top_k, "index_type": arguments.get("index_type"),
            "score": record.get("score"), "gallery": record.get("gallery"), "model": record.get("model"),
            "calibration": calibration, "propositions": props, "statement": record.get("statement"),
            "audit": {"seq": record["seq"], "hash": record["hash"], "anchor": f"{record['seq']}:{record['hash']}"},
            "reading": {"score": SCORE_MEANING,
                        "calibration": f"{calibration.get('description')}. {CLLR_MEANING}" if calibration else None},
            "rebuilt_from": f"audit record {record['seq']}"}
