"""The case report of an evidential search: a PDF (reportlab) an examiner can read, file and sign.

Per query: the photo with its exhibit name and its SHA-256 taken at intake, then the ranked candidates with thumbnails,
scores, log10 likelihood ratios and their verbal equivalents. Then a comparison page for each candidate
the examiner chose (the top 3 by default; ``handclip.gallery.case_compare``). Then the propositions the LRs weigh (or
the statement that scores are not LRs), the identifiers of model, gallery and calibration, the audit
record's seq and hash (``SEQ:HASH``, what ``handclip audit verify --expect`` checks later), a limitations
paragraph and a signature block. Text is set in the DejaVu fonts matplotlib ships; the PDF's text can be
extracted.

Every text that comes from outside HandCLIP (identity and file names, case id, examiner, the
calibration's manifest name) goes through ``_clean`` (``handclip.pdfdoc.clean_text``, the PDF building
blocks every report shares) before it reaches reportlab: invisible characters escaped, bounded, laid out
in visual order, and undrawable characters shown as ``[U+....]``. A case id is checked before a search is
recorded (``check_case_id``): longer than ``CASE_ID_LIMIT`` characters or holding control characters, it
is refused.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from xml.sax.saxutils import escape

from ..errors import HandCLIPError
from ..forensic.reading import CLLR_MEANING, SCORE_MEANING, bound_note, lr_text, matched_text
from ..pdfdoc import clean_text as _clean
from ..pdfdoc import fitted_footer, footer_width_pt, rgb_image, usable_width_mm, write_pdf
from ..pdfdoc import image_thumbnail as _picture
from ..pdfdoc import key_values as _key_values
from ..pdfdoc import para as _para
from ..pdfdoc import register_fonts as _register_fonts
from ..pdfdoc import styles as _styles
from .case_compare import ImagesOf, comparison_pages, comparison_ranks
from .results import SearchResult, aspects_text, display_path, printable

CASE_ID_LIMIT = 200
# What a case id may not hold: control characters, soft hyphen and other invisible formatting, zero-width
# characters, line and paragraph separators, bidirectional embeddings, overrides and isolates, private use.
# One pattern for the command line, the service and its OpenAPI schema.
CASE_ID_PATTERN = (r"^[^\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                   r"\ufff9-\ufffb\ue000-\uf8ff]*$")
_NAME_LIMIT = 120  # identity and file names in tables
_TEXT_LIMIT = 300  # any other outside text (examiner, calibration manifest name, paths)
_THUMB_MM = 24
_QUERY_MM = 48


def check_case_id(case_id: str | None) -> None:
    """Refuse a case id a report cannot show faithfully, before the search is recorded: longer than
    ``CASE_ID_LIMIT`` characters, or holding a character ``CASE_ID_PATTERN`` excludes."""
    if case_id is None:
        return
    if len(case_id) > CASE_ID_LIMIT:
        raise HandCLIPError(f"--case-id is {len(case_id)} characters long; give at most {CASE_ID_LIMIT}")
    if not re.fullmatch(CASE_ID_PATTERN[1:-1], case_id):
        raise HandCLIPError(f"--case-id {printable(case_id[:80])!s} holds control, bidirectional or other "
                            f"invisible formatting characters; give plain text")


def _original_with_box(path: str, crop, size_mm: float, style):
    """The original query (EXIF orientation applied) with the searched crop box drawn on it in red."""
    from PIL import ImageDraw
    from reportlab.platypus import Paragraph

    from ..data.images import load_rgb

    try:
        original = load_rgb(path)
    except HandCLIPError:
        return Paragraph("original not available", style)
    scale = 512 / max(original.size)
    shown = original.resize((max(1, round(original.width * scale)), max(1, round(original.height * scale))))
    if crop:
        x, y, w, h = crop
        line = max(2, round(max(shown.size) / 128))
        ImageDraw.Draw(shown).rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1],
                                        outline=(220, 0, 0), width=line)
    return rgb_image(shown, size_mm)


def _labelled(label: str, text, style, bold: str):
    """A paragraph that starts with ``label`` in the ``bold`` font, then plain text (markup escaped)."""
    from reportlab.platypus import Paragraph

    return Paragraph(f'<font name="{bold}">{escape(label)}</font> {escape(str(text))}', style)


def _candidate_table(query, search: SearchResult, styles, usable_mm: float, fonts: dict):
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Table, TableStyle

    calibrated = search.calibration is not None
    head = ["Rank", "Gallery image", "Identity", "Score", "Likelihood ratio", "Verbal equivalent", "Image file"]
    widths = [12, _THUMB_MM + 3, 21, 14, 25, 40]
    widths.append(usable_mm - sum(widths))
    rows = [[_para(h, styles["head"]) for h in head]]
    for c in query.candidates:
        if calibrated:
            lr = lr_text(c.log10_lr) + (f", at the {c.at_bound} bound" if c.at_bound else "")
            verbal = c.verbal or ""
        else:
            lr, verbal = "n/a", "not a likelihood ratio"
        detail = _clean(display_path(c.path, c.identity, search.gallery.get("dir")), fonts)
        if c.sha256:
            detail += f"\nSHA-256 {c.sha256[:16]}..."
        if search.by == "identity":
            detail += f"\n{matched_text(c.matched, c.num_images, search.top_k)}"
        rows.append([_para(c.rank, styles["cell"]), _picture(c.path, _THUMB_MM, styles["small"]),
                     _para(_clean(c.identity, fonts, _NAME_LIMIT), styles["cell"]),
                     _para(f"{c.score:.4f}", styles["cell"]),
                     _para(lr, styles["cell"]), _para(verbal, styles["cell"]),
                     _para(detail, styles["small"])])
    table = Table(rows, colWidths=[w * mm for w in widths], repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef6")),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7f7f7")]),
    ]))
    return table


def _limitations(search: SearchResult, fonts: dict) -> str:
    people = search.gallery.get("identities")
    if search.calibration is None:
        return ("No calibration was given: the scores are cosine similarities that rank the gallery; they are not "
                "likelihood ratios and carry no evidential weight. This list is an investigative lead only: each "
                "candidate must be compared with the query by an examiner, and nothing here supports an "
                "identification on its own.")
    low, high = search.bounds
    return (f"The likelihood ratios come from a calibration fitted on "
            f"{_clean(search.calibration.population(), fonts)}. They hold "
            f"for images like that data (capture conditions, hand aspect, image quality); a query unlike it may "
            f"be mis-weighted. They are bounded to log10 LR {low:+.2f} .. {high:+.2f}, the most that calibration "
            f"data supports. Each LR weighs Hp against Hd for one candidate on its own and does not allow for the "
            f"search having ranked {people} people and put this one near the top. The numbers depend on the exact "
            f"model, gallery and calibration identified above by their hashes. This list is an investigative lead; "
            f"it becomes evaluative evidence only when an examiner adopts a candidate and reports its LR with these "
            f"propositions under a validated procedure.")


def _identifiers(search: SearchResult, fonts: dict) -> list[tuple[str, str, bool]]:
    fp = search.model.get("fingerprint") or {}
    inference = search.model.get("inference") or {}
    computed = (f"; query features computed in {inference['precision']} with {inference['engine']}"
                if inference else "")
    g = search.gallery
    rows = [("Model", f"{fp.get('backbone')} ({fp.get('kind')}), input {fp.get('image_size')}, "
                      f"feature dim {fp.get('feature_dim')}, checkpoint file "
                      f"{_clean(display_path(search.model.get('checkpoint') or '?'), fonts)}{computed}", False),
            ("Checkpoint SHA-256", str(search.model.get("checkpoint_sha256")), True),
            ("Weights SHA-256", str(fp.get("weights_sha256")), True),
            ("Gallery", f"{_clean(Path(g.get('dir', '?')).name, fonts)}: {g.get('images')} images of {g.get('identities')} "
                        f"identities, commit generation {g.get('generation')}, uid {g.get('uid')}", False),
            ("Gallery commit SHA-256", str(g.get("commit_sha256")), True),
            ("Search", f"ranked by {search.by} (score: {search.score}); top {search.top_k}; "
                       f"index {search.index_type}", False),
            ("Aspects compared", aspects_text(search.aspects), False)]
    if search.calibration is not None:
        cal = search.calibration
        rows += [("Calibration", f"{_clean(display_path(cal.path), fonts)}: {cal.describe(search.by, _pair(search))}; "
                                 f"created {_clean(cal.summary.get('created', '?'), fonts, 40)}", False),
                 ("Calibration SHA-256", cal.sha256, True)]
    else:
        rows.append(("Calibration", "none: scores are not likelihood ratios", False))
    if search.audit is not None:
        rows += [("Audit record", f"record {search.audit.seq} of {Path(search.audit.log).name} in the gallery folder; "
                                  f"keep its SEQ:HASH below and check the log later with `handclip audit verify "
                                  f"--index GALLERY --expect SEQ:HASH`"
                                  + (f"; the log's head was signed by key {search.audit.key_id}"
                                     if search.audit.key_id else ""), False),
                 ("Audit record SHA-256", search.audit.hash, True),
                 ("Audit anchor (SEQ:HASH)", search.audit.anchor, True)]
    return rows


def report_file_name(record: int, case_id: str | None = None) -> str:
    """A report's file name from its case id (letters, digits and ._- kept, the rest made "-", at most
    80 characters) and its audit record: ``handclip-case-2026-17-record-12.pdf``."""
    case = re.sub(r"[^A-Za-z0-9._-]+", "-", case_id or "").strip("-._")[:80].strip("-._")
    return f"handclip-case-{case}-record-{int(record)}.pdf" if case else f"handclip-record-{int(record)}.pdf"


def _query_section(number: int, search: SearchResult, styles, usable_mm: float, fonts: dict) -> list:
    from reportlab.lib.units import mm
    from reportlab.platypus import CondPageBreak, Paragraph, Table

    query = search.queries[number - 1]
    title = "Query" if len(search.queries) == 1 else f"Query {number} of {len(search.queries)}"
    stored = _clean(display_path(query.query), fonts, _NAME_LIMIT)
    name = _clean(query.name, fonts, _NAME_LIMIT) if query.name else stored
    check = (query.aspect_check or {}).get("warning")
    details = _key_values([("File", name, False),
                           *([("Stored as", stored, True)] if stored != name else []),
                           ("SHA-256 at intake", query.sha256, True),
                           ("Aspects compared", aspects_text(search.aspects), False),
                           *([("Aspect check", _clean(check, fonts), False)] if check else [])],
                          styles, [32 * mm, (usable_mm - 32) * mm] if query.prepared else
                          [26 * mm, (usable_mm - _QUERY_MM - 30) * mm])
    if query.prepared:
        return _prepared_query_section(title, query, details, styles, usable_mm, fonts) + \
            _query_findings(query, search, styles, usable_mm, fonts)
    return [CondPageBreak(80 * mm), Paragraph(title, styles["h2"]),
            Table([[_picture(query.query, _QUERY_MM, styles["small"]), details]],
                  colWidths=[(_QUERY_MM + 4) * mm, None], hAlign="LEFT", style=[("VALIGN", (0, 0), (-1, -1), "TOP")]),
            *_query_findings(query, search, styles, usable_mm, fonts)]


def _prepared_query_section(title: str, query, details, styles, usable_mm: float, fonts: dict) -> list:
    """The original with the crop box, the prepared image that was searched, and the transform between them."""
    from reportlab.lib.units import mm
    from reportlab.platypus import CondPageBreak, Paragraph, Spacer, Table

    from ..data.query_transform import QueryTransform

    transform = QueryTransform.from_record(query.transform)
    prepared = query.prepared
    side = _QUERY_MM + 12
    pictures = Table([[_original_with_box(query.query, transform.crop, side, styles["small"]),
                       _picture(prepared["path"], side, styles["small"])],
                      [_para("Original as received (EXIF orientation applied); the red box is the crop searched",
                             styles["small"]),
                       _para("Prepared query: the image the model embedded", styles["small"])]],
                     colWidths=[(side + 6) * mm, (side + 6) * mm], hAlign="LEFT",
                     style=[("VALIGN", (0, 0), (-1, -1), "BOTTOM")])
    width, height = prepared["size"]
    steps = _key_values([("Preparation", _clean(transform.describe(), fonts), False),
                         ("Prepared image", f"{width} x {height} pixels, PNG", False),
                         ("Prepared SHA-256", prepared["sha256"], True),
                         ("Pixels SHA-256", prepared["pixels_sha256"], True)],
                        styles, [32 * mm, (usable_mm - 32) * mm])
    return [CondPageBreak(120 * mm), Paragraph(title, styles["h2"]), pictures, Spacer(1, 2 * mm),
            details, steps]


def _query_findings(query, search: SearchResult, styles, usable_mm: float, fonts: dict) -> list:
    """The candidate table, the open-set answer and the suggested statement of one query."""
    from reportlab.lib.units import mm
    from reportlab.platypus import Spacer

    after = []
    if query.open_set is not None:
        after.append(_labelled("Open-set answer.", query.open_set["answer"], styles["body"], fonts["bold"]))
    if search.calibration is not None and query.candidates:
        first = query.candidates[0]
        statement = first.words(search.by, search.top_k, search.propositions, query.exhibit)["statement"]
        after.append(_labelled("Suggested statement for rank 1", f"(the examiner's to adopt or not after comparing "
                               f"the images): {_clean(statement, fonts, 4 * _TEXT_LIMIT)}", styles["body"],
                               fonts["bold"]))
    return [Spacer(1, 3 * mm), _candidate_table(query, search, styles, usable_mm, fonts),
            *[part for paragraph in after for part in (Spacer(1, 2 * mm), paragraph)]]


def _story(search: SearchResult, case: str, examiner: str, styles, usable_mm: float, fonts: dict,
           comparisons: list) -> list:
    from reportlab.lib.units import mm
    from reportlab.platypus import CondPageBreak, KeepTogether, PageBreak, Paragraph, Spacer

    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    story = [Paragraph("HandCLIP case report: hand image search", styles["title"]),
             _key_values([("Case", case, False), ("Examiner", examiner, False), ("Report created", created, False)],
                         styles, [32 * mm, (usable_mm - 32) * mm])]
    if search.calibration is not None:
        story += [Paragraph("Propositions", styles["h2"]),
                  _para(f"Hp: {search.propositions['hp']}", styles["body"]),
                  _para(f"Hd: {_clean(search.propositions['hd'], fonts, 2 * _TEXT_LIMIT)}", styles["body"]),
                  Spacer(1, 1.5 * mm),
                  _para("Each candidate's likelihood ratio is p(score | Hp) / p(score | Hd), from the calibration "
                        "identified below; the verbal equivalent follows the ENFSI scale. LRs are rounded to two "
                        "significant figures, log10 LRs to two decimals.", styles["small"]),
                  _para(SCORE_MEANING, styles["small"]),
                  _para(f"Calibration: {search.calibration.describe(search.by, _pair(search))}. {CLLR_MEANING}",
                        styles["small"]),
                  *[_para(bound_note(side), styles["small"]) for side in sorted(
                      {c.at_bound for q in search.queries for c in q.candidates if c.at_bound})]]
    else:
        story += [Paragraph("Scores", styles["h2"]), _para(f"{search.statement} {SCORE_MEANING}", styles["body"])]
    for number in range(1, len(search.queries) + 1):
        story += _query_section(number, search, styles, usable_mm, fonts)
    if comparisons:
        story += [*comparisons, PageBreak()]
    return story + [
        CondPageBreak(70 * mm), Paragraph("Identifiers", styles["h2"]),
        _key_values(_identifiers(search, fonts), styles, [40 * mm, (usable_mm - 40) * mm]),
        KeepTogether([Paragraph("Limitations", styles["h2"]), _para(_limitations(search, fonts), styles["body"])]),
        KeepTogether([Paragraph("Examiner's declaration", styles["h2"]),
                      _para("I compared the candidates above with the query image and report my findings "
                            "in the case file.", styles["body"]), Spacer(1, 8 * mm),
                      _para("Name: ______________________   Signature: ______________________   "
                            "Date: ____________", styles["body"])])]


def _footer(search: SearchResult, case: str, font: str, width: float) -> str:
    """The footer line, its case id shortened with "…" until the line fits ``width`` points."""
    record = f" · audit record {search.audit.seq} {search.audit.hash[:12]}" if search.audit else ""
    return fitted_footer(lambda shown: f"HandCLIP case report · case {shown}{record}", case, font, width)


def write_case_report(search: SearchResult, out_pdf: str | os.PathLike, *, case_id: str | None = None,
                      examiner: str | None = None, compare=None, images_of: ImagesOf | None = None) -> Path:
    """Write the PDF (atomically) and return its path. ``compare``: the candidates that get a comparison
    page (``case_compare.comparison_ranks``: the top 3 by default); ``images_of(identity)``: the
    identity's enrolled images (path, SHA-256) for the strip under each comparison."""
    check_case_id(case_id)
    ranks = comparison_ranks(compare, search.top_k)
    fonts = _register_fonts()
    styles = _styles(fonts)
    given = bool(case_id and case_id.strip())
    case = _clean(case_id, fonts, CASE_ID_LIMIT) if given else "(not given)"
    examiner = _clean(examiner or search.examiner or "(not given)", fonts)
    comparisons = comparison_pages(search, ranks, images_of, styles, usable_width_mm(), fonts)
    story = _story(search, case, examiner, styles, usable_width_mm(), fonts, comparisons)
    footer = _footer(search, case if given else "-", fonts["body"], footer_width_pt())
    return write_pdf(out_pdf, story, footer, fonts, title=f"HandCLIP case report {case_id or ''}".strip(),
                     author=examiner, subject="hand image search")


def _pair(search: SearchResult) -> str | None:
    """The aspect pair whose calibration map weighed the scores (None: the file's own maps)."""
    return (search.aspects or {}).get("calibration_pair")
