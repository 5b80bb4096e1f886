import csv
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from helpers_datasets import (
    ASPECT_NAMES,
    CUTOFFS,
    DEFAULT_HD_EXTRA,
    DEFAULT_HD_MAIN,
    make_11k_tree,
    make_folder_tree,
    make_hd_tree,
)

from handclip.config import DataConfig, SyntheticConfig
from handclip.data.manifest import Manifest
from handclip.data.protocols import prepare_11k, prepare_folder, prepare_hd
from handclip.data.splits import DataWarning
from handclip.datasets import prepare_from_config
from handclip.errors import DataError
from handclip.synthetic.dataset import prepare_synthetic


# --------------------------------------------------------------------------- independent expectations
def expected_11k(root: Path, aspect: str) -> tuple[dict[int, set], dict[int, set]]:
    """train/test {int id: set of absolute paths}, computed straight from HandInfo.csv."""
    train, test = defaultdict(set), defaultdict(set)
    with open(root / "HandInfo.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["aspectOfHand"] != ASPECT_NAMES[aspect] or row["accessories"] != "0":
                continue
            pid = int(row["id"])
            (train if pid <= CUTOFFS[aspect] else test)[pid].add(str(root / "Hands" / row["imageName"]))
    return dict(train), dict(test)


def by_pid(records):
    groups = defaultdict(set)
    for r in records:
        groups[r.pid].add(r.path)
    return dict(groups)


def check_split_rules(m: Manifest, train: dict[int, set], test: dict[int, set], runs: int):
    """Every protocol rule shared by all datasets (non-distractor records only for the test side)."""
    train_recs, val_recs = m.split("train"), m.split("val")
    # val: exactly one image per training identity; train = the rest; together = all their images
    val = by_pid(val_recs)
    assert set(val) == set(train)
    assert all(len(paths) == 1 for paths in val.values())
    train_got = by_pid(train_recs)
    for pid, paths in train.items():
        assert train_got[pid] | val[pid] == paths
        assert not (train_got[pid] & val[pid])
    assert len(train_recs) + len(val_recs) == sum(len(p) for p in train.values())
    assert m.runs == list(range(runs))
    for run in range(runs):
        query = by_pid(m.split("query", run))
        gallery = by_pid([r for r in m.split("gallery", run) if not r.is_distractor])
        assert set(gallery) == set(test)
        assert all(len(paths) == 1 for paths in gallery.values())   # one gallery image per test id
        for pid, paths in test.items():
            assert query[pid] | gallery[pid] == paths                # query = the rest
            assert not (query[pid] & gallery[pid])
        assert set(query) == set(test)
    # identities never cross between train and test
    assert not ({r.pid for r in train_recs + val_recs} & {r.pid for r in m.records if r.split in ("query", "gallery")})
    for r in m.records:
        assert os.path.isabs(r.path) and os.path.isfile(r.path)


@pytest.fixture(scope="module")
def tree11k(tmp_path_factory):
    return make_11k_tree(tmp_path_factory.mktemp("11k"))


@pytest.fixture(scope="module")
def tree_hd(tmp_path_factory):
    return make_hd_tree(tmp_path_factory.mktemp("hd"))


# --------------------------------------------------------------------------- 11k
@pytest.mark.parametrize("aspect", list(CUTOFFS))
def test_11k_protocol_rules_per_aspect(tree11k, aspect):
    m = prepare_11k(tree11k, aspect, runs=4, seed=1)
    train, test = expected_11k(tree11k, aspect)
    check_split_rules(m, train, test, runs=4)
    cutoff = CUTOFFS[aspect]
    # ids compared as integers: the zero-padded cutoff+1 ('0001051' < '1050' as text) is a test id,
    # the id equal to the cutoff is a training id, and '1200000 ' is the integer 1200000.
    assert cutoff in train and cutoff - 1 in train and cutoff + 1 in test and 1200000 in test
    assert (1045 in train) == (1045 <= cutoff)
    # accessories filter: id 1700 only had accessories images, id 2 lost its 2 accessories images
    assert 1700 not in train and 1700 not in test
    assert len(train[2]) == 4
    records = {r.pid: r for r in m.records}
    assert records[1200000].original_id == "1200000"
    assert records[2].original_id == "0000002"
    assert {r.subset for r in m.records} == {aspect} and {r.dataset for r in m.records} == {"11k"}
    assert not any(r.is_distractor for r in m.records)


def test_11k_counts_match_the_hand_computed_tree(tree11k):
    m = prepare_11k(tree11k, "dorsal_r", runs=3)
    # dorsal_r train: ids 2 (4 images), 1049 (3), 1050 (5), 1045 (3); test: 1051 (3), 1200000 (4), 1600 (2)
    assert len(m.split("train")) == 15 - 4 and len(m.split("val")) == 4
    for run in range(3):
        assert len(m.split("gallery", run)) == 3
        assert len(m.split("query", run)) == 9 - 3
    table = {line.split("  ")[0].strip(): line.split()[-2:] for line in m.summary().splitlines()[2:8]}
    assert table == {"train_all": ["4", "15"], "train": ["4", "11"], "val": ["4", "4"], "test": ["3", "9"],
                     "query (per run)": ["3", "6"], "gallery (per run)": ["3", "3"]}


def test_11k_is_deterministic_and_seed_dependent(tree11k, tmp_path):
    a = prepare_11k(tree11k, "palmar_l", runs=5, seed=7, gallery_all=True).write(tmp_path / "a.csv")
    b = prepare_11k(tree11k, "palmar_l", runs=5, seed=7, gallery_all=True).write(tmp_path / "b.csv")
    c = prepare_11k(tree11k, "palmar_l", runs=5, seed=8, gallery_all=True).write(tmp_path / "c.csv")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_11k_runs_draw_different_galleries(tree11k):
    m = prepare_11k(tree11k, "dorsal_l", runs=10, seed=0)
    galleries = {frozenset(r.path for r in m.split("gallery", run)) for run in m.runs}
    assert len(galleries) > 1


def test_11k_gallery_all_adds_the_other_aspects_gallery_i(tree11k):
    runs = 3
    plain = prepare_11k(tree11k, "dorsal_r", runs=runs, seed=5)
    full = prepare_11k(tree11k, "dorsal_r", runs=runs, seed=5, gallery_all=True)
    own = {a: prepare_11k(tree11k, a, runs=runs, seed=5) for a in CUTOFFS if a != "dorsal_r"}
    # train, val, query and the aspect's own gallery are unchanged
    for name in ("train", "val", "query"):
        assert full.split(name) == plain.split(name)
    assert [r for r in full.split("gallery") if not r.is_distractor] == plain.split("gallery")
    real_pids = {r.pid for r in full.records if not r.is_distractor}
    distractor_pids = {r.pid for r in full.records if r.is_distractor}
    assert not (real_pids & distractor_pids)
    for run in range(runs):
        extra = [r for r in full.split("gallery", run) if r.is_distractor]
        for aspect, manifest in own.items():
            theirs = [r for r in extra if r.subset == aspect]
            assert {r.path for r in theirs} == {r.path for r in manifest.split("gallery", run)}
            # the same person seen in another aspect never counts as a match
            assert not ({r.pid for r in theirs} & real_pids)
        # distractor pids of different aspects never collide either
        pid_to_aspect = {}
        for r in extra:
            assert pid_to_aspect.setdefault(r.pid, r.subset) == r.subset
    assert {r.split for r in full.records if r.is_distractor} == {"gallery"}
    # 1200000 is a test id in every aspect: it appears under three distinct distractor pids
    assert len({r.pid for r in full.records if r.is_distractor and r.original_id == "1200000"}) == 3


def test_11k_images_may_sit_next_to_the_csv(tmp_path):
    root = make_11k_tree(tmp_path, hands_subdir=False)
    m = prepare_11k(root, "dorsal right", runs=1)
    assert all(Path(r.path).parent == root for r in m.records)


@pytest.mark.parametrize("damage,fragment", [
    ("no_root", "root folder not found"),
    ("no_csv", "HandInfo.csv"),
    ("no_column", "lacks the column(s) accessories"),
    ("missing_image", "does not exist"),
    ("bad_id", "line 3: id 'abc' is not a whole number"),
    ("bad_aspect", "aspectOfHand 'sideways'"),
    ("bad_accessories", "accessories 'yes'"),
])
def test_11k_bad_input(tmp_path, damage, fragment):
    root = make_11k_tree(tmp_path / "ds")
    csv_path = root / "HandInfo.csv"
    lines = csv_path.read_text().splitlines()
    if damage == "no_root":
        root = tmp_path / "elsewhere"
    elif damage == "no_csv":
        csv_path.unlink()
    elif damage == "no_column":
        rows = [line.split(",") for line in lines]
        csv_path.write_text("\n".join(",".join(r[:4] + r[5:]) for r in rows) + "\n")
    elif damage == "missing_image":
        (root / "Hands" / "Hand_0000003.jpg").unlink()
        fragment = "Hand_0000003.jpg listed in"
    else:
        cells = lines[2].split(",")
        column = {"bad_id": 0, "bad_aspect": 6, "bad_accessories": 4}[damage]
        cells[column] = {"bad_id": "abc", "bad_aspect": "sideways", "bad_accessories": "yes"}[damage]
        lines[2] = ",".join(cells)
        csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        prepare_11k(root, "dorsal_r", runs=2)
    assert fragment in str(info.value)


def test_11k_unknown_aspect_and_bad_numbers(tree11k):
    with pytest.raises(DataError, match="unknown 11k aspect 'dorsal'"):
        prepare_11k(tree11k, "dorsal")
    with pytest.raises(DataError, match="runs must be"):
        prepare_11k(tree11k, "dorsal_r", runs=0)
    with pytest.raises(DataError, match="seed must be"):
        prepare_11k(tree11k, "dorsal_r", seed=-1)


def test_11k_too_small_identities(tmp_path):
    rows = [("0000001", "dorsal_r", 3, 0), ("0000005", "dorsal_r", 1, 0),      # train id with 1 image
            ("0001100", "dorsal_r", 3, 0), ("0001200", "dorsal_r", 1, 0)]      # test id with 1 image
    root = make_11k_tree(tmp_path, rows=rows)
    with pytest.raises(DataError, match="training identity 0000005 .* only 1 image"):
        prepare_11k(root, "dorsal_r", runs=2)
    with pytest.warns(DataWarning) as record:
        m = prepare_11k(root, "dorsal_r", runs=2, small_ids="keep")
    messages = " ".join(str(w.message) for w in record)
    assert "0000005" in messages and "0001200" in messages
    assert 5 in {r.pid for r in m.split("train")} and 5 not in {r.pid for r in m.split("val")}
    for run in m.runs:
        assert 1200 in {r.pid for r in m.split("gallery", run)}
        assert 1200 not in {r.pid for r in m.split("query", run)}
    assert "no val image" in m.summary()
    rows[1] = ("0000005", "dorsal_r", 2, 0)
    root2 = make_11k_tree(tmp_path / "b", rows=rows)
    with pytest.raises(DataError, match="test identity 0001200 .* only 1 image"):
        prepare_11k(root2, "dorsal_r", runs=2)


# --------------------------------------------------------------------------- HD
def hd_expected(root):
    base = root / "Original Images" / "1-501"
    train = {pid: {str(base / f"{pid}_{n}.jpg") for n in range(1, c + 1)} for pid, c in DEFAULT_HD_MAIN.items()
             if pid <= 447}
    test = {pid: {str(base / f"{pid}_{n}.jpg") for n in range(1, c + 1)} for pid, c in DEFAULT_HD_MAIN.items()
            if pid > 447}
    return train, test


def test_hd_protocol_rules(tree_hd):
    m = prepare_hd(tree_hd, runs=4, seed=3)
    train, test = hd_expected(tree_hd)
    check_split_rules(m, train, test, runs=4)
    extra_images = sum(DEFAULT_HD_EXTRA.values())
    for run in range(4):
        distractors = [r for r in m.split("gallery", run) if r.is_distractor]
        # ALL images of the 502-712 subjects, in every gallery, ids offset by 1000
        assert len(distractors) == extra_images
        assert {r.pid for r in distractors} == {1000 + pid for pid in DEFAULT_HD_EXTRA}
        assert {r.subset for r in distractors} == {"502-712"}
        assert {r.original_id for r in distractors} == {str(pid) for pid in DEFAULT_HD_EXTRA}
        assert not ({r.pid for r in distractors} & set(test))
        gallery = m.split("gallery", run)
        assert len(gallery) == len(test) + extra_images
    total = [line for line in m.summary().splitlines() if line.startswith("gallery incl. distractors")]
    assert total[0].split()[-2:] == [str(len(test) + len(DEFAULT_HD_EXTRA)), str(len(test) + extra_images)]


def test_hd_is_deterministic(tree_hd, tmp_path):
    a = prepare_hd(tree_hd, runs=3, seed=0).to_csv_bytes()
    assert a == prepare_hd(tree_hd, runs=3, seed=0).to_csv_bytes()
    assert a != prepare_hd(tree_hd, runs=3, seed=1).to_csv_bytes()


def test_hd_offset_grows_when_ids_reach_1000(tmp_path):
    root = make_hd_tree(tmp_path, main={3: 3, 450: 2, 1502: 3}, extra={502: 2})
    m = prepare_hd(root, runs=1)
    distractors = {r.pid for r in m.records if r.is_distractor}
    assert distractors == {10502}          # 1000 + 502 would collide with the real id 1502
    assert 1502 in {r.pid for r in m.split("query", 0)}


def test_hd_root_may_be_the_original_images_folder(tree_hd):
    a = prepare_hd(tree_hd / "Original Images", runs=2).to_csv_bytes()
    assert a == prepare_hd(tree_hd, runs=2).to_csv_bytes()


def test_hd_bad_input(tmp_path):
    with pytest.raises(DataError, match="root folder not found"):
        prepare_hd(tmp_path / "none")
    with pytest.raises(DataError, match="no 'Original Images/1-501' folder"):
        prepare_hd(tmp_path)
    root = make_hd_tree(tmp_path / "a")
    shutil.rmtree(root / "Original Images" / "502-712")
    with pytest.raises(DataError, match="distractor folder not found"):
        prepare_hd(root)
    root = make_hd_tree(tmp_path / "b", main={3: 3, 450: 1})
    with pytest.raises(DataError, match="test identity 450"):
        prepare_hd(root)
    root = make_hd_tree(tmp_path / "c", main={3: 3, 4: 2})
    with pytest.raises(DataError, match="no test identities"):
        prepare_hd(root)


def test_hd_oddly_named_images_are_skipped_with_a_warning(tmp_path):
    root = make_hd_tree(tmp_path)
    shutil.copy(root / "Original Images" / "1-501" / "1_1.jpg", root / "Original Images" / "1-501" / "copy of 1_1.jpg")
    (root / "Original Images" / "1-501" / "Thumbs.db").write_bytes(b"x")
    with pytest.warns(DataWarning, match="copy of 1_1.jpg"):
        m = prepare_hd(root, runs=1)
    assert not any("copy of" in r.path for r in m.records)


# --------------------------------------------------------------------------- folder
def test_folder_protocol_rules(tmp_path):
    counts = {f"person_{k:02d}": 2 + k % 3 for k in range(10)}
    root = make_folder_tree(tmp_path / "ds", counts)
    (root / ".hidden").mkdir()
    (root / "person_00" / "notes.txt").write_text("x")
    m = prepare_folder(root, runs=3, seed=2)
    names = sorted(counts)
    pid_of = {r.original_id: r.pid for r in m.records}
    assert sorted(pid_of) == names and [pid_of[n] for n in names] == list(range(10))
    paths = {pid_of[n]: {str(root / n / f"{k:03d}.jpg") for k in range(counts[n])} for n in names}
    test_pids = {r.pid for r in m.split("query")}
    assert len(test_pids) == 5
    check_split_rules(m, {p: v for p, v in paths.items() if p not in test_pids},
                      {p: v for p, v in paths.items() if p in test_pids}, runs=3)
    assert m.to_csv_bytes() == prepare_folder(root, runs=3, seed=2).to_csv_bytes()
    other = {r.pid for r in prepare_folder(root, runs=3, seed=3).split("query")}
    assert len(other) == 5


@pytest.mark.parametrize("test_ids,expected", [(0.3, 3), (2, 2), (9, 9), (None, 5)])
def test_folder_test_id_counts(tmp_path, test_ids, expected):
    root = make_folder_tree(tmp_path, {f"{k}": 3 for k in range(10)})
    m = prepare_folder(root, runs=1, test_ids=test_ids)
    assert len({r.pid for r in m.split("gallery", 0)}) == expected
    assert len(m.train_label_map()) == 10 - expected


def test_folder_bad_input(tmp_path):
    root = make_folder_tree(tmp_path / "a", {"a": 3, "b": 3, "c": 3})
    for bad in (0, 3, 1.0, 0.0, True, "half"):
        with pytest.raises(DataError, match="--test-ids"):
            prepare_folder(root, test_ids=bad)
    (root / "d").mkdir()
    with pytest.raises(DataError, match="identity folder .*d has no images"):
        prepare_folder(root)
    with pytest.warns(DataWarning):
        m = prepare_folder(root, small_ids="keep", runs=1)
    assert "d" not in {r.original_id for r in m.records}
    single = make_folder_tree(tmp_path / "b", {"only": 3})
    with pytest.raises(DataError, match="at least 2 identity folders"):
        prepare_folder(single)


# --------------------------------------------------------------------------- synthetic and config
def test_prepare_synthetic_splits_first_train_ids(tmp_path):
    cfg = SyntheticConfig(train_ids=4, test_ids=3, images_per_id=3, image_size=32, seed=1)
    m = prepare_synthetic(tmp_path / "synth", cfg, runs=2, seed=0)
    assert sorted(m.train_label_map()) == [0, 1, 2, 3]
    assert {r.pid for r in m.split("query", 0)} == {4, 5, 6}
    train = {i: {str(tmp_path / "synth" / f"{i:04d}" / f"{n:03d}.png") for n in range(3)} for i in range(4)}
    test = {i: {str(tmp_path / "synth" / f"{i:04d}" / f"{n:03d}.png") for n in range(3)} for i in range(4, 7)}
    check_split_rules(m, train, test, runs=2)
    again = prepare_synthetic(tmp_path / "synth", cfg, runs=2, seed=0)
    assert again.to_csv_bytes() == m.to_csv_bytes()


def test_prepare_from_config(tree11k, tree_hd, tmp_path):
    cfg = DataConfig(dataset="11k", root=str(tree11k), aspect="palmar_r", runs=2, split_seed=4, gallery_all=True)
    direct = prepare_11k(tree11k, "palmar_r", runs=2, seed=4, gallery_all=True)
    assert prepare_from_config(cfg, tmp_path) == direct
    path = direct.write(tmp_path / "m.csv")
    assert prepare_from_config(DataConfig(dataset="hd", manifest=str(path)), tmp_path) == direct
    hd = DataConfig(dataset="hd", root=str(tree_hd), runs=3)
    assert prepare_from_config(hd, tmp_path) == prepare_hd(tree_hd, runs=3)
