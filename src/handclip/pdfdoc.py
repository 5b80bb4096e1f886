"""The PDF building blocks every HandCLIP report shares (the case report, the validation report).

Text is set in the DejaVu fonts matplotlib ships (full Unicode), falling back to reportlab's core fonts.
Every text that comes from outside HandCLIP goes through ``clean_text`` before it reaches reportlab:
control, bidirectional-override and other invisible characters are shown as ``\\u....`` escapes (so a
name cannot reorder or hide text, nor break a table cell over many lines), the text is cut to a bound,
right-to-left scripts are laid out in visual order (reportlab places glyphs left to right; python-bidi
gives the order a reader sees), and a character the font has no glyph for is shown as ``[U+....]``
rather than as an empty box. Pages are A4 with a footer line and the page number; the PDF is written
atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Sequence
from xml.sax.saxutils import escape

from .atomic import atomic_write_bytes
from .errors import HandCLIPError

CORE_FONTS = {"body": "Helvetica", "bold": "Helvetica-Bold", "mono": "Courier"}
TEXT_LIMIT = 300  # any outside text (examiner, manifest names, paths) unless a caller bounds it otherwise
MARGIN_MM = 15
FOOTER_PT = 7


def register_fonts() -> dict:
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
        return dict(CORE_FONTS)


def has_glyph(font_name: str) -> Callable[[str], bool]:
    """A test of whether the registered font draws a character (core fonts: Latin-1 only)."""
    from reportlab.pdfbase import pdfmetrics

    face = getattr(pdfmetrics.getFont(font_name), "face", None)
    covered = getattr(face, "charToGlyph", None)
    if covered is None:
        return lambda ch: ord(ch) < 256
    return lambda ch: ord(ch) in covered


def _printable(text) -> str:
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def clean_text(text, fonts: dict, limit: int = TEXT_LIMIT) -> str:
    """Outside text made safe to lay out: escapes for invisible characters, bounded, visual order,
    and ``[U+....]`` for characters the body font cannot draw (see the module's docstring)."""
    from bidi import get_display

    text = _printable(text)
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    text = get_display(text, base_dir="L")  # a report reads left to right; RTL runs within it are reversed
    drawn = has_glyph(fonts["body"])
    return "".join(ch if drawn(ch) else f"[U+{ord(ch):04X}]" for ch in text)


def styles(fonts: dict) -> dict:
    """The paragraph styles of every report: body, small, mono, title, h2, h3, cell and head (table header)."""
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("body", fontName=fonts["body"], fontSize=8.5, leading=11)
    return {"body": base,
            "small": ParagraphStyle("small", parent=base, fontSize=7.5, leading=9.5),
            "mono": ParagraphStyle("mono", parent=base, fontName=fonts["mono"], fontSize=6.6, leading=8.5),
            "title": ParagraphStyle("title", parent=base, fontName=fonts["bold"], fontSize=16, leading=20,
                                    spaceAfter=4),
            "h2": ParagraphStyle("h2", parent=base, fontName=fonts["bold"], fontSize=11, leading=14,
                                 spaceBefore=8, spaceAfter=4),
            "h3": ParagraphStyle("h3", parent=base, fontName=fonts["bold"], fontSize=9, leading=12,
                                 spaceBefore=5, spaceAfter=2),
            "cell": ParagraphStyle("cell", parent=base, fontSize=7.5, leading=9.2),
            "head": ParagraphStyle("head", parent=base, fontName=fonts["bold"], fontSize=7.5, leading=9.2)}


def para(text, style):
    """A paragraph of plain text: markup characters escaped, line breaks kept."""
    from reportlab.platypus import Paragraph

    return Paragraph(escape(str(text)).replace("\n", "<br/>"), style)


def key_values(rows: Sequence[tuple[str, str, bool]], style_set: dict, widths) -> object:
    """A two-column table of (label, value, value in monospace) rows."""
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    data = [[para(k, style_set["head"]), para(v, style_set["mono"] if mono else style_set["cell"])]
            for k, v, mono in rows]
    table = Table(data, colWidths=widths, hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
    return table


def grid_table(rows: Sequence[Sequence], style_set: dict, widths_mm: Sequence[float], shading: Sequence = ()):
    """A table with a header row, a grid and alternating row shading; cells are plain text (or flowables).
    ``shading``: (column, row, colour) cells to colour, e.g. a pass/fail column."""
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Table, TableStyle

    data = [[cell if not isinstance(cell, (str, int, float)) else para(cell, style_set["head" if r == 0 else "cell"])
             for cell in row] for r, row in enumerate(rows)]
    table = Table(data, colWidths=[w * mm for w in widths_mm], repeatRows=1, hAlign="LEFT")
    commands = [("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef6")),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7f7f7")])]
    commands += [("BACKGROUND", (column, row), (column, row), colors.HexColor(colour)) for column, row, colour in shading]
    table.setStyle(TableStyle(commands))
    return table


def image_thumbnail(path: str | os.PathLike, size_mm: float, style):
    """A thumbnail of the image file ``path`` (as the model sees it) at most ``size_mm`` square, or a note
    when it cannot be read."""
    from reportlab.platypus import Paragraph

    from .data.images import thumbnail

    try:
        rgb = thumbnail(path, 256)  # EXIF orientation applied
    except HandCLIPError:  # a moved or damaged file must not stop the report
        return Paragraph("image not available", style)
    return rgb_image(rgb, size_mm)


def rgb_image(rgb, size_mm: float):
    """A PIL image laid out at most ``size_mm`` on its longer side."""
    from reportlab.lib.units import mm
    from reportlab.platypus import Image

    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    buffer.seek(0)
    scale = size_mm * mm / max(rgb.size)
    return Image(buffer, width=rgb.width * scale, height=rgb.height * scale)


def figure(png: str | os.PathLike, width_mm: float, max_height_mm: float = 200):
    """A picture HandCLIP drew (a plot), scaled to ``width_mm`` wide, or shorter to fit ``max_height_mm``."""
    from reportlab.lib.units import mm
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image

    width, height = ImageReader(str(png)).getSize()
    scale = min(width_mm * mm / width, max_height_mm * mm / height)
    return Image(str(png), width=width * scale, height=height * scale)


def fitted_footer(make: Callable[[str], str], variable: str, font: str, width_pt: float) -> str:
    """``make(variable)``, with ``variable`` shortened with "…" until the line fits ``width_pt`` points."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    while True:
        line = make(variable)
        if stringWidth(line, font, FOOTER_PT) <= width_pt or len(variable) <= 1:
            return line
        variable = variable[:-2] + "…"


def usable_width_mm() -> float:
    """The text width of an A4 page between the margins, in millimetres."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm

    return (A4[0] - 2 * MARGIN_MM * mm) / mm


def footer_width_pt() -> float:
    """Room for the footer line: the text width less the page number's."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm

    return A4[0] - 2 * MARGIN_MM * mm - 40


def write_pdf(out_pdf: str | os.PathLike, story: list, footer: str, fonts: dict, *, title: str, author: str = "",
              subject: str = "") -> Path:
    """Lay ``story`` out on A4 pages with ``footer`` and the page number at the foot, and write it atomically."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    margin = MARGIN_MM * mm

    def on_page(canvas, doc):
        canvas.saveState()
        canvas.setFont(fonts["body"], FOOTER_PT)
        canvas.drawString(margin, 8 * mm, footer)
        canvas.drawRightString(A4[0] - margin, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=margin,
                            bottomMargin=16 * mm, title=title, author=author, subject=subject, creator="HandCLIP")
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
    atomic_write_bytes(out_pdf, buffer.getvalue())
    return Path(out_pdf)


__all__ = ["clean_text", "figure", "fitted_footer", "footer_width_pt", "grid_table", "has_glyph", "image_thumbnail",
           "key_values", "para", "register_fonts", "styles", "usable_width_mm", "write_pdf"]
