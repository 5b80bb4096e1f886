"""Evidential search and audited enrolment: the plain functions behind ``handclip search`` and
``handclip enrol`` (a notebook or a web service calls the same ones).

A search hashes each query file at intake (and again after the search, refusing a file that changed
meanwhile), ranks the gallery, turns each candidate's score into a bounded log10 likelihood ratio
when a calibration is given, and appends one record to the gallery's audit log
(``handclip.audit``). The record's seq and hash come back with the result.

Likelihood ratios weigh two propositions: Hp, the query hand and the candidate's enrolled images come
from the same person; Hd, they come from different people of the population the calibration data
represents. ``by='image'`` uses the calibration's ``image`` kind (the cosine similarity of two
images); ``by='identity'`` its ``identity`` kind, fitted on the score this search ranks people by: the
maximum cosine similarity between the query and any of the person's enrolled images. Without a
calibration, scores are similarities only and every output says so.

Paths shown to people (HTML page, PDF, console) never reveal directories outside the gallery:
``display_path`` gives a file inside the gallery folder relative to it, an enrolled image relative
to its enrolment root (from its identity's folder on, for a per-identity-folder enrolment), and any
other file by its name alone; the SHA-256 shown beside it identifies it. Full paths stay in the audit
log and the JSON output, which the examiner keeps.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Sequence

import numpy as np

from ..atomic import sha256_file
from ..errors import DataError, GalleryError, HandCLIPError
from ..forensic.audit import AuditLog, AuditProblem, AuditRef, VerifyResult, file_entry

NOT_LIKELIHOOD_RATIOS = ("Scores are cosine similarities between hand embeddings, not likelihood ratios: "
                         "they rank candidates but carry no evidential weight (give --calibration for "
                         "likelihood ratios).")
SCORE_DEFINITIONS = {
    "identity": "best cosine similarity between the query and any of the person's enrolled images",
    "image": "cosine similarity between the query and the enrolled image",
}


def printable(text) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, carriage returns,
    bidirectional overrides) are shown as ``\\x..`` / ``\\u....`` escapes instead of acting on the screen."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


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


# ---------------------------------------------------------------------- calibration
@dataclass
class CalibrationInfo:
    """A loaded calibration and the file it came from."""

    calibration: object  # handclip.forensic.calibration.ScoreCalibration
    path: str
    sha256: str

    @property
    def summary(self) -> dict:
        return dict(self.calibration.summary)

    def population(self) -> str:
        """Who the calibration data were: what Hd's "different people" are drawn from."""
        s = self.summary
        text = f"{s.get('n_identities', '?')} identities"
        if s.get("n_images"):
            text += f", {s['n_images']} images"
        details = []
        if s.get("splits"):
            details.append(f"splits {', '.join(map(str, s['splits']))}")
        if s.get("manifest_sha256"):
            details.append(f"SHA-256 {str(s['manifest_sha256'])[:16]}...")
        if s.get("manifest"):
            text += f", of manifest {PurePath(str(s['manifest'])).name}"
        return text + (f" ({'; '.join(details)})" if details else "")

    def figures(self, kind: str) -> dict:
        """The cross-validated figures of one score kind (the top-level ones when not given per kind)."""
        s = self.summary
        return {**s, **((s.get("kinds") or {}).get(kind) or {})}

    def validation(self, kind: str) -> str:
        f = self.figures(kind)
        number = lambda key: f"{f[key]:.3f}" if isinstance(f.get(key), (int, float)) else "?"  # noqa: E731
        return (f"{f.get('method', '?')} calibration of '{kind}' scores: Cllr {number('cllr')} (Cllr_min "
                f"{number('cllr_min')}), {f.get('n_identities', '?')} identities, {f.get('n_mated', '?')} mated "
                f"and {f.get('n_nonmated', '?')} non-mated pairs")

    def as_record(self, kind: str) -> dict:
        low, high = self.calibration.bounds(kind)
        return {"path": self.path, "sha256": self.sha256, "kind": kind, "bounds_log10": [float(low), float(high)],
                "summary": self.summary}


def load_calibration(path: str | os.PathLike) -> CalibrationInfo:
    """Load a calibration file (CalibrationError naming the file if it is missing or corrupt)."""
    from ..forensic.calibration import ScoreCalibration

    calibration = ScoreCalibration.load(path)
    return CalibrationInfo(calibration, str(Path(path).resolve()), sha256_file(path))


