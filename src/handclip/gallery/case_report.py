"""The case report of an evidential search: a PDF (reportlab) an examiner can read, file and sign.

Per query: the photo with its exhibit name and its SHA-256 taken at intake, then the ranked candidates with thumbnails,
scores, log10 likelihood ratios and their verbal equivalents. Then the propositions the LRs weigh (or
the statement that scores are not LRs), the identifiers of model, gallery and calibration, the audit
record's seq and hash, a limitations paragraph and a signature block. Names and paths are escaped for
reportlab's markup and shown as ``handclip.gallery.results.display_path`` gives them. Text is set in the
DejaVu fonts matplotlib ships, so any identity name renders; the PDF's text can be extracted.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from xml.sax.saxutils import escape

from ..atomic import atomic_write_bytes
from ..errors import HandCLIPError
from .results import SearchResult, display_path

_FONTS = {"body": "Helvetica", "bold": "Helvetica-Bold", "mono": "Courier"}
_THUMB_MM = 24
_QUERY_MM = 48


def _register_fonts() -> dict:
    """DejaVu from matplotlib's data (full Unicode); reportlab's core fonts if it cannot be found."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for name, file in (("HC-Sans", "DejaVuSans.ttf"), ("HC-Sans-Bold", "DejaVuSans-Bold.ttf"),
                           ("HC-Mono", "DejaVuSansMono.ttf")):
            if name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(name, str(folder / file)))
        return {"body": "HC-Sans", "bold": "HC-Sans-Bold", "mono": "HC-Mono"}
    except Exception:  # noqa: BLE001 - fall back to the core fonts rather than fail the report
        return dict(_FONTS)


def _styles(fonts: dict) -> dict:
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("body", fontName=fonts["body"], fontSize=8.5, leading=11)
    return {"body": base,
            "small": ParagraphStyle("small", parent=base, fontSize=7.5, leading=9.5),
            "mono": ParagraphStyle("mono", parent=base, fontName=fonts["mono"], fontSize=6.6, leading=8.5),
            "title": ParagraphStyle("title", parent=base, fontName=fonts["bold"], fontSize=16, leading=20,
                                    spaceAfter=4),
            "h2": ParagraphStyle("h2", parent=base, fontName=fonts["bold"], fontSize=11, leading=14,
                                 spaceBefore=8, spaceAfter=4),
            "cell": ParagraphStyle("cell", parent=base, fontSize=7.5, leading=9.2),
            "head": ParagraphStyle("head", parent=base, fontName=fonts["bold"], fontSize=7.5, leading=9.2)}


def _picture(path: str, size_mm: float, style):
    """A thumbnail of ``path`` at most ``size_mm`` square, or a note when it cannot be read."""
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph

    from ..data.images import thumbnail

    try:
        rgb = thumbnail(path, 256)  # as the model sees it (EXIF orientation applied)
    except HandCLIPError:  # a moved or damaged file must not stop the report
        return Paragraph("image not available", style)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    buffer.seek(0)
    scale = size_mm * mm / max(rgb.size)
    return Image(buffer, width=rgb.width * scale, height=rgb.height * scale)


def _para(text, style):
    """A paragraph of plain text: markup characters escaped, line breaks kept."""
    from reportlab.platypus import Paragraph

    return Paragraph(escape(str(text)).replace("\n", "<br/>"), style)


