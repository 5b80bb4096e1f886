"""One evaluation as ``handclip evaluate`` runs it: a model (a trained checkpoint, or a backbone with its
weights for the zero-shot baseline) on a manifest's Monte Carlo runs, with the forensic figures
(verification, open-set identification, cross-calibrated likelihood ratios; docs/method.md), written to
a report folder (metrics.json/.md, the pictures and report.html).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import open_clip

from ..atomic import sha256_file
from ..config import EvalConfig
from ..config_base import IntervalConfig
from ..data.manifest import Manifest
from ..errors import DataError, HandCLIPWarning
from ..forensic.calibration import ScoreCalibration
from ..forensic.calibration_checks import record_names, warn_in_sample
from ..model.inference import Encoder
from .forensic import ForensicResult, forensic_evaluation
from .metrics import METRIC_KEYS
from .protocol import EvalResult, evaluate_manifest
from .references import subset_label
from .report import check_output_folder, write_evaluation_outputs


@dataclass
class EvaluationReport:
    """What ``evaluate_and_report`` measured and where it wrote the report."""

    result: EvalResult
    forensic: ForensicResult | None
    folder: Path
    label: str
    manifest: str
    inference: str = ""  # how the features were computed (Encoder.describe_inference)

    def lines(self) -> list[str]:
        """The figures for a terminal: CMC/mAP, then EER, FNMR@FMR, FNIR@FPIR, Cllr (the report has the rest),
        and how the features were computed."""
        agg = self.result.aggregate
        lines = [f"{self.label} on {self.manifest}: {len(self.result.per_run)} run(s), "
                 f"{self.result.num_images_encoded} images encoded"]
        lines += [f"  {key:>6}: {100 * agg[key]['mean']:6.2f} ± {100 * agg[key]['std']:.2f}" for key in METRIC_KEYS]
        if self.forensic is not None:
            lines += _forensic_lines(self.forensic)
        if self.inference:
            lines.append(self.inference)
        lines.append(f"report: {self.folder / 'report.html'}")
        return lines


def _forensic_lines(forensic: ForensicResult) -> list[str]:
    agg = forensic.aggregate

    def rate(key: str) -> str:
        entry = agg.get(key)
        return "n/a" if entry is None else f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"

    lines = [f"  EER: {rate('eer')}  FNMR@FMR=0.01: {rate('fnmr@fmr=0.01')}  FNMR@FMR=0.001: {rate('fnmr@fmr=0.001')}",
             f"  FNIR@FPIR=0.1: {rate('fnir@fpir=0.1')}  FNIR@FPIR=0.01: {rate('fnir@fpir=0.01')}  "
             f"FNIR@FPIR=0.003: {rate('fnir@fpir=0.003')}"]
    if agg.get("cllr") is not None:
        lines.append(f"  Cllr: {agg['cllr']['mean']:.3f} ± {agg['cllr']['std']:.3f}  Cllr_min: "
                     f"{agg['cllr_min']['mean']:.3f}  Cllr_cal: {agg['cllr_cal']['mean']:.3f}  log10 LR from "
                     f"{agg['log10_lr_min']['mean']:.2f} to {agg['log10_lr_max']['mean']:.2f}")
    if agg.get("stored_cllr") is not None:
        lines.append(f"  stored calibration: Cllr {agg['stored_cllr']['mean']:.3f} ± {agg['stored_cllr']['std']:.3f}  "
                     f"Cllr_cal {agg['stored_cllr_cal']['mean']:.3f}")
    if forensic.intervals:
        shown = ", ".join(f"{key} {_interval_text(entry, key != 'cllr')}" for key, entry in forensic.intervals.items())
        lines.append(f"  {100 * forensic.interval_level:g}% identity-bootstrap intervals: {shown}")
    lines += [f"  note: {note}" for note in forensic.notes]
    return lines


def _interval_text(entry: dict, percent: bool) -> str:
    scale, digits = (100.0, 2) if percent else (1.0, 3)
    if entry["low"] is None:
        return "n/a"
    text = f"[{scale * entry['low']:.{digits}f}, {scale * entry['high']:.{digits}f}]"
    return text if entry["supported"] else text + " (too few people)"


def evaluation_encoder(checkpoint=None, backbone: str | None = None, weights=None,
                       image_size: Sequence[int] | None = None, allow_unsafe_weights: bool = False,
                       device: str = "auto", precision: str = "auto", engine: str = "torch") -> Encoder:
    """A trained checkpoint, or a backbone with its (pretrained or random) weights for the zero-shot baseline,
    computing its features at ``precision`` with ``engine`` (``Encoder.computed_with``)."""
    if checkpoint is not None and backbone is not None:
        raise DataError("give either a checkpoint or a backbone for a zero-shot evaluation, not both")
    if checkpoint is not None:
        if weights is not None or image_size is not None:
            raise DataError("weights and image size are for a zero-shot backbone; a checkpoint brings its own")
        return Encoder.from_checkpoint(checkpoint, device=device, precision=precision, engine=engine)
    if backbone is None:
        raise DataError("nothing to evaluate: give --checkpoint, or --backbone (with --weights) for zero-shot")
    if not weights:
        if open_clip.list_pretrained_tags_by_model(backbone):
            warnings.warn(f"--weights is not given: zero-shot {backbone} is evaluated with random weights, although "
                          f"published ones exist (give a local file: --weights /path/to/{backbone}.pt)",
                          HandCLIPWarning, stacklevel=2)
    return Encoder.zero_shot(backbone, weights, image_size, allow_unsafe_weights, device=device, precision=precision,
                             engine=engine)


def provenance(manifest_path, checkpoint=None, weights=None, calibration=None) -> dict:
    """The files an evaluation was computed from, each with its SHA-256 (metrics.json and report.html)."""
    files = {"manifest": manifest_path, "checkpoint": checkpoint, "calibration": calibration}
    if weights and Path(weights).is_file():
        files["weights"] = weights
    return {f"{name}{suffix}": value for name, path in files.items() if path
            for suffix, value in (("", str(Path(path).resolve())), ("_sha256", sha256_file(path)))}


def default_report_folder(manifest_path, checkpoint=None) -> Path:
    """``eval-<manifest name>`` beside the checkpoint, or ``eval-zeroshot-<manifest name>`` here."""
    if checkpoint:
        return Path(checkpoint).parent / f"eval-{Path(manifest_path).stem}"
    return Path(f"eval-zeroshot-{Path(manifest_path).stem}")


def training_history(checkpoint) -> list | None:
    """The run's metrics.jsonl beside ``checkpoint`` (for the training-curves picture), if there is one."""
    if checkpoint is None:
        return None
    log = Path(checkpoint).parent / "metrics.jsonl"
    if not log.is_file():
        return None
    history = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return history or None


