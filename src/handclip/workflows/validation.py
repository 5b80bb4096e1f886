"""``handclip validate`` with its audit record: the validation (``validate.workflow``) and, with ``index``, a
``validate`` record in that gallery's audit log, written through the examiner session (``gallery.session``) as
every enrolment and search is. The record holds the SHA-256 of the model, calibration, manifest and plan, of
every report file written, and the decision, so the log shows which validation a laboratory relied on.
"""

from __future__ import annotations

from pathlib import Path

from ..validate.workflow import ValidationResult, validate


def validation_summary(result: ValidationResult, out) -> dict:
    """What the audit record keeps of a validation: its input and report files with their SHA-256, the
    decision and the populations."""
    from ..atomic import sha256_file

    out = Path(out)
    reports = ["report.json", "report.html", "report.pdf", *dict.fromkeys(result.files.get("graphs", {}).values())]
    files = {**result.hashes, **{f"report:{name}": {"path": str(out / name), "sha256": sha256_file(out / name)}
                                 for name in reports}}
    assessed = [row for row in result.matrix if row.passed is not None]
    decision = {"passed": result.passed, "criteria_assessed": len(assessed),
                "criteria_met": sum(bool(row.passed) for row in assessed),
                "failed": [f"{row.characteristic}: {row.metric} {row.criterion} ({row.condition})"
                           for row in assessed if not row.passed],
                "not_assessed": sum(row.passed is None for row in result.matrix)}
    return {"files": files, "decision": decision,
            "population": {"plan": result.plan.population, "calibration_and_validation": result.populations}}


def validate_and_record(checkpoint, calibration, manifest, criteria, out, *, index=None, examiner: str | None = None,
                        arguments: dict | None = None, **options) -> ValidationResult:
    """``validate.workflow.validate`` (``options``: splits, device, batch_size, skip_bad, progress); with
    ``index``, its record appended to that gallery's audit log (``result.audit``). The gallery is checked
    before the validation runs, so a wrong folder fails at once rather than after the encoding."""
    from ..gallery.reader import GalleryReader
    from ..gallery.session import ExaminerSession

    session = None
    if index is not None:
        GalleryReader.open(index)  # GalleryError naming what the folder lacks
        session = ExaminerSession.open(index, with_model=False, examiner=examiner)
    result = validate(checkpoint, calibration, manifest, criteria, out, **options)
    if session is not None:
        result.audit = session.record_validation(validation_summary(result, out), Path(out).resolve(),
                                                 arguments=arguments)
    return result


__all__ = ["validate_and_record", "validation_summary"]
