"""Matching across hand aspects: the aspect matrix on a hand-made case, mirroring, calibration per aspect pair
(and its refusal to borrow another pair's map), gallery rows with aspects, and an aspect-stating search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handclip.aspects import aspect_index, pair_key
from handclip.config import DataConfig, EvalConfig
from handclip.data.manifest import Manifest, ManifestRecord
from handclip.errors import DataError, GalleryError
from handclip.evaluate.aspect_matrix import aspect_matrix
from handclip.evaluate.protocol import evaluate_manifest
from handclip.forensic.calibration import CalibrationError, ScoreCalibration, fit_score_map
from handclip.forensic.pair_calibration import AspectImages, aspect_pairs, fit_aspect_pairs

# Hand-made features on the unit circle (degrees): three people, one gallery and one query image each per aspect.
GALLERY = {"dorsal_r": [0, 60, 120], "dorsal_l": [10, 70, 130]}
QUERY = {"dorsal_r": [5, 62, 118], "dorsal_l": [33, 61, 119]}
MIRRORED_QUERY = {"dorsal_r": [12, 68, 131], "dorsal_l": [2, 59, 121]}


def _unit(degrees: float) -> np.ndarray:
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))], dtype=np.float32)


class TableEncoder:
    """An encoder that returns given features by path (mirrored ones from a second table)."""

    reads_aspects = False

    def __init__(self, plain: dict, mirror: dict):
        self.plain, self.mirror = plain, mirror

    def features(self, records, batch_size=128, flip=False, progress=False, aspects=None, mirror=False):
        table = self.mirror if mirror else self.plain
        return np.stack([table[r.path] for r in records])


@pytest.fixture
def hand_made(tmp_path):
    records, plain, mirror = [], {}, {}
    for aspect in GALLERY:
        for split, angles in (("gallery", GALLERY[aspect]), ("query", QUERY[aspect])):
            for pid, degrees in enumerate(angles):
                path = tmp_path / f"{aspect}_{split}_{pid}.png"
                Image.new("RGB", (16, 16), (pid * 60, 90, 120)).save(path)  # decodable: evaluation checks it
                records.append(ManifestRecord(split, 0, str(path), pid, aspect_index(aspect), "synthetic", aspect,
                                              str(pid), False))
                plain[str(path)] = _unit(degrees)
                if split == "query":
                    mirror[str(path)] = _unit(MIRRORED_QUERY[aspect][pid])
    return Manifest(records), TableEncoder(plain, mirror)


def test_aspect_matrix_figures_on_a_hand_made_case(hand_made):
    manifest, encoder = hand_made
    matrix = aspect_matrix(encoder, manifest, EvalConfig())
    assert matrix.aspects == ["dorsal_r", "dorsal_l"]
    cell = lambda q, g, m: matrix.cells[(q, g)][m]["mean"]  # noqa: E731
    # Same aspect: every query nearest its own gallery image, mated scores above every non-mated one.
    assert cell("dorsal_r", "dorsal_r", "rank1") == 1.0 and cell("dorsal_r", "dorsal_r", "mAP") == 1.0
    assert cell("dorsal_r", "dorsal_r", "eer") == 0.0
    # dorsal_l queries against dorsal_r: person 0's query (33 deg) is nearer person 1 (60) than itself (0):
    # rank-1 2/3, mAP (1/2 + 1 + 1) / 3. Scores, best first: two mated cos 1, non-mated cos 27, mated cos 33, ...
    # so at the threshold between them FMR 1/6 and FNMR 1/3, next FMR 1/6 and FNMR 0: the EER is 1/6.
    assert cell("dorsal_l", "dorsal_r", "rank1") == pytest.approx(2 / 3)
    assert cell("dorsal_l", "dorsal_r", "mAP") == pytest.approx(2.5 / 3)
    assert cell("dorsal_l", "dorsal_r", "eer") == pytest.approx(1 / 6)
    assert not any(c["mirrored"] for c in matrix.cells.values())
    np.testing.assert_allclose(matrix.means("rank1"), [[1.0, cell("dorsal_r", "dorsal_l", "rank1")], [2 / 3, 1.0]])


def test_mirroring_applies_to_cross_side_cells_only(hand_made):
    manifest, encoder = hand_made
    matrix = aspect_matrix(encoder, manifest, EvalConfig(), mirror_query=True)
    assert [c for c, v in matrix.cells.items() if v["mirrored"]] == [("dorsal_r", "dorsal_l"), ("dorsal_l", "dorsal_r")]
    assert matrix.cells[("dorsal_l", "dorsal_r")]["rank1"]["mean"] == 1.0  # mirrored queries at 2, 59, 121 deg
    assert matrix.cells[("dorsal_l", "dorsal_l")]["rank1"]["mean"] == 1.0  # same side: the plain queries
    # One pair through the ordinary evaluation: the same figures, mirrored or not.
    plain = evaluate_manifest(encoder, manifest, EvalConfig(), query_aspect="dorsal_l", gallery_aspect="dorsal_r")
    flipped = evaluate_manifest(encoder, manifest, EvalConfig(), query_aspect="dorsal_l", gallery_aspect="dorsal_r",
                                mirror_query=True)
    assert plain.aggregate["rank1"]["mean"] == pytest.approx(2 / 3) and flipped.aggregate["rank1"]["mean"] == 1.0
    assert flipped.options["mirror_query"] and flipped.options["query_aspect"] == "dorsal_l"
    with pytest.raises(DataError, match="holds 2 aspects"):
        evaluate_manifest(encoder, manifest, EvalConfig())
    with pytest.raises(DataError, match="no gallery images of aspect palmar_r"):
        evaluate_manifest(encoder, manifest, EvalConfig(), query_aspect="dorsal_l", gallery_aspect="palmar_r")


def test_an_unusable_query_stops_the_matrix_or_is_left_out_of_every_cell_with_skip_bad(hand_made):
    manifest, encoder = hand_made
    bad = next(r.path for r in manifest.records if r.split == "query" and r.subset == "dorsal_l" and r.pid == 0)
    Path(bad).write_bytes(b"not an image")
    with pytest.raises(DataError, match="dorsal_l_query_0.png.*--skip-bad"):
        aspect_matrix(encoder, manifest, EvalConfig(), mirror_query=True)
    with pytest.warns(UserWarning, match="dorsal_l_query_0.png"):
        matrix = aspect_matrix(encoder, manifest, EvalConfig(), mirror_query=True, skip_bad=True)
    assert matrix.options["images_left_out"] == [bad]
    # Person 0's left query (the one misplaced at 33 deg) is gone: the two left ones rank first everywhere.
    assert matrix.cells[("dorsal_l", "dorsal_r")]["queries"] == 2
    assert matrix.cells[("dorsal_l", "dorsal_r")]["rank1"]["mean"] == 1.0
    assert matrix.cells[("dorsal_r", "dorsal_r")]["queries"] == 3  # the other aspects keep every query
    # The ordinary evaluation checks the mirrored queries too, though it encodes them only mirrored.
    with pytest.raises(DataError, match="dorsal_l_query_0.png"):
        evaluate_manifest(encoder, manifest, EvalConfig(), query_aspect="dorsal_l", gallery_aspect="dorsal_r",
                          mirror_query=True)


def test_same_aspect_matches_are_never_dropped_as_same_camera(hand_made):
    manifest, encoder = hand_made
    # camid holds the aspect index: a camera rule would drop every same-aspect match and skip every query.
    result = evaluate_manifest(encoder, manifest, EvalConfig(), query_aspect="dorsal_r", gallery_aspect="dorsal_r")
    assert result.per_run[0].metrics["num_skipped_queries"] == 0 and result.aggregate["rank1"]["mean"] == 1.0


def test_extracted_features_mirror_the_image_and_the_aspect_label(tmp_path):
    from PIL import Image

    from handclip.model.handclip import build_model
    from handclip.model.inference import extract_features

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    image.save(tmp_path / "a.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "flipped.png")
    torch.manual_seed(0)
    data = DataConfig(image_size=(32, 32), decode_cache=False, num_workers=0)
    model = build_model({"backbone": "tiny-vit", "sie": "aspect"}, data, num_ids=2).eval()
    mirrored = extract_features(model, [str(tmp_path / "a.png")], data, aspects=["dorsal_l"], mirror=True)
    # The mirrored left-hand photo is encoded as the right hand it now looks like.
    direct = extract_features(model, [str(tmp_path / "flipped.png")], data, aspects=["dorsal_r"])
    np.testing.assert_allclose(mirrored, direct, atol=1e-5)
    assert not np.allclose(direct, extract_features(model, [str(tmp_path / "flipped.png")], data, aspects=["dorsal_l"]))
    with pytest.raises(DataError, match="none is given"):
        extract_features(model, [str(tmp_path / "a.png")], data)


def _pair_calibration(pairs: dict) -> ScoreCalibration:
    rng = np.random.default_rng(0)
    maps = {key: {"image": fit_score_map(rng.normal(0.8, 0.05, 200), rng.normal(0.4, 0.1, 800))} for key in pairs}
    return ScoreCalibration({}, {"weights_sha256": "a" * 64}, {"method": "logit", "pairs": pairs}, maps)


def test_a_per_pair_calibration_weighs_its_own_pair_and_refuses_any_other(tmp_path):
    pairs = {"dorsal_r->dorsal_r": {}, "dorsal_l(mirrored)->dorsal_r": {}}
    calibration = _pair_calibration(pairs)
    assert calibration.pair_for("dorsal_r", "dorsal_r") == "dorsal_r->dorsal_r"
    assert calibration.pair_for("dorsal_l", "dorsal_r", True) == "dorsal_l(mirrored)->dorsal_r"
    with pytest.raises(CalibrationError, match=r"no maps for the aspect pair dorsal_l->dorsal_r .*refusing to borrow"):
        calibration.pair_for("dorsal_l", "dorsal_r")  # not mirrored: another pair, refused
    with pytest.raises(CalibrationError, match="palmar_r->dorsal_r"):
        calibration.pair_for("palmar_r", "dorsal_r")
    with pytest.raises(CalibrationError, match="gallery images carry no aspect"):
        calibration.pair_for("dorsal_r", None)
    # A calibration without pairs weighs same-aspect comparisons as it always did, and nothing across aspects.
    plain = ScoreCalibration({"image": calibration.pairs["dorsal_r->dorsal_r"]["image"]}, {}, {"method": "logit"})
    assert plain.pair_for("dorsal_r", "dorsal_r") is None and plain.pair_for(None, None) is None
    for args in (("dorsal_l", "dorsal_r", False), ("dorsal_r", "dorsal_r", True)):
        with pytest.raises(CalibrationError, match="fitted without aspect pairs"):
            plain.pair_for(*args)
    # The file keeps the pairs (format 3, with the content hash over them too); a plain one has none.
    calibration.save(tmp_path / "pairs.json")
    loaded = ScoreCalibration.load(tmp_path / "pairs.json")
    assert set(loaded.pairs) == set(pairs)
    np.testing.assert_allclose(loaded.log10_lr([0.7], "image", "dorsal_r->dorsal_r"),
                               calibration.log10_lr([0.7], "image", "dorsal_r->dorsal_r"))
    plain.save(tmp_path / "plain.json")
    assert "pairs" not in json.loads((tmp_path / "plain.json").read_text())
    assert ScoreCalibration.load(tmp_path / "plain.json").pairs == {}


def test_fitting_per_pair_gives_every_ordered_pair_and_the_mirrored_cross_side_ones():
    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(12), 3)
    centres = rng.normal(size=(12, 8))

    def images(noise: float) -> AspectImages:
        feats = centres[people] + rng.normal(0, noise, (len(people), 8))
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        return AspectImages(feats, people, feats[:, ::-1].copy())

    found = {"dorsal_r": images(0.3), "dorsal_l": images(0.3), "palmar_r": images(1.5)}
    assert len(aspect_pairs(found)) == 9 + 4
    maps, figures = fit_aspect_pairs(found, folds=3)
    assert set(maps) == {pair_key(q, g, m) for q, g, m in aspect_pairs(found)}
    assert "dorsal_l(mirrored)->dorsal_r" in maps and "dorsal_r(mirrored)->palmar_r" not in maps
    cllr = {key: f["image"]["cllr"] for key, f in figures.items()}
    # Shared identity structure calibrates well; the noisy palm pairs inform less.
    assert cllr["dorsal_r->dorsal_r"] < 0.3 and cllr["palmar_r->dorsal_r"] > cllr["dorsal_r->dorsal_r"] + 0.3
    # A mirrored pair is fitted on the mirrored features (here: reversed, so they carry nothing).
    assert cllr["dorsal_l->dorsal_r"] < 0.3 and cllr["dorsal_l(mirrored)->dorsal_r"] > 0.9


def test_gallery_rows_keep_their_aspect_and_older_rows_read_without_one(tmp_path):
    from handclip.gallery.folder import Gallery
    from handclip.gallery.metadata import parse_rows

    gallery = Gallery.create(tmp_path / "g", {"weights_sha256": "a" * 64}, 4)
    vectors = np.eye(4, dtype=np.float32)[:3]
    gallery.add(vectors, ["a.png", "b.png", "c.png"], ["p", "p", "q"], ["1" * 64, "2" * 64, "3" * 64],
                ["dorsal_l", None, "palmar_r"])
    gallery.add(np.eye(4, dtype=np.float32)[3:], ["d.png"], ["q"], ["4" * 64])
    reopened = Gallery.open(tmp_path / "g")
    assert reopened.reader.aspect_of_row == ("dorsal_l", None, "palmar_r", None)
    lines = b'{"path": "x", "identity": "p", "sha256": "' + b"5" * 64 + b'"}\n'
    assert parse_rows(lines, Path("old.jsonl"), 1) == [{"path": "x", "identity": "p", "sha256": "5" * 64}]
    with pytest.raises(GalleryError, match="aspect 'sideways' is not one of"):
        parse_rows(lines.replace(b"}", b', "aspect": "sideways"}'), Path("bad.jsonl"), 1)
    with pytest.raises(DataError, match="unknown aspect"):
        gallery.add(vectors[:1], ["e.png"], ["q"], ["6" * 64], ["sideways"])


@pytest.fixture(scope="module")
def aspect_gallery(tmp_path_factory):
    """Five people's dorsal right and left hands enrolled with their aspects, a calibration of one pair only."""
    from serve_helpers import make_checkpoint

    from handclip.gallery.enrol import EnrolItem
    from handclip.gallery.session import ExaminerSession
    from handclip.model.inference import load_encoder
    from handclip.synthetic.dataset import write_synthetic_dataset

    root = tmp_path_factory.mktemp("aspect-gallery")
    images = write_synthetic_dataset(root / "hands", 5, 3, size=64, aspects=("dorsal_r", "dorsal_l"))
    checkpoint = make_checkpoint(root / "model.pt")
    session = ExaminerSession.open(root / "gallery", checkpoint, device="cpu", create=True, batch_size=8)
    session.enrol([EnrolItem(str(images / f"{i:04d}" / a / f"{n:03d}.png"), f"person{i}", a)
                   for i in range(5) for a in ("dorsal_r", "dorsal_l") for n in range(2)], examiner="setup")
    rng = np.random.default_rng(0)
    maps = {kind: fit_score_map(1 - np.abs(rng.normal(0, 6e-4, 300)), 1 - np.abs(rng.normal(0, 2e-3, 3000)))
            for kind in ("image", "identity")}
    fingerprint = load_encoder(checkpoint, device="cpu").fingerprint()
    ScoreCalibration({}, fingerprint, {"method": "logit", "pairs": {"dorsal_r->dorsal_r": {}}},
                     {"dorsal_r->dorsal_r": maps}).save(root / "pairs.json")
    return {"root": root, "images": images, "checkpoint": checkpoint, "gallery": root / "gallery",
            "calibration": root / "pairs.json"}


