"""Hand-edited calibration files: every edit that would change a likelihood ratio is refused when the file
is read, in one line naming the file and the field, by `search` and at `serve` start alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from handclip import cli as cli_module
from handclip.forensic.calibration import CalibrationError, ScoreCalibration, fit_score_map

FINGERPRINT = {"backbone": "tiny-rn", "feature_dim": 128, "weights_sha256": "a" * 64}


@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory) -> str:
    rng = np.random.default_rng(3)
    mated, nonmated = rng.normal(0.8, 0.05, 300), rng.normal(0.5, 0.1, 3000)
    maps = {"image": fit_score_map(mated, nonmated, "logit"), "identity": fit_score_map(mated + 0.05, nonmated, "isotonic")}
    summary = {"method": "logit", "cllr": 0.2, "cllr_min": 0.1, "n_identities": 40, "n_mated": 300, "n_nonmated": 3000}
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    ScoreCalibration(maps, FINGERPRINT, summary).save(path)
    return path.read_text()


def _swap(data, a, b):
    data["maps"][a], data["maps"][b] = data["maps"][b], data["maps"][a]


EDITS = {
    # each: (edit of the parsed file, or of its text), the field the refusal names
    "negated slope": (lambda d: d["maps"]["image"]["params"].update(coef=-d["maps"]["image"]["params"]["coef"]),
                      "negative logistic slope"),
    "image and identity maps swapped": (lambda d: _swap(d, "image", "identity"), "content_sha256"),
    "intercept raised by 1": (lambda d: d["maps"]["image"]["params"].update(
        intercept=d["maps"]["image"]["params"]["intercept"] + 1), "content_sha256"),
    "a Cllr in the summary": (lambda d: d["summary"].update(cllr=0.01), "content_sha256"),
    "reversed isotonic x": (lambda d: d["maps"]["identity"]["params"].update(
        x=d["maps"]["identity"]["params"]["x"][::-1]), "params.x must never decrease"),
    "isotonic p above 1": (lambda d: d["maps"]["identity"]["params"]["p"].__setitem__(-1, 1.5), "params.p"),
    "bounds of +-1000": (lambda d: d["maps"]["image"].update(log10_lr_bounds=[-1000.0, 1000.0]), "bounds"),
    "bounds as text": (lambda d: d["maps"]["image"].update(log10_lr_bounds=["-1", "2"]), "log10_lr_bounds"),
    "bounds reversed": (lambda d: d["maps"]["image"].update(log10_lr_bounds=[2.0, -1.0]), "bounds"),
    "a slope of true": (lambda d: d["maps"]["image"]["params"].update(coef=True), "params.coef"),
    "an extra parameter": (lambda d: d["maps"]["image"]["params"].update(scale=2.0), "params.scale"),
    "isotonic p as text": (lambda d: d["maps"]["identity"]["params"]["p"].__setitem__(0, "0"), "params.p"),
    "n_mated as text": (lambda d: d["summary"].update(n_mated="300"), "summary.n_mated"),
}
TEXT_EDITS = {
    "NaN slope": (lambda t, d: t.replace(f'"coef": {json.dumps(d["maps"]["image"]["params"]["coef"])}', '"coef": NaN'),
                  "NaN"),
    "Infinity bound": (lambda t, d: t.replace(json.dumps(d["maps"]["image"]["log10_lr_bounds"][1]), "Infinity", 1),
                       "Infinity"),
    "negative slope hidden in a duplicate key": (lambda t, d: t.replace('"coef": ', '"coef": -40.0, "coef": ', 1),
                                                 "key 'coef' appears twice"),
}


def _edited(tmp_path: Path, text: str, name: str, edit=None, text_edit=None) -> Path:
    data = json.loads(text)
    if edit is not None:
        edit(data)
        text = json.dumps(data, indent=1)
    if text_edit is not None:
        changed = text_edit(text, data)
        assert changed != text, name
        text = changed
    path = tmp_path / (name.replace(" ", "-") + ".json")
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", [*EDITS, *TEXT_EDITS])
def test_an_edited_calibration_file_is_refused_naming_the_file_and_field(tmp_path, calibration_text, name):
    edit, field = EDITS[name] if name in EDITS else (None, TEXT_EDITS[name][1])
    text_edit = TEXT_EDITS[name][0] if name in TEXT_EDITS else None
    path = _edited(tmp_path, calibration_text, name, edit, text_edit)
    with pytest.raises(CalibrationError) as refused:
        ScoreCalibration.load(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and field in message, message


def test_the_file_as_written_loads_and_holds_its_content_hash(tmp_path, calibration_text):
    data = json.loads(calibration_text)
    assert data["version"] == 3 and len(data["content_sha256"]) == 64
    path = tmp_path / "calibration.json"
    path.write_text(calibration_text)
    loaded = ScoreCalibration.load(path)
    assert loaded.log10_lr([0.9], "image")[0] > 0 > loaded.log10_lr([0.4], "image")[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serve_helpers import enrolled_gallery, make_assets

    assets = make_assets(tmp_path_factory.mktemp("cal-assets"), num_ids=3, images_per_id=2)
    return assets, enrolled_gallery(assets, tmp_path_factory.mktemp("cal-gallery") / "gallery")


@pytest.mark.parametrize("edit", ["bounds", "maps"])
def test_search_and_serve_refuse_an_edited_calibration_before_anything_is_recorded(served, tmp_path, capsys, edit):
    assets, master = served
    index = Path(shutil.copytree(master, tmp_path / "gallery"))
    text = Path(assets["calibration"]).read_text()
    data = json.loads(text)
    if edit == "bounds":  # the sweep's case: serve started, said calibrated, then answered 500 to every search
        path = _edited(tmp_path, text, edit, text_edit=lambda t, d: t.replace(
            json.dumps(d["maps"]["identity"]["log10_lr_bounds"][1]), "Infinity", 1))
    else:
        path = _edited(tmp_path, text, edit, edit=lambda d: _swap(d, "image", "identity"))
    log = (index / "audit.jsonl").read_bytes()
    query = str(assets["images"] / "0001" / "000.png")
    assert cli_module.main(["search", "--index", str(index), "--query", query, "--calibration", str(path),
                            "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err
    assert cli_module.main(["serve", "--index", str(index), "--calibration", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and ("Infinity" in err or "content_sha256" in err)
    assert (index / "audit.jsonl").read_bytes() == log
    assert data["maps"]["identity"] != data["maps"]["image"]


# A calibration per aspect pair (docs/method.md, "Aspects of a hand") is read back as strictly: its maps, pair
# keys and per-pair figures are checked and hashed like the rest, so no pair's map can be swapped or renamed.
SAME, MIRRORED, SKIPPED = "dorsal_r->dorsal_r", "dorsal_l(mirrored)->dorsal_r", "palmar_r->dorsal_r"


@pytest.fixture(scope="module")
def pair_calibration_text(tmp_path_factory) -> str:
    rng = np.random.default_rng(4)
    pairs = {SAME: {"image": fit_score_map(rng.normal(0.8, 0.05, 200), rng.normal(0.4, 0.1, 800))},
             MIRRORED: {"image": fit_score_map(rng.normal(0.6, 0.1, 200), rng.normal(0.4, 0.1, 800))}}
    figures = {key: {"image": {"cllr": 0.3, "cllr_min": 0.2, "n_mated": 200, "n_nonmated": 800}} for key in pairs}
    summary = {"method": "logit", "n_identities": 40, "aspect_pairs": sorted(pairs),
               "pairs": {**figures, SKIPPED: {"skipped": "3 identities photographed in both aspects (need 6)"}}}
    path = tmp_path_factory.mktemp("pair-calibration") / "pairs.json"
    ScoreCalibration({}, FINGERPRINT, summary, pairs).save(path)
    return path.read_text()


def _rename_pair(data, old, new):
    data["pairs"][new] = data["pairs"].pop(old)


PAIR_EDITS = {
    "two pairs' maps swapped": (lambda d: d["pairs"].update({SAME: d["pairs"][MIRRORED], MIRRORED: d["pairs"][SAME]}),
                                "content_sha256"),
    "a pair's intercept raised": (lambda d: d["pairs"][SAME]["image"]["params"].update(
        intercept=d["pairs"][SAME]["image"]["params"]["intercept"] + 1), "content_sha256"),
    "a pair's Cllr lowered": (lambda d: d["summary"]["pairs"][SAME]["image"].update(cllr=0.01), "content_sha256"),
    "a pair's map lent to the unmirrored pair": (lambda d: _rename_pair(d, MIRRORED, "dorsal_l->dorsal_r"),
                                                 "lacks the figures of pair dorsal_l->dorsal_r"),
    "a pair's map lent, its figures too": (lambda d: (_rename_pair(d, MIRRORED, "dorsal_l->dorsal_r"), d["summary"][
        "pairs"].update({"dorsal_l->dorsal_r": d["summary"]["pairs"].pop(MIRRORED)})), "content_sha256"),
    "a pair key of no aspect": (lambda d: _rename_pair(d, SAME, "dorsal_x->dorsal_r"), "is not an aspect pair"),
    "a same-aspect pair 'mirrored'": (lambda d: _rename_pair(d, SAME, "dorsal_r(mirrored)->dorsal_r"),
                                      "is not an aspect pair"),
    "a pair's negated slope": (lambda d: d["pairs"][SAME]["image"]["params"].update(
        coef=-d["pairs"][SAME]["image"]["params"]["coef"]), "negative logistic slope"),
    "a pair's unknown score kind": (lambda d: d["pairs"][SAME].update(face=d["pairs"][SAME]["image"]),
                                    f"pairs.{SAME} must map score kinds"),
    "a pair without maps": (lambda d: d["pairs"].update({SAME: {}}), f"pairs.{SAME} must map score kinds"),
    "a pair's Cllr as text": (lambda d: d["summary"]["pairs"][SAME]["image"].update(cllr="0.3"), "summary.cllr"),
    "a skipped pair given maps": (lambda d: d["pairs"].update({SKIPPED: d["pairs"][SAME]}),
                                  f"summary.pairs.{SKIPPED}"),
    "a pair's figures removed": (lambda d: d["summary"]["pairs"].pop(SAME), f"lacks the figures of pair {SAME}"),
    "no pairs left": (lambda d: d.update(pairs={}), "pairs must be a non-empty"),
    "the pairs removed": (lambda d: d.pop("pairs"), "has no score maps"),
}


@pytest.mark.parametrize("name", PAIR_EDITS)
def test_an_edited_per_pair_calibration_is_refused_naming_the_file_and_field(tmp_path, pair_calibration_text, name):
    edit, field = PAIR_EDITS[name]
    path = _edited(tmp_path, pair_calibration_text, name, edit)
    with pytest.raises(CalibrationError) as refused:
        ScoreCalibration.load(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and field in message, message


def test_a_per_pair_calibration_as_written_loads_with_each_pair_and_its_hash(tmp_path, pair_calibration_text):
    data = json.loads(pair_calibration_text)
    assert data["version"] == 3 and data["maps"] == {} and len(data["content_sha256"]) == 64
    path = tmp_path / "pairs.json"
    path.write_text(pair_calibration_text)
    loaded = ScoreCalibration.load(path)
    assert sorted(loaded.pairs) == sorted([SAME, MIRRORED])
    assert loaded.pair_for("dorsal_l", "dorsal_r", mirrored=True) == MIRRORED
    with pytest.raises(CalibrationError, match="refusing to borrow"):
        loaded.pair_for("palmar_r", "dorsal_r")  # skipped when fitting: refused, not borrowed
    assert loaded.log10_lr([0.95], "image", SAME)[0] > 0 > loaded.log10_lr([0.3], "image", SAME)[0]
