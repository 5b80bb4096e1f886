"""The validation report: report.json (everything measured), report.html (one self-contained page) and
report.pdf (the same content, from the project's PDF building blocks in ``pdfdoc``), with the graphs.

Every figure states what it means, its 95% identity-level bootstrap interval, and what it was computed from:
the SHA-256 of the model, calibration, manifest and plan files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import atomic_write_text
from ..htmlpage import data_uri, escape, html_page

CHARACTERISTIC_NAMES = {"accuracy": "accuracy", "discriminating_power": "discriminating power",
                        "calibration": "calibration", "robustness": "robustness", "coherence": "coherence",
                        "generalisation": "generalisation"}


def figure_text(result: dict | None) -> str:
    """'0.123 [0.101, 0.150]' (estimate and interval), or 'not computed'."""
    if result is None:
        return "not assessed"
    if result["estimate"] is None:
        return "not computed"
    interval = ("" if result["low"] is None else f" [{result['low']:.3g}, {result['high']:.3g}]")
    return f"{result['estimate']:.3g}{interval}"


def verdict(passed) -> str:
    return {True: "pass", False: "FAIL", None: "not assessed"}[passed]


def summary_lines(result) -> list[str]:
    """The plain-language summary: what was validated, for which population, the decision, what was not."""
    plan, counts, rates = result.plan, result.counts, result.misleading
    assessed = [row for row in result.matrix if row.passed is not None]
    met = sum(row.passed for row in assessed)
    skipped = sorted({CHARACTERISTIC_NAMES[row.characteristic] for row in result.matrix if row.passed is None})
    decision = ("meets every assessed criterion of the plan" if result.passed and assessed
                else f"does NOT meet {len(assessed) - met} of the {len(assessed)} assessed criteria of the plan")
    lines = [
        f"What was validated: the HandCLIP model and calibration named below, giving likelihood ratios for "
        f"'{plan.hp}' against '{plan.hd}', on {counts['identities_used']} people ({counts['images_used']} images) "
        f"whom the calibration was not fitted on.",
        f"For which population: {plan.population}. The validation says nothing about other populations.",
        *([f"Calibration and validation populations: {result.populations}."] if result.populations else []),
        f"Decision: the method {decision} ({met} of {len(assessed)} met; each figure with its "
        f"{plan.bootstrap.level:.0%} identity-level bootstrap interval; decided on the "
        f"{'whole interval' if plan.decide_on == 'interval' else 'figure on all the data'}).",
        f"Misleading evidence: {rates['counts']['rmep']} of {rates['n_mated']} same-person comparisons gave LR < 1 "
        f"({rates['rmep']:.2%}), {rates['counts']['rmep_strong']} gave LR < 1/100; {rates['counts']['rmed']} of "
        f"{rates['n_nonmated']} different-person comparisons gave LR > 1 ({rates['rmed']:.2%}), "
        f"{rates['counts']['rmed_strong']} gave LR > 100.",
        f"Images: {counts['failed_to_acquire']} of {counts['images']} could not be read (failure to acquire); "
        f"{counts['failed_to_enrol']} of {counts['identities']} people had fewer than two usable images "
        f"(failure to enrol) and were left out.",
    ]
    if skipped:
        lines.append(f"Not validated by this run: {', '.join(skipped)} (the matrix says why for each row), and any "
                     f"population, camera or image quality other than the one named.")
    else:
        lines.append("Not validated by this run: any population, camera or image quality other than the one named.")
    return lines


def report_data(result) -> dict:
    """Everything the report shows, as JSON-ready data."""
    return {"format": "handclip-validation-report", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "passed": result.passed, "summary": summary_lines(result), "plan": result.plan.model_dump(),
            "files": result.hashes, "counts": result.counts, "misleading_evidence": result.misleading,
            "bounds_log10_lr": result.bounds, "matrix": [row.as_dict() for row in result.matrix],
            "graphs": result.files.get("graphs", {})}


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 6px;font-size:.9em;"
        "text-align:left;vertical-align:top}th{background:#e8eef6}.pass{background:#d9f2d9}.fail{background:#f8d0d0}"
        ".na{background:#eee}code{font-size:.85em}img{max-width:100%;border:1px solid #ddd;margin:.3em 0}")


def _matrix_html(data: dict) -> str:
    head = ("<tr><th>characteristic</th><th>metric</th><th>graph</th><th>criterion</th><th>condition</th>"
            "<th>result [95% interval]</th><th>decision</th></tr>")
    rows = []
    for row in data["matrix"]:
        css = {True: "pass", False: "fail", None: "na"}[row["passed"]]
        rows.append(f"<tr><td>{escape(CHARACTERISTIC_NAMES[row['characteristic']])}</td>"
                    f"<td><b>{escape(row['metric'])}</b><br><small>{escape(row['meaning'])}</small></td>"
                    f"<td>{escape(row['graph'])}</td><td>{escape(row['criterion'])}</td><td>{escape(row['condition'])}</td>"
                    f"<td>{escape(figure_text(row['result']))}</td><td class=\"{css}\">{escape(verdict(row['passed']))}"
                    f"{'<br><small>' + escape(row['note']) + '</small>' if row['note'] else ''}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def write_json(data: dict, out: Path) -> Path:
    path = out / "report.json"
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path


def write_html(data: dict, out: Path) -> Path:
    files = "".join(f"<tr><th>{escape(name)}</th><td>{escape(item['path'])}</td><td><code>{escape(item['sha256'])}"
                    f"</code></td></tr>" for name, item in data["files"].items())
    counts = "".join(f"<tr><th>{escape(k.replace('_', ' '))}</th><td>{escape(v)}</td></tr>" for k, v in data["counts"].items())
    graphs = "".join(f"<h3>{escape(name.replace('_', ' '))}</h3><img alt=\"{escape(name)}\" src=\""
                     f"{data_uri((out / file).read_bytes(), 'image/png')}\">"
                     for name, file in dict.fromkeys(data["graphs"].items()) if name != "pav")
    body = (f"<h1>HandCLIP validation report</h1><p>{escape(data['plan']['title'])}</p>"
            "<h2>Summary</h2>" + "".join(f"<p>{escape(line)}</p>" for line in data["summary"]) +
            "<h2>Validation matrix</h2>" + _matrix_html(data) +
            "<h2>Computed from</h2><table>" + files + "</table><h2>Counts</h2><table>" + counts + "</table>"
            f"<p>LR bounds (log10): ELUB of the calibration {data['bounds_log10_lr']['elub']}, invariance-verification "
            f"bounds of the validation data {[round(v, 3) for v in data['bounds_log10_lr']['invariance']]}.</p>"
            "<h2>Graphs</h2>" + graphs)
    path = out / "report.html"
    atomic_write_text(path, html_page("HandCLIP validation report", body, _CSS))
    return path


__all__ = ["figure_text", "report_data", "summary_lines", "verdict", "write_html", "write_json"]
