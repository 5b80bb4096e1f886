import os
import shutil

import pytest
from helpers_datasets import default_11k_rows, make_11k_tree, make_folder_tree, make_hd_tree
from PIL import Image

from handclip import cli
from handclip.data.manifest import Manifest
from handclip.data.protocols import prepare_11k, prepare_hd


@pytest.fixture
def main(monkeypatch):
    # cli.main imports every command module to build its parser; the other helpers' commands may not be
    # merged into this branch yet, so only the two commands under test are registered.
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in ("prepare", "scan")})
    return cli.main


@pytest.fixture(scope="module")
def tree11k(tmp_path_factory):
    return make_11k_tree(tmp_path_factory.mktemp("11k"))


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("handclip: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_prepare_11k_writes_the_same_manifest_as_the_library(main, tree11k, tmp_path, capsys):
    out = tmp_path / "m.csv"
    code = main(["prepare", "11k", "--root", str(tree11k), "--aspect", "dorsal_r", "--runs", "3", "--seed", "2",
                 "--gallery-all", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    expected = prepare_11k(tree11k, "dorsal_r", runs=3, seed=2, gallery_all=True)
    assert out.read_bytes() == expected.to_csv_bytes()
    assert "train_all" in printed and "gallery (per run)" in printed and expected.sha256() in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_prepare_no_summary_and_dry_run(main, tree11k, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["prepare", "11k", "--root", str(tree11k), "--aspect", "palmar_l", "--out", str(out),
                 "--no-summary"]) == 0
    assert "train_all" not in capsys.readouterr().out
    assert main(["prepare", "11k", "--root", str(tree11k), "--aspect", "palmar_l"]) == 0
    assert "train_all" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]


def test_prepare_hd_and_folder(main, tmp_path, capsys):
    hd = make_hd_tree(tmp_path / "hd")
    assert main(["prepare", "hd", "--root", str(hd), "--runs", "2", "--out", str(tmp_path / "hd.csv")]) == 0
    assert Manifest.read(tmp_path / "hd.csv") == prepare_hd(hd, runs=2)
    folder = make_folder_tree(tmp_path / "f", {f"id{k}": 3 for k in range(6)})
    assert main(["prepare", "folder", "--root", str(folder), "--test-ids", "0.5", "--out",
                 str(tmp_path / "f.csv")]) == 0
    assert len({r.pid for r in Manifest.read(tmp_path / "f.csv").split("query")}) == 3


def test_prepare_synthetic(main, tmp_path):
    out = tmp_path / "s.csv"
    assert main(["prepare", "synthetic", "--root", str(tmp_path / "imgs"), "--train-ids", "3", "--test-ids", "2",
                 "--images-per-id", "3", "--size", "32", "--runs", "2", "--out", str(out)]) == 0
    m = Manifest.read(out)
    assert sorted(m.train_label_map()) == [0, 1, 2] and {r.pid for r in m.split("gallery", 1)} == {3, 4}


def _broken_csv(root):
    csv_path = root / "HandInfo.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(line.replace("accessories", "jewellery", 1) for line in lines) + "\n")


BAD = {
    "missing root": (lambda root, tmp: ["--root", str(tmp / "no_such_dir"), "--aspect", "dorsal_r"], "no_such_dir"),
    "missing HandInfo.csv": (lambda root, tmp: (root / "HandInfo.csv").unlink() or ["--root", str(root),
                                                                                   "--aspect", "dorsal_r"], "HandInfo.csv"),
    "csv without columns": (lambda root, tmp: _broken_csv(root) or ["--root", str(root), "--aspect", "dorsal_r"],
                            "accessories"),
    "unknown aspect": (lambda root, tmp: ["--root", str(root), "--aspect", "sideways"], "sideways"),
    "image absent": (lambda root, tmp: (root / "Hands" / "Hand_0000001.jpg").unlink() or
                     ["--root", str(root), "--aspect", "dorsal_r"], "Hand_0000001.jpg"),
    "no aspect": (lambda root, tmp: ["--root", str(root)], "--aspect"),
    "no root": (lambda root, tmp: ["--aspect", "dorsal_r"], "--root"),
    "bad runs": (lambda root, tmp: ["--root", str(root), "--aspect", "dorsal_r", "--runs", "0"], "runs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_prepare_bad_input_one_line_nonzero_no_file(main, tmp_path, capsys, case):
    root = make_11k_tree(tmp_path / "ds", rows=[("0000001", "dorsal_r", 3, 0), ("0001100", "dorsal_r", 3, 0)])
    make_args, fragment = BAD[case]
    out = tmp_path / "out" / "m.csv"
    code = main(["prepare", "11k", *make_args(root, tmp_path), "--out", str(out)])
    assert code != 0
    captured = capsys.readouterr()
    assert fragment in one_error_line(captured.err)
    assert not out.exists() and not (tmp_path / "out").exists()


def test_prepare_keeps_an_existing_manifest_on_error(main, tree11k, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["prepare", "11k", "--root", str(tree11k), "--aspect", "dorsal_l", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["prepare", "11k", "--root", str(tree11k), "--aspect", "nope", "--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_prepare_unknown_dataset_and_misplaced_options(main, tmp_path, capsys):
    assert main(["prepare", "imagenet", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet'" in one_error_line(capsys.readouterr().err)
    assert main(["prepare", "hd", "--root", str(tmp_path), "--aspect", "dorsal_r"]) == 2
    assert "11k dataset only" in one_error_line(capsys.readouterr().err)
    assert main(["prepare", "folder", "--root", str(tmp_path), "--test-ids", "half"]) == 2
    assert "--test-ids 'half'" in one_error_line(capsys.readouterr().err)


def test_prepare_small_identity_message_and_keep_flag(main, tmp_path, capsys):
    root = make_11k_tree(tmp_path / "ds", rows=[("0000001", "dorsal_r", 3, 0), ("0000009", "dorsal_r", 1, 0),
                                               ("0001100", "dorsal_r", 3, 0)])
    out = tmp_path / "m.csv"
    assert main(["prepare", "11k", "--root", str(root), "--aspect", "dorsal_r", "--out", str(out)]) == 2
    assert "0000009" in one_error_line(capsys.readouterr().err) and not out.exists()
    assert main(["prepare", "11k", "--root", str(root), "--aspect", "dorsal_r", "--out", str(out),
                 "--keep-small-ids"]) == 0
    err = capsys.readouterr().err
    assert "handclip: warning:" in err and "0000009" in err and out.exists()


def test_scan_clean_and_dirty(main, tree11k, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    assert main(["prepare", "11k", "--root", str(tree11k), "--aspect", "dorsal_r", "--out", str(manifest),
                 "--no-summary"]) == 0
    capsys.readouterr()
    assert main(["scan", "--manifest", str(manifest)]) == 0
    assert "images are usable" in capsys.readouterr().out
    # damage copies of three images the manifest points at
    m = Manifest.read(manifest)
    paths = m.paths()
    root = tmp_path / "copy"

    shutil.copytree(tree11k, root)
    manifest2 = tmp_path / "m2.csv"
    manifest2.write_text(manifest.read_text().replace(str(tree11k), str(root)))
    victims = [p.replace(str(tree11k), str(root)) for p in paths[:3]]
    open(victims[0], "wb").close()
    os.unlink(victims[1])
    Image.new("RGB", (1, 1)).save(victims[2], "JPEG")
    assert main(["scan", "--manifest", str(manifest2)]) == 1
    out = capsys.readouterr().out
    for victim in victims:
        assert victim in out
    assert f"3 of {len(paths)} images have problems" in out
    assert main(["scan", "--manifest", str(manifest2), "--min-size", "1"]) == 1
    assert "2 of" in capsys.readouterr().out


def test_scan_bad_manifest_is_one_line(main, tmp_path, capsys):
    assert main(["scan", "--manifest", str(tmp_path / "none.csv")]) == 2
    assert "manifest not found" in one_error_line(capsys.readouterr().err)
    bad = tmp_path / "bad.csv"
    bad.write_text("split,path\ntrain,/a.jpg\n")
    assert main(["scan", "--manifest", str(bad)]) == 2
    assert "missing column 'pid'" in one_error_line(capsys.readouterr().err)


def test_prepare_leaves_unusable_images_out_naming_each_and_says_what_it_wrote(main, tmp_path, capsys):
    folder = make_folder_tree(tmp_path / "hands", {f"p{k}": 4 for k in range(6)})
    (folder / "p0" / "empty.jpg").write_bytes(b"")
    (folder / "p1" / "notes.jpg").write_text("not a photo")
    Image.new("RGB", (1, 1)).save(folder / "p2" / "dot.png")
    (folder / "p3" / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "m.csv"
    assert main(["prepare", "folder", "--root", str(folder), "--runs", "2", "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    for name in ("empty.jpg", "notes.jpg", "dot.png"):
        named = [line for line in err.splitlines() if name in line]
        assert len(named) == 1 and named[0].startswith("handclip: warning: left out "), err
    assert len([line for line in err.splitlines() if ".DS_Store" in line and "ignored" in line]) == 1
    manifest = Manifest.read(out)
    assert len(manifest.paths()) == 24 and not {"empty.jpg", "notes.jpg", "dot.png"} & {os.path.basename(p)
                                                                                         for p in manifest.paths()}
    assert "decoded all 27 images: 3 unusable one(s) left out of the manifest" in printed
    assert f"wrote {out}: 24 images of 6 identities, in {len(manifest)} rows" in printed
    assert "train_all = train + val: the 3 training identities, 12 images" in printed
    assert f"{len(manifest)} rows for 24 distinct images" in printed

    kept = tmp_path / "kept.csv"
    assert main(["prepare", "folder", "--root", str(folder), "--runs", "2", "--out", str(kept), "--keep-bad"]) == 0
    printed, err = capsys.readouterr()
    assert len(Manifest.read(kept).paths()) == 27 and err.count("handclip: warning: kept ") == 3
    assert "3 unusable one(s) kept in the manifest (--keep-bad)" in printed
    assert main(["prepare", "folder", "--root", str(folder), "--runs", "2", "--no-image-check"]) == 0
    printed, err = capsys.readouterr()
    assert "images were not decoded (--no-image-check)" in printed and "left out" not in err
    assert "dry run (no --out), nothing written: 27 images" in printed
    assert main(["prepare", "folder", "--root", str(folder), "--keep-bad", "--no-image-check"]) == 2
    assert "not allowed with argument" in one_error_line(capsys.readouterr().err)


def test_prepare_11k_counts_the_rows_each_rule_leaves_out(main, tree11k, tmp_path, capsys):
    assert main(["prepare", "11k", "--root", str(tree11k), "--aspect", "dorsal_r", "--no-summary"]) == 0
    printed = capsys.readouterr().out
    rows = [r for r in default_11k_rows()]
    total = sum(count for _, _, count, _ in rows)
    mine = [r for r in rows if r[1] == "dorsal_r"]
    accessories = sum(count for _, _, count, acc in mine if acc)
    used = sum(count for _, _, count, acc in mine if not acc)
    assert (f"HandInfo.csv: {total} rows; {total - accessories - used} of other aspects (left out); of the "
            f"{accessories + used} dorsal right rows, {accessories} with accessories left out (the protocol's rule), "
            f"0 with an unusable image left out, {used} used") in printed
