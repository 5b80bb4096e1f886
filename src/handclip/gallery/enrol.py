"""Enrolment from image files: which images (a folder of identity folders or a manifest), which of them
are usable, and adding them batch by batch.

The gallery itself only knows vectors; this module turns image files into those vectors through the
model's ``Encoder`` (the same feature path as evaluation), and keeps the bookkeeping an examiner relies
on: identity per image, file hashes for duplicate detection, one commit per batch so a killed
enrolment resumes where it stopped. An examiner session (``handclip.gallery.session``) is what calls
``add_images``: every enrolment is audited there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from ..aspects import normalise_aspect, record_aspect
from ..atomic import sha256_file
from ..data.images import FolderWalk, identity_folders, scan_images, unusable_images
from ..data.manifest import Manifest
from ..errors import DataError
from .folder import Gallery


@dataclass(frozen=True)
class EnrolItem:
    path: str
    identity: str
    aspect: str | None = None  # the hand aspect shown (handclip.aspects), stored with the row


@dataclass(frozen=True)
class SameContent:
    """An image whose bytes are already enrolled (or given earlier in this run) under another identity."""

    path: str
    identity: str
    enrolled_identity: str
    enrolled_path: str


@dataclass
class EnrolSummary:
    added: int = 0
    already_enrolled: int = 0  # images whose content (SHA-256) was already in the gallery or this run
    skipped_bad: list = field(default_factory=list)  # ImageProblem(path, reason) left out with skip_bad
    other_identity: list = field(default_factory=list)  # SameContent: not enrolled again, reported
    changed: list = field(default_factory=list)  # paths enrolled before with other content: added as new rows
    batches: int = 0
    gallery_size: int = 0
    audit: object = None  # the AuditRef of the enrolment's record (handclip.forensic.audit)


def collect_images(source: str | os.PathLike, split: str | None = None, aspect: str | None = None) -> list[EnrolItem]:
    """Images to enrol with their identities, from a manifest CSV (identity = pid, aspect = the record's)
    or from a directory of per-identity folders (identity = folder name). ``aspect``: the hand aspect of
    every image (a manifest record that names another aspect is refused)."""
    source = Path(source)
    aspect = normalise_aspect(aspect, "--aspect") if aspect is not None else None
    if source.is_file():
        manifest = Manifest.read(source)
        try:
            records = manifest.split(split) if split else manifest.records
        except ValueError as exc:
            raise DataError(f"--split for manifest {source}: {exc}") from None
        items = {}
        for rec in records:
            own = record_aspect(rec)
            if aspect is not None and own not in (None, aspect):
                raise DataError(f"--aspect {aspect}: manifest {source} lists {rec.path} as {own}")
            items.setdefault(rec.path, EnrolItem(rec.path, str(rec.pid), own or aspect))
        if not items:
            raise DataError(f"manifest {source} has no {split + ' ' if split else ''}images to enrol")
        return list(items.values())
    if not source.is_dir():
        raise DataError(f"images to enrol not found: {source} (give a directory of per-identity folders or a manifest CSV)")
    walk = FolderWalk()
    items = [EnrolItem(path, identity, aspect) for identity, paths in identity_folders(source.absolute(), walk)
             for path in paths]
    walk.warn(source)
    if not items:
        raise DataError(f"no images found in per-identity folders under {source} "
                        f"(expected {source}/<identity>/<image>.jpg)")
    return items


def check_images(paths: Sequence[str], skip_bad: bool, what: str) -> list:
    """Unusable images among ``paths``; without ``skip_bad`` any problem is one DataError naming them. Gallery
    images follow every command's policy (``unusable_images``: the error names ``--skip-bad``); query images
    are exhibits, never left out, so their error lists them all."""
    if what == "gallery":
        return unusable_images(paths, skip_bad, "gallery ")
    problems = scan_images(paths)
    if problems and not skip_bad:
        shown = "; ".join(f"{p.path}: {p.reason}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{len(problems)} unusable {what} image(s): {shown}{more}")
    return problems


def _file_hash(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None  # missing or unreadable: the image check names it


def _plan(gallery: Gallery, items: Sequence[EnrolItem], summary: EnrolSummary) -> list[tuple[EnrolItem, str | None]]:
    """The items to embed, with their file hashes. Deduplication is by content: an image whose bytes
    are enrolled is skipped (reported when it is given under another identity); a known path whose
    content changed is enrolled as a new row, its old row kept (rows are only ever appended)."""
    enrolled_paths = set(gallery.paths)
    first: dict[str, EnrolItem] = {}
    pending = []
    for item in items:
        digest = _file_hash(item.path)
        known = gallery.enrolled_as(digest) if digest else None
        if digest is not None and digest in first:
            known = (first[digest].identity, first[digest].path)
        if known is not None:
            summary.already_enrolled += 1
            if known[0] != item.identity:
                summary.other_identity.append(SameContent(item.path, item.identity, known[0], known[1]))
            continue
        if digest is not None:
            first[digest] = item
            if item.path in enrolled_paths:
                summary.changed.append(item.path)
        pending.append((item, digest))
    return pending


def add_images(gallery: Gallery, encoder, items: Sequence[EnrolItem], batch_size: int = 64,
                 skip_bad: bool = False, progress: bool = False,
                 on_batch: Callable[[EnrolSummary], None] | None = None,
                 images_checked: bool = False,
                 on_start: Callable[[list[tuple[EnrolItem, str | None]]], None] | None = None) -> EnrolSummary:
    """Embed and add ``items`` batch by batch; each batch is committed before the next starts.

    Files already enrolled (same SHA-256 of their bytes) are skipped, so rerunning after a crash
    continues where the killed run stopped; see ``_plan`` for the deduplication rule.
    ``images_checked``: every item already passed ``check_images`` (it is not decoded twice).
    ``on_start(planned)``: called once before the first batch with every (item, SHA-256) still to add,
    so the caller can record them before any is committed.
    The caller has checked that ``encoder`` is the gallery's model.
    """
    summary = EnrolSummary()
    pending = _plan(gallery, items, summary)
    problems = [] if images_checked else check_images([item.path for item, _ in pending], skip_bad, "gallery")
    if problems:
        bad = {p.path for p in problems}
        summary.skipped_bad = problems
        pending = [(item, h) for item, h in pending if item.path not in bad]
        summary.changed = [p for p in summary.changed if p not in bad]
    if pending and on_start is not None:
        on_start([(item, h or _file_hash(item.path)) for item, h in pending])
    bar = None
    if progress:
        bar = tqdm(total=len(items), initial=summary.already_enrolled, unit="img", desc="enrol")
    try:
        for start in range(0, len(pending), batch_size):
            batch = [(item, h or sha256_file(item.path)) for item, h in pending[start:start + batch_size]]
            fresh = [(item, h) for item, h in batch if not gallery.contains(h)]
            summary.already_enrolled += len(batch) - len(fresh)
            if fresh:
                aspects = [item.aspect for item, _ in fresh]
                vectors = encoder.features([item.path for item, _ in fresh], batch_size=batch_size,
                                           aspects=aspects if encoder.reads_aspects else None)
                added = gallery.add(vectors, [item.path for item, _ in fresh],
                                    [item.identity for item, _ in fresh], [h for _, h in fresh], aspects)
                summary.added += added
                summary.already_enrolled += len(fresh) - added  # enrolled meanwhile by another writer
            summary.batches += 1
            summary.gallery_size = len(gallery)
            if bar is not None:
                bar.update(len(batch))
            if on_batch is not None:
                on_batch(summary)
    finally:
        if bar is not None:
            bar.close()
    summary.gallery_size = len(gallery)
    return summary
