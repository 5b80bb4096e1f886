"""The coherence and generalisation rows of a validation (docs/method.md, "Validating the LR method").

Coherence: do the three calibration methods (logistic, KDE, isotonic: ``forensic.calibration_checks.METHODS``)
tell the same story? ``validate`` holds one fitted calibration file, not the data it was fitted on, so each
method is fitted on the validation pairs themselves, cross-calibrated by identity (``forensic.crosscal``: a
comparison gets its LR from a map fitted on other people only), all three with the same folds, so they score
the same comparisons. The row's figure is the largest difference of the metric between two methods; its 95%
interval comes from the identity-level bootstrap with the same replicates for the three (so the difference is
taken replicate by replicate).

Generalisation: the stored calibration, fitted on one population (its manifest or folder of people, named by
its file and SHA-256), applied to the validation population (another manifest, other people): the casework
condition, where a calibration fitted beforehand meets people it never saw. The figure is the metric of the
calibration's LRs on the validation pairs; the row says which two populations were compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..forensic.bootstrap import bootstrap_values, percentile_interval
from ..forensic.calibration_checks import METHODS
from ..forensic.validation_metrics import METRICS, PairSet

COHERENCE_FOLDS = 2
# Metrics that PAV-invariant or score-only figures would make meaningless for coherence: the three methods are
# monotone maps of the same scores, so EER, AUC, FNMR and Cllr_min cannot differ between them.
SCORE_ONLY = ("eer", "auc", "fnmr@fmr=0.01", "fnmr@fmr=0.001", "cllr_min")


def method_pair_sets(pairs: PairSet, seed: int = 0) -> dict[str, PairSet]:
    """Each calibration method's cross-calibrated LRs (by identity, COHERENCE_FOLDS folds, the same folds for
    all) on the comparisons every method scored."""
    from ..forensic.crosscal import cross_calibrate

    found = {}
    for method in METHODS:
        crossed = cross_calibrate(pairs.scores, pairs.labels, pairs.first, pairs.second, n_folds=COHERENCE_FOLDS,
                                  method=method, seed=seed)
        chosen = pairs.take(crossed.index)
        found[method] = PairSet(chosen.scores, crossed.llrs, chosen.labels, chosen.first, chosen.second)
    return found


def coherence(pairs: PairSet, metric: str, replicates: int, level: float, seed: int) -> tuple[dict, str]:
    """(the largest difference of ``metric`` between two methods with its interval, the note saying what was
    compared)."""
    per_method = method_pair_sets(pairs, seed)
    statistic = METRICS[metric].compute
    values = np.stack([bootstrap_values(p, {metric: statistic}, replicates, seed)[metric] for p in per_method.values()])
    estimates = {method: float(statistic(p)) for method, p in per_method.items()}
    spread = values.max(axis=0) - values.min(axis=0)  # NaN where any method could not compute it
    interval = percentile_interval(max(estimates.values()) - min(estimates.values()), spread, level).as_dict()
    shown = ", ".join(f"{method} {value:.3g}" for method, value in estimates.items())
    n = len(next(iter(per_method.values())))
    note = (f"{shown}: each fitted on the validation pairs, cross-calibrated by identity ({COHERENCE_FOLDS} folds; "
            f"{n:,} comparisons), not on the calibration's data")
    return interval, note


def population(summary: dict) -> str:
    """The data a calibration was fitted on, in words: its source file or folder, SHA-256 and size."""
    if summary.get("images"):
        source = f"folder of people {Path(summary['images']).name} (listing SHA-256 {summary.get('images_sha256', '?')[:12]})"
    elif summary.get("manifest"):
        source = f"manifest {Path(summary['manifest']).name} (SHA-256 {summary.get('manifest_sha256', '?')[:12]})"
    else:
        source = "an unnamed source"
    return f"{source}, {summary.get('n_identities', '?')} identities, {summary.get('n_images', '?')} images"


def generalisation_note(summary: dict, manifest, manifest_sha256: str, counts: dict) -> str:
    """What the generalisation row compared: the calibration's population against the validation's."""
    same = summary.get("manifest_sha256") == manifest_sha256
    return (f"casework-condition check: a calibration fitted on {population(summary)}, applied to the validation "
            f"population, manifest {Path(manifest).name} (SHA-256 {manifest_sha256[:12]}), "
            f"{counts['identities_used']} other identities, {counts['images_used']} images"
            + ("; the same manifest file, other people: a check across people, not across protocols" if same
               else "; another source than the calibration's"))


__all__ = ["COHERENCE_FOLDS", "SCORE_ONLY", "coherence", "generalisation_note", "method_pair_sets", "population"]