def _key_values(rows: list[tuple[str, str, bool]], styles, widths) -> object:
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    data = [[_para(k, styles["head"]), _para(v, styles["mono"] if mono else styles["cell"])] for k, v, mono in rows]
    table = Table(data, colWidths=widths, hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
    return table


def _candidate_table(query, search: SearchResult, styles, usable_mm: float):
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Table, TableStyle

    calibrated = search.calibration is not None
    head = ["Rank", "Gallery image", "Identity", "Score", "log10 LR", "Verbal equivalent", "Image file"]
    widths = [12, _THUMB_MM + 3, 27, 15, 18, 43]
    widths.append(usable_mm - sum(widths))
    rows = [[_para(h, styles["head"]) for h in head]]
    for c in query.candidates:
        if calibrated:
            lr = f"{c.log10_lr:+.2f}" + (f" (at {c.at_bound} bound)" if c.at_bound else "")
            verbal = c.verbal or ""
        else:
            lr, verbal = "n/a", "not a likelihood ratio"
        detail = display_path(c.path, c.identity, search.gallery.get("dir"))
        if c.sha256:
            detail += f"\nSHA-256 {c.sha256[:16]}..."
        if search.by == "identity":
            detail += f"\n{c.matched} of {c.num_images} image(s) in top hits"
        rows.append([_para(c.rank, styles["cell"]), _picture(c.path, _THUMB_MM, styles["small"]),
                     _para(c.identity, styles["cell"]), _para(f"{c.score:.4f}", styles["cell"]),
                     _para(lr, styles["cell"]), _para(verbal, styles["cell"]),
                     _para(detail, styles["small"])])
    table = Table(rows, colWidths=[w * mm for w in widths], repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef6")),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7f7f7")]),
    ]))
    return table


def _limitations(search: SearchResult) -> str:
    people = search.gallery.get("identities")
    if search.calibration is None:
        return ("No calibration was given: the scores are cosine similarities that rank the gallery; they are not "
                "likelihood ratios and carry no evidential weight. This list is an investigative lead only: each "
                "candidate must be compared with the query by an examiner, and nothing here supports an "
                "identification on its own.")
    low, high = search.bounds
    return (f"The likelihood ratios come from a calibration fitted on {search.calibration.population()}. They hold "
            f"for images like that data (capture conditions, hand aspect, image quality); a query unlike it may "
            f"be mis-weighted. They are bounded to log10 LR {low:+.2f} .. {high:+.2f}, the most that calibration "
            f"data supports. Each LR weighs Hp against Hd for one candidate on its own and does not allow for the "
            f"search having ranked {people} people and put this one near the top. The numbers depend on the exact "
            f"model, gallery and calibration identified above by their hashes. This list is an investigative lead; "
            f"it becomes evaluative evidence only when an examiner adopts a candidate and reports its LR with these "
            f"propositions under a validated procedure.")


def _identifiers(search: SearchResult) -> list[tuple[str, str, bool]]:
    fp = search.model.get("fingerprint") or {}
    inference = search.model.get("inference") or {}
    computed = (f"; query features computed in {inference['precision']} with {inference['engine']}"
                if inference else "")
    g = search.gallery
    rows = [("Model", f"{fp.get('backbone')} ({fp.get('kind')}), input {fp.get('image_size')}, "
                      f"feature dim {fp.get('feature_dim')}, checkpoint file "
                      f"{display_path(search.model.get('checkpoint') or '?')}{computed}", False),
            ("Checkpoint SHA-256", str(search.model.get("checkpoint_sha256")), True),
            ("Weights SHA-256", str(fp.get("weights_sha256")), True),
            ("Gallery", f"{Path(g.get('dir', '?')).name}: {g.get('images')} images of {g.get('identities')} "
                        f"identities, commit generation {g.get('generation')}, uid {g.get('uid')}", False),
            ("Gallery commit SHA-256", str(g.get("commit_sha256")), True),
            ("Search", f"ranked by {search.by} (score: {search.score}); top {search.top_k}; "
                       f"index {search.index_type}", False)]
    if search.calibration is not None:
        cal = search.calibration
        rows += [("Calibration", f"{display_path(cal.path)}: {cal.describe(search.by)}; "
                                 f"created {cal.summary.get('created', '?')}", False),
                 ("Calibration SHA-256", cal.sha256, True)]
    else:
        rows.append(("Calibration", "none: scores are not likelihood ratios", False))
    if search.audit is not None:
        rows += [("Audit record", f"record {search.audit.seq} of {Path(search.audit.log).name} in the gallery folder "
                                  f"(`handclip audit verify --index GALLERY` checks it)", False),
                 ("Audit record SHA-256", search.audit.hash, True)]
    return rows


