"""`handclip enrol` and `handclip search` end to end with the tiny model (random weights) on synthetic hands."""

from __future__ import annotations

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
from handclip.gallery import Gallery
from handclip.gallery.writer import COMMIT_DELAY_ENV

SRC = str(Path(__file__).resolve().parents[1] / "src")
# The real `handclip` entry point, limited to the two commands under test so these tests do not
# depend on every other subcommand module importing.
OUR_COMMANDS = {name: cli_module.COMMANDS[name] for name in ("enrol", "search")}
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
    images = write_synthetic_dataset(root / "hands", num_ids=6, images_per_id=3, size=64, seed=0)
    return {"images": Path(images), "ckpt": _checkpoint(root / "model.pt", 0),
            "other": _checkpoint(root / "other.pt", 1)}


def cli(*args) -> int:
    saved = cli_module.COMMANDS
    cli_module.COMMANDS = OUR_COMMANDS
    try:
        return cli_module.main([str(a) for a in args])
    finally:
        cli_module.COMMANDS = saved


def test_enrol_then_search_finds_the_enrolled_identity_and_writes_html_and_json(assets, tmp_path, capsys):
    index = tmp_path / "gallery"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", assets["images"], "--index", index,
               "--batch-size", "4", "--no-progress") == 0
    assert "enrolled 18 new image(s)" in capsys.readouterr().out
    query = assets["images"] / "0003" / "001.png"
    out_json, out_html = tmp_path / "hits.json", tmp_path / "hits.html"
    # No --checkpoint: the gallery recorded which model enrolled it.
    assert cli("search", "--index", index, "--query", query, "--top-k", "3", "--json", out_json,
               "--html", out_html) == 0
    result = json.loads(out_json.read_text())["results"][0]
    assert result["query"] == str(query)
    top = result["candidates"][0]
    assert top["identity"] == "0003" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["num_images"] == 3 and top["path"] == str(query.resolve())
    assert [c["rank"] for c in result["candidates"]] == [1, 2, 3]
    page = out_html.read_text()
    assert page.count("data:image/jpeg;base64,") == 4  # the query and its three candidates
    assert "0003" in page and "1.0000" in page
    assert cli("search", "--index", index, "--query", query, "--by", "image", "--top-k", "2",
               "--json", out_json) == 0
    assert json.loads(out_json.read_text())["results"][0]["candidates"][0]["path"] == str(query.resolve())
    # The approximate index answers the same, and the report says which index ran.
    assert cli("search", "--index", index, "--query", query, "--by", "image", "--top-k", "2",
               "--index-type", "pca", "--json", out_json) == 0
    report = json.loads(out_json.read_text())
    assert report["results"][0]["candidates"][0]["path"] == str(query.resolve())
    assert report["index_type"] == "pca" and (index / "ann" / "pca.faiss").exists()


def test_re_enrolment_and_copied_files_are_not_duplicated_and_new_people_append(assets, tmp_path, capsys):
    images = tmp_path / "hands"
    shutil.copytree(assets["images"], images)
    index = tmp_path / "gallery"
    cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress")
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress") == 0
    assert "enrolled 0 new image(s) (18 already in the gallery)" in capsys.readouterr().out
    (images / "newcomer").mkdir()
    shutil.copy(images / "0000" / "000.png", images / "newcomer" / "copy.png")  # same bytes, new name
    from handclip.synthetic.render import render_hand

    render_hand(40, 0).save(images / "newcomer" / "fresh.png")
    cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress")
    assert "enrolled 1 new image(s)" in capsys.readouterr().out
    gallery = Gallery.open(index)
    assert len(gallery) == 19 and gallery.images_of("newcomer") == [str((images / "newcomer" / "fresh.png").resolve())]


def test_enrol_from_a_manifest_uses_its_pids(assets, tmp_path):
    from handclip.data.protocols import prepare_folder

    manifest_path = tmp_path / "manifest.csv"
    manifest = prepare_folder(assets["images"], runs=2, seed=0)
    manifest.write(manifest_path)
    index = tmp_path / "gallery"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", manifest_path, "--index", index,
               "--split", "gallery", "--no-progress") == 0
    gallery = Gallery.open(index)
    expected = {r.path: str(r.pid) for r in manifest.split("gallery")}
    assert len(gallery) == len(expected)
    assert sorted(gallery.identities()) == sorted(set(expected.values()))