def _read_manifest(manifest_path, allow_id_overlap: bool, require_distractors: bool) -> Manifest:
    manifest = Manifest.read(manifest_path)
    manifest.check_identity_overlap(allow_id_overlap, f"manifest {manifest_path}", "pass --allow-id-overlap")
    if require_distractors and not any(r.is_distractor for r in manifest.records):
        raise DataError(f"{manifest_path} has no distractor gallery; prepare it with --gallery-all")
    return manifest


def evaluate_and_report(manifest_path: str | os.PathLike, out: str | os.PathLike | None = None, *, checkpoint=None,
                        backbone: str | None = None, weights=None, image_size: Sequence[int] | None = None,
                        allow_unsafe_weights: bool = False, eval_cfg: EvalConfig | None = None, runs="all",
                        distractors: bool = True, require_distractors: bool = False, allow_id_overlap: bool = False,
                        forensic: bool = True, calibration_method: str = "logit", calibration_folds: int = 2,
                        calibration=None, queries_shown: int = 8, top_k: int = 10, device: str = "auto",
                        progress: bool = False, skip_bad: bool = False, query_aspect: str | None = None,
                        gallery_aspect: str | None = None, mirror_query: bool = False, precision: str = "auto",
                        engine: str = "torch", intervals: IntervalConfig | None = None) -> EvaluationReport:
    """Evaluate a checkpoint (or, with ``backbone``, a zero-shot backbone) on ``manifest_path``'s Monte Carlo
    runs and write the report folder ``out`` (default: ``default_report_folder``); what ``handclip
    evaluate`` runs.

    ``runs``: "all" or run indices. ``distractors=False`` drops the manifest's distractor gallery;
    ``require_distractors`` refuses a manifest without one. ``forensic=False``: CMC and mAP only.
    ``calibration``: a stored calibration file of the same model, judged on every run as well.
    ``skip_bad``: leave unusable images out, each named, instead of stopping (``evaluate_manifest``).
    ``precision`` and ``engine``: how the features are computed (``Encoder.computed_with``). ``intervals``:
    the identity-level bootstrap of EER, FNMR@FMR, FNIR@FPIR and Cllr (default ``IntervalConfig()``; 0
    replicates for none). The
    output folder is checked before any image is encoded, and written only when all of it succeeded; the
    report names the manifest, checkpoint, weights and calibration files with their SHA-256.
    ``query_aspect``, ``gallery_aspect``, ``mirror_query``: one pair of hand aspects (``evaluate_manifest``).
    """
    manifest = _read_manifest(manifest_path, allow_id_overlap, require_distractors)
    folder = Path(out) if out else default_report_folder(manifest_path, checkpoint)
    check_output_folder(folder)  # before minutes of encoding, not after
    encoder = evaluation_encoder(checkpoint, backbone, weights, image_size, allow_unsafe_weights, device, precision,
                                 engine)
    stored = None
    if calibration:
        if not forensic:
            raise DataError("--calibration is judged with the forensic figures; drop --no-forensic")
        stored = ScoreCalibration.load(calibration)
        stored.check_model(encoder.fingerprint())
        scored = [r for r in manifest.records if r.split in ("query", "gallery")]
        warn_in_sample(stored, record_names(scored), f"manifest {manifest_path}")
    result = evaluate_manifest(encoder, manifest, eval_cfg, runs=runs, distractors=distractors, progress=progress,
                               keep_distances=True, skip_bad=skip_bad, query_aspect=query_aspect,
                               gallery_aspect=gallery_aspect, mirror_query=mirror_query)
    subsets = sorted({subset_label(r.dataset, r.subset) for r in manifest.records if not r.is_distractor})
    # The manifest's own name, as written (underscores and all), so the report says which file it was.
    title = f"Evaluation on {', '.join(subsets)} ({Path(manifest_path).name})"
    if "query_aspect" in result.options:
        options = result.options
        title += (f": queries {options['query_aspect']}{' (mirrored)' if options['mirror_query'] else ''} "
                  f"against gallery {options['gallery_aspect']}")
    files = provenance(manifest_path, checkpoint, weights, calibration)
    figures = None
    if forensic:
        figures = forensic_evaluation(result, method=calibration_method, folds=calibration_folds,
                                      progress=progress, calibration=stored,
                                      intervals=IntervalConfig() if intervals is None else intervals)
    write_evaluation_outputs(result, folder, title, encoder.label, manifest_path, training_history(checkpoint),
                             queries_shown=queries_shown, top_k=top_k, forensic=figures, files=files)
    return EvaluationReport(result, figures, folder, encoder.label, str(manifest_path), encoder.describe_inference())


__all__ = ["EvaluationReport", "evaluate_and_report", "evaluation_encoder", "default_report_folder", "provenance",
           "training_history"]
