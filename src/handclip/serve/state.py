"""What one service process holds: an examiner session over the gallery (model and calibration loaded
and checked once), the key store, and the uploads and case reports it stored.

Searches and enrolments go through the same ``ExaminerSession`` as ``handclip search`` and ``handclip
enrol``, so a result and its audit record equal the CLI's. Searches share the session's snapshot of the
newest commit; enrolments are serialised by the session and publish a new snapshot after every
committed batch, so an enrolment killed mid-way loses at most its batch in flight.

Files under ``GALLERY/serve/``: uploads by content hash (``queries/SHA.ext``, ``enrolled/IDENTITY/SHA.ext``)
and case reports under an unguessable id (``reports/ID/`` holding the PDF and ``report.json``: the
key that asked for it, the search record). An upload is stored before its audit record is written; a
process killed in between leaves a file no record names. Such files are removed when a service starts
(only upload names of this folder's own pattern, never another file), under a lock that requests hold
from storing an upload until its record is written, so a running service's uploads are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..atomic import atomic_write_bytes, atomic_write_json, sha256_bytes
from ..errors import HandCLIPError
from ..gallery.case_report import report_file_name
from ..gallery.enrol import EnrolItem
from ..gallery.metadata import GALLERY_FILE
from ..gallery.session import ExaminerSession
from .keys import SERVE_DIR, ApiKey, KeyStore
from .limits import ALLOWED_FORMATS, Limits

log = logging.getLogger("handclip.serve")
REPORT_ID = r"^[0-9a-f]{32}$"
REVIEW_ROLE = "review"
_UPLOAD_NAME = re.compile(r"\.?[0-9a-f]{64}(%s)(\..+\.tmp)?" % "|".join(re.escape(s) for s in ALLOWED_FORMATS.values()))


@dataclass
class Upload:
    name: str   # the client's file name, sanitised (gallery.results.exhibit_name): the exhibit's name
    data: bytes
    suffix: str  # from the decoded format, see limits.check_image


class ServiceState:
    def __init__(self, index_dir: str | os.PathLike, checkpoint: str | None = None, calibration: str | None = None,
                 device: str = "auto", limits: Limits | None = None, batch_size: int = 32,
                 signing_key: str | os.PathLike | None = None, precision: str = "auto", engine: str = "torch"):
        self.index_dir = Path(index_dir)
        self.limits = limits or Limits()
        if checkpoint is None and not (self.index_dir / GALLERY_FILE).exists():
            raise HandCLIPError(f"gallery {self.index_dir} does not exist; pass --checkpoint to create it")
        self.session = ExaminerSession.open(self.index_dir, checkpoint, calibration, device=device,
                                            create=checkpoint is not None, batch_size=batch_size,
                                            signing_key=signing_key, precision=precision, engine=engine)
        self.keys = KeyStore(self.index_dir)
        self.serve_dir = self.index_dir / SERVE_DIR
        self.session.snapshot()
        self.remove_unrecorded_uploads()

    @property
    def calibration(self):
        return self.session.calibration

    @property
    def encoder(self):
        return self.session.encoder

    def snapshot(self):
        """The gallery at its newest commit (a ``GalleryReader``: it cannot write)."""
        return self.session.snapshot()

    def image_path(self, sha256: str) -> tuple[str, str] | None:
        """(path, identity) of the enrolled image with this SHA-256, if any."""
        gallery = self.snapshot()
        found = gallery.enrolled_as(sha256)
        if found is None or found[0] in gallery.redacted:  # a redacted identity's photos are not served
            return None
        return found[1], found[0]

    # ------------------------------------------------------------------ stored uploads
    @contextlib.contextmanager
    def _uploads(self, exclusive: bool = False, wait: bool = True) -> Iterator[bool]:
        """The uploads lock: shared from storing an upload until its record is written, exclusive to clean."""
        self.serve_dir.mkdir(parents=True, exist_ok=True)
        with open(self.serve_dir / ".uploads.lock", "a+") as handle:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle, flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _store(self, folder: Path, upload: Upload) -> tuple[str, str]:
        digest = sha256_bytes(upload.data)
        path = folder / f"{digest}{upload.suffix}"
        if not path.exists():  # named by content: an existing file already holds these bytes
            atomic_write_bytes(path, upload.data)
        return str(path.resolve()), digest

    def remove_unrecorded_uploads(self) -> int:
        """Remove stored uploads that no audit record and no gallery row names (left by a process killed
        between storing an upload and writing its record); returns how many. Skipped while another
        process holds the uploads lock."""
        folders = [self.serve_dir / "queries", *sorted((self.serve_dir / "enrolled").glob("*"))]
        candidates = [p for folder in folders if folder.is_dir() for p in folder.iterdir()
                      if p.is_file() and _UPLOAD_NAME.fullmatch(p.name)]
        if not candidates:
            return 0
        with self._uploads(exclusive=True, wait=False) as held:
            if not held:
                return 0
            named = {entry["path"] for record in self.session.audit_log.readable_records()
                     for entry in record.get("files") or []}
            named.update(self.snapshot().paths)
            removed = [p for p in candidates if str(p.resolve()) not in named]
            for path in removed:
                path.unlink(missing_ok=True)
            for folder in folders[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        if removed:
            log.warning("removed %d stored upload(s) that no audit record names (a process was killed before "
                        "recording them)", len(removed))
        return len(removed)

    # ------------------------------------------------------------------ search and reports
    def search(self, upload: Upload, *, top_k: int, by: str, index_type: str, key: ApiKey,
               arguments: dict, report: bool = False, case_id: str | None = None, threshold_lr: float = 1.0,
               transform=None, aspects: dict | None = None, compare=None):
        """One query through the session (audit record appended); with ``report`` the PDF too, stored
        under a new unguessable id for ``key``. Returns (search, gallery snapshot, report id or None).
        ``aspects``: ``aspect``, ``mirror_aspect`` and ``gallery_aspect`` as ``ExaminerSession.search`` takes them;
        ``compare``: the report's comparison pages (``gallery.case_compare.comparison_ranks``)."""
        with self._uploads():
            query, _ = self._store(self.serve_dir / "queries", upload)
            found = self.session.search([query], top_k=top_k, by=by, index_type=index_type, examiner=key.name,
                                        arguments=arguments, names=[upload.name], threshold_lr=threshold_lr,
                                        transform=transform, **(aspects or {}))
        report_id = None
        if report:
            report_id = secrets.token_hex(16)
            folder = self.serve_dir / "reports" / report_id
            pdf = self.session.report(found, folder / report_file_name(found.audit.seq, case_id), case_id=case_id,
                                      examiner=key.name, compare=compare)
            atomic_write_json(folder / "report.json", {"key_id": key.id, "record": found.audit.seq,
                                                       "record_hash": found.audit.hash, "file": pdf.name})
        return found, self.snapshot(), report_id

    def report_for(self, report_id: str, key: ApiKey) -> Path | None:
        """The case report ``report_id`` if ``key`` asked for it or has the review role, else None."""
        if not re.fullmatch(REPORT_ID, report_id):
            return None
        folder = self.serve_dir / "reports" / report_id
        try:
            meta = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            pdf = folder / Path(str(meta["file"])).name
        except (OSError, ValueError, KeyError, TypeError):
            return None
        allowed = meta.get("key_id") == key.id or REVIEW_ROLE in key.roles
        return pdf if allowed and pdf.is_file() else None

    # ------------------------------------------------------------------ writing
    def enrol(self, identity: str, uploads: Sequence[Upload], *, examiner: str, arguments: dict,
              aspect: str | None = None):
        """Store the uploads under ``serve/enrolled/IDENTITY/`` and enrol them (of ``aspect``) through the session.
        Returns (summary, audit record, gallery snapshot, {stored path: upload name})."""
        folder = self.serve_dir / "enrolled" / identity
        with self._uploads():
            stored = [(self._store(folder, u)[0], u.name) for u in uploads]
            names = dict(reversed(stored))  # the first name given for each content
            items = list({path: EnrolItem(path, identity, aspect) for path, _ in stored}.values())
            summary = self.session.enrol(items, examiner=examiner, arguments=arguments)
        return summary, summary.audit, self.snapshot(), names