def propositions(calibration: CalibrationInfo | None) -> dict | None:
    if calibration is None:
        return None
    return {"hp": "The query hand and the candidate's enrolled hand images come from the same person.",
            "hd": "They come from different people, from the population the calibration data represents: "
                  f"{calibration.population()}."}


# ---------------------------------------------------------------------- results
@dataclass
class CandidateEvidence:
    rank: int
    identity: str
    score: float
    path: str
    sha256: str | None
    num_images: int
    matched: int
    log10_lr: float | None = None
    verbal: str | None = None
    at_bound: str | None = None  # "lower" or "upper" when the LR was clipped to the calibration's bound

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class QueryEvidence:
    query: str
    sha256: str
    candidates: list[CandidateEvidence]

    def as_dict(self) -> dict:
        return {"query": self.query, "sha256": self.sha256, "candidates": [c.as_dict() for c in self.candidates]}


@dataclass
class EvidentialSearch:
    """What a search found and everything needed to report it: propositions, identifiers, audit record."""

    queries: list[QueryEvidence]
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
        return {"queries": [q.as_dict() for q in self.queries], "by": self.by, "top_k": self.top_k,
                "index_type": self.index_type, "score": self.score, "gallery": self.gallery, "model": self.model,
                "calibration": self.calibration.as_record(self.by) if self.calibration else None,
                "propositions": self.propositions, "statement": self.statement, "examiner": self.examiner,
                "audit": self.audit.as_dict() if self.audit else None}


def _bound_side(value: float, bounds: tuple[float, float]) -> str | None:
    low, high = bounds
    if value <= low + 1e-9:
        return "lower"
    if value >= high - 1e-9:
        return "upper"
    return None


def _hash_queries(paths: Sequence[str]) -> dict[str, str | None]:
    out = {}
    for path in paths:
        try:
            out[path] = sha256_file(path)
        except OSError:
            out[path] = None  # named, with every other unusable query, by the image check that follows
    return out


def evidential_search(gallery, encoder, queries: Sequence[str | os.PathLike], *, top_k: int = 10,
                      by: str = "identity", index_type: str = "auto",
                      calibration: CalibrationInfo | str | os.PathLike | None = None,
                      examiner: str | None = None, arguments: dict | None = None, audit: bool = True,
                      batch_size: int = 64) -> EvidentialSearch:
    """Search, attach likelihood ratios when calibrated, append the audit record, return it all."""
    from .enrol import search_images

    if calibration is not None and not isinstance(calibration, CalibrationInfo):
        calibration = load_calibration(calibration)
    if calibration is not None:
        calibration.calibration.check_model(encoder.fingerprint())
    paths = [str(Path(q)) for q in queries]
    intake = _hash_queries(paths)
    results = search_images(gallery, encoder, paths, top_k=top_k, by=by, index_type=index_type,
                            batch_size=batch_size)
    for path, digest in _hash_queries(paths).items():
        if digest != intake[path]:
            raise DataError(f"query file {path} changed while it was searched; search it again")
    hashes = gallery.file_hashes(c.path for r in results for c in r.candidates)
    bounds = tuple(float(b) for b in calibration.calibration.bounds(by)) if calibration else None
    found = []
    for result in results:
        lrs = (calibration.calibration.log10_lr(np.array([c.score for c in result.candidates], np.float64), kind=by)
               if calibration and result.candidates else [None] * len(result.candidates))
        candidates = []
        for c, lr in zip(result.candidates, lrs):
            evidence = CandidateEvidence(c.rank, c.identity, float(c.score), c.path, hashes.get(c.path),
                                         c.num_images, c.matched)
            if lr is not None:
                from ..forensic.calibration import verbal_equivalent

                evidence.log10_lr = float(lr)
                evidence.verbal = verbal_equivalent(float(lr))
                evidence.at_bound = _bound_side(float(lr), bounds)
            candidates.append(evidence)
        found.append(QueryEvidence(result.query, intake[result.query], candidates))
    fingerprint = encoder.fingerprint()
    search = EvidentialSearch(
        queries=found, by=by, top_k=int(top_k), index_type=gallery.resolve_index_type(index_type),
        score=SCORE_DEFINITIONS[by], gallery={"dir": str(gallery.index_dir.resolve()), **gallery.commit_state,
                                              "images": len(gallery), "identities": len(gallery.identities())},
        model={"checkpoint": encoder.checkpoint, "checkpoint_sha256": fingerprint.get("checkpoint_sha256"),
               "fingerprint": fingerprint},
        calibration=calibration, examiner=examiner, propositions=propositions(calibration), bounds=bounds,
        statement=("Likelihood ratios from the calibration below, bounded to what its data supports."
                   if calibration else NOT_LIKELIHOOD_RATIOS))
    if audit:
        search.audit = AuditLog(gallery.index_dir).append(_search_record(search, arguments))
    return search


