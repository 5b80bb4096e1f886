"""The examiner's gallery: enrolled hand embeddings on disk (store, shards), searched exactly or through
an approximate index (search, ann); enrolment and search from image files (enrol); result pages (html)."""

from .search import Candidate, Gallery

__all__ = ["Candidate", "Gallery"]
