"""Reading a calibration file back: every value checked before a likelihood ratio is computed from it.

A calibration file is evidence: an edited number gives wrong likelihood ratios with nothing to show for
it. So a file is refused, in one line naming the file and the field, unless

- it is JSON without duplicate keys (a second ``coef`` cannot hide behind the first) and without
  NaN or Infinity;
- it is format version 3 (versions 1 and 2 hold no content hash, so an edit could not be told; fit
  them again) with exactly the top-level fields ``format``, ``version``, ``fingerprint``, ``summary``,
  ``maps`` and ``content_sha256``, and optionally ``pairs``;
- ``pairs`` (a calibration per aspect pair, docs/method.md "Aspects of a hand") names only pairs of
  known aspects (``dorsal_l(mirrored)->dorsal_r``), each with at least one map of a known kind, and
  its figures in ``summary.pairs`` are numbers; ``maps`` may then be empty;
- every map is typed and sound: ``method`` one of logit, kde, isotonic with exactly its parameters,
  numbers that are numbers (not strings or booleans) and finite, knots sorted, isotonic probabilities
  within [0, 1], a log10 LR that never falls as the score rises, and bounds that are two finite
  numbers, ordered, enclosing 0 and within +-``BOUND_LIMIT``;
- ``content_sha256`` is the SHA-256 of the file's canonical content (sorted keys, no spaces, UTF-8,
  ``content_sha256`` itself left out): a swap of two valid maps, a changed intercept or summary is
  detected rather than interpreted. It detects edits and damage; it is no signature (whoever edits the
  file can recompute it), which is why every search records the file's own SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from ..errors import HandCLIPError

FORMAT = "handclip-score-calibration"
# Version 3 adds the content hash; 2 stored the KDE as its monotone table; 1 kept KDE sample points.
VERSION = 3
READABLE_VERSIONS = (3,)
METHODS = ("logit", "kde", "isotonic")
KINDS = ("image", "identity")
TOP_LEVEL = ("format", "version", "fingerprint", "summary", "maps", "content_sha256")
OPTIONAL = ("pairs",)
PARAMETERS = {"logit": ("coef", "intercept"), "kde": ("bandwidth", "x", "log10_lr"), "isotonic": ("x", "p")}
# An ELUB bound is at most about log10 of the comparisons counted, plus one: far below this.
BOUND_LIMIT = 15.0


class CalibrationError(HandCLIPError):
    """A calibration cannot be fitted, read or applied (too little data, other model, bad file)."""


def canonical_content(payload: dict) -> bytes:
    return json.dumps({k: v for k, v in payload.items() if k != "content_sha256"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def content_sha256(payload: dict) -> str:
    return hashlib.sha256(canonical_content(payload)).hexdigest()


def parse_json(text: str, path) -> dict:
    """The file's JSON, refusing duplicate keys and NaN / Infinity (one CalibrationError naming them)."""

    def no_duplicates(pairs):
        keys = [key for key, _ in pairs]
        repeated = next((key for key in keys if keys.count(key) > 1), None)
        if repeated is not None:
            raise CalibrationError(f"calibration file {path}: key {repeated!r} appears twice in one object "
                                   f"(the file was edited)")
        return dict(pairs)

    def no_constant(name):
        raise CalibrationError(f"calibration file {path} holds {name}, which is not a number a calibration has")

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError:
        raise CalibrationError(f"calibration file {path} is not valid JSON (truncated or not a calibration)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"{path} is not a HandCLIP score calibration (made by `handclip calibrate`)")
    return data


def check_document(data: dict, path) -> None:
    """The top level of a calibration file: version, fields and their types (maps checked one by one)."""
    version = data.get("version")
    if version in (1, 2):
        raise CalibrationError(f"calibration file {path} has format version {version}, written before calibration "
                               f"files held a content hash (an edit could not be detected); fit it again with "
                               f"`handclip calibrate`")
    if version not in READABLE_VERSIONS:
        raise CalibrationError(f"calibration file {path} has format version {version!r}; "
                               f"this HandCLIP reads version {' and '.join(map(str, READABLE_VERSIONS))}")
    unknown = sorted(set(data) - set(TOP_LEVEL) - set(OPTIONAL))
    missing = [key for key in TOP_LEVEL if key not in data]
    if unknown or missing:
        raise CalibrationError(f"calibration file {path}: " + (f"unknown field {unknown[0]!r}" if unknown
                                                                else f"field {missing[0]!r} is missing"))
    maps = data["maps"]
    if not isinstance(maps, dict) or not (maps or "pairs" in data):
        raise CalibrationError(f"calibration file {path} has no score maps")
    strange = sorted(set(maps) - set(KINDS))
    if strange:
        raise CalibrationError(f"calibration file {path} has an unknown score kind {strange[0]!r}")
    if not isinstance(data["fingerprint"], dict) or not isinstance(data["summary"], dict):
        raise CalibrationError(f"calibration file {path}: fingerprint and summary must be JSON objects")
    _check_summary(data["summary"], path)
    if "pairs" in data:
        _check_pairs(data["pairs"], data["summary"], path)


def _pair_keys() -> set[str]:
    from ..aspects import ASPECTS, pair_key

    return {pair_key(q, g, mirrored) for q in ASPECTS for g in ASPECTS for mirrored in (False, True)
            if not (mirrored and q == g)}


def _check_pairs(pairs, summary: dict, path) -> None:
    """The per-aspect-pair section: known pair keys, known kinds, numeric figures (maps checked one by one)."""
    if not isinstance(pairs, dict) or not pairs:
        raise CalibrationError(f"calibration file {path}: pairs must be a non-empty JSON object")
    valid = _pair_keys()
    for key, maps in pairs.items():
        if key not in valid:
            raise CalibrationError(f"calibration file {path}: {str(key)[:60]!r} is not an aspect pair")
        if not isinstance(maps, dict) or not maps or set(maps) - set(KINDS):
            raise CalibrationError(f"calibration file {path}: pairs.{key} must map score kinds "
                                   f"({', '.join(KINDS)}) to score maps")
    figures = summary.get("pairs", {})
    if not isinstance(figures, dict) or set(figures) - valid:
        raise CalibrationError(f"calibration file {path}: summary.pairs must map aspect pairs to their figures")
    unreported = sorted(set(pairs) - set(figures))
    if unreported:
        raise CalibrationError(f"calibration file {path}: summary.pairs lacks the figures of pair {unreported[0]}")
    for key, by_kind in figures.items():
        # A pair left out when fitting is named with the reason; a fitted pair has figures per kind.
        if not isinstance(by_kind, dict) or ("skipped" in by_kind) == (key in pairs):
            raise CalibrationError(f"calibration file {path}: summary.pairs.{key} does not match the pair's maps")
        for kind, values in by_kind.items():
            if kind == "skipped" and isinstance(values, str):
                continue
            if kind not in KINDS or not isinstance(values, dict):
                raise CalibrationError(f"calibration file {path}: summary.pairs.{key}.{str(kind)[:20]} is malformed")
            _check_summary(values, path)


def check_content_hash(data: dict, path) -> None:
    recorded = data.get("content_sha256")
    if recorded != content_sha256(data):
        raise CalibrationError(f"calibration file {path}: content_sha256 does not match its content; the file "
                               f"was edited or damaged after `handclip calibrate` wrote it")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_summary(summary: dict, path) -> None:
    """The figures every output prints: numbers where numbers are shown, counts that are counts."""
    for key in ("cllr", "cllr_min", "cllr_cal"):
        if key in summary and not _number(summary[key]):
            raise CalibrationError(f"calibration file {path}: summary.{key} must be a finite number")
    for key in ("n_identities", "n_images", "n_mated", "n_nonmated"):
        if key in summary and not (_number(summary[key]) and float(summary[key]).is_integer() and summary[key] >= 0):
            raise CalibrationError(f"calibration file {path}: summary.{key} must be a count")


def _numbers(params: dict, key: str, where: str) -> np.ndarray:
    values = params[key]
    if not (isinstance(values, list) and values and all(_number(v) for v in values)):
        raise CalibrationError(f"{where}: params.{key} must be a non-empty list of finite numbers")
    return np.asarray(values, dtype=np.float64)


def _check_rising(values: np.ndarray, key: str, where: str, strictly: bool = False) -> None:
    steps = np.diff(values)
    if np.any(steps <= 0 if strictly else steps < 0):
        raise CalibrationError(f"{where}: params.{key} must {'increase' if strictly else 'never decrease'} "
                               f"(the file was damaged or edited)")


def _check_params(method: str, params: dict, where: str) -> None:
    """Refuse a map whose LR could fall as the score rises, or that is not made of finite numbers."""
    if method == "logit":
        coef, intercept = params["coef"], params["intercept"]
        if not (_number(coef) and _number(intercept)):
            raise CalibrationError(f"{where}: params.coef and params.intercept must be finite numbers")
        if coef < 0:
            raise CalibrationError(f"{where}: a negative logistic slope ({coef:.6g}) makes the LR fall as the "
                                   f"score rises")
        return
    if method == "kde":
        bandwidth = _numbers(params, "bandwidth", where)
        if bandwidth.size != 2 or np.any(bandwidth <= 0):
            raise CalibrationError(f"{where}: params.bandwidth must be two positive numbers")
    knots = _numbers(params, "x", where)
    values = _numbers(params, "log10_lr" if method == "kde" else "p", where)
    if knots.size != values.size or (method == "kde" and knots.size < 2):
        raise CalibrationError(f"{where}: params.x and its values differ in length or are too short")
    _check_rising(knots, "x", where, strictly=method == "kde")
    _check_rising(values, "log10_lr" if method == "kde" else "p", where)
    if method == "isotonic" and (values[0] < 0 or values[-1] > 1):
        raise CalibrationError(f"{where}: params.p must lie between 0 and 1")


def check_map(data, where: str) -> tuple[str, dict, float, float]:
    """(method, params, lower, upper) of one stored map, every value checked (see the module's rules)."""
    if not (isinstance(data, dict) and set(data) == {"method", "params", "log10_lr_bounds"}):
        raise CalibrationError(f"{where} is malformed (needs exactly method, params and log10_lr_bounds)")
    method, params, bounds = data["method"], data["params"], data["log10_lr_bounds"]
    if method not in PARAMETERS:
        raise CalibrationError(f"{where}: unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method == "kde" and isinstance(params, dict) and "mated_points" in params and "log10_lr" not in params:
        raise CalibrationError(f"{where}: a KDE map of format version 1 can fall as the score rises above its "
                               f"data; fit the calibration again (handclip calibrate --method kde)")
    if not isinstance(params, dict):
        raise CalibrationError(f"{where}: params must be a JSON object")
    missing = [key for key in PARAMETERS[method] if key not in params]
    if missing:
        raise CalibrationError(f"{where}: params lack {', '.join(missing)}")
    extra = sorted(set(params) - set(PARAMETERS[method]))
    if extra:
        raise CalibrationError(f"{where}: params.{extra[0]} does not belong to a {method} map")
    _check_params(method, params, where)
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) for b in bounds)):
        raise CalibrationError(f"{where}: log10_lr_bounds must be two finite numbers")
    lower, upper = float(bounds[0]), float(bounds[1])
    if not (-BOUND_LIMIT <= lower <= 0.0 <= upper <= BOUND_LIMIT):
        raise CalibrationError(f"{where}: bounds {lower}, {upper} must be ordered, enclose log10 LR 0 and lie within "
                               f"+-{BOUND_LIMIT:g}")
    return method, params, lower, upper