def test_a_search_states_its_aspects_and_refuses_an_uncalibrated_pair(aspect_gallery, tmp_path):
    from pypdf import PdfReader

    from handclip.forensic.audit import AuditLog
    from handclip.gallery.session import ExaminerSession

    session = ExaminerSession.open(aspect_gallery["gallery"], calibration=aspect_gallery["calibration"], device="cpu")
    log = AuditLog(aspect_gallery["gallery"])
    before = len(log.records())
    left = str(aspect_gallery["images"] / "0002" / "dorsal_l" / "002.png")
    with pytest.raises(CalibrationError, match=r"dorsal_l\(mirrored\)->dorsal_r .*refusing to borrow"):
        session.search([left], top_k=3, aspect="dorsal_l", mirror_aspect=True)
    assert len(log.records()) == before  # refused before anything was searched or recorded
    right = str(aspect_gallery["images"] / "0002" / "dorsal_r" / "002.png")
    found = session.search([right], top_k=3, by="image", aspect="dorsal_r")
    assert found.aspects == {"query": "dorsal_r", "gallery": "dorsal_r", "mirrored": False,
                             "compared": "dorsal_r->dorsal_r", "calibration_pair": "dorsal_r->dorsal_r"}
    assert all("/dorsal_r/" in c.path for c in found.queries[0].candidates)  # only that aspect's rows
    expected = session.calibration.calibration.log10_lr([c.score for c in found.queries[0].candidates], "image",
                                                        "dorsal_r->dorsal_r")
    np.testing.assert_allclose([c.log10_lr for c in found.queries[0].candidates], expected)
    record = log.records()[-1]
    assert record["aspects"]["compared"] == "dorsal_r->dorsal_r"
    assert record["calibration"]["aspect_pair"] == "dorsal_r->dorsal_r"
    report = session.report(found, tmp_path / "case.pdf")
    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(str(report)).pages)
    assert "query dorsal right against gallery images of dorsal right" in text
    assert "calibration of the pair dorsal_r->dorsal_r" in text
    # Without a calibration a mirrored left hand is searched against the right hands it now resembles.
    plain = ExaminerSession.open(aspect_gallery["gallery"], device="cpu")
    mirrored = plain.search([left], top_k=3, by="image", aspect="dorsal_l", mirror_aspect=True)
    assert mirrored.aspects["gallery"] == "dorsal_r" and mirrored.aspects["calibration_pair"] is None
    assert all("/dorsal_r/" in c.path for c in mirrored.queries[0].candidates)
    with pytest.raises(DataError, match="holds no images of aspect palmar_r"):
        plain.search([left], aspect="palmar_l", mirror_aspect=True)
    # The whole step (what `handclip search --aspect ... --html` runs) says the same on the page and console.
    from handclip.gallery.casework import search_gallery

    shown = []
    search_gallery(aspect_gallery["gallery"], [left], top_k=2, by="image", device="cpu", aspect="dorsal_l",
                   mirror_aspect=True, html=tmp_path / "found.html", log=shown.append)
    assert shown[0] == "aspects: query dorsal left (mirrored left-right) against gallery images of dorsal right"
    assert "Aspects: query dorsal left (mirrored left-right)" in (tmp_path / "found.html").read_text()


