"""One examiner's work on one gallery: what ``handclip enrol``, ``search`` and ``audit``, the web service and
the Python API all go through.

An ``ExaminerSession`` is opened once from a gallery folder plus, optionally, a checkpoint and a
calibration. Opening resolves the model (the checkpoint given, else the one the gallery records),
loads it and the calibration, and checks once that both belong to the gallery's model. Every
enrolment and search then appends its records to the gallery's audit log (``handclip.gallery.records``);
there is no unaudited way in.

A search hashes each query file at intake (and again after the search, refusing a file that changed
meanwhile), ranks the newest committed generation of the gallery, and with a calibration turns each
candidate's score into a bounded log10 likelihood ratio (``handclip.forensic.evidence``). Searches from
several threads share one ``GalleryReader`` snapshot per commit; enrolments are serialised by an
in-process lock (the gallery's file lock keeps other processes out) and publish a new snapshot after
every committed batch, so a search never sees a half-applied commit.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import atomic_write_bytes, sha256_file
from ..data.query_transform import QueryTransform, prepare_query
from ..errors import DataError, HandCLIPError
from ..forensic.audit import AuditLog, AuditRef, VerifyResult
from ..forensic.audit_head import HeadSigner, check_key_location, signer_from_environment
from ..forensic.reading import DEFAULT_THRESHOLD_LR
from ..forensic.evidence import CALIBRATED, NOT_LIKELIHOOD_RATIOS, CalibrationInfo, load_calibration, propositions
from ..model.inference import load_encoder
from .aspect_search import aspect_checks, encode_queries, resolve_aspects, search_gallery
from .enrol import EnrolItem, EnrolSummary, add_images, check_images
from .folder import Gallery
from .metadata import COMMIT_FILE, GALLERY_FILE
from .reader import GalleryReader
from .audit_check import verify_gallery_audit
from .records import (enrol_record, enrol_start_record, model_record, redact_record, report_failed_record,
                      search_record, validation_record)
from .redaction import check_not_redacted, check_reason
from .results import SCORE_DEFINITIONS, QueryResult, SearchResult, exhibit_name
from .writer import GalleryWriter


def _hash_files(paths: Sequence[str]) -> dict[str, str | None]:
    out = {}
    for path in paths:
        try:
            out[path] = sha256_file(path)
        except OSError:
            out[path] = None  # named, with every other unusable query, by the image check that follows
    return out


# Prepared query images (crop, rotation, mirror applied), by content hash, under the gallery folder:
# the search records name them, so `handclip audit verify` re-hashes them like every recorded file.
PREPARED_DIR = "prepared"


def prepare_queries(paths: Sequence[str], names: Sequence[str], transform: QueryTransform | None,
                    folder: Path) -> list[dict | None]:
    """Each query prepared by ``transform`` and stored as ``folder/SHA.png`` (what the search embeds), as
    the record of it; None for each when there is no transform. Every image is checked before any is
    written, so a box that leaves one image stores nothing."""
    if transform is None or transform.is_identity:
        return [None] * len(paths)
    prepared = [prepare_query(path, transform, name) for path, name in zip(paths, names)]
    out = []
    for query in prepared:
        target = folder / f"{query.sha256}.png"
        if not target.exists():  # named by content: an existing file already holds these bytes
            atomic_write_bytes(target, query.png)
        out.append({"path": str(target.resolve()), "sha256": query.sha256, "pixels_sha256": query.pixels_sha256,
                    "size": list(query.image.size), "original_size": list(query.original_size)})
    return out


def check_threshold_lr(value) -> float:
    """An open-set threshold LR: a finite number above 0 (HandCLIPError naming it otherwise)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        raise HandCLIPError(f"--threshold-lr {value!r} is not a finite likelihood ratio above 0 (e.g. 1 or 100)")
    return number