# ----------------------------------------------------------------------------------------------
# Who a calibration was fitted on


def identity_sha256s(names) -> set[str]:
    """The SHA-256 (UTF-8) under which a calibration lists each of ``names`` (a manifest's pid as text, or a
    folder's identity name)."""
    return {hashlib.sha256(str(name).encode("utf-8")).hexdigest() for name in names if name not in (None, "")}


def record_names(records) -> dict:
    """person -> the names a calibration may list it under (manifest records): its pid as text (a manifest's
    calibration) and its original name (a folder's calibration)."""
    people: dict = {}
    for rec in records:
        people.setdefault(rec.pid, set()).update({str(rec.pid), rec.original_id} - {None, ""})
    return people


def people_in_calibration(calibration, people: dict) -> int | None:
    """How many of ``people`` (person -> the names it may be listed under) the calibration was fitted on;
    None when the file lists no identities (fitted before they were recorded)."""
    listed = calibration.summary.get("identity_sha256")
    if not listed:
        return None
    listed = set(listed)
    return sum(1 for names in people.values() if identity_sha256s(names) & listed)


def warn_in_sample(calibration, people: dict, scored: str) -> int:
    """One CalibrationWarning, naming the count, when people of ``scored`` are people the calibration was
    fitted on: its figures on them are in-sample and overstate how it holds for new people (docs/method.md,
    "Validating the LR method"). Returns that count (0 when none or when the file lists none)."""
    import warnings

    from ..errors import CalibrationWarning

    shared = people_in_calibration(calibration, people)
    source = calibration.summary.get("path", "the calibration")
    if shared is None:
        warnings.warn(f"{source} lists no identities it was fitted on, so whether {scored} shares people with it "
                      f"cannot be checked; recalibrate with this version of handclip", CalibrationWarning,
                      stacklevel=2)
        return 0
    if shared:
        warnings.warn(f"{shared} of the {len(people)} identities of {scored} were in the calibration {source}: "
                      f"LRs and Cllr on them are in-sample and overstate how it holds for new people",
                      CalibrationWarning, stacklevel=2)
    return shared

