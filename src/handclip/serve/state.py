"""What one service process holds: the model (loaded once), the calibration, the key store and a
read-only snapshot of the gallery that searches share.

Searches and enrolments call the same functions as ``handclip search`` and ``handclip enrol``
(``evidential_search``, ``audited_enrol``, ``write_case_report``), so a result equals the CLI's.

Readers never see a half-applied commit: each search takes the current snapshot, a ``Gallery``
opened at one commit with its exact index built in memory, and never touches the shard files again
(exact search reads only that index). A new commit, by this process or another, is picked up by
opening a fresh snapshot and swapping the reference; searches already running finish on the old
one. Enrolments are serialised by one in-process lock (the gallery's own file lock keeps other
processes out) and publish a new snapshot after every committed batch, so an enrolment killed
mid-way loses at most its batch in flight.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_bytes, sha256_bytes
from ..errors import HandCLIPError
from ..gallery import Gallery, GalleryReader
from ..gallery.enrol import EnrolItem
from ..model.inference import load_encoder
from ..gallery.evidence import audited_enrol, evidential_search, load_calibration
from ..gallery.metadata import COMMIT_FILE
from .keys import SERVE_DIR, KeyStore
from .limits import Limits


@dataclass
class Upload:
    name: str   # the name the client gave (kept in the audit record's arguments only)
    data: bytes
    suffix: str  # from the decoded format, see limits.check_image


class ServiceState:
    def __init__(self, index_dir: str | os.PathLike, checkpoint: str | None = None, calibration: str | None = None,
                 device: str = "auto", limits: Limits | None = None, batch_size: int = 32):
        self.index_dir = Path(index_dir)
        self.limits = limits or Limits()
        self.batch_size = int(batch_size)
        if (self.index_dir / "gallery.json").exists():
            gallery = Gallery.open(self.index_dir)
            checkpoint = checkpoint or gallery.checkpoint
            if not checkpoint:
                raise HandCLIPError(f"gallery {self.index_dir} does not record its model; pass --checkpoint")
            self.encoder = load_encoder(checkpoint, device=device)
            gallery.check_model(self.encoder.fingerprint(), self.encoder.feature_dim)
        elif checkpoint:
            self.encoder = load_encoder(checkpoint, device=device)
            Gallery.open_or_create(self.index_dir, self.encoder.fingerprint(), self.encoder.feature_dim,
                                   checkpoint=self.encoder.checkpoint)
        else:
            raise HandCLIPError(f"gallery {self.index_dir} does not exist; pass --checkpoint to create it")
        self.calibration = load_calibration(calibration) if calibration else None
        if self.calibration is not None:
            self.calibration.calibration.check_model(self.encoder.fingerprint())
        self.keys = KeyStore(self.index_dir)
        self.serve_dir = self.index_dir / SERVE_DIR
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshot: GalleryReader | None = None
        self._stamp: tuple | None = None
        self.snapshot()

    # ------------------------------------------------------------------ reading
    def _commit_stamp(self) -> tuple:
        st = (self.index_dir / COMMIT_FILE).stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def snapshot(self) -> GalleryReader:
        """The gallery at its newest commit (opened again only when commit.json changed)."""
        current = self._snapshot
        if current is not None and self._stamp == self._commit_stamp():
            return current
        with self._snapshot_lock:
            return self._reload()

    def _reload(self) -> GalleryReader:
        # Opening re-reads the newer commit when a compaction deletes a shard it listed. A fresh reader
        # with its own indexes: searches still running on the previous snapshot keep theirs untouched.
        stamp = self._commit_stamp()
        if self._snapshot is not None and stamp == self._stamp:
            return self._snapshot
        gallery = GalleryReader.open(self.index_dir)
        if len(gallery):
            gallery.indexes.flat()  # reads every shard now: searches never open them later
        self._snapshot, self._stamp = gallery, stamp
        return gallery

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
        """One query through ``evidential_search`` (audit record appended); with ``report`` the PDF too."""
        query, _ = self._store(self.serve_dir / "queries", upload)
        gallery = self.snapshot()
        found = evidential_search(gallery, self.encoder, [query], top_k=top_k, by=by, index_type=index_type,
                                  calibration=self.calibration, examiner=examiner, arguments=arguments)
        if report:
            from ..gallery.case_report import write_case_report

            write_case_report(found, self.report_path(found.audit.seq), case_id=case_id, examiner=examiner)
        return found, gallery

    def report_path(self, seq: int) -> Path:
        return self.serve_dir / "reports" / f"search-{int(seq)}.pdf"

    # ------------------------------------------------------------------ writing
    def enrol(self, identity: str, uploads: Sequence[Upload], *, examiner: str, arguments: dict):
        """Store the uploads under ``serve/enrolled/IDENTITY/`` and enrol them, one writer at a time."""
        folder = self.serve_dir / "enrolled" / identity
        items = list({path: EnrolItem(path, identity)
                      for path, _ in (self._store(folder, u) for u in uploads)}.values())
        with self._write_lock:
            gallery = Gallery.open(self.index_dir)

            def publish(_summary):
                with self._snapshot_lock:
                    self._reload()

            summary, record = audited_enrol(gallery, self.encoder, items, examiner=examiner, arguments=arguments,
                                            batch_size=self.batch_size, on_batch=publish)
            with self._snapshot_lock:
                self._reload()
        return summary, record, gallery
