"""``handclip validate``: a checkpoint and its calibration, tested on a validation set against a plan.

The steps, in order (docs/method.md, "Validating the LR method"): read the plan and the calibration; refuse a
validation set that shares people with the calibration (by the SHA-256 of each identity the calibration file
lists); check every image (failures to acquire) and every person (failures to enrol: fewer than two usable
images); encode with the project's one ``Encoder``; score every same-person and (a uniform sample of the)
different-person comparisons; turn scores into LRs with the calibration; compute each criterion's figure with
its identity-level bootstrap interval; write the report (``validate.report``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import HandCLIPError
from ..forensic.bootstrap import identity_bootstrap
from ..forensic.calibration_checks import identity_sha256s, people_in_calibration, record_names
from ..forensic.validation_metrics import METRICS, PairSet, make_pair_set
from .criteria import ASSESSED, PlanRow, ValidationPlan, read_plan

# Different-person comparisons beyond this count are sampled uniformly (with the seed of the plan's bootstrap):
# they estimate the different-person distribution as well as all of them, and keep the bootstrap quick.
MAX_NONMATED = 10_000
MIN_CONDITION_IDENTITIES = 3


class ValidationError(HandCLIPError):
    """The validation cannot be run as asked (overlapping people, too few people, no identities listed)."""


@dataclass
class MatrixRow:
    """One line of the validation matrix."""

    characteristic: str
    metric: str
    meaning: str
    graph: str
    criterion: str
    condition: str
    result: dict | None  # Interval.as_dict(), or None when not assessed
    passed: bool | None
    note: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ValidationResult:
    """What ``validate`` measured and decided; ``report`` writes it out."""

    plan: ValidationPlan
    matrix: list[MatrixRow]
    pairs: PairSet
    hashes: dict
    counts: dict
    bounds: dict
    misleading: dict
    files: dict = field(default_factory=dict)
    populations: str = ""  # which population the calibration came from and which one validated it
    audit: object = None  # the gallery audit record (forensic.audit.AuditRef) when one was written

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.matrix if row.passed is not None)


def identity_hashes(record) -> set[str]:
    """The SHA-256 under which a calibration may list this record's person: its id (a manifest's calibration)
    and its original name (a folder's calibration)."""
    return identity_sha256s(record_names([record])[record.pid])


def check_disjoint(records: Sequence, calibration, source: str) -> None:
    """ValidationError, with the count, when any person of ``records`` is one the calibration was fitted on."""
    people = record_names(records)
    shared = people_in_calibration(calibration, people)
    if shared is None:
        raise ValidationError(f"{calibration.summary.get('path', 'the calibration')} lists no identities it was "
                              f"fitted on; recalibrate with this version of handclip so people can be kept apart")
    if shared:
        raise ValidationError(f"{shared} of the {len(people)} identities of {source} were in the calibration; a "
                              f"validation needs people the calibration never saw")


def _acquire(records: list, skip_bad: bool) -> tuple[list, dict]:
    """The usable records and the failure counts: images the loader refuses (failure to acquire) and people
    left with fewer than two usable images (failure to enrol: no same-person comparison can be made)."""
    from ..data.images import check_images_exist, unusable_images, warn_left_out

    check_images_exist(records)
    problems = unusable_images([r.path for r in records], skip_bad)
    if problems:
        warn_left_out(problems, "the validation")
    bad = {p.path for p in problems}
    usable = [r for r in records if r.path not in bad]
    per_person = Counter(r.pid for r in usable)
    enrolled = [r for r in usable if per_person[r.pid] >= 2]
    counts = {"images": len(records), "failed_to_acquire": len(problems),
              "identities": len({r.pid for r in records}),
              "failed_to_enrol": len({r.pid for r in records}) - len({r.pid for r in enrolled}),
              "images_used": len(enrolled), "identities_used": len({r.pid for r in enrolled})}
    if counts["identities_used"] < 2 * MIN_CONDITION_IDENTITIES:
        raise ValidationError(f"the validation set has {counts['identities_used']} people with two or more usable "
                              f"images; a validation needs at least {2 * MIN_CONDITION_IDENTITIES}")
    return enrolled, counts


def score_pairs(features: np.ndarray, records: list, calibration, kind: str, seed: int) -> tuple[PairSet, np.ndarray]:
    """Every same-person comparison and up to MAX_NONMATED different-person ones, as a PairSet of calibrated
    LRs, and for each pair the condition both its sides share ('' when they differ)."""
    from ..forensic.crosscal import identity_pairs, image_pairs

    pids = np.array([r.pid for r in records])
    conditions = np.array([str(r.subset or "") for r in records])
    if kind == "image":
        first_index, second_index = np.triu_indices(len(records), k=1)
        scores, labels, first, second = image_pairs(features, pids)
        condition = np.where(conditions[first_index] == conditions[second_index], conditions[first_index], "")
    else:
        scores, labels, first, second = identity_pairs(features, pids)
        person_condition = {pid: c for pid, c in zip(pids.tolist(), conditions.tolist())}
        condition = np.array([person_condition[int(p)] for p in second])
    nonmated = np.flatnonzero(labels == 0)
    if nonmated.size > MAX_NONMATED:
        keep = np.random.default_rng(seed).choice(nonmated, MAX_NONMATED, replace=False)
        chosen = np.sort(np.concatenate([np.flatnonzero(labels == 1), keep]))
        scores, labels, first, second, condition = (a[chosen] for a in (scores, labels, first, second, condition))
    llrs = calibration.log10_lr(scores, kind)
    return make_pair_set(scores, llrs, labels, first, second), condition


def _decide(row: PlanRow, interval: dict, decide_on: str) -> bool:
    if decide_on == "interval":
        values = [interval["low"], interval["high"]]
        return all(row.criterion.met(v) for v in values)
    return row.criterion.met(interval["estimate"])


def _row(row: PlanRow, plan: ValidationPlan, interval: dict, condition: str) -> MatrixRow:
    return MatrixRow(row.characteristic, row.metric, METRICS[row.metric].meaning, row.graph, str(row.criterion),
                     condition, interval, _decide(row, interval, plan.decide_on), row.note)


def _intervals(plan: ValidationPlan, pairs: PairSet, metrics: set[str]) -> dict[str, dict]:
    """Each metric with its bootstrap interval, all from the same replicates (figures they share, such as Cllr
    and Cllr_min, are computed once per replicate)."""
    boot = plan.bootstrap
    statistics = {name: METRICS[name].compute for name in sorted(metrics)}
    found = identity_bootstrap(pairs, statistics, boot.replicates, boot.level, boot.seed)
    return {name: interval.as_dict() for name, interval in found.items()}


def _not_assessed(row: PlanRow, condition: str, why: str) -> MatrixRow:
    return MatrixRow(row.characteristic, row.metric, METRICS[row.metric].meaning, row.graph, str(row.criterion),
                     condition, None, None, why)


def _coherence_row(row: PlanRow, plan: ValidationPlan, pairs: PairSet) -> MatrixRow:
    """The three calibration methods compared on the validation pairs (``validate.coherence``)."""
    from ..forensic.calibration_checks import CalibrationError
    from .coherence import coherence

    boot = plan.bootstrap
    try:
        interval, note = coherence(pairs, row.metric, boot.replicates, boot.level, boot.seed)
    except CalibrationError as exc:
        return _not_assessed(row, "methods compared", f"the methods could not be fitted on the validation pairs: {exc}")
    found = _row(row, plan, interval, "methods compared")
    found.meaning, found.note = f"largest difference between the methods of: {found.meaning}", note
    return found


def validation_matrix(plan: ValidationPlan, pairs: PairSet, conditions: np.ndarray,
                      generalisation: str = "") -> list[MatrixRow]:
    """Each row of the plan measured: the figure, its bootstrap interval and pass/fail; a robustness row once
    per condition (pairs whose two sides share it); a coherence row as the three calibration methods' largest
    difference; a generalisation row as the stored calibration on the validation population, noting the two
    populations (``generalisation``)."""
    overall = _intervals(plan, pairs, {r.metric for r in plan.criteria if r.characteristic in ASSESSED
                                       and r.characteristic not in ("robustness", "coherence")})
    robust = {r.metric for r in plan.criteria if r.characteristic == "robustness"}
    per_condition = {}
    for condition in sorted(set(conditions.tolist()) - {""}) if robust else []:
        subset = pairs.take(np.flatnonzero(conditions == condition))
        people = len(set(subset.first.tolist()) | set(subset.second.tolist()))
        if subset.n_mated == 0 or subset.n_nonmated == 0 or people < MIN_CONDITION_IDENTITIES:
            per_condition[condition] = f"too few comparisons in this condition ({people} people)"
        else:
            per_condition[condition] = _intervals(plan, subset, robust)
    matrix = []
    for row in plan.criteria:
        if row.characteristic == "coherence":
            matrix.append(_coherence_row(row, plan, pairs))
        elif row.characteristic == "generalisation":
            found = _row(row, plan, overall[row.metric], "calibration -> validation")
            found.note = "; ".join(filter(None, ["casework-condition check (the two populations: see the summary)"
                                                 if generalisation else "casework-condition check", row.note]))
            matrix.append(found)
        elif row.characteristic != "robustness":
            matrix.append(_row(row, plan, overall[row.metric], "all"))
        else:
            for condition, found in per_condition.items():
                matrix.append(_not_assessed(row, condition, found) if isinstance(found, str)
                              else _row(row, plan, found[row.metric], condition))
    return matrix


def file_sha256s(**paths) -> dict:
    from ..atomic import sha256_file

    return {name: {"path": str(Path(path)), "sha256": sha256_file(path)} for name, path in paths.items()}


def write_report(result: ValidationResult, out) -> dict:
    """Graphs, report.json, report.html and report.pdf in the folder ``out``; returns their names."""
    from .plots import draw_graphs
    from .report import report_data, write_html, write_json
    from .report_pdf import write_pdf_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.files = {"graphs": draw_graphs(result.pairs, result.bounds, out, result.plan.bootstrap.seed)}
    data = report_data(result)
    write_json(data, out)
    write_html(data, out)
    write_pdf_report(data, out)
    return {**result.files, "json": "report.json", "html": "report.html", "pdf": "report.pdf"}


def validate(checkpoint, calibration, manifest, criteria, out, splits: Sequence[str] = ("query", "gallery"),
             device=None, batch_size: int = 128, skip_bad: bool = False, progress: bool = False) -> ValidationResult:
    """Validate ``checkpoint`` with ``calibration`` on the people of ``manifest`` (its ``splits``) against the plan
    ``criteria``; write report.json, report.html, report.pdf and the graphs into the folder ``out``."""
    from ..data.manifest import Manifest
    from ..forensic.calibrate import calibration_records
    from ..forensic.calibration import ScoreCalibration
    from ..forensic.validation_metrics import invariance_bounds, misleading_rates
    from ..model.inference import load_encoder
    from .coherence import generalisation_note

    plan = read_plan(criteria)
    scored = ScoreCalibration.load(calibration)
    records = calibration_records(Manifest.read(manifest), splits, source=f"manifest {manifest}")
    check_disjoint(records, scored, f"manifest {manifest}")
    records, counts = _acquire(records, skip_bad)
    encoder = load_encoder(checkpoint, device=device)
    scored.check_model(encoder.fingerprint())
    features = encoder.features(records, batch_size=batch_size, flip=False, progress=progress)
    pairs, conditions = score_pairs(features, records, scored, plan.score_kind, plan.bootstrap.seed)
    counts.update({"n_mated": pairs.n_mated, "n_nonmated": pairs.n_nonmated})
    hashes = file_sha256s(model=checkpoint, calibration=calibration, manifest=manifest, criteria=criteria)
    populations = generalisation_note(scored.summary, manifest, hashes["manifest"]["sha256"], counts)
    matrix = validation_matrix(plan, pairs, conditions, populations)
    elub = scored.bounds(plan.score_kind)
    bounds = {"elub": list(elub), "invariance": list(invariance_bounds(pairs))}
    result = ValidationResult(plan, matrix, pairs, hashes, counts, bounds, misleading_rates(pairs),
                              populations=populations.removeprefix("casework-condition check: "))
    result.files = write_report(result, out)
    return result


__all__ = ["MAX_NONMATED", "MatrixRow", "ValidationError", "ValidationResult", "check_disjoint", "identity_hashes",
           "score_pairs", "validate", "validation_matrix", "write_report"]
