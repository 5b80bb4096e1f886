"""The aspect matrix as files: aspect_matrix.json, aspect_matrix.md, a heat map (aspect_matrix.png) and
report.html (docs/method.md, "Aspects of a hand")."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..aspects import ASPECT_NAMES
from ..atomic import atomic_write_json, atomic_write_text
from ..data.manifest import Manifest
from .aspect_matrix import MATRIX_METRICS, AspectMatrix, aspect_matrix
from .plots import _save_figure
from .report import check_output_folder, html_report
from .workflow import default_report_folder, evaluation_encoder

_TITLES = {"rank1": "Rank-1 (%)", "mAP": "mAP (%)", "eer": "EER (%, lower is better)"}


def _value(cell: dict, metric: str) -> str:
    value = cell.get(metric)
    if value is None:
        return "n/a"
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"


def metric_table(matrix: AspectMatrix, metric: str) -> str:
    """One metric as a Markdown table: rows are the query aspect, columns the gallery aspect; a mirrored
    cell (query flipped left-right) is marked with *."""
    lines = ["| query \\ gallery | " + " | ".join(matrix.aspects) + " |", "|---|" + "---:|" * len(matrix.aspects)]
    for qa in matrix.aspects:
        cells = [_value(matrix.cells[(qa, ga)], metric) + (" *" if matrix.cells[(qa, ga)]["mirrored"] else "")
                 for ga in matrix.aspects]
        lines.append(f"| {qa} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matrix_markdown(matrix: AspectMatrix) -> str:
    """Every metric's table under its own heading."""
    runs = len(matrix.options.get("runs", []))
    return "\n".join(f"**{_TITLES[m]}**, mean ± std over {runs} run(s)\n\n{metric_table(matrix, m)}"
                     for m in MATRIX_METRICS)


def plot_aspect_matrix(matrix: AspectMatrix, out_png: str | os.PathLike, title: str) -> Path:
    """Three heat maps side by side (rank-1, mAP, EER), query aspect down, gallery aspect across."""
    names = [ASPECT_NAMES[a] for a in matrix.aspects]
    fig = Figure(figsize=(4.4 * len(MATRIX_METRICS) + 1.2, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(MATRIX_METRICS), gridspec_kw={"wspace": 0.12})
    for k, (ax, metric) in enumerate(zip(axes, MATRIX_METRICS)):
        values = 100 * matrix.means(metric)
        good_high = metric != "eer"
        image = ax.imshow(np.nan_to_num(values, nan=0.0 if good_high else 100.0), vmin=0, vmax=100,
                          cmap="viridis" if good_high else "viridis_r")
        for i, qa in enumerate(matrix.aspects):
            for j, ga in enumerate(matrix.aspects):
                text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.1f}"
                text += "\nmirrored" if matrix.cells[(qa, ga)]["mirrored"] else ""
                shade = values[i, j] if good_high else 100 - values[i, j]
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="black" if not np.isnan(shade) and shade > 60 else "white")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names if k == 0 else [])
        ax.set_xlabel("gallery aspect")
        if k == 0:
            ax.set_ylabel("query aspect")
        ax.set_title(_TITLES[metric])
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    return _save_figure(fig, out_png)


@dataclass
class AspectMatrixReport:
    """What ``aspect_matrix_report`` measured and where it wrote the report."""

    matrix: AspectMatrix
    folder: Path
    label: str
    manifest: str

    def lines(self) -> list[str]:
        return [f"{self.label} on {self.manifest}: {len(self.matrix.options['runs'])} run(s)",
                matrix_markdown(self.matrix), f"report: {self.folder / 'report.html'}"]


def aspect_matrix_report(manifest_path, out=None, *, checkpoint=None, backbone: str | None = None, weights=None,
                         image_size=None, allow_unsafe_weights: bool = False, eval_cfg=None, runs="all",
                         allow_id_overlap: bool = False, mirror_query: bool = False, device: str = "auto",
                         progress: bool = False, skip_bad: bool = False, precision: str = "auto",
                         engine: str = "torch") -> AspectMatrixReport:
    """Every query aspect against every gallery aspect of ``manifest_path`` (``aspect_matrix``), written as
    tables and a heat map to ``out`` (default: ``default_report_folder``); what ``evaluate --aspect-matrix`` runs.
    ``precision`` and ``engine``: how the features are computed (``Encoder.computed_with``)."""
    manifest = Manifest.read(manifest_path)
    manifest.check_identity_overlap(allow_id_overlap, f"manifest {manifest_path}", "pass --allow-id-overlap")
    folder = Path(out) if out else default_report_folder(manifest_path, checkpoint)
    check_output_folder(folder)  # before minutes of encoding, not after
    encoder = evaluation_encoder(checkpoint, backbone, weights, image_size, allow_unsafe_weights, device, precision,
                                 engine)
    matrix = aspect_matrix(encoder, manifest, eval_cfg, runs=runs, mirror_query=mirror_query, progress=progress,
                           skip_bad=skip_bad)
    title = f"Aspect matrix{' (queries mirrored across sides)' if mirror_query else ''}"
    write_aspect_matrix_outputs(matrix, folder, title, encoder.label, manifest_path)
    return AspectMatrixReport(matrix, folder, encoder.label, str(manifest_path))


def write_aspect_matrix_outputs(matrix: AspectMatrix, out_dir, title: str, label: str, manifest_path=None) -> Path:
    """aspect_matrix.json, aspect_matrix.md, aspect_matrix.png and report.html in ``out_dir``."""
    out = Path(out_dir)
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"title": title, "model": label, "manifest": str(manifest_path) if manifest_path else None,
               **matrix.as_dict()}
    atomic_write_json(out / "aspect_matrix.json", json.loads(json.dumps(summary, default=float)))
    mirrored = matrix.options.get("mirror_query")
    note = ("Rows: the aspect of the query images; columns: the aspect of the gallery they are ranked against "
            "(each run's gallery of that aspect, one image per test identity). EER over every (query, gallery "
            "image) pair of the cell. " + ("Cells marked * / 'mirrored': the query was mirrored left-right, as its "
                                           "side differs from the gallery's. " if mirrored else
                                           "No query was mirrored. ")
            + f"{matrix.options.get('images_encoded')} images encoded.")
    table = matrix_markdown(matrix)
    atomic_write_text(out / "aspect_matrix.md", f"# {title}\n\nModel: {label}\n\n{table}\n{note}\n")
    plot_aspect_matrix(matrix, out / "aspect_matrix.png", title)
    html_report(out / "report.html", title, metric_table(matrix, MATRIX_METRICS[0]),
                [("Query aspect x gallery aspect: rank-1, mAP and EER (mean over the runs)", out / "aspect_matrix.png")],
                sections={"Notes": note}, subtitle=f"Model: {label}; manifest {manifest_path}; first table: "
                                                   f"{_TITLES[MATRIX_METRICS[0]]}",
                tables={_TITLES[m]: metric_table(matrix, m) for m in MATRIX_METRICS[1:]})
    return out


__all__ = ["AspectMatrixReport", "aspect_matrix_report", "matrix_markdown", "metric_table", "plot_aspect_matrix", "write_aspect_matrix_outputs"]
