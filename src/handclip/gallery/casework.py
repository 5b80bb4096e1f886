"""An examiner's tasks as whole steps, each through one ``ExaminerSession`` (what ``handclip enrol``,
``search`` and ``audit`` run): enrol a folder or manifest, search and write the outputs (JSON, HTML
page, PDF case report), verify or read the audit trail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import atomic_write_json, atomic_write_text, sha256_file
from ..data.images import warn_left_out
from ..data.query_transform import QueryTransform
from ..errors import HandCLIPError
from ..forensic.audit_format import parse_anchor
from ..forensic.audit_head import SIGNING_KEY_ENV, generate_key, load_public_key
from ..forensic.calibration_checks import warn_in_sample
from ..forensic.reading import DEFAULT_THRESHOLD_LR
from .case_compare import comparison_ranks
from .case_report import check_case_id
from .enrol import EnrolSummary, check_images, collect_images
from .html import write_search_html
from .metadata import GALLERY_FILE
from .results import SearchResult, aspects_text, printable
from .session import ExaminerSession, check_threshold_lr

SKIPPED_IMAGES_FILE = "skipped_images.txt"
# What enrol prints of the images already enrolled under another identity (the rest are counted).
_SAME_CONTENT_SHOWN = 10


@dataclass
class EnrolReport:
    """What ``enrol_images`` did: its summary (with the audit record), and the gallery afterwards."""

    summary: EnrolSummary
    index_dir: Path
    images: int
    identities: int
    skipped_list: Path | None = None  # the unusable images left out, one "path<TAB>reason" per line
    inference: str = ""  # how the features were computed (Encoder.describe_inference)

    def lines(self) -> list[str]:
        """The enrolment for a terminal: what was left out or not enrolled again, the gallery, how the features
        were computed, the audit record."""
        summary, lines = self.summary, []
        if self.skipped_list is not None:
            lines.append(f"left out {len(summary.skipped_bad)} unusable image(s), listed in {self.skipped_list}")
        for same in summary.other_identity[:_SAME_CONTENT_SHOWN]:
            lines.append(f"not enrolled: {printable(same.path)} ({printable(same.identity)}) has the same content "
                         f"as {printable(same.enrolled_path)}, enrolled as {printable(same.enrolled_identity)}")
        if len(summary.other_identity) > _SAME_CONTENT_SHOWN:
            lines.append(f"not enrolled: {len(summary.other_identity) - _SAME_CONTENT_SHOWN} more image(s) already "
                         "enrolled under another identity")
        if summary.changed:
            lines.append(f"{len(summary.changed)} image(s) at already enrolled paths had new content and were "
                         f"enrolled as new rows (the earlier rows are kept), e.g. {printable(summary.changed[0])}")
        lines.append(f"enrolled {summary.added} new image(s) ({summary.already_enrolled} already in the gallery) "
                     f"into {printable(self.index_dir)}: {self.images} images of {self.identities} identities")
        if self.inference:
            lines.append(self.inference)
        record = summary.audit
        lines.append(f"audit record {record.seq} (SHA-256 {record.hash}) in {record.log}")
        return lines


def enrol_images(index_dir: str | os.PathLike, images: str | os.PathLike, checkpoint: str | os.PathLike, *,
                 split: str | None = None, aspect: str | None = None, batch_size: int = 64, device: str = "auto",
                 skip_bad: bool = False, examiner: str | None = None, arguments: dict | None = None,
                 progress: bool = False, precision: str = "auto", engine: str = "torch") -> EnrolReport:
    """Embed the images of ``images`` (per-identity folders, or a manifest CSV with ``split``) with
    ``checkpoint`` and add them to the gallery at ``index_dir``, created if it does not exist; one
    audit record. Unusable images stop it before a new gallery is created, unless ``skip_bad``: then
    they are left out and listed in ``GALLERY/skipped_images.txt``. ``aspect``: the images' hand aspect,
    stored with each row (a manifest's records carry their own). ``precision`` and ``engine``: how the
    features are computed (``Encoder.computed_with``)."""
    index_dir = Path(index_dir)
    items = collect_images(images, split=split, aspect=aspect)
    checked = not skip_bad and not (index_dir / GALLERY_FILE).exists()
    if checked:  # before the gallery is created: a failed enrolment leaves no empty gallery
        check_images([item.path for item in items], False, "gallery")
    session = ExaminerSession.open(index_dir, checkpoint, device=device, create=True, examiner=examiner,
                                   batch_size=batch_size, precision=precision, engine=engine)
    summary = session.enrol(items, arguments=arguments, skip_bad=skip_bad, progress=progress, images_checked=checked)
    skipped_list = None
    if summary.skipped_bad:
        skipped_list = session.index_dir / SKIPPED_IMAGES_FILE
        atomic_write_text(skipped_list, "".join(f"{p.path}\t{p.reason}\n" for p in summary.skipped_bad))
        warn_left_out(summary.skipped_bad, "the gallery", skipped_list)
    gallery = session.snapshot()
    return EnrolReport(summary, session.index_dir, len(gallery), len(gallery.identities()), skipped_list,
                       session.encoder.describe_inference())


def _written(flag: str, out: str | os.PathLike, write: Callable[[], object]) -> None:
    """Run ``write()``; an OS error names the output as the examiner gave it, not the temporary file beside it."""
    try:
        write()
    except OSError as exc:
        raise HandCLIPError(f"cannot write {flag} {out}: {exc.strerror or exc}") from None


def search_gallery(index_dir: str | os.PathLike, queries: Sequence[str | os.PathLike], *, checkpoint=None,
                   calibration=None, top_k: int = 10, by: str = "identity", index_type: str = "auto",
                   device: str = "auto", examiner: str | None = None, arguments: dict | None = None,
                   json=None, html=None, report=None, case_id: str | None = None,
                   threshold_lr: float = DEFAULT_THRESHOLD_LR, precision: str = "auto", engine: str = "torch",
                   crop=None, rotate=None, mirror: bool = False, aspect: str | None = None,
                   mirror_aspect: bool = False, gallery_aspect: str | None = None, compare=None,
                   log: Callable[[str], None] | None = None) -> SearchResult:
    """Search the gallery at ``index_dir`` for ``queries`` (one audit record) and write the outputs asked
    for: ``json`` (every candidate), ``html`` (a page with thumbnails) and ``report`` (the PDF case
    report, titled ``case_id``). With a calibration each query's open-set answer says whether any candidate's
    LR exceeds ``threshold_lr``. ``precision`` and ``engine``: how the query features are computed
    (``Encoder.computed_with``). ``crop`` (``"x,y,w,h"`` in pixels of the EXIF-oriented original),
    ``rotate`` (degrees clockwise) and ``mirror`` prepare each query before it is searched
    (``data.query_transform``: the examiner's preparation, stored and hashed). ``aspect``, ``mirror_aspect``
    (the model compares the query as the other hand), ``gallery_aspect``: the hand aspects compared
    (``ExaminerSession.search``). ``compare``: the candidates that get a comparison page in the report
    (``case_compare.comparison_ranks``: the top N, or ranks; the top 3 by default). ``log`` receives the result's lines (``SearchResult.lines``) and how the
    features were computed before any output is written, then one line per file written, so a failed write
    still leaves the results shown."""
    say = log or (lambda line: None)
    check_case_id(case_id)  # before the search is recorded: its report must be possible
    check_threshold_lr(threshold_lr)  # and before the model loads
    comparison_ranks(compare, top_k)
    transform = QueryTransform.parse(crop, rotate, mirror)  # its box is held to each image by the search
    session = ExaminerSession.open(index_dir, checkpoint, calibration, device=device, examiner=examiner,
                                   precision=precision, engine=engine)
    if session.calibration is not None:  # LRs against people the calibration was fitted on are in-sample
        enrolled = session.snapshot().identities()
        warn_in_sample(session.calibration.calibration, {name: {name} for name in enrolled},
                       f"gallery {index_dir}")
    search = session.search(queries, top_k=top_k, by=by, index_type=index_type, arguments=arguments,
                            threshold_lr=threshold_lr, transform=transform, aspect=aspect,
                            mirror_aspect=mirror_aspect, gallery_aspect=gallery_aspect)
    for line in search.lines():
        say(line)
    say(session.encoder.describe_inference())
    model_file = session.encoder.checkpoint
    if json:
        info = search.as_dict()
        _written("--json", json, lambda: atomic_write_json(
            json, {**{k: v for k, v in info.items() if k != "queries"}, "checkpoint": model_file,
                   "results": info["queries"]}))
        say(f"wrote {json}")
    if html:
        _written("--html", html, lambda: write_search_html(
            search.queries, html, gallery_dir=str(session.index_dir), by=by, checkpoint=model_file,
            statement=search.statement, propositions=search.propositions, audit=search.audit,
            calibration=search.calibration_line(), top_k=search.top_k,
            aspects=aspects_text(search.aspects) if search.aspects else None))
        say(f"wrote {html}")
    if report:
        _written("--report", report, lambda: session.report(search, report, case_id=case_id, compare=compare))
        say(f"wrote {report} (SHA-256 {sha256_file(report)})")
    return search


@dataclass
class SigningKeyFiles:
    """What ``make_signing_key`` wrote, and the environment variable that puts the key to use."""

    private: Path
    public: Path
    key_id: str
    environment: str


@dataclass
class AuditRecords:
    """The records ``read_audit`` read and the log they came from."""

    log: Path
    records: list[dict]


def verify_audit(index_dir: str | os.PathLike, check_files: bool = True, *, expect: Sequence[str] = (),
                 public_key: str | os.PathLike | None = None):
    """Check a gallery's audit trail: the hash chain, its head, every recorded file hash (unless not
    ``check_files``), the gallery files, and that every gallery row is named by a record (a
    ``VerifyResult``; ``.ok``, ``.problems``, ``.anchor``). ``expect``: ``SEQ:HASH`` anchors kept elsewhere
    (a case report prints one) that the log must still hold; ``public_key``: an Ed25519 public key file
    that must have signed the head."""
    anchors = [parse_anchor(text) for text in expect]
    key = load_public_key(public_key) if public_key else None
    session = ExaminerSession.open(index_dir, with_model=False)
    return session.verify_audit(check_files=check_files, expect=anchors, public_key=key)


def reanchor_audit(index_dir: str | os.PathLike, reason: str):
    """Write a new head for a gallery whose audit head was lost or damaged, through a record that says
    ``reason`` (refused while the head is intact or the chain does not verify); returns its ``AuditRef``."""
    return ExaminerSession.open(index_dir, with_model=False).audit_log.reanchor(reason)


def make_signing_key(out: str | os.PathLike) -> SigningKeyFiles:
    """Write an Ed25519 key pair for signing audit heads: ``out`` (private, mode 600; refused inside a
    gallery folder) and ``out.pub``; sessions sign with it when $HANDCLIP_AUDIT_SIGNING_KEY names it."""
    private, public, key_id = generate_key(out)
    return SigningKeyFiles(Path(private), Path(public), key_id, SIGNING_KEY_ENV)


def read_audit(index_dir: str | os.PathLike, seq: int | None = None) -> AuditRecords:
    """A gallery's audit records, oldest first (only record ``seq`` when given; refused if there is none)."""
    log = ExaminerSession.open(index_dir, with_model=False).audit_log
    records = log.records()
    if seq is not None:
        records = [r for r in records if r.get("seq") == seq]
        if not records:
            raise HandCLIPError(f"audit log {log.path} has no record {seq}")
    return AuditRecords(log.path, records)


__all__ = ["AuditRecords", "EnrolReport", "SKIPPED_IMAGES_FILE", "SigningKeyFiles", "enrol_images",
           "make_signing_key", "read_audit", "reanchor_audit", "search_gallery", "verify_audit"]