class ExaminerSession:
    """A gallery with its model and (optionally) its calibration, checked against each other once."""

    def __init__(self, index_dir: str | os.PathLike, encoder=None, calibration: CalibrationInfo | None = None, *,
                 examiner: str | None = None, batch_size: int = 64, signer: HeadSigner | None = None):
        self.index_dir = Path(index_dir)
        self.signer = signer
        self.encoder = encoder
        self.calibration = calibration
        self.examiner = examiner
        self.batch_size = int(batch_size)
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshot: GalleryReader | None = None
        self._stamp: tuple | None = None
        if encoder is not None:
            GalleryReader.open(self.index_dir).check_model(encoder.fingerprint(), encoder.feature_dim)
        if calibration is not None:
            if encoder is None:
                raise HandCLIPError("a calibration needs the model it was fitted for; open the session with one")
            calibration.calibration.check_model(encoder.fingerprint())

    @classmethod
    def open(cls, index_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             calibration: str | os.PathLike | CalibrationInfo | None = None, *, device: str | None = "auto",
             create: bool = False, encoder=None, examiner: str | None = None, batch_size: int = 64,
             with_model: bool = True, signing_key: str | os.PathLike | None = None, precision: str = "auto",
             engine: str = "torch") -> "ExaminerSession":
        """Open the gallery at ``index_dir`` with its model: ``encoder`` if given, else ``checkpoint``, else
        the checkpoint the gallery records. ``create``: make the gallery if the folder holds none (needs
        a model; an existing gallery then records ``checkpoint`` as its model's file). A calibration of
        another model, or a gallery of another model, is refused here. ``with_model=False`` opens the
        gallery for its audit trail only (no model is loaded; enrol and search are refused).
        ``signing_key``: an Ed25519 private key file, kept outside the gallery, that signs every audit
        head this session writes (default: the file ``HANDCLIP_AUDIT_SIGNING_KEY`` names, if set).
        ``precision`` and ``engine`` say how a loaded model computes features (``Encoder.computed_with``)."""
        index_dir = Path(index_dir)
        if calibration is not None and not isinstance(calibration, CalibrationInfo):
            calibration = load_calibration(calibration)  # before the model: a bad file answers at once
        if signing_key is not None:
            check_key_location(signing_key, index_dir)
            signer = HeadSigner.load(signing_key)
        else:
            signer = signer_from_environment(index_dir)
        settings = {"examiner": examiner, "batch_size": batch_size, "signer": signer}
        if not with_model:  # the audit trail is checked even when the gallery itself is damaged
            return cls(index_dir, None, None, **settings)
        exists = (index_dir / GALLERY_FILE).exists()
        if not exists and not create:
            GalleryReader.open(index_dir)  # raises the GalleryError that says what the folder lacks
        if encoder is None:
            checkpoint = checkpoint or (GalleryReader.open(index_dir).checkpoint if exists else None)
            if not checkpoint:
                raise HandCLIPError(f"gallery {index_dir} does not record its model; pass --checkpoint")
            encoder = load_encoder(checkpoint, device=device, precision=precision, engine=engine)
        if create:
            GalleryWriter.create(index_dir, encoder.fingerprint(), encoder.feature_dim,
                                 checkpoint=encoder.checkpoint, exist_ok=True)
        return cls(index_dir, encoder, calibration, **settings)

    # ------------------------------------------------------------------ reading
    def _commit_stamp(self) -> tuple:
        st = (self.index_dir / COMMIT_FILE).stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def snapshot(self) -> GalleryReader:
        """The gallery at its newest commit, shared by concurrent searches (reopened only when commit.json
        changed; searches still running on the previous snapshot keep theirs untouched)."""
        current = self._snapshot
        if current is not None and self._stamp == self._commit_stamp():
            return current
        with self._snapshot_lock:
            return self._reload()

    def _reload(self) -> GalleryReader:
        stamp = self._commit_stamp()
        if self._snapshot is not None and stamp == self._stamp:
            return self._snapshot
        gallery = GalleryReader.open(self.index_dir)
        if len(gallery):
            gallery.indexes.flat()  # reads every shard now: searches never open them later
        self._snapshot, self._stamp = gallery, stamp
        return gallery

    # ------------------------------------------------------------------ enrolment
    def enrol(self, items: Sequence[EnrolItem], *, examiner: str | None = None, arguments: dict | None = None,
              skip_bad: bool = False, progress: bool = False, images_checked: bool = False,
              on_batch: Callable[[EnrolSummary], None] | None = None) -> EnrolSummary:
        """Embed and add ``items`` batch by batch (each batch committed). Before the first batch an
        ``enrol-start`` record names every image the enrolment plans to add, so a row committed by an
        enrolment killed midway is still attributed; at the end the ``enrol`` record lists every image
        this enrolment added. The summary's ``audit`` is that last record."""
        self._need_model("enrol")
        examiner = examiner or self.examiner
        arguments = arguments or {"items": len(items)}
        model = model_record(self.encoder)
        with self._write_lock:
            gallery = Gallery.open(self.index_dir)
            before = gallery.reader
            check_not_redacted((item.identity for item in items), before.redacted, self.index_dir)
            started: list[int] = []

            def start(planned) -> None:
                record = enrol_start_record(before, model, planned, examiner, arguments)
                started.append(self.audit_log.append(record).seq)

            def published(summary: EnrolSummary) -> None:
                if self._snapshot is not None:
                    with self._snapshot_lock:
                        self._reload()
                if on_batch is not None:
                    on_batch(summary)

            summary = add_images(gallery, self.encoder, items, batch_size=self.batch_size, skip_bad=skip_bad,
                                 progress=progress, on_batch=published, images_checked=images_checked, on_start=start)
            ours = {item.path for item in items}
            added = [e for e in gallery.entries(len(before)) if e["path"] in ours]
            record = enrol_record(before, gallery.reader, model, summary, added, examiner, arguments,
                                  started[0] if started else None)
            summary.audit = self.audit_log.append(record)
        return summary

    def redact(self, identity: str, reason: str, *, examiner: str | None = None,
               arguments: dict | None = None) -> AuditRef:
        """Redact ``identity`` (``handclip.gallery.redaction``): commit the tombstone, then append the ``redact``
        record naming every row it takes out of search; returns that record. Needs no model."""
        reason = check_reason(reason)
        examiner = examiner or self.examiner
        with self._write_lock:
            gallery = Gallery.open(self.index_dir)
            before = gallery.reader
            redaction = gallery.redact(identity, reason, examiner)
            ref = self.audit_log.append(redact_record(before, gallery.reader, redaction, examiner, arguments))
            if self._snapshot is not None:
                with self._snapshot_lock:
                    self._reload()
        return ref

    # ------------------------------------------------------------------ search
    def search(self, queries: Sequence[str | os.PathLike], *, top_k: int = 10, by: str = "identity",
               index_type: str = "auto", examiner: str | None = None, arguments: dict | None = None,
               batch_size: int | None = None, names: Sequence[str] | None = None,
               threshold_lr: float = DEFAULT_THRESHOLD_LR, transform: QueryTransform | None = None,
               aspect: str | None = None, mirror_aspect: bool = False,
               gallery_aspect: str | None = None) -> SearchResult:
        """Rank the newest gallery for each query image, weigh the scores when calibrated, append the
        audit record; unusable query images are named in one DataError before anything is recorded.
        ``names``: the queries' exhibit names, one per query (default: each file's own name).
        ``threshold_lr``: with a calibration, each query's open-set answer says whether any candidate's
        LR exceeds it (``QueryResult.open_set``). ``transform``: the crop, rotation and mirror applied to
        each query before it is embedded (``data.query_transform``); the record keeps the original's hash,
        the transform and the prepared image's hashes. ``aspect``, ``mirror_aspect`` (the model compares the
        prepared query as the other hand), ``gallery_aspect``: the aspects compared
        (``handclip.gallery.aspect_search``)."""
        self._need_model("search")
        if by not in SCORE_DEFINITIONS:
            raise HandCLIPError(f"search by '{by}' is not supported (choose image or identity)")
        threshold_lr = check_threshold_lr(threshold_lr)
        paths = [str(Path(q)) for q in queries]
        if names is not None and len(names) != len(paths):
            raise HandCLIPError(f"{len(names)} exhibit name(s) given for {len(paths)} "
                                f"quer{'y' if len(paths) == 1 else 'ies'}")
        names = [exhibit_name(n) for n in names] if names is not None else [Path(p).name for p in paths]
        intake = _hash_files(paths)
        gallery = self.snapshot()
        if len(gallery) == 0:
            raise HandCLIPError(f"gallery {self.index_dir} is empty; enrol images before searching")
        request = resolve_aspects(gallery, self.calibration, aspect, mirror_aspect, gallery_aspect)
        check_images(paths, skip_bad=False, what="query")
        prepared = prepare_queries(paths, names, transform, self.index_dir / PREPARED_DIR)
        embedded = [p["path"] if p else path for path, p in zip(paths, prepared)]
        vectors = encode_queries(self.encoder, embedded, request, batch_size or self.batch_size)
        checks = aspect_checks(self.encoder, embedded, request, batch_size or self.batch_size)
        ranked, used_index = search_gallery(gallery, vectors, request, top_k, by, index_type)
        if _hash_files(paths) != intake:
            changed = next(p for p in paths if _hash_files([p])[p] != intake[p])
            raise DataError(f"query file {changed} changed while it was searched; search it again")
        hashes = gallery.file_hashes(c.path for candidates in ranked for c in candidates)
        record = transform.as_record() if transform is not None and not transform.is_identity else None
        results = [QueryResult(path, intake[path], self._weighed(candidates, hashes, by, request.pair), name, check,
                               transform=record if ready else None, prepared=ready)
                   for path, name, candidates, check, ready in zip(paths, names, ranked, checks, prepared)]
        self._answer_open_set(results, by, threshold_lr, request.pair)
        search = SearchResult(
            queries=results, by=by, top_k=int(top_k), index_type=used_index,
            score=SCORE_DEFINITIONS[by], model=model_record(self.encoder), calibration=self.calibration,
            gallery={"dir": str(gallery.index_dir.resolve()), **gallery.commit_state, "images": len(gallery),
                     "identities": len(gallery.identities())},
            examiner=examiner or self.examiner, propositions=propositions(self.calibration),
            bounds=self.calibration.bounds(by, request.pair) if self.calibration else None,
            statement=CALIBRATED if self.calibration else NOT_LIKELIHOOD_RATIOS,
            aspects=request.as_dict() if request.stated else None)
        search.audit = self.audit_log.append(search_record(search, arguments))
        return search

    def _need_model(self, action: str) -> None:
        if self.encoder is None:
            raise HandCLIPError(f"cannot {action}: this session of gallery {self.index_dir} was opened without a model")

    def _answer_open_set(self, results: list[QueryResult], by: str, threshold_lr: float, pair: str | None) -> None:
        """With a calibration, each query's open-set answer (``CalibrationInfo.open_set``) under ``pair``'s map."""
        if self.calibration is None:
            return
        edge = self.calibration.score_reaching(threshold_lr, by, pair)
        for result in results:
            lrs, scores = [c.log10_lr for c in result.candidates], [c.score for c in result.candidates]
            result.open_set = self.calibration.open_set(lrs, scores, by, threshold_lr, edge, pair)

    def _weighed(self, candidates, hashes: dict, by: str, pair: str | None = None):
        weights = self.calibration.weigh([c.score for c in candidates], by, pair) if self.calibration else []
        for candidate, weight in zip(candidates, weights):
            candidate.log10_lr, candidate.verbal, candidate.at_bound = weight
        for candidate in candidates:
            candidate.sha256 = hashes.get(candidate.path)
        return candidates

    # ------------------------------------------------------------------ reports and the audit trail
    def report(self, search: SearchResult, out_pdf: str | os.PathLike, *, case_id: str | None = None,
               examiner: str | None = None, compare=None) -> Path:
        """The case report (PDF) of ``search``, written atomically. Its texts are bounded and made safe
        first (``case_report.check_case_id`` refuses an unusable case id before anything is written); if
        the PDF still cannot be made, a ``report`` record says so and the error names both records.
        ``compare``: the candidates that get a comparison page (``case_compare.comparison_ranks``), with
        their other enrolled images from the newest gallery."""
        from .case_compare import gallery_images_of
        from .case_report import write_case_report

        try:
            return write_case_report(search, out_pdf, case_id=case_id, examiner=examiner or search.examiner,
                                     compare=compare, images_of=gallery_images_of(self.snapshot()))
        except HandCLIPError as exc:
            error: BaseException = exc
        except Exception as exc:  # noqa: BLE001 - reportlab raises many types; the record must say so
            error = exc
        ref = self.audit_log.append(report_failed_record(search, case_id, error))
        raise HandCLIPError(f"search record {search.audit.seq if search.audit else '?'} was written but its case "
                            f"report could not be made ({type(error).__name__}: {str(error)[:200]}); audit record "
                            f"{ref.seq} says so") from None

    def record_validation(self, summary: dict, report_folder, *, examiner: str | None = None,
                          arguments: dict | None = None) -> AuditRef:
        """Append the record of a validation of the LR method (``records.validation_record``)."""
        return self.audit_log.append(validation_record(summary, report_folder, examiner or self.examiner, arguments))

    def verify_audit(self, check_files: bool = True, *, expect=(), public_key: bytes | None = None) -> VerifyResult:
        """The audit log's chain, head, anchors kept elsewhere (``expect``: (seq, hash) pairs), signature,
        recorded file hashes, the gallery files, and the attribution of every gallery row."""
        return verify_gallery_audit(self.index_dir, check_files=check_files, expect=expect, public_key=public_key)

    def audit_records(self) -> list[dict]:
        """Every record of the gallery's audit log, oldest first (AuditError if the log is damaged)."""
        return self.audit_log.records()

    @property
    def audit_log(self) -> AuditLog:
        return AuditLog(self.index_dir, signer=self.signer)
