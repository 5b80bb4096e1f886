"""What a gallery search returns: one result family for every caller (CLI, web service, notebook).

``Candidate`` is one ranked answer; the gallery's index fills the ranking fields, an examiner session
(``handclip.gallery.session``) adds the enrolled file's hash and, with a calibration, the bounded log10
likelihood ratio and its verbal equivalent. ``QueryResult`` holds one query's candidates and the
query file's hash at intake; ``SearchResult`` a whole audited search with everything its report needs.

Paths shown to people (HTML page, PDF, console) never reveal directories outside the gallery:
``display_path`` gives a file inside the gallery folder relative to it, an enrolled image relative
to its enrolment root (from its identity's folder on, for a per-identity-folder enrolment), and any
other file by its name alone; the SHA-256 shown beside it identifies it. Full paths stay in the audit
log and the JSON output, which the examiner keeps. A query is named by its exhibit name: the file name
the examiner gave it (an upload's own name, sanitised by ``exhibit_name``), even when it is stored under
another name (a web upload is stored by its content hash).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ..forensic.audit import AuditRef
from ..forensic.evidence import NOT_LIKELIHOOD_RATIOS, CalibrationInfo
from ..forensic.reading import (CLLR_MEANING, SCORE_MEANING, bound_note, calibration_note, lr_text, matched_text,
                                suggested_statement)

# An exhibit's name is shown and recorded with at most this many characters.
EXHIBIT_NAME_LIMIT = 120
# Control, invisible formatting (bidirectional overrides, zero-width), private, unassigned and line
# separator characters: none belongs in a file name a reader is shown.
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}
SCORE_DEFINITIONS = {
    "identity": "best cosine similarity between the query and any of the person's enrolled images",
    "image": "cosine similarity between the query and the enrolled image",
}


def printable(text) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, carriage returns,
    bidirectional overrides) are shown as ``\\x..`` / ``\\u....`` escapes instead of acting on the screen."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def visible_text(text) -> str:
    """``text`` (NFC) without control, bidirectional-override or other invisible characters."""
    return "".join(ch for ch in unicodedata.normalize("NFC", str(text))
                   if unicodedata.category(ch) not in _HIDDEN_CATEGORIES)


def exhibit_name(name, limit: int = EXHIBIT_NAME_LIMIT) -> str:
    """A client-given file name fit to show and record: its last path part (either slash), with no
    control, bidirectional or other invisible characters, at most ``limit`` characters keeping its
    suffix; "upload" when nothing is left."""
    text = re.split(r"[/\\]", visible_text(name or ""))[-1].strip()
    if text in ("", ".", ".."):
        return "upload"
    if len(text) > limit:
        stem, dot, suffix = text.rpartition(".")
        keep = dot + suffix if dot and stem and len(suffix) <= 10 else ""
        text = text[: limit - len(keep)] + keep
    return text


def display_path(path: str, identity: str | None = None, gallery_dir: str | os.PathLike | None = None) -> str:
    """A path to show a reader: relative to the gallery folder or enrolment root, else the file name."""
    pure = PurePath(path)
    if gallery_dir is not None:
        try:
            return pure.relative_to(Path(gallery_dir).resolve()).as_posix()
        except ValueError:
            pass
    parts = pure.parts
    if identity is not None and identity in parts[:-1]:
        cut = len(parts) - 1 - parts[:-1][::-1].index(identity) - 1  # the identity folder nearest the file
        return PurePath(*parts[cut:]).as_posix()
    return pure.name


@dataclass
class Candidate:
    """One ranked answer for a query.

    ``score`` is a cosine similarity. For ``by='image'`` a candidate is one enrolled image. For
    ``by='identity'`` it is one person: ``score`` is the best score over all of that person's
    enrolled images, ``path`` the image that achieved it, ``images`` all of their images best first
    (``(path, score)``), ``num_images`` how many they have enrolled and ``matched`` how many of them are
    among the query's ``top_k`` image-level hits. ``sha256`` is the enrolled file's recorded hash;
    ``log10_lr``, ``verbal`` and ``at_bound`` ("lower"/"upper" when the LR was clipped to the
    calibration's bound) are set when the search was calibrated.
    """

    rank: int
    identity: str
    score: float
    path: str
    num_images: int
    matched: int
    images: list[tuple[str, float]] = field(default_factory=list, repr=False)
    sha256: str | None = None
    log10_lr: float | None = None
    verbal: str | None = None
    at_bound: str | None = None

    def as_dict(self) -> dict:
        """The candidate as the audit record and the JSON answer keep it (the other images left out)."""
        return {"rank": self.rank, "identity": self.identity, "score": self.score, "path": self.path,
                "sha256": self.sha256, "num_images": self.num_images, "matched": self.matched,
                "log10_lr": self.log10_lr, "verbal": self.verbal, "at_bound": self.at_bound}

    def words(self, by: str, top_k: int, propositions: dict | None, exhibit: str) -> dict:
        """The candidate's numbers as a person reads them (``handclip.forensic.reading``): the LR, the
        bound, what ``matched`` counts, and a statement the examiner can copy (None where not calibrated)."""
        calibrated = self.log10_lr is not None and propositions is not None
        compared = (f"the enrolled images of {self.identity}" if by == "identity"
                    else f"enrolled image {PurePath(self.path).name} of {self.identity}")
        return {"lr": lr_text(self.log10_lr) if calibrated else None, "bound": bound_note(self.at_bound),
                "matched": matched_text(self.matched, self.num_images, top_k) if by == "identity" else None,
                "statement": suggested_statement(propositions, self.log10_lr, self.verbal or "", exhibit, compared,
                                                 self.at_bound) if calibrated else None}


@dataclass
class QueryResult:
    """One query: the file searched, its exhibit name (what the examiner called it), hash and candidates."""

    query: str
    sha256: str | None
    candidates: list[Candidate]
    name: str = ""
    open_set: dict | None = None  # with a calibration: whether any candidate reaches the threshold (reading.py)
    transform: dict | None = None  # the crop, rotation and mirror applied (data.query_transform), or None
    prepared: dict | None = None  # the prepared image searched: path, sha256, pixels_sha256, size

    @property
    def exhibit(self) -> str:
        return self.name or PurePath(self.query).name

    def as_dict(self) -> dict:
        return {"query": self.query, "name": self.exhibit, "sha256": self.sha256,
                "candidates": [c.as_dict() for c in self.candidates], "open_set": self.open_set,
                "transform": self.transform, "prepared": self.prepared}


@dataclass
class SearchResult:
    """What a search found and everything needed to report it: propositions, identifiers, audit record."""

    queries: list[QueryResult]
    by: str
    top_k: int
    index_type: str
    score: str
    gallery: dict
    model: dict
    calibration: CalibrationInfo | None = None
    audit: AuditRef | None = None
    examiner: str | None = None
    statement: str = NOT_LIKELIHOOD_RATIOS
    propositions: dict | None = None
    bounds: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The search as the JSON outputs give it: each candidate with its ``words`` (the audit record keeps
        the numbers only: ``records.search_record``)."""
        queries = []
        for query in self.queries:
            info = query.as_dict()
            for candidate, shown in zip(query.candidates, info["candidates"]):
                shown["words"] = candidate.words(self.by, self.top_k, self.propositions, query.exhibit)
            queries.append(info)
        return {"queries": queries, "by": self.by, "top_k": self.top_k,
                "index_type": self.index_type, "score": self.score, "gallery": self.gallery, "model": self.model,
                "calibration": self.calibration.as_record(self.by) if self.calibration else None,
                "propositions": self.propositions, "statement": self.statement, "examiner": self.examiner,
                "audit": self.audit.as_dict() if self.audit else None, "reading": self.reading()}

    def reading(self) -> dict:
        """What the numbers mean, once per search: the score, and the calibration's Cllr with its meaning."""
        return {"score": SCORE_MEANING,
                "calibration": calibration_note(self.calibration, self.by) if self.calibration else None}

    def calibration_line(self) -> str | None:
        """Which calibration weighed the scores and how well it did, as the console and the HTML page show it."""
        cal = self.calibration
        if cal is None:
            return None
        return (f"calibration {printable(display_path(cal.path))} (SHA-256 {cal.sha256[:16]}...): "
                f"{cal.describe(self.by)}")

    def lines(self) -> list[str]:
        """The search for a terminal: each query's candidates, what the scores mean, the audit record."""
        lines, bounds = [], set()
        for query in self.queries:
            lines.append(f"query {printable(query.name or display_path(query.query))}  SHA-256 {query.sha256}")
            for c in query.candidates:
                words = c.words(self.by, self.top_k, self.propositions, query.exhibit)
                detail = (words["matched"] if self.by == "identity"
                          else printable(display_path(c.path, c.identity, self.gallery["dir"])))
                weight = ""
                if self.calibration is not None:
                    bound = f", at the {c.at_bound} bound" if c.at_bound else ""
                    weight = f"  {words['lr']}{bound}: {c.verbal}"
                    bounds.add(words["bound"])
                lines.append(f"  {c.rank:3d}. {printable(c.identity):<20} score {c.score:.4f}{weight}  ({detail})")
            if query.open_set is not None:
                lines.append(f"  open-set answer: {query.open_set['answer']}")
            if self.calibration is not None and query.candidates:
                lines.append(f"  suggested statement (rank 1): {words_of_first(self, query)}")
        lines += [f"score: {self.score}. {SCORE_MEANING}", *sorted(b for b in bounds if b)]
        if self.calibration is not None:
            lines += [f"Hp: {self.propositions['hp']}", f"Hd: {self.propositions['hd']}", self.calibration_line(),
                      CLLR_MEANING]
        else:
            lines.append(self.statement)
        if self.audit is not None:
            lines.append(f"audit record {self.audit.seq} (SHA-256 {self.audit.hash}) in {self.audit.log}")
        return lines


def words_of_first(search: SearchResult, query: QueryResult) -> str:
    """The suggested statement of a query's first candidate, names shown as the console shows them."""
    first = query.candidates[0]
    return printable(first.words(search.by, search.top_k, search.propositions, query.exhibit)["statement"])
