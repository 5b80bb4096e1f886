"""The case report's comparison pages: the query the model searched beside a candidate's best-matching
enrolled image, both large, with their SHA-256s, the score and the LR as a person reads them
(``handclip.forensic.reading``), and a strip of the candidate's other enrolled images.

Which candidates get a page is the examiner's choice (``comparison_ranks``): the top N, or a list of
ranks; the top 3 unless told otherwise. One page per query and rank. The pictures are the files
themselves, EXIF orientation applied, scaled to fit; the hashes printed beside them are the ones
recorded at intake and enrolment, so the page says which bytes it shows.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Callable, Sequence

from ..errors import HandCLIPError
from ..forensic.reading import SCORE_MEANING, bound_note, lr_text, matched_text
from ..pdfdoc import clean_text, key_values, para, rgb_image
from .results import display_path

DEFAULT_COMPARE = 3
MAX_COMPARE_PAGES = 20  # a report stays a document to read; more pages are more searches
MAX_COMPARE_RANK = 100  # the service's largest top_k
# What ``--compare`` and the service's ``compare`` field take: "3" (the top 3), "1,4" or "2-5" (those ranks).
COMPARE_PATTERN = r"^\d{1,3}(-\d{1,3})?(,\d{1,3}(-\d{1,3})?){0,19}$"
_LARGE_MM = 86
_STRIP_MM = 21
_STRIP_COLUMNS = 8
_STRIP_LIMIT = 24
_NAME_LIMIT = 120
ImagesOf = Callable[[str], Sequence[tuple[str, str | None]]]


def comparison_ranks(spec, top_k: int | None = None, *, field: str = "--compare",
                     top_field: str = "--top-k") -> tuple[int, ...]:
    """The candidate ranks that get a comparison page. ``spec``: None (the top ``DEFAULT_COMPARE``), a
    number N (the top N; 0 for none), a text "N", "1,4" or "2-5", or a sequence of ranks. A rank beyond
    ``top_k`` or more than ``MAX_COMPARE_PAGES`` ranks is refused (HandCLIPError naming the value); the
    default is cut to ``top_k``. ``field``, ``top_field``: the names the messages give the two values."""
    if spec is None:
        return tuple(range(1, min(DEFAULT_COMPARE, top_k or DEFAULT_COMPARE) + 1))
    if isinstance(spec, bool):
        raise HandCLIPError(f"{field} {spec!r}: give N (the top N) or ranks such as 1,4 or 2-5")
    if isinstance(spec, int):
        ranks = list(range(1, spec + 1)) if spec >= 0 else [spec]
    elif isinstance(spec, str):
        ranks = _parse_ranks(spec, field)
    else:
        try:
            ranks = [int(r) for r in spec]
        except (TypeError, ValueError):
            raise HandCLIPError(f"{field} {spec!r}: give N (the top N) or ranks such as 1,4 or 2-5") from None
    ranks = sorted(set(ranks))
    if any(r < 1 or r > MAX_COMPARE_RANK for r in ranks):
        raise HandCLIPError(f"{field} {spec!r}: ranks run from 1 to {MAX_COMPARE_RANK}")
    if top_k is not None and ranks and ranks[-1] > top_k:
        raise HandCLIPError(f"{field} {spec!r}: rank {ranks[-1]} is beyond the {top_k} candidate(s) asked for "
                            f"({top_field} {top_k})")
    if len(ranks) > MAX_COMPARE_PAGES:
        raise HandCLIPError(f"{field} {spec!r}: {len(ranks)} comparison pages asked for; give at most "
                            f"{MAX_COMPARE_PAGES}")
    return tuple(ranks)


def _parse_ranks(text: str, field: str) -> list[int]:
    text = text.strip()
    if not re.fullmatch(COMPARE_PATTERN[1:-1], text):
        raise HandCLIPError(f"{field} {text[:40]!r}: give N (the top N) or ranks such as 1,4 or 2-5")
    if "," not in text and "-" not in text:
        return list(range(1, int(text) + 1))
    ranks: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first or last - first >= MAX_COMPARE_PAGES:
            raise HandCLIPError(f"{field} {text[:40]!r}: the range {part} runs backwards or is too long")
        ranks += range(first, last + 1)
    return ranks


def gallery_images_of(gallery) -> ImagesOf:
    """(path, recorded SHA-256) of every enrolled image of an identity, in enrolment order, from a gallery
    snapshot (``GalleryReader``)."""

    def images_of(identity: str) -> list[tuple[str, str | None]]:
        paths = [gallery.path_of_row[r] for r in gallery.rows_of_identity.get(identity, [])]
        hashes = gallery.file_hashes(paths)
        return [(p, hashes.get(p)) for p in paths]

    return images_of


def comparison_pages(search, ranks: Sequence[int], images_of: ImagesOf | None, styles, usable_mm: float,
                     fonts: dict) -> list:
    """The flowables of every comparison page: one per query and rank asked for (a rank the search did
    not reach gets one line saying so)."""
    from reportlab.platypus import PageBreak, Paragraph

    story = []
    for number, query in enumerate(search.queries, 1):
        by_rank = {c.rank: c for c in query.candidates}
        for rank in ranks:
            candidate = by_rank.get(rank)
            if candidate is None:
                story.append(para(f"No comparison page for rank {rank} of {clean_text(query.exhibit, fonts)}: the "
                                  f"search gave {len(query.candidates)} candidate(s).", styles["body"]))
                continue
            title = f"Comparison: {clean_text(query.exhibit, fonts, _NAME_LIMIT)} and rank {rank}, " \
                    f"{clean_text(candidate.identity, fonts, _NAME_LIMIT)}"
            if len(search.queries) > 1:
                title = f"Query {number}: {title}"
            story += [PageBreak(), Paragraph(_escape(title), styles["h2"]),
                      *_comparison(search, query, candidate, images_of, styles, usable_mm, fonts)]
    return story


def _escape(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


def _large(path: str, style):
    """The image at ``_LARGE_MM`` on its longer side (up to 1024 pixels of it), or a note."""
    from ..data.images import load_rgb

    try:
        image = load_rgb(path)
    except HandCLIPError:
        return para("image not available", style)
    if max(image.size) > 1024:
        image.thumbnail((1024, 1024))
    elif max(image.size) < 512:  # small images enlarged smoothly rather than as blocks by the viewer
        scale = 512 / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    return rgb_image(image, _LARGE_MM)


def _comparison(search, query, candidate, images_of: ImagesOf | None, styles, usable_mm: float, fonts: dict) -> list:
    from reportlab.lib.units import mm
    from reportlab.platypus import Spacer, Table

    searched = query.prepared["path"] if query.prepared else query.query
    searched_hash = query.prepared["sha256"] if query.prepared else query.sha256
    gallery_dir = search.gallery.get("dir")
    enrolled_name = clean_text(display_path(candidate.path, candidate.identity, gallery_dir), fonts, _NAME_LIMIT)
    column = usable_mm / 2
    left = "Prepared query (the image the model searched)" if query.prepared else "Query as received"
    pictures = Table(
        [[_large(searched, styles["small"]), _large(candidate.path, styles["small"])],
         [para(f"{left}: {clean_text(query.exhibit, fonts, _NAME_LIMIT)}", styles["small"]),
          para(f"Rank {candidate.rank}, {clean_text(candidate.identity, fonts, _NAME_LIMIT)}: best-matching enrolled "
               f"image {enrolled_name}", styles["small"])],
         [para(f"SHA-256 {searched_hash}", styles["mono"]), para(f"SHA-256 {candidate.sha256}", styles["mono"])]],
        colWidths=[column * mm, column * mm], hAlign="LEFT",
        style=[("VALIGN", (0, 0), (-1, 0), "MIDDLE"), ("ALIGN", (0, 0), (-1, 0), "CENTER"),
               ("VALIGN", (0, 1), (-1, -1), "TOP")])
    return [pictures, Spacer(1, 3 * mm), key_values(_figures(search, candidate), styles, [40 * mm, (usable_mm - 40) * mm]),
            Spacer(1, 3 * mm), *_strip(candidate, images_of, styles, usable_mm, fonts)]


def _figures(search, candidate) -> list[tuple[str, str, bool]]:
    rows = [("Score", f"{candidate.score:.4f}: {SCORE_MEANING}", False)]
    if search.calibration is not None and candidate.log10_lr is not None:
        rows.append(("Likelihood ratio", lr_text(candidate.log10_lr), False))
        rows.append(("Verbal equivalent", candidate.verbal or "", False))
        if candidate.at_bound:
            rows.append(("Bound", bound_note(candidate.at_bound), False))
    else:
        rows.append(("Likelihood ratio", "none: no calibration was given, so the score is not a likelihood ratio",
                     False))
    if search.by == "identity":
        rows.append(("Images in top hits", matched_text(candidate.matched, candidate.num_images, search.top_k), False))
    return rows


def _strip(candidate, images_of: ImagesOf | None, styles, usable_mm: float, fonts: dict) -> list:
    """The candidate's other enrolled images, small, each with the start of its SHA-256."""
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Table

    from ..pdfdoc import image_thumbnail

    others = [(p, h) for p, h in (images_of(candidate.identity) if images_of else []) if p != candidate.path]
    who = clean_text(candidate.identity, fonts, _NAME_LIMIT)
    if not others:
        return [para(f"{who} has no other enrolled image.", styles["small"])]
    heading = Paragraph(_escape(f"Other enrolled images of {who} ({len(others)})"), styles["h3"])
    shown = others[:_STRIP_LIMIT]
    cells = [[image_thumbnail(p, _STRIP_MM - 2, styles["small"]),
              para(f"{clean_text(PurePath(p).name, fonts, 40)}\n{(h or '?')[:8]}…", styles["small"])]
             for p, h in shown]
    rows = []
    for start in range(0, len(cells), _STRIP_COLUMNS):
        chunk = cells[start:start + _STRIP_COLUMNS]
        chunk += [["", ""]] * (_STRIP_COLUMNS - len(chunk))
        rows += [[c[0] for c in chunk], [c[1] for c in chunk]]
    width = usable_mm / _STRIP_COLUMNS
    strip = Table(rows, colWidths=[width * mm] * _STRIP_COLUMNS, hAlign="LEFT",
                  style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("ALIGN", (0, 0), (-1, -1), "CENTER")])
    more = len(others) - len(shown)
    return [heading, strip] + ([para(f"and {more} more, not shown", styles["small"])] if more else [])
