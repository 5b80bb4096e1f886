"""What one service process holds: an examiner session over the gallery (model and calibration loaded
and checked once), the key store, and the uploads it stored.

Searches and enrolments go through the same ``ExaminerSession`` as ``handclip search`` and ``handclip
enrol``, so a result and its audit record equal the CLI's. Searches share the session's snapshot of the
newest commit; enrolments are serialised by the session and publish a new snapshot after every
committed batch, so an enrolment killed mid-way loses at most its batch in flight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_bytes, sha256_bytes
from ..errors import HandCLIPError
from ..gallery.case_report import report_file_name
from ..gallery.enrol import EnrolItem
from ..gallery.metadata import GALLERY_FILE
from ..gallery.session import ExaminerSession
from .keys import SERVE_DIR, KeyStore
from .limits import Limits


@dataclass
class Upload:
    name: str   # the client's file name, sanitised (gallery.results.exhibit_name): the exhibit's name
    data: bytes
    suffix: str  # from the decoded format, see limits.check_image


class ServiceState:
    def __init__(self, index_dir: str | os.PathLike, checkpoint: str | None = None, calibration: str | None = None,
                 device: str = "auto", limits: Limits | None = None, batch_size: int = 32,
                 precision: str = "auto", engine: str = "torch"):
        self.index_dir = Path(index_dir)
        self.limits = limits or Limits()
        if checkpoint is None and not (self.index_dir / GALLERY_FILE).exists():
            raise HandCLIPError(f"gallery {self.index_dir} does not exist; pass --checkpoint to create it")
        self.session = ExaminerSession.open(self.index_dir, checkpoint, calibration, device=device,
                                            create=checkpoint is not None, batch_size=batch_size,
                                            precision=precision, engine=engine)
        self.keys = KeyStore(self.index_dir)
        self.serve_dir = self.index_dir / SERVE_DIR
        self.session.snapshot()

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
        found = self.snapshot().enrolled_as(sha256)
        return None if found is None else (found[1], found[0])

    # ------------------------------------------------------------------ stored uploads
    def _store(self, folder: Path, upload: Upload) -> tuple[str, str]:
        digest = sha256_bytes(upload.data)
        path = folder / f"{digest}{upload.suffix}"
        if not path.exists():  # named by content: an existing file already holds these bytes
            atomic_write_bytes(path, upload.data)
        return str(path.resolve()), digest

    def search(self, upload: Upload, *, top_k: int, by: str, index_type: str, examiner: str,
               arguments: dict, report: bool = False, case_id: str | None = None):
        """One query through the session (audit record appended); with ``report`` the PDF too."""
        query, _ = self._store(self.serve_dir / "queries", upload)
        found = self.session.search([query], top_k=top_k, by=by, index_type=index_type, examiner=examiner,
                                    arguments=arguments, names=[upload.name])
        if report:
            seq = found.audit.seq
            self.session.report(found, self.serve_dir / "reports" / str(int(seq)) / report_file_name(seq, case_id),
                                case_id=case_id, examiner=examiner)
        return found, self.snapshot()

    def report_path(self, seq: int) -> Path | None:
        """The case report of search record ``seq`` (one per record folder, named by case id and record)."""
        folder = self.serve_dir / "reports" / str(int(seq))
        found = sorted(folder.glob("*.pdf")) if folder.is_dir() else []
        legacy = self.serve_dir / "reports" / f"search-{int(seq)}.pdf"  # written before reports had names
        return found[0] if found else legacy if legacy.is_file() else None

    # ------------------------------------------------------------------ writing
    def enrol(self, identity: str, uploads: Sequence[Upload], *, examiner: str, arguments: dict):
        """Store the uploads under ``serve/enrolled/IDENTITY/`` and enrol them through the session."""
        folder = self.serve_dir / "enrolled" / identity
        items = list({path: EnrolItem(path, identity)
                      for path, _ in (self._store(folder, u) for u in uploads)}.values())
        summary = self.session.enrol(items, examiner=examiner, arguments=arguments)
        return summary, summary.audit, self.snapshot()