def test_the_web_service_takes_the_aspects_of_a_search_and_an_enrolment(aspect_gallery, tmp_path):
    import shutil

    from fastapi.testclient import TestClient
    from serve_helpers import add_keys

    from handclip.gallery.reader import GalleryReader
    from handclip.serve.app import create_app
    from handclip.serve.state import ServiceState

    gallery = Path(shutil.copytree(aspect_gallery["gallery"], tmp_path / "gallery"))
    keys = add_keys(gallery)
    left = aspect_gallery["images"] / "0003" / "dorsal_l" / "002.png"
    with TestClient(create_app(ServiceState(gallery, device="cpu")), base_url="http://localhost") as client:
        found = client.post("/api/v1/search", files={"image": (left.name, left.read_bytes(), "image/png")},
                            data={"top_k": "2", "by": "image", "aspect": "dorsal_l", "mirror_aspect": "true"},
                            headers={"X-API-Key": keys["search"]})
        assert found.status_code == 200, found.text
        assert found.json()["aspects"]["compared"] == "dorsal_l(mirrored)->dorsal_r"
        wrong = client.post("/api/v1/search", files={"image": (left.name, left.read_bytes(), "image/png")},
                            data={"aspect": "sideways"}, headers={"X-API-Key": keys["search"]})
        assert wrong.status_code == 422 and "aspect" in wrong.json()["error"]
        palm = aspect_gallery["images"] / "0004" / "dorsal_r" / "002.png"
        enrolled = client.post("/api/v1/enrol", data={"identity": "newcomer", "aspect": "palmar_r"},
                               files=[("images", (palm.name, palm.read_bytes(), "image/png"))],
                               headers={"X-API-Key": keys["enrol"]})
        assert enrolled.status_code == 200, enrolled.text
    reader = GalleryReader.open(gallery)
    assert reader.aspect_of_row[reader.rows_of_identity["newcomer"][0]] == "palmar_r"
