"""The rows of one gallery generation: image path, identity, file hash and (when enrolled with one) the
hand aspect per row, and the lookups a search and an enrolment need (rows of a person, first row of a
file hash). Rows of galleries enrolled before aspects existed have none (``None``).

Rows are only ever appended, so a later generation's rows start with an earlier one's: ``extended``
builds the next generation's table from this one without re-reading any metadata file, and leaves
this one as it was (a reader holding it keeps seeing exactly its generation).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Mapping


class RowTable:
    """Immutable per-row metadata of one committed generation."""

    def __init__(self, paths: tuple[str, ...] = (), identities: tuple[str, ...] = (), hashes: tuple[str, ...] = (),
                 row_by_hash: dict[str, int] | None = None, rows_of_identity: dict[str, tuple[int, ...]] | None = None,
                 aspects: tuple[str | None, ...] | None = None):
        self.paths = paths
        self.identities = identities
        self.hashes = hashes
        self.aspects = aspects if aspects is not None else (None,) * len(paths)
        self._row_by_hash = row_by_hash if row_by_hash is not None else {}
        self._rows_of_identity = rows_of_identity if rows_of_identity is not None else {}

    @classmethod
    def from_entries(cls, entries: Iterable[dict]) -> "RowTable":
        return cls().extended(entries)

    def extended(self, entries: Iterable[dict]) -> "RowTable":
        """This table plus ``entries`` (``{"path", "identity", "sha256"}``, optionally ``"aspect"``) appended,
        as a new table."""
        entries = list(entries)
        if not entries:
            return self
        row_by_hash = dict(self._row_by_hash)
        grown: dict[str, list[int]] = {}
        for row, entry in enumerate(entries, len(self.paths)):
            row_by_hash.setdefault(entry["sha256"], row)
            grown.setdefault(entry["identity"], []).append(row)
        rows_of_identity = dict(self._rows_of_identity)
        for identity, rows in grown.items():
            rows_of_identity[identity] = rows_of_identity.get(identity, ()) + tuple(rows)
        return RowTable(self.paths + tuple(e["path"] for e in entries),
                        self.identities + tuple(e["identity"] for e in entries),
                        self.hashes + tuple(e["sha256"] for e in entries), row_by_hash, rows_of_identity,
                        self.aspects + tuple(e.get("aspect") for e in entries))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def rows_of_identity(self) -> Mapping[str, tuple[int, ...]]:
        return MappingProxyType(self._rows_of_identity)

    def first_row_of_hash(self, file_hash: str) -> int | None:
        return self._row_by_hash.get(file_hash)

    def entries(self, start: int = 0) -> list[dict]:
        return [{"path": p, "identity": i, "sha256": h, **({"aspect": a} if a is not None else {})}
                for p, i, h, a in zip(self.paths[start:], self.identities[start:], self.hashes[start:],
                                      self.aspects[start:])]
