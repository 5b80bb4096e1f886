"""Search results for an examiner: a self-contained HTML page (query beside its ranked candidates,
thumbnails embedded as base64 JPEG) and a JSON file with every candidate."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_json, atomic_write_text
from ..forensic.reading import CLLR_MEANING, SCORE_MEANING, bound_note, lr_text, matched_text
from ..htmlpage import escape, html_page, thumbnail_data_uri

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} .meta{color:#555;font-size:.85em;margin-bottom:1em}
.query{display:flex;gap:1.2em;align-items:flex-start;border-top:1px solid #ccc;padding:1em 0}
.probe{flex:0 0 auto;text-align:center} .probe img{border:3px solid #1f5fa8}
.cands{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;text-align:center;font-size:.78em;width:%(px)dpx}
figure img{display:block;width:%(px)dpx;height:%(px)dpx;object-fit:contain;background:#f4f4f4;border:1px solid #bbb}
.missing{width:%(px)dpx;height:%(px)dpx;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.score{font-weight:600} .path{color:#666;word-break:break-all}
.answer{font-weight:600;color:#1d3557;margin:0 0 .6em}
"""


def _figure(path: str, label: str, caption_html: str, size: int) -> str:
    uri = thumbnail_data_uri(path, size)
    picture = (f'<img alt="{escape(label)}" src="{uri}">' if uri
               else '<div class="missing">image not available</div>')
    return f"<figure>{picture}<figcaption>{caption_html}</figcaption></figure>"


def _weight(candidate) -> str:
    """The likelihood-ratio line of a calibrated candidate (nothing for a plain search result)."""
    lr = getattr(candidate, "log10_lr", None)
    if lr is None:
        return ""
    bound = f", at the {candidate.at_bound} bound" if getattr(candidate, "at_bound", None) else ""
    return f"<br>{escape(lr_text(lr))}{bound}<br>{escape(candidate.verbal or '')}"


def write_search_html(results: Sequence, out_html: str | os.PathLike, *, gallery_dir: str = "",
                      by: str = "identity", checkpoint: str | None = None, size: int = 160,
                      statement: str | None = None, propositions: dict | None = None, audit=None,
                      calibration: str | None = None, top_k: int | None = None, aspects: str | None = None) -> Path:
    """One row per query: the query photo, then its candidates in rank order with their scores.

    Paths are shown as ``handclip.gallery.results.display_path`` gives them (relative to the gallery
    or the enrolment root, else the file name), never the directories above; a query by its exhibit
    name and SHA-256 when the results carry them; and the propositions, the calibration line
    (``CalibrationInfo.describe``) and the audit record of an evidential search; ``aspects``: the hand
    aspects compared, in words.
    """
    from .results import display_path, printable

    rows = []
    for result in results:
        top_k = top_k or len(result.candidates)
        cands = []
        for c in result.candidates:
            # names with control or bidirectional-override characters are shown escaped, as on the console
            shown, identity = printable(display_path(c.path, c.identity, gallery_dir or None)), printable(c.identity)
            extra = (f"<br>{escape(matched_text(c.matched, c.num_images, top_k))}" if by == "identity"
                     else f"<br>image of {escape(identity)}")
            caption = (f"#{c.rank} <b>{escape(identity)}</b><br><span class=score>{c.score:.4f}</span>"
                       f"{_weight(c)}{extra}<br><span class=path>{escape(shown)}</span>")
            cands.append(_figure(c.path, shown, caption, size))
        query_name = printable(getattr(result, "name", "") or display_path(result.query, gallery_dir=gallery_dir or None))
        digest = getattr(result, "sha256", None)
        digest_html = f"<br><span class=path>SHA-256 {escape(digest[:16])}...</span>" if digest else ""
        probe = _figure(result.query, query_name,
                        f"query<br><span class=path>{escape(query_name)}</span>{digest_html}", size)
        answer = (getattr(result, "open_set", None) or {}).get("answer")
        answer_html = f'<p class="answer">{escape(answer)}</p>' if answer else ""
        rows.append(f'<div class="query"><div class="probe">{probe}</div><div>{answer_html}'
                    f'<div class="cands">{"".join(cands)}</div></div></div>')
    meta = (f"gallery {escape(Path(gallery_dir).name)} &middot; ranked by {escape(by)} "
            f"(score: cosine similarity{', best image per person' if by == 'identity' else ''})"
            + (f" &middot; model {escape(Path(checkpoint).name)}" if checkpoint else "")
            + f" &middot; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if audit is not None:
        meta += f" &middot; audit record {int(audit.seq)} ({escape(audit.hash[:16])}...)"
    notes = "".join(f"<p>{escape(k.capitalize())}: {escape(v)}</p>" for k, v in (propositions or {}).items())
    if statement:
        notes += f"<p>{escape(statement)}</p>"
    notes += f"<p>{escape(SCORE_MEANING)}</p>"
    for side in sorted({c.at_bound for r in results for c in r.candidates if getattr(c, "at_bound", None)}):
        notes += f"<p>{escape(bound_note(side))}</p>"
    if calibration:
        notes += f"<p>{escape(calibration)}. {escape(CLLR_MEANING)}</p>"
    if aspects:
        notes += f"<p>Aspects: {escape(aspects)}</p>"
    body = (f"<h1>HandCLIP search: {len(results)} quer{'y' if len(results) == 1 else 'ies'}</h1>"
            f"<div class=\"meta\">{meta}</div><div class=\"meta\">{notes}</div>" + "\n".join(rows))
    atomic_write_text(out_html, html_page("HandCLIP search", body, _CSS % {"px": size}))
    return Path(out_html)


def write_search_json(results: Sequence, out_json: str | os.PathLike, **info) -> Path:
    atomic_write_json(out_json, {**info, "results": [r.as_dict() for r in results]})
    return Path(out_json)
