"""report.pdf of a validation, laid out with the PDF building blocks every HandCLIP report shares (``pdfdoc``):
the summary, the validation matrix (pass green, fail red), the files it was computed from with their SHA-256,
the counts and bounds, then one graph per page half."""

from __future__ import annotations

from pathlib import Path

from .. import pdfdoc
from .report import CHARACTERISTIC_NAMES, figure_text, verdict

_COLOURS = {True: "#d9f2d9", False: "#f8d0d0", None: "#eeeeee"}


def _matrix(data: dict, styles: dict, fonts: dict):
    rows = [["characteristic", "metric", "graph", "criterion", "condition", "result [95% interval]", "decision"]]
    shading = []
    for number, row in enumerate(data["matrix"], start=1):
        rows.append([CHARACTERISTIC_NAMES[row["characteristic"]], row["metric"], row["graph"], row["criterion"],
                     pdfdoc.clean_text(row["condition"], fonts, 60), figure_text(row["result"]),
                     verdict(row["passed"]) + (f"\n{row['note']}" if row["note"] else "")])
        shading.append((6, number, _COLOURS[row["passed"]]))
    return pdfdoc.grid_table(rows, styles, [26, 29, 25, 18, 19, 32, 31], shading)


def _story(data: dict, out: Path, styles: dict, fonts: dict) -> list:
    from reportlab.lib.units import mm
    from reportlab.platypus import CondPageBreak, KeepTogether, Spacer

    width = pdfdoc.usable_width_mm()
    title = pdfdoc.clean_text(data["plan"]["title"], fonts)
    story = [pdfdoc.para("HandCLIP validation report", styles["title"]), pdfdoc.para(title, styles["body"]),
             pdfdoc.para("Summary", styles["h2"])]
    story += [pdfdoc.para(pdfdoc.clean_text(line, fonts, 1500), styles["body"]) for line in data["summary"]]
    story += [pdfdoc.para("Validation matrix", styles["h2"]), _matrix(data, styles, fonts),
              Spacer(1, 2 * mm), pdfdoc.para("Result: the figure on all the validation comparisons, and in brackets "
                                             "its 95% interval from a bootstrap that resamples people (never pairs).",
                                             styles["small"]),
              pdfdoc.para("Computed from", styles["h2"])]
    story.append(pdfdoc.key_values([(name, f"{pdfdoc.clean_text(item['path'], fonts)}\nSHA-256 {item['sha256']}", True)
                                    for name, item in data["files"].items()], styles, [28 * mm, (width - 28) * mm]))
    counts = [(key.replace("_", " "), str(value), False) for key, value in data["counts"].items()]
    bounds = data["bounds_log10_lr"]
    counts += [("ELUB (log10 LR)", f"{bounds['elub'][0]:.2f} to {bounds['elub'][1]:.2f} (the calibration's)", False),
               ("invariance bounds", f"{bounds['invariance'][0]:.2f} to {bounds['invariance'][1]:.2f} "
                                     "(the validation data's)", False)]
    story += [pdfdoc.para("Counts and bounds", styles["h2"]),
              pdfdoc.key_values(counts, styles, [40 * mm, (width - 40) * mm]), CondPageBreak(120 * mm),
              pdfdoc.para("Graphs", styles["h2"])]
    for name, file in dict.fromkeys(data["graphs"].items()):
        if name == "pav":  # drawn beside the ECE plot
            continue
        story.append(KeepTogether([pdfdoc.para(name.replace("_", " "), styles["h3"]), pdfdoc.figure(out / file, width, 110)]))
    return story


def write_pdf_report(data: dict, out: Path) -> Path:
    fonts = pdfdoc.register_fonts()
    styles = pdfdoc.styles(fonts)
    criteria = data["files"]["criteria"]["sha256"][:16]
    footer = pdfdoc.fitted_footer(lambda shown: f"HandCLIP validation report · plan {shown} · criteria SHA-256 "
                                                f"{criteria}…", pdfdoc.clean_text(data["plan"]["title"], fonts, 80),
                                  fonts["body"], pdfdoc.footer_width_pt())
    return pdfdoc.write_pdf(out / "report.pdf", _story(data, out, styles, fonts), footer, fonts,
                            title="HandCLIP validation report", subject="validation of the LR method")


__all__ = ["write_pdf_report"]
