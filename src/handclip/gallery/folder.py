"""A gallery folder as one convenient object for a single-threaded caller (a command, a notebook).

``Gallery`` is built from the parts: it holds the reader of the newest generation it has seen
(``handclip.gallery.reader``) and opens a writer (``handclip.gallery.writer``) only when asked to
change the gallery. Reading calls go to the current reader; after a write, or :meth:`refresh`, the
current reader is the newer generation's. A long-lived service holds ``GalleryReader`` snapshots
instead, which cannot write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .reader import GalleryReader
from .writer import GalleryWriter


class Gallery:
    """The current reader of a gallery folder, plus its writer on demand."""

    def __init__(self, reader: GalleryReader, writer: GalleryWriter | None = None,
                 lock_timeout: float | None = None):
        self._reader = reader
        self._writer = writer
        self.lock_timeout = lock_timeout

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, threads: int | None = None, verify: bool = True,
             lock_timeout: float | None = None) -> "Gallery":
        """Open an existing gallery; a missing, foreign or corrupt one raises GalleryError naming the file."""
        return cls(GalleryReader.open(index_dir, threads=threads, verify=verify), lock_timeout=lock_timeout)

    @classmethod
    def create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *, checkpoint: str | None = None,
               **kwargs) -> "Gallery":
        """Make a new, empty gallery in ``index_dir`` (created if needed; must not hold a gallery)."""
        writer = GalleryWriter.create(index_dir, fingerprint, dim, checkpoint=checkpoint, **kwargs)
        return cls(writer.reader, writer, kwargs.get("lock_timeout"))

    @classmethod
    def open_or_create(cls, index_dir: str | os.PathLike, fingerprint: dict, dim: int, *,
                       checkpoint: str | None = None, **kwargs) -> "Gallery":
        """Open the gallery if ``index_dir`` holds one (refusing another model), else create it."""
        writer = GalleryWriter.create(index_dir, fingerprint, dim, checkpoint=checkpoint, exist_ok=True, **kwargs)
        return cls(writer.reader, writer, kwargs.get("lock_timeout"))

    @property
    def reader(self) -> GalleryReader:
        return self._reader

    def __getattr__(self, name: str):
        # Reading goes to the current generation's reader (public names only).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._reader, name)

    def __len__(self) -> int:
        return len(self._reader)

    def __repr__(self) -> str:
        return f"Gallery({str(self._reader.index_dir)!r}, images={len(self)}, " \
               f"identities={len(self._reader.identities())})"

    # ------------------------------------------------------------------ changing the gallery
    def _writing(self) -> GalleryWriter:
        if self._writer is None or self._writer.reader is not self._reader:
            self._writer = GalleryWriter(self._reader, self.lock_timeout)
        return self._writer

    def add(self, embeddings: np.ndarray, paths: Sequence[str], identities: Sequence[str],
            file_hashes: Sequence[str], aspects: Sequence[str | None] | None = None) -> int:
        """Append one batch and commit it (see ``GalleryWriter.add``); returns how many rows were added."""
        writer = self._writing()
        try:
            return writer.add(embeddings, paths, identities, file_hashes, aspects)
        finally:
            self._reader = writer.reader

    def compact(self) -> None:
        writer = self._writing()
        try:
            writer.compact()
        finally:
            self._reader = writer.reader

    def redact(self, identity: str, reason: str, examiner: str | None = None) -> dict:
        """Commit a redaction of ``identity`` (see ``GalleryWriter.redact``); returns it as committed."""
        writer = self._writing()
        try:
            return writer.redact(identity, reason, examiner)
        finally:
            self._reader = writer.reader

    def set_checkpoint(self, checkpoint: str) -> None:
        writer = self._writing()
        writer.set_checkpoint(checkpoint)
        self._reader = writer.reader

    def refresh(self) -> None:
        """Move to the newest commit (batches other processes committed since this gallery was opened)."""
        self._reader = self._reader.latest()

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def index_dir(self) -> Path:
        return self._reader.index_dir
