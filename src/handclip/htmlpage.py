"""Self-contained HTML pages (evaluation reports, search results): one file, pictures embedded.

A page that can be mailed or archived on its own must not point at files on the machine that made
it, so pictures are embedded as data URIs, and every name or path shown is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os

from .data.images import thumbnail
from .errors import HandCLIPError


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail_data_uri(path: str | os.PathLike, size: int = 160) -> str | None:
    """A JPEG thumbnail of ``path`` as a data URI (through the project's image loader, so EXIF
    orientation is honoured as the model honours it), or None when the image cannot be read."""
    try:
        image = thumbnail(path, size)
    except HandCLIPError:  # a moved or damaged image must not break the page
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def html_page(title: str, body: str, css: str = "") -> str:
    """A complete HTML5 document around ``body`` (already HTML); ``title`` is escaped here."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title><style>{css}</style></head><body>\n{body}\n</body></html>\n")
