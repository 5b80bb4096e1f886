"""Evidential search end to end with the tiny model: audit trail, case report, HTML escaping, kills."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handclip import cli as cli_module
from handclip.atomic import sha256_file
from handclip.gallery import Gallery
from handclip.forensic.audit import AUDIT_FILE, TORN_WRITE_DELAY_ENV, AuditLog
from handclip.gallery.writer import COMMIT_DELAY_ENV

SRC = str(Path(__file__).resolve().parents[1] / "src")
OUR_COMMANDS = {name: cli_module.COMMANDS[name] for name in ("enrol", "search", "audit")}
CLI_SCRIPT = ("import sys; from handclip import cli; "
              f"cli.COMMANDS = {OUR_COMMANDS!r}; sys.exit(cli.main())")


def _checkpoint(path: Path, seed: int) -> Path:
    import torch

    from handclip.config import load_config
    from handclip.model.checkpoint import save_checkpoint
    from handclip.model.handclip import build_model

    torch.manual_seed(seed)
    cfg = load_config(None, ["model.backbone=tiny-rn", "data.image_size=[64,64]", "data.num_workers=0"])
    save_checkpoint(path, build_model(cfg.model, cfg.data, 6), cfg, {"epoch": 0})
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from handclip.synthetic.dataset import write_synthetic_dataset

    root = tmp_path_factory.mktemp("assets")
    images = write_synthetic_dataset(root / "hands", num_ids=5, images_per_id=3, size=64, seed=0)
    return {"images": Path(images), "ckpt": _checkpoint(root / "model.pt", 0),
            "other": _checkpoint(root / "other.pt", 1)}


@pytest.fixture
def enrolled(assets, tmp_path):
    """A private copy of the images (tests change them) enrolled into a fresh gallery."""
    images = tmp_path / "hands"
    shutil.copytree(assets["images"], images)
    index = tmp_path / "gallery"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index,
               "--batch-size", "4", "--no-progress", "--examiner", "A. Examiner") == 0
    return images, index


def cli(*args) -> int:
    saved = cli_module.COMMANDS
    cli_module.COMMANDS = OUR_COMMANDS
    try:
        return cli_module.main([str(a) for a in args])
    finally:
        cli_module.COMMANDS = saved


def test_audit_trail_of_enrols_and_searches_verifies_and_names_what_was_altered(enrolled, tmp_path, capsys):
    images, index = enrolled
    from handclip.synthetic.render import render_hand

    (images / "newcomer").mkdir()
    render_hand(40, 0).save(images / "newcomer" / "fresh.png")
    assert cli("enrol", "--checkpoint", Gallery.open(index).checkpoint, "--images", images, "--index", index,
               "--no-progress") == 0
    outside = tmp_path / "case" / "item-7.png"  # a query photo that is not in the gallery
    outside.parent.mkdir()
    render_hand(2, 5).save(outside)
    queries = [images / "0001" / "000.png", outside, images / "newcomer" / "fresh.png"]
    for query in queries:
        assert cli("search", "--index", index, "--query", query, "--top-k", "2") == 0
    out = capsys.readouterr().out
    assert out.count("not likelihood ratios") == 3 and "audit record 7 (SHA-256" in out
    records = AuditLog(index).records()
    assert [r["command"] for r in records] == ["enrol-start", "enrol", "enrol-start", "enrol", "search", "search",
                                               "search"]
    assert records[1]["examiner"] == "A. Examiner" and len(records[1]["results"]["added"]) == 15
    assert len(records[0]["planned"]) == 15 and records[1]["started"] == 1
    assert [a["path"] for a in records[3]["results"]["added"]] == [str((images / "newcomer" / "fresh.png").resolve())]
    search = records[4]
    assert search["files"][0] == {"role": "query", "path": str(queries[0].resolve()), "sha256": sha256_file(queries[0])}
    assert search["model"]["checkpoint_sha256"] == sha256_file(Gallery.open(index).checkpoint)
    assert search["gallery"]["commit_sha256"] == sha256_file(index / "commit.json")
    assert search["results"][0]["candidates"][0]["identity"] == "0001" and search["calibration"] is None
    assert cli("audit", "verify", "--index", index) == 0
    # 16 enrolled images (two queries among them), the outside query and the checkpoint
    assert "7 record(s), 18 file(s) checked: verified" in capsys.readouterr().out
    assert cli("audit", "show", "--index", index) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 7 and "A. Examiner" in shown[0] and "-> 0001 (" in shown[4]

    # (c) a changed gallery image, then a changed query file: each named with its record
    gallery_image = images / "0003" / "002.png"
    original = gallery_image.read_bytes()
    render_hand(41, 0).save(gallery_image)
    assert cli("audit", "verify", "--index", index) == 1
    out = capsys.readouterr().out
    assert f"FAILED: enrolled image file {gallery_image.resolve()} (record 2) was changed" in out
    gallery_image.write_bytes(original)
    query_bytes = queries[1].read_bytes()
    queries[1].unlink()
    assert cli("audit", "verify", "--index", index) == 1
    assert f"first: query file {queries[1].resolve()} (record 6) was removed" in capsys.readouterr().out
    queries[1].write_bytes(query_bytes)
    assert cli("audit", "verify", "--index", index) == 0
    capsys.readouterr()

    shard = sorted((index / "shards").glob("*.npy"))[-1]  # the gallery's own files are checked too
    vectors = shard.read_bytes()
    shard.write_bytes(vectors[:-4] + bytes(4))
    assert cli("audit", "verify", "--index", index) == 1
    assert f"FAILED: gallery: gallery vectors file {shard} is corrupt (SHA-256 mismatch)" in capsys.readouterr().out
    shard.write_bytes(vectors)
    assert cli("audit", "show", "--index", index, "--seq", "6") == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["path"] == str(outside.resolve())
    assert cli("audit", "verify", "--index", tmp_path / "nowhere") == 2
    assert "gallery directory" in capsys.readouterr().err

    # (a) an edited record, (b) a deleted record
    lines = (index / AUDIT_FILE).read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[4])
    edited["results"][0]["candidates"][0]["score"] = 0.5
    (index / AUDIT_FILE).write_bytes(b"".join(lines[:4] + [json.dumps(edited).encode() + b"\n"] + lines[5:]))
    assert cli("audit", "verify", "--index", index) == 1
    assert "first: record 5 was altered: its content no longer matches its hash" in capsys.readouterr().out
    (index / AUDIT_FILE).write_bytes(b"".join(lines[:5] + lines[6:]))
    assert cli("audit", "verify", "--index", index) == 1
    assert "first: record 6 removed: the log goes from record 5 to record 7" in capsys.readouterr().out


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(str(path)).pages)


def test_case_report_holds_the_query_hash_candidates_and_audit_record_and_renders(enrolled, tmp_path, capsys):
    import numpy as np
    import pypdfium2

    images, index = enrolled
    query, second = images / "0002" / "000.png", images / "0004" / "002.png"
    report, out_json = tmp_path / "case.pdf", tmp_path / "hits.json"
    assert cli("search", "--index", index, "--query", query, second, "--top-k", "3", "--report", report,
               "--case-id", "CASE-2026-017", "--examiner", "A. Examiner", "--json", out_json) == 0
    assert f"wrote {report} (SHA-256 {sha256_file(report)})" in capsys.readouterr().out
    found = json.loads(out_json.read_text())
    text = _pdf_text(report)
    assert sha256_file(query) in text and sha256_file(second) in text and found["audit"]["hash"] in text
    assert "Query 1 of 2" in text and "Query 2 of 2" in text
    assert "CASE-2026-017" in text and "A. Examiner" in text
    for result in found["results"]:
        for candidate in result["candidates"]:
            assert f"{candidate['identity']}" in text and f"{candidate['score']:.4f}" in text
    assert "not likelihood ratios" in text and "investigative lead" in text
    assert found["gallery"]["commit_sha256"] in text and found["model"]["checkpoint_sha256"] in text
    assert str(tmp_path) not in text  # no directory outside the gallery is shown
    page = pypdfium2.PdfDocument(str(report))[0].render(scale=1.0).to_pil().convert("L")
    pixels = np.asarray(page)
    assert pixels.shape[0] > pixels.shape[1] > 500  # A4 portrait
    assert (pixels < 128).mean() > 0.01 and pixels.std() > 20  # text and thumbnails, not a blank page
    page.save(tmp_path / "case_page1.png")


def test_display_paths_are_gallery_or_enrolment_relative_else_the_file_name(tmp_path):
    from handclip.gallery.results import display_path

    gallery = tmp_path / "gallery"
    assert display_path(str(gallery.resolve() / "shards" / "x.png"), "p1", gallery) == "shards/x.png"
    assert display_path("/home/examiner/known/p1/sub/3.png", "p1", gallery) == "p1/sub/3.png"
    assert display_path("/home/examiner/p1/known/p1/3.png", "p1") == "p1/3.png"  # the nearest p1 folder
    assert display_path("/home/examiner/cases/item-7.png", "1042") == "item-7.png"  # manifest pid, no folder
    assert display_path("/home/examiner/cases/item-7.png") == "item-7.png"


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.handlers = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def test_html_escapes_names_and_shows_no_directory_outside_the_gallery(assets, tmp_path, capsys):
    images = tmp_path / "hands"
    shutil.copytree(assets["images"], images)
    hostile = ["<script>alert(1)", '"><img src=x onerror=alert(2)>']
    for name, source in zip(hostile, ("0000", "0001")):
        (images / source).rename(images / name)
    index, page_path = tmp_path / "gallery", tmp_path / "hits.html"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress") == 0
    assert cli("search", "--index", index, "--query", images / hostile[0] / "000.png", "--by", "image",
               "--top-k", "15", "--html", page_path) == 0
    page = page_path.read_text()
    tags = _Tags()
    tags.feed(page)
    assert "script" not in tags.tags and tags.handlers == []
    assert tags.tags.count("img") == 16  # the query and its 15 candidates, nothing injected
    assert "&lt;script&gt;alert(1)" in page and "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert str(tmp_path) not in page and "&lt;script&gt;alert(1)/000.png" in page


def test_bad_queries_and_calibration_files_fail_in_one_line_and_write_no_record(enrolled, tmp_path, capsys):
    images, index = enrolled
    before = (index / AUDIT_FILE).read_bytes()
    note = tmp_path / "note.jpg"
    note.write_text("not an image")
    assert cli("search", "--index", index, "--query", note) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1 unusable query image(s)" in err and str(note) in err
    assert (index / AUDIT_FILE).read_bytes() == before
    # A log cut inside a committed record: the search is refused and the log is left as it was.
    cut = before[:-25]
    (index / AUDIT_FILE).write_bytes(cut)
    assert cli("search", "--index", index, "--query", images / "0000" / "000.png") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lost committed records" in err
    assert (index / AUDIT_FILE).read_bytes() == cut
    assert cli("audit", "verify", "--index", index) == 1
    assert "record 2 removed from the end" in capsys.readouterr().out


def _wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sigkill_while_a_search_writes_its_record_leaves_a_verifiable_log(enrolled, tmp_path, capsys):
    images, index = enrolled
    size = (index / AUDIT_FILE).stat().st_size
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **{TORN_WRITE_DELAY_ENV: "60"})
    proc = subprocess.Popen([sys.executable, "-c", CLI_SCRIPT, "search", "--index", str(index), "--query",
                             str(images / "0000" / "000.png")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_for(lambda: (index / AUDIT_FILE).stat().st_size > size, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    capsys.readouterr()
    assert cli("audit", "verify", "--index", index) == 0
    out = capsys.readouterr().out
    assert "interrupted append" in out and "2 record(s)" in out and "verified" in out
    assert cli("search", "--index", index, "--query", images / "0000" / "000.png") == 0
    assert cli("audit", "verify", "--index", index) == 0
    assert "3 record(s)" in capsys.readouterr().out
    assert AuditLog(index).records()[-1]["torn_tail_set_aside"]["bytes"] > 0


@pytest.mark.slow  # a torch interpreter start-up; the torn-append mechanism itself is tested fast in test_audit.py
def test_sigkill_during_an_enrolment_leaves_a_verifiable_log_and_notes_the_unrecorded_batches(assets, tmp_path, capsys):
    index = tmp_path / "gallery"
    cmd = [sys.executable, "-c", CLI_SCRIPT, "enrol", "--checkpoint", str(assets["ckpt"]), "--images",
           str(assets["images"]), "--index", str(index), "--batch-size", "2", "--no-progress"]
    first = tmp_path / "first"
    shutil.copytree(assets["images"] / "0000", first / "0000")
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", first, "--index", index, "--no-progress") == 0
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **{COMMIT_DELAY_ENV: "0.3"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: json.loads((index / "commit.json").read_text() or "{}").get("rows", 0) >= 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    capsys.readouterr()
    assert cli("audit", "verify", "--index", index) == 0  # every committed row is attributed to record 3
    out = capsys.readouterr().out
    assert "the enrolment started in record 3 did not finish (no enrol record closes it): " in out
    assert "of its 12 planned image(s) are in the gallery; enrol the rest again" in out and "verified" in out
    assert cli(*cmd[3:], "--no-progress") == 0  # the rerun completes and is recorded
    assert cli("audit", "verify", "--index", index) == 0
    out = capsys.readouterr().out
    assert "12 of its 12 planned image(s) are in the gallery" in out and "5 record(s)" in out


def _fit_calibration(checkpoint: Path, out: Path, identities=()) -> Path:
    """A KDE calibration for ``checkpoint`` on made-up scores spanning the random-weight model's
    cosines (0.997-1.0), so its candidates get LRs of both signs."""
    import numpy as np

    from handclip.model.inference import load_encoder
    from handclip.forensic.calibration import ScoreCalibration, fit_score_map

    rng = np.random.default_rng(0)
    maps = {kind: fit_score_map(1 - np.abs(rng.normal(0, width * 6e-4, 400)),
                                1 - np.abs(rng.normal(0, width * 2e-3, 4000)), method="kde")
            for kind, width in (("image", 1.0), ("identity", 0.8))}
    summary = {"method": "kde", "cllr": 0.42, "cllr_min": 0.31, "n_identities": 60, "n_images": 480,
               "n_mated": 400, "n_nonmated": 4000, "manifest": "/data/cal/calibration.csv",
               "manifest_sha256": "c" * 64, "splits": ["query", "gallery"], "created": "2026-12-01T00:00:00+0000",
               "kinds": {"identity": {"cllr": 0.38, "cllr_min": 0.30, "n_mated": 400, "n_nonmated": 4000}}}
    if identities:
        import hashlib

        summary["identity_sha256"] = sorted(hashlib.sha256(name.encode()).hexdigest() for name in identities)
    ScoreCalibration(maps, load_encoder(checkpoint, device="cpu").fingerprint(), summary).save(out)
    return out


@pytest.fixture(scope="module")
def calibrations(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    return {"ours": _fit_calibration(assets["ckpt"], root / "calibration.json"),
            "other": _fit_calibration(assets["other"], root / "other-model.json")}


@pytest.mark.parametrize("by", ["identity", "image"])
def test_a_calibrated_search_gives_the_calibrators_lrs_and_states_its_propositions(enrolled, calibrations, tmp_path,
                                                                                 capsys, by):
    from handclip.forensic.calibration import ScoreCalibration, verbal_equivalent

    images, index = enrolled
    out_json, report, page = tmp_path / "hits.json", tmp_path / "case.pdf", tmp_path / "hits.html"
    assert cli("search", "--index", index, "--query", images / "0004" / "001.png", "--by", by, "--top-k", "5",
               "--calibration", calibrations["ours"], "--json", out_json, "--report", report, "--html", page) == 0
    out = capsys.readouterr().out
    calibration = ScoreCalibration.load(calibrations["ours"])
    low, high = calibration.bounds(by)
    found = json.loads(out_json.read_text())
    candidates = found["results"][0]["candidates"]
    scores = [c["score"] for c in candidates]
    expected = calibration.log10_lr(scores, kind=by)
    assert [c["log10_lr"] for c in candidates] == pytest.approx(expected.tolist(), abs=1e-12)
    assert [c["verbal"] for c in candidates] == [verbal_equivalent(v) for v in expected]
    assert len(set(expected.round(6))) > 1 and all(low <= v <= high for v in expected)
    assert found["calibration"]["sha256"] == sha256_file(calibrations["ours"]) and found["calibration"]["kind"] == by
    assert "Hp: The query hand and the candidate's enrolled hand images come from the same person." in out
    assert "Hd: They come from different people, from the population the calibration data represents: " in out
    cllr = "Cllr 0.380 (Cllr_min 0.300)" if by == "identity" else "Cllr 0.420 (Cllr_min 0.310)"
    assert f"{cllr}, 60 identities, 400 mated and 4000 non-mated pairs" in out
    assert f"[{low:+.2f}, {high:+.2f}]" in out and "60 identities, 480 images, of manifest calibration.csv (splits query, gallery; SHA-256 cccc" in out
    from handclip.forensic.reading import SCORE_MEANING, lr_text

    assert "not likelihood ratios" not in out and f"score {scores[0]:.4f}  {lr_text(expected[0])}" in out
    assert SCORE_MEANING in out and "log10 LR +" not in out
    # the open-set answer at the default threshold (LR > 1), from the same LRs the JSON lists
    open_set = found["results"][0]["open_set"]
    assert open_set["reached"] == [rank for rank, lr in enumerate(expected, 1) if lr > 0]
    assert f"open-set answer: {open_set['answer']}" in out
    words = candidates[0]["words"]
    assert words["lr"] == lr_text(expected[0]) and candidates[0]["verbal"] in words["statement"]
    assert f"suggested statement (rank 1): {words['statement']}" in out
    record = AuditLog(index).records()[-1]
    assert record["calibration"]["sha256"] == sha256_file(calibrations["ours"])
    assert {"role": "calibration", "path": str(calibrations["ours"].resolve()),
            "sha256": sha256_file(calibrations["ours"])} in record["files"]
    assert [c["log10_lr"] for c in record["results"][0]["candidates"]] == [c["log10_lr"] for c in candidates]
    text = _pdf_text(report)
    assert "Propositions" in text and "Hd: They come from different people" in text
    assert f"{expected[0]:+.2f}" in text and sha256_file(calibrations["ours"]) in text
    assert "not likelihood ratios" not in text
    # the CLI, the JSON, the HTML page and the PDF give one calibration line: the searched kind's Cllr, rounded
    import html

    line = f"kde calibration of '{by}' scores: {cllr}, 60 identities, 400 mated and 4000 non-mated pairs; " \
           f"log10 LR bounded to [{low:+.2f}, {high:+.2f}]"
    assert found["calibration"]["description"] == line and line in out
    assert line in html.unescape(page.read_text()) and line in " ".join(text.split())
    assert record["calibration"]["description"] == line
    # the PDF and the HTML page word the LR and give the open-set answer as the console does
    flat, page_text = " ".join(text.split()), " ".join(html.unescape(page.read_text()).split())
    assert lr_text(expected[0]) in flat and " ".join(open_set["answer"].split()) in flat
    assert lr_text(expected[0]) in page_text and open_set["answer"] in page_text and SCORE_MEANING in page_text
    assert record["results"][0]["open_set"] == open_set


def test_a_calibration_for_another_model_or_a_bad_calibration_file_is_refused(enrolled, calibrations, tmp_path,
                                                                                capsys):
    images, index = enrolled
    before = (index / AUDIT_FILE).read_bytes()
    query = images / "0000" / "000.png"
    assert cli("search", "--index", index, "--query", query, "--calibration", calibrations["other"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fitted for another model" in err and "weights_sha256" in err
    assert str(calibrations["other"]) in err
    assert cli("search", "--index", index, "--query", query, "--calibration", tmp_path / "missing.json") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"calibration file {tmp_path / 'missing.json'} does not exist" in err
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(calibrations["ours"].read_text()[:200])
    assert cli("search", "--index", index, "--query", query, "--calibration", corrupt) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"calibration file {corrupt} is not valid JSON" in err
    assert (index / AUDIT_FILE).read_bytes() == before  # refused searches leave no record


def test_a_search_warns_naming_how_many_enrolled_people_the_calibration_was_fitted_on(enrolled, assets, tmp_path,
                                                                                       capsys):
    images, index = enrolled
    query = images / "0004" / "001.png"
    in_sample = _fit_calibration(assets["ckpt"], tmp_path / "in-sample.json", identities=["0001", "0003", "x"])
    apart = _fit_calibration(assets["ckpt"], tmp_path / "apart.json", identities=["somebody", "else"])
    assert cli("search", "--index", index, "--query", query, "--calibration", in_sample) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"2 of the 5 identities of gallery {index} were in the calibration" in warnings[0]
    assert cli("search", "--index", index, "--query", query, "--calibration", apart) == 0
    assert "in the calibration" not in capsys.readouterr().err
