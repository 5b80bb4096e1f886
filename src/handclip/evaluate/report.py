"""The files an evaluation leaves behind: metrics.json, metrics.md, the pictures and one report.html.

Tables are Markdown (also shown in the HTML page); pictures come from ``handclip.evaluate.plots``;
the page is self-contained (pictures embedded), so it can be mailed or archived on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text, write_error
from ..errors import DataError, HandCLIPError
from ..htmlpage import data_uri, escape, html_page
from .metrics import METRIC_KEYS
from .plots import METRIC_LABELS, plot_cmc, plot_training_curves, ranked_list_sheet

if TYPE_CHECKING:
    from .protocol import EvalResult

__all__ = ["markdown_table", "html_report", "write_evaluation_outputs", "describe_options"]



# ----------------------------------------------------------------------------------------------
# Tables and HTML


def _cell(value: Any, percent: bool) -> str:
    if isinstance(value, Mapping) and "mean" in value:
        mean, std = float(value["mean"]), float(value.get("std", 0.0))
        scale = 100.0 if percent else 1.0
        return f"{scale * mean:.2f} ± {scale * std:.2f}"
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{100.0 * float(value):.2f}" if percent else f"{float(value):.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, percent: bool = True) -> str:
    """A Markdown table from a list of dicts (column order: ``columns`` or first-seen key order).

    Floats are fractions shown in percent with two decimals, ``{"mean", "std"}`` dicts (as from
    :func:`handclip.metrics.aggregate_runs`) become ``mean ± std`` in percent, ints and strings stay
    as they are. Known metric keys get readable headers (rank1 -> Rank-1).
    """
    if not rows:
        raise HandCLIPError("markdown_table needs at least one row")
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    header = [METRIC_LABELS.get(c, c) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), percent) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _markdown_to_html_table(markdown: str) -> str:
    lines = [ln.strip() for ln in markdown.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{escape(markdown)}</pre>"

    def cells(line: str) -> list[str]:
        parts, current, escaped = [], "", False
        for ch in line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]:
            if ch == "|" and not escaped:
                parts.append(current.strip())
                current = ""
            else:
                current += ch
            escaped = ch == "\\"
        parts.append(current.strip())
        return [p.replace("\\|", "|") for p in parts]

    head = cells(lines[0])
    body = [cells(ln) for ln in lines[2:]]
    # A column of sentences (the ENFSI verbal scale, a reason a figure is missing) wraps, left-aligned, so a
    # table fits a 1280-pixel window; columns of figures stay on one line, right-aligned.
    prose = {i for i in range(1, len(head)) if any(_is_prose(row[i]) for row in body if i < len(row))}
    kind = lambda i: ' class="text"' if i in prose else ""  # noqa: E731
    out = ["<table>", "<thead><tr>" + "".join(f"<th{kind(i)}>{escape(h)}</th>" for i, h in enumerate(head))
           + "</tr></thead>", "<tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td{kind(i)}>{escape(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _is_prose(cell: str) -> bool:
    """A cell of words rather than a figure: long, and mostly letters."""
    letters = sum(ch.isalpha() for ch in cell)
    return len(cell) > 30 and letters > len(cell) / 2


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1200px;margin:0 auto;padding:28px 32px 48px}
h1{font-size:26px;margin:0 0 4px;overflow-wrap:anywhere}
.meta{color:#5b6475;font-size:13px;margin-bottom:22px}
h2{font-size:18px;margin:30px 0 10px;border-bottom:2px solid #dfe3ea;padding-bottom:4px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin-bottom:18px;
overflow-x:auto}
table{border-collapse:collapse;font-size:14px;max-width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid #e6e9ef;text-align:right;vertical-align:top}
td{white-space:nowrap}
th{white-space:normal;min-width:4.5em}
th:first-child,td:first-child{text-align:left;white-space:normal}
th.text,td.text{text-align:left;white-space:normal;min-width:12em}
td.path{text-align:left;white-space:normal;overflow-wrap:anywhere;font-family:ui-monospace,monospace;font-size:13px}
thead th{background:#eef1f6;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
figure{margin:0 0 10px}
figure img{max-width:100%;height:auto;border:1px solid #e6e9ef;border-radius:4px}
figcaption{color:#5b6475;font-size:13px;margin-top:4px}
p,pre{font-size:14px;line-height:1.5}
pre{background:#f6f8fa;padding:10px;border-radius:4px;overflow:auto}
"""