def report_file_name(record: int, case_id: str | None = None) -> str:
    """A report's file name from its case id (letters, digits and ._- kept, the rest made "-", at most
    80 characters) and its audit record: ``handclip-case-2026-17-record-12.pdf``."""
    case = re.sub(r"[^A-Za-z0-9._-]+", "-", case_id or "").strip("-._")[:80].strip("-._")
    return f"handclip-case-{case}-record-{int(record)}.pdf" if case else f"handclip-record-{int(record)}.pdf"


def write_case_report(search: SearchResult, out_pdf: str | os.PathLike, *, case_id: str | None = None,
                      examiner: str | None = None) -> Path:
    """Write the PDF (atomically) and return its path."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import CondPageBreak, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table

    fonts = _register_fonts()
    styles = _styles(fonts)
    examiner = examiner or search.examiner
    margin = 15 * mm
    usable_mm = (A4[0] - 2 * margin) / mm
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    story = [Paragraph("HandCLIP case report: hand image search", styles["title"]),
             _key_values([("Case", case_id or "(not given)", False), ("Examiner", examiner or "(not given)", False),
                          ("Report created", created, False)], styles, [32 * mm, (usable_mm - 32) * mm])]
    if search.calibration is not None:
        story += [Paragraph("Propositions", styles["h2"]),
                  _para(f"Hp: {search.propositions['hp']}", styles["body"]),
                  _para(f"Hd: {search.propositions['hd']}", styles["body"]),
                  _para("Each candidate's likelihood ratio is p(score | Hp) / p(score | Hd), from the calibration "
                        "identified below; the verbal equivalent follows the ENFSI scale.", styles["small"])]
    else:
        story += [Paragraph("Scores", styles["h2"]), _para(search.statement, styles["body"])]
    for number, query in enumerate(search.queries, 1):
        title = "Query" if len(search.queries) == 1 else f"Query {number} of {len(search.queries)}"
        stored = display_path(query.query)
        name = query.name or stored
        details = _key_values([("File", name, False),
                               *([("Stored as", stored, True)] if stored != name else []),
                               ("SHA-256 at intake", query.sha256, True)],
                              styles, [26 * mm, (usable_mm - _QUERY_MM - 30) * mm])
        story += [CondPageBreak(80 * mm), Paragraph(title, styles["h2"]),
                  Table([[_picture(query.query, _QUERY_MM, styles["small"]), details]],
                        colWidths=[(_QUERY_MM + 4) * mm, None], hAlign="LEFT",
                        style=[("VALIGN", (0, 0), (-1, -1), "TOP")]),
                  Spacer(1, 3 * mm), _candidate_table(query, search, styles, usable_mm)]
    story += [CondPageBreak(70 * mm), Paragraph("Identifiers", styles["h2"]),
              _key_values(_identifiers(search), styles, [40 * mm, (usable_mm - 40) * mm]),
              KeepTogether([Paragraph("Limitations", styles["h2"]), _para(_limitations(search), styles["body"])]),
              KeepTogether([Paragraph("Examiner's declaration", styles["h2"]),
                            _para("I compared the candidates above with the query image and report my findings "
                                  "in the case file.", styles["body"]), Spacer(1, 8 * mm),
                            _para("Name: ______________________   Signature: ______________________   "
                                  "Date: ____________", styles["body"])])]
    footer = f"HandCLIP case report · case {case_id or '-'}" + (
        f" · audit record {search.audit.seq} {search.audit.hash[:12]}" if search.audit else "")

    def on_page(canvas, doc):
        canvas.saveState()
        canvas.setFont(fonts["body"], 7)
        canvas.drawString(margin, 8 * mm, footer)
        canvas.drawRightString(A4[0] - margin, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=margin,
                            bottomMargin=16 * mm, title=f"HandCLIP case report {case_id or ''}".strip(),
                            author=examiner or "", subject="hand image search", creator="HandCLIP")
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
    atomic_write_bytes(out_pdf, buffer.getvalue())
    return Path(out_pdf)
