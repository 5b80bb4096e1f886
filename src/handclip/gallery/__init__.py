"""The examiner's gallery: enrolled hand embeddings on disk, built from parts: an immutable reader of
one committed generation (reader, rows, shards, metadata), the one writer that owns the lock (writer),
and the search part a reader is given (index: exact search; ann: approximate indexes). ``Gallery``
(folder) combines them for a single-threaded caller. Enrolment and search from image files (enrol);
result pages (html)."""

from .folder import Gallery
from .results import Candidate
from .reader import GalleryReader
from .writer import GalleryWriter

__all__ = ["Candidate", "Gallery", "GalleryReader", "GalleryWriter"]