def html_report(
    out_html: str | os.PathLike,
    title: str,
    metrics_table: str | Sequence[Mapping[str, Any]],
    images: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]] = (),
    sections: Mapping[str, str] | None = None,
    subtitle: str = "",
    tables: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """A single self-contained HTML file: title, metrics table, embedded PNGs, extra text sections.

    ``metrics_table`` is Markdown (e.g. from :func:`markdown_table`) or the rows to build it from.
    ``images`` are PNG paths or ``(caption, path)`` pairs; they are embedded as base64 so the file
    can be mailed or archived on its own. ``sections`` maps a heading to plain text (escaped);
    ``tables`` maps a heading to a further Markdown table, shown after the metrics table. ``files`` (name ->
    path and ``name_sha256`` -> hash, as ``evaluate.workflow.provenance`` gives) is the "Computed from" table.
    """
    table_md = metrics_table if isinstance(metrics_table, str) else markdown_table(metrics_table)
    figures = []
    for item in images:
        caption, path = item if isinstance(item, tuple) else (Path(item).stem.replace("_", " "), item)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"report image {path} could not be read ({exc.strerror or exc})") from exc
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise DataError(f"report image {path} is not a PNG file")
        figures.append(
            f'<figure><img alt="{escape(caption)}" src="{data_uri(data, "image/png")}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    parts = [
        "<main>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="meta">{escape(subtitle)}</div>' if subtitle else "",
        "<h2>Metrics</h2>",
        f"<section>{_markdown_to_html_table(table_md)}</section>",
    ]
    for heading, extra in (tables or {}).items():
        parts += [f"<h2>{escape(heading)}</h2>", f"<section>{_markdown_to_html_table(extra)}</section>"]
    if files:
        parts += ["<h2>Computed from</h2>", f"<section>{_files_table(files)}</section>"]
    if figures:
        parts += ["<h2>Figures</h2>", "<section>" + "\n".join(figures) + "</section>"]
    for heading, text in (sections or {}).items():
        paragraphs = "".join(f"<p>{escape(p).replace(chr(10), '<br>')}</p>" for p in str(text).split("\n\n"))
        parts += [f"<h2>{escape(heading)}</h2>", f"<section>{paragraphs}</section>"]
    parts.append("</main>")
    atomic_write_text(out_html, html_page(title, "\n".join(p for p in parts if p), _CSS))
    return Path(out_html)


def _files_table(files: Mapping[str, str]) -> str:
    """The files a report was computed from: one row each, path and SHA-256 (wrapping, never off-screen)."""
    rows = [f'<tr><td>{escape(name)}</td><td class="path">{escape(files[name])}</td>'
            f'<td class="path">{escape(files.get(name + "_sha256", ""))}</td></tr>'
            for name in files if not name.endswith("_sha256")]
    return ('<table><thead><tr><th>file</th><th class="text">path</th><th class="text">SHA-256</th></tr></thead>'
            "<tbody>" + "".join(rows) + "</tbody></table>")