def test_another_model_is_refused_for_search_and_enrolment(assets, tmp_path, capsys):
    index = tmp_path / "gallery"
    cli("enrol", "--checkpoint", assets["ckpt"], "--images", assets["images"], "--index", index, "--no-progress")
    capsys.readouterr()
    query = assets["images"] / "0001" / "000.png"
    assert cli("search", "--index", index, "--query", query, "--checkpoint", assets["other"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "enrolled with a different model" in err and "weights_sha256" in err
    assert cli("enrol", "--checkpoint", assets["other"], "--images", assets["images"], "--index", index) == 2
    assert "different model" in capsys.readouterr().err
    assert len(Gallery.open(index)) == 18


def test_bad_queries_and_galleries_give_one_line_errors(assets, tmp_path, capsys):
    index = tmp_path / "gallery"
    bad = tmp_path / "note.jpg"
    bad.write_text("not an image")
    assert cli("search", "--index", index, "--query", bad, "--checkpoint", assets["ckpt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    cli("enrol", "--checkpoint", assets["ckpt"], "--images", assets["images"], "--index", index, "--no-progress")
    capsys.readouterr()
    assert cli("search", "--index", index, "--query", bad, tmp_path / "missing.png") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 unusable query image(s)" in err and str(bad) in err and "missing.png" in err
    (index / "commit.json").write_text('{"uid": ')
    assert cli("search", "--index", index, "--query", assets["images"] / "0000" / "000.png") == 2
    assert f"{index / 'commit.json'} is corrupt or truncated" in capsys.readouterr().err
    from handclip.model.inference import load_encoder

    loaded = load_encoder(assets["ckpt"], device="cpu")
    empty = tmp_path / "empty"
    Gallery.create(empty, loaded.fingerprint(), loaded.feature_dim, checkpoint=str(assets["ckpt"]))
    assert cli("search", "--index", empty, "--query", assets["images"] / "0000" / "000.png") == 2
    assert "is empty; enrol images" in capsys.readouterr().err
    Gallery.create(tmp_path / "small", {"feature_dim": 4}, 4, checkpoint=str(assets["ckpt"]))
    assert cli("search", "--index", tmp_path / "small", "--query", assets["images"] / "0000" / "000.png") == 2
    assert "different model" in capsys.readouterr().err


@pytest.mark.slow  # two interpreter start-ups with torch; the mechanism itself is tested fast in test_gallery.py
def test_killed_enrol_command_keeps_committed_batches_and_rerun_completes(assets, tmp_path):
    index = tmp_path / "gallery"
    cmd = [sys.executable, "-c", CLI_SCRIPT, "enrol", "--checkpoint", str(assets["ckpt"]), "--images",
           str(assets["images"]), "--index", str(index), "--batch-size", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **{COMMIT_DELAY_ENV: "0.3"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until three batches are committed, then kill mid-batch
        commit = index / "commit.json"
        if commit.exists() and json.loads(commit.read_text() or "{}").get("rows", 0) >= 6:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survived = Gallery.open(index)
    assert 6 <= len(survived) < 18 and len(survived) % 2 == 0
    done = set(survived.paths)
    env.pop(COMMIT_DELAY_ENV)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"enrolled {18 - len(survived)} new image(s) ({len(survived)} already in the gallery)" in rerun.stdout
    final = Gallery.open(index)
    assert len(final) == 18 and len(set(final.paths)) == 18 and done <= set(final.paths)


def test_enrolment_dedupes_by_content_enrols_changed_files_and_reports_other_identities(assets, tmp_path, capsys):
    from handclip.synthetic.render import render_hand

    images = tmp_path / "hands"
    for person in ("alice", "bob"):
        (images / person).mkdir(parents=True)
    render_hand(1, 0).save(images / "alice" / "photo.png")
    render_hand(2, 0).save(images / "bob" / "photo.png")
    index = tmp_path / "gallery"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress") == 0
    capsys.readouterr()
    render_hand(3, 1).save(images / "alice" / "photo.png")  # another picture at a known path
    (images / "carol").mkdir()
    shutil.copy(images / "bob" / "photo.png", images / "carol" / "same.png")  # bob's bytes under carol
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "enrolled 1 new image(s) (2 already in the gallery)" in out
    assert "1 image(s) at already enrolled paths had new content" in out and "earlier rows are kept" in out
    assert "same.png (carol) has the same content as" in out and "enrolled as bob" in out
    gallery = Gallery.open(index)
    alice = str((images / "alice" / "photo.png").resolve())
    assert gallery.images_of("alice") == [alice, alice] and "carol" not in gallery.identities()
    assert len({e['sha256'] for e in gallery.entries()}) == 3


def test_enrol_and_search_argument_errors_are_one_line_naming_the_users_value(assets, tmp_path, capsys):
    from handclip.data.protocols import prepare_folder

    manifest = tmp_path / "manifest.csv"
    prepare_folder(assets["images"], runs=1, seed=0).write(manifest)
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", manifest, "--index", tmp_path / "g",
               "--split", "bogus") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'bogus'" in err and "internal error" not in err
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", assets["images"], "--index", manifest) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--index {manifest} is a file" in err
    index = tmp_path / "gallery"
    cli("enrol", "--checkpoint", assets["ckpt"], "--images", assets["images"], "--index", index, "--no-progress")
    capsys.readouterr()
    out_dir = tmp_path / "pages"
    out_dir.mkdir()
    assert cli("search", "--index", index, "--query", assets["images"] / "0000" / "000.png", "--html", out_dir) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--html {out_dir} is a directory" in err and ".tmp" not in err


def test_failed_enrolment_into_a_new_gallery_creates_nothing(assets, tmp_path, capsys):
    images = tmp_path / "hands"
    shutil.copytree(assets["images"], images)
    (images / "0000" / "broken.png").write_bytes(b"not a png")
    index = tmp_path / "new" / "gallery"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress") == 2
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_identity_names_with_terminal_escapes_are_printed_escaped(assets, tmp_path, capsys):
    images = tmp_path / "hands"
    evil = "\x1b[2J\x1b]0;pwned\x07mallory"
    (images / evil).mkdir(parents=True)
    shutil.copy(assets["images"] / "0000" / "000.png", images / evil / "a.png")
    shutil.copy(assets["images"] / "0001" / "000.png", tmp_path / "q.png")
    (images / "0001").mkdir()
    shutil.copy(assets["images"] / "0001" / "001.png", images / "0001" / "b.png")
    index = tmp_path / "gallery"
    assert cli("enrol", "--checkpoint", assets["ckpt"], "--images", images, "--index", index, "--no-progress") == 0
    assert cli("search", "--index", index, "--query", images / evil / "a.png", "--by", "image") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b]0;pwned\\x07mallory" in out


def test_search_thumbnails_honour_exif_orientation(tmp_path):
    import base64
    import io

    from PIL import Image

    from handclip.htmlpage import thumbnail_data_uri

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees (portrait)
    Image.new("RGB", (80, 40), (200, 10, 10)).save(path, exif=exif)
    uri = thumbnail_data_uri(path, 60)
    shown = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert shown.size == (30, 60)


@pytest.mark.slow  # interpreter start-ups with torch; the mechanisms are tested fast in test_gallery_reliability.py
def test_two_enrol_commands_into_the_same_new_gallery_both_complete(assets, tmp_path):
    halves = {}
    for half, people in (("a", ("0000", "0001", "0002")), ("b", ("0003", "0004", "0005"))):
        halves[half] = tmp_path / half
        for person in people:
            shutil.copytree(assets["images"] / person, halves[half] / person)
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **{COMMIT_DELAY_ENV: "0.05"})
    for trial in range(3):
        index = tmp_path / f"gallery{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", CLI_SCRIPT, "enrol", "--checkpoint", str(assets["ckpt"]),
                                   "--images", str(folder), "--index", str(index), "--batch-size", "2",
                                   "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for folder in halves.values()]
        results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
        assert [code for _, _, code in results] == [0, 0], [err for _, err, _ in results]
        gallery = Gallery.open(index)
        assert len(gallery) == 18 and sorted(gallery.identities()) == [f"000{i}" for i in range(6)]