def _model_files(model: dict) -> list[dict]:
    return [file_entry("checkpoint", model["checkpoint"], model["checkpoint_sha256"])] if model.get("checkpoint_sha256") else []


def _search_record(search: EvidentialSearch, arguments: dict | None) -> dict:
    files = [file_entry("query", q.query, q.sha256) for q in search.queries] + _model_files(search.model)
    if search.calibration is not None:
        files.append(file_entry("calibration", search.calibration.path, search.calibration.sha256))
    return {"command": "search", "examiner": search.examiner,
            "arguments": arguments if arguments is not None else {
                "queries": [q.query for q in search.queries], "top_k": search.top_k, "by": search.by,
                "index_type": search.index_type, "calibration": search.calibration.path if search.calibration else None},
            "gallery": {k: search.gallery[k] for k in ("dir", "uid", "generation", "rows", "commit_sha256")},
            "gallery_after": None, "model": search.model,
            "calibration": search.calibration.as_record(search.by) if search.calibration else None,
            "files": files, "statement": search.statement, "score": search.score,
            "results": [q.as_dict() for q in search.queries]}


# ---------------------------------------------------------------------- enrolment
def audited_enrol(gallery, encoder, items, *, examiner: str | None = None, arguments: dict | None = None,
                  **enrol_kwargs):
    """``enrol_images`` plus one audit record listing every image it added; returns (summary, AuditRef)."""
    from .enrol import enrol_images

    before = gallery.commit_state
    summary = enrol_images(gallery, encoder, items, **enrol_kwargs)
    ours = {item.path for item in items}
    added = [e for e in gallery.entries(before["rows"]) if e["path"] in ours]
    fingerprint = encoder.fingerprint()
    model = {"checkpoint": encoder.checkpoint, "checkpoint_sha256": fingerprint.get("checkpoint_sha256"),
             "fingerprint": fingerprint}
    keys = ("uid", "generation", "rows", "commit_sha256")
    record = {"command": "enrol", "examiner": examiner, "arguments": arguments or {"items": len(items)},
              "gallery": {"dir": str(gallery.index_dir.resolve()), **{k: before[k] for k in keys}},
              "gallery_after": {k: gallery.commit_state[k] for k in keys}, "model": model,
              "files": _model_files(model) + [file_entry("enrolled image", e["path"], e["sha256"]) for e in added],
              "results": {"added": [{"path": e["path"], "identity": e["identity"]} for e in added],
                          "already_enrolled": summary.already_enrolled,
                          "skipped_bad": [{"path": p.path, "reason": p.reason} for p in summary.skipped_bad],
                          "gallery_images": len(gallery), "gallery_identities": len(gallery.identities())}}
    return summary, AuditLog(gallery.index_dir).append(record)


# ---------------------------------------------------------------------- verification
def verify_gallery_audit(index_dir: str | os.PathLike, check_files: bool = True) -> VerifyResult:
    """The audit log's own checks, plus the gallery files and whether the gallery changed unrecorded."""
    from .folder import Gallery

    log = AuditLog(index_dir)
    result = log.verify(check_files=check_files)
    try:
        gallery = Gallery.open(index_dir)
        if check_files:
            gallery.verify_files()
    except GalleryError as exc:
        result.problems.append(AuditProblem(f"gallery: {exc}"))
        return result
    try:
        records = log.records()
    except HandCLIPError:
        return result  # already reported line by line
    previous = None
    for record in records:
        state = record.get("gallery") or {}
        if previous is not None and state.get("commit_sha256") and previous.get("commit_sha256") != state["commit_sha256"]:
            result.notes.append(f"the gallery changed between records {previous['seq']} and {record['seq']} with no "
                                f"record (rows {previous.get('rows')} -> {state.get('rows')}): an enrolment that "
                                f"was interrupted, or an edit")
        previous = {**(record.get("gallery_after") or state), "seq": record.get("seq")}
    now = gallery.commit_state
    if previous is not None and previous.get("commit_sha256") != now["commit_sha256"]:
        result.notes.append(f"the gallery changed after record {previous['seq']} with no record (rows "
                            f"{previous.get('rows')} -> {now['rows']}): an enrolment that was interrupted, or an edit")
    return result