def _pick_queries(result: EvalResult, run: int, count: int) -> list[int]:
    """Indices of queries to show: rank-1 mistakes first (what an examiner must look at), then hits."""
    query, gallery = result.splits[run]
    dist = result.distances[run]
    g_pids = np.array([r.pid for r in gallery])
    nearest = np.argmin(dist, axis=1)
    wrong = [i for i in range(len(query)) if g_pids[nearest[i]] != query[i].pid]
    right = [i for i in range(len(query)) if g_pids[nearest[i]] == query[i].pid]
    rng = np.random.default_rng(0)
    wrong, right = [int(i) for i in rng.permutation(wrong)], [int(i) for i in rng.permutation(right)]
    # Half mistakes, half hits; when one kind runs short the other fills the sheet.
    take_right = right[: max(count // 2, count - len(wrong))]
    take_wrong = wrong[: count - len(take_right)]
    return sorted(take_wrong) + sorted(take_right)


REPORT_FILES = ("metrics.json", "metrics.md", "cmc.png", "ranked_list.png", "training_curves.png", "report.html",
                "det.png", "fnir_fpir.png", "tippett.png", "lr_calibration.png")


def describe_options(options: dict) -> str:
    """The evaluation settings in words, for report subtitles."""
    runs = options.get("runs") or []
    if runs and runs == list(range(runs[0], runs[-1] + 1)) and len(runs) > 1:
        run_text = f"runs {runs[0]}-{runs[-1]}"
    else:
        run_text = ("run " if len(runs) == 1 else "runs ") + ", ".join(str(r) for r in runs)
    parts = [
        run_text,
        f"{options.get('metric', 'cosine')} distance",
        "flip TTA on" if options.get("flip") else "flip TTA off",
        "re-ranking on" if options.get("rerank") else "re-ranking off",
        ("no distractors" if not options.get("distractor_images", 1) else "distractors in the gallery")
        if options.get("distractors", True) else "distractors dropped",
    ]
    return "; ".join(parts)


STAGING_SUFFIX = ".staging"
STAGING_OWNER = ".owner"
# A staging folder without a readable owner this old is an abandoned one (seconds to minutes in normal use).
_STALE_SECONDS = 24 * 3600


def check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that is a file, or lies under one, before any work is done."""
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise DataError(f"output folder {out_dir}: {path} is a file, not a folder")
            return


def _owner_alive(stage: Path) -> bool:
    try:
        pid = int((stage / STAGING_OWNER).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        try:
            return time.time() - stage.stat().st_mtime < _STALE_SECONDS
        except OSError:
            return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_staging(out_dir: Path) -> None:
    """Remove staging folders of this report that a killed evaluation left (their owner process is gone)."""
    prefix = f".{out_dir.name}."
    for entry in out_dir.parent.iterdir():
        if (entry.name.startswith(prefix) and entry.name.endswith(STAGING_SUFFIX) and entry.is_dir()
                and not entry.is_symlink() and not _owner_alive(entry)):
            shutil.rmtree(entry, ignore_errors=True)


def _open_staging(out_dir: Path) -> tuple[Path, list[Path]]:
    """A fresh staging folder beside ``out_dir``, owned by this process, and the folders above ``out_dir``
    that this call created (innermost first, to remove on failure)."""
    check_output_folder(out_dir)
    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out_dir)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=STAGING_SUFFIX, dir=out_dir.parent))
        (stage / STAGING_OWNER).write_text(f"{os.getpid()}\n", encoding="utf-8")
    except OSError as exc:
        raise write_error(exc, out_dir) from None
    return stage, created


def _publish(stage: Path, out_dir: Path) -> None:
    """Move every staged file into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (stage / STAGING_OWNER).unlink()
    written = {item.name for item in stage.iterdir()}
    for name in REPORT_FILES:  # a picture from an earlier report in this folder must not look current
        if name not in written:
            (out_dir / name).unlink(missing_ok=True)
    for item in stage.iterdir():
        item.replace(out_dir / item.name)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first; only the empty folders this call made
        try:
            folder.rmdir()
        except OSError:
            break


def _runs_table(result: EvalResult) -> tuple[str, str]:
    """The per-run metrics table (Markdown, mean ± std last) and the note that says what it was computed on."""
    rows = [{"run": r.run, **{k: r.metrics[k] for k in METRIC_KEYS}, "queries": r.num_query,
             "gallery": r.num_gallery} for r in result.per_run]
    rows.append({"run": "mean ± std", **{k: result.aggregate[k] for k in METRIC_KEYS}})
    table = markdown_table(rows, columns=["run", *METRIC_KEYS, "queries", "gallery"])
    skipped = sum(int(r.metrics.get("num_skipped_queries", 0)) for r in result.per_run)
    note = (f"Metrics in %; mean ± std (population) over {len(result.per_run)} run(s); "
            f"{describe_options(result.options)}; gallery ids per run: "
            f"{', '.join(str(r.num_gallery_ids) for r in result.per_run)}; "
            f"queries without a correct match in the gallery (skipped): {skipped}.")
    left_out = result.options.get("images_left_out") or []
    if left_out:
        shown = ", ".join(left_out[:10]) + (f" and {len(left_out) - 10} more" if len(left_out) > 10 else "")
        note += f" Unusable images left out of every run (--skip-bad): {len(left_out)}: {shown}."
    own = [[r.pid for r in g if not r.is_distractor] for _, g in result.splits.values()]
    if own and all(len(set(pids)) == len(pids) for pids in own):  # single-shot gallery (11k, HD protocols)
        note += (" Each identity has one gallery image, so mAP and mINP both equal the mean reciprocal rank "
                 "of the correct match.")
    return table, note


def _ranked_list_picture(result: EvalResult, stage: Path, queries_shown: int, top_k: int):
    """ranked_list.png of the first run and its caption, or None (no queries asked for, or no distances kept)."""
    run = result.per_run[0].run
    if queries_shown <= 0 or result.distances.get(run) is None:
        return None
    query, gallery = result.splits[run]
    dist = result.distances[run]
    picks = _pick_queries(result, run, queries_shown)
    top_k = max(1, min(top_k, len(gallery)))
    rankings = []
    for i in picks:
        order = np.argsort(dist[i], kind="stable")[:top_k]
        rankings.append([(gallery[j].path, gallery[j].pid, float(dist[i, j])) for j in order])
    # People by the names the manifest gives them (folder names, 11k/HD ids), not by internal pids.
    names = {r.pid: r.original_id for r in (*query, *gallery) if r.original_id}
    ranked_list_sheet([(query[i].path, query[i].pid) for i in picks], rankings, stage / "ranked_list.png", top_k=top_k,
                      names=names)
    return (f"Ranked gallery lists, run {run}: rank-1 mistakes first, then hits; green frame = same identity as the "
            f"query, red = different; d = distance", stage / "ranked_list.png")


def _retrieval_pictures(result: EvalResult, stage: Path, title: str, label: str, history: list | None,
                        queries_shown: int, top_k: int) -> list[tuple[str, Path]]:
    """cmc.png, ranked_list.png and training_curves.png (from ``history``), each with its caption."""
    runs_text = f"mean over {len(result.per_run)} runs" if len(result.per_run) > 1 else f"run {result.per_run[0].run}"
    # Past the gallery size every curve is flat at 100%: stop there.
    cmc_ranks = max(1, min(20, len(result.mean_cmc()), max(r.num_gallery for r in result.per_run)))
    plot_cmc({label: result.mean_cmc()}, stage / "cmc.png", max_rank=cmc_ranks,
             title=f"CMC, {title.removeprefix('Evaluation on ')} ({runs_text})")
    images = [(f"CMC curve ({runs_text})", stage / "cmc.png")]
    ranked = _ranked_list_picture(result, stage, queries_shown, top_k)
    if ranked is not None:
        images.append(ranked)
    if history:
        plot_training_curves(history, stage / "training_curves.png")
        images.append(("Training curves (from the run's metrics.jsonl): losses, learning rate, and rank-1/mAP on "
                       "the validation split of the training identities, which picks best.pt", stage / "training_curves.png"))
    return images


def write_evaluation_outputs(result: EvalResult, out_dir, title: str, label: str, manifest_path=None,
                             history: list | None = None, queries_shown: int = 8, top_k: int = 10,
                             forensic=None, files: Mapping[str, str] | None = None) -> Path:
    """metrics.json, metrics.md, cmc.png, ranked_list.png, (training_curves.png), report.html.

    With ``forensic`` (a ``handclip.evaluate.forensic.ForensicResult``) also the verification, open-set
    and likelihood-ratio tables and det.png, fnir_fpir.png, tippett.png, lr_calibration.png. ``files``: the
    files it was computed from with their SHA-256 (``evaluate.workflow.provenance``), in metrics.json
    (``files``) and the page.

    Everything is rendered into a staging folder first and moved into ``out_dir`` only when all of it
    succeeded, so a failed evaluation leaves no partial report.
    """
    out_dir = Path(out_dir)
    stage, created = _open_staging(out_dir)
    done = False
    try:
        summary = {"title": title, "model": label, "manifest": str(manifest_path) if manifest_path else None,
                   "files": dict(files or {}), **result.as_dict()}
        if forensic is not None:
            summary["forensic"] = forensic.as_dict()
        atomic_write_json(stage / "metrics.json", json.loads(json.dumps(summary, default=float)))
        table, note = _runs_table(result)
        forensic_md, forensic_tables, forensic_images = "", {}, []
        sections = {"Notes": note}
        if forensic is not None:
            from .forensic_report import notes_text, render_forensic

            forensic_md, forensic_tables, forensic_images = render_forensic(
                forensic, stage, title.removeprefix("Evaluation on "))
            sections["Forensic figures: how they are computed"] = notes_text(forensic)
        atomic_write_text(stage / "metrics.md", f"# {title}\n\nModel: {label}\n\n{table}\n{note}\n"
                          + (f"\n{forensic_md}" if forensic_md else ""))
        images = _retrieval_pictures(result, stage, title, label, history, queries_shown, top_k) + forensic_images
        manifest_text = f"; manifest {manifest_path}" if manifest_path else ""
        html_report(stage / "report.html", title, table, images, sections=sections, tables=forensic_tables, files=files,
                    subtitle=f"Model: {label}{manifest_text}; {describe_options(result.options)}; "
                             f"{result.num_images_encoded} images encoded once, {result.feature_dim}-d features")
        _publish(stage, out_dir)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            _remove_empty(created)
    return out_dir
