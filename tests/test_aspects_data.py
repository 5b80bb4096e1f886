"""Four hand aspects in the data: the synthetic generator (left hands drawn as left hands, palms with palm lines
and no nails, deterministic per seed, the right-dorsal default unchanged) and the manifests that carry
the aspect (synthetic --aspects, 11k --aspect all), with the existing protocols unchanged byte for byte."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import pytest

from handclip.aspects import ASPECTS, aspect_index, mirrored, normalise_aspect, record_aspect
from handclip.config import SyntheticConfig
from handclip.data.protocols import prepare_11k, prepare_11k_all
from handclip.data.splits import DataWarning
from handclip.errors import DataError
from handclip.synthetic import render
from handclip.synthetic.aspect_params import left_hand, palm_side
from handclip.synthetic.dataset import prepare_synthetic, write_synthetic_dataset
from handclip.synthetic.hand_params import identity_params, pose_params
from handclip.synthetic.render import render_hand

from helpers_datasets import make_11k_tree

FOUR = ("dorsal_r", "dorsal_l", "palmar_r", "palmar_l")
# SHA-256 of what main's generator and protocols produced before aspects existed (commit ab78648), computed
# there with the loops below: the right-dorsal default and the one-aspect protocols must reproduce them.
MAIN_RENDERS = "f2b98fcee3d6015acff3ac3d05b5e07524e74d92f1b5cf8103ecd3d29bebd75e"
MAIN_SYNTHETIC_MANIFEST = "e21cae4954ceb3fd90cd09a17aafac0a453a64eeba90517a202a09d1434852b1"
MAIN_11K = {("dorsal_r", False): "4fcb058fa9dbc9db205d240c321f31146052dcb78f545fe4d446859e3d8bb48d",
            ("dorsal_r", True): "6e00c32338689dae9109d0c7b9a8c6ff344cd0cbbfbde54263228755cd9d531a",
            ("dorsal_l", False): "c98a158d801e69e8fc14a9410af29682cb93f7765b5f8fb77fceaef243d793be",
            ("dorsal_l", True): "bbb8af357de4d64a348777359bd05b65b619dcdfe938a2e2f505a8bb3abdc860",
            ("palmar_r", False): "cffec7bbf75fca504b4ce905d0ad8c22c6192d60d92749d79d813c13eaa6cf30",
            ("palmar_r", True): "e739761d77e6738f64d50c8d401967fb71dcdef939a8c1f5f8122d345f4c0976",
            ("palmar_l", False): "85cbff462583e6a0ac7da6cc8237fb5e2f0e8dd63bdca71dfc5646ae6cac9674",
            ("palmar_l", True): "3b1e9fba482302311662e62de2b54ebed8148ea925da26799369569434092d13"}


def _rooted_sha(manifest, root) -> str:
    return hashlib.sha256(manifest.to_csv_bytes().replace(str(root).encode(), b"ROOT")).hexdigest()


def test_right_dorsal_default_renders_and_splits_exactly_as_before(tmp_path):
    digest = hashlib.sha256()
    for seed in (0, 3):
        for size in (32, 64):
            for identity in range(6):
                for sample in range(4):
                    digest.update(render_hand(identity, sample, size=size, seed=seed).tobytes())
    assert digest.hexdigest() == MAIN_RENDERS
    cfg = SyntheticConfig(train_ids=4, test_ids=3, images_per_id=3, image_size=32, seed=2)
    assert cfg.aspects == ("dorsal_r",)
    assert _rooted_sha(prepare_synthetic(tmp_path / "syn", cfg, runs=2, seed=5), tmp_path) == MAIN_SYNTHETIC_MANIFEST
    assert sorted(p.name for p in (tmp_path / "syn" / "0000").iterdir()) == ["000.png", "001.png", "002.png"]


def test_each_aspect_is_deterministic_for_a_seed_and_differs_from_the_others():
    images = {a: np.asarray(render_hand(7, 2, size=64, seed=5, aspect=a), dtype=np.int16) for a in FOUR}
    for aspect in FOUR:
        again = np.asarray(render_hand(7, 2, size=64, seed=5, aspect=aspect), dtype=np.int16)
        assert np.array_equal(images[aspect], again)
        other_seed = np.asarray(render_hand(7, 2, size=64, seed=6, aspect=aspect), dtype=np.int16)
        assert np.abs(images[aspect] - other_seed).mean() > 2.0
    for a in FOUR:
        for b in FOUR:
            if a < b:
                assert np.abs(images[a] - images[b]).mean() > 2.0, (a, b)


def _mask(hand, pose, mirror: bool) -> np.ndarray:
    canvas = render._Canvas(256, pose, mirror)
    render._draw_hand(canvas, hand, pose)
    return np.asarray(canvas.mask) > 0


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_left_hand_is_drawn_as_a_left_hand_with_its_own_marks_not_as_a_mirrored_photo():
    differing_marks = 0
    for identity in range(12):
        right, left = identity_params(identity), left_hand(identity)
        # Shape shared up to a small asymmetry ...
        assert np.allclose(left.finger_lengths, right.finger_lengths, rtol=0.1)
        assert np.allclose(left.skin, right.skin, rtol=0.06)
        assert left.finger_lengths != right.finger_lengths
        # ... marks of its own.
        differing_marks += (left.moles != right.moles) + (left.crease_count != right.crease_count)
        # Same pose, no rotation or shift: the left hand's outline is the right one's mirror image.
        pose = dataclasses.replace(pose_params(identity, 0, 0), rotation=0.0, shift=(0.0, 0.0))
        r, lft = _mask(right, pose, False), _mask(left, pose, True)
        assert _iou(lft, r[:, ::-1]) > 0.85
        assert _iou(lft, r[:, ::-1]) > _iou(lft, r) + 0.1
    assert differing_marks >= 20
    # A left-hand photo is a photo of the left hand, not the right hand's photo flipped.
    photo_left = np.asarray(render_hand(3, 0, aspect="dorsal_l"), dtype=np.int16)
    flipped_right = np.asarray(render_hand(3, 0, aspect="dorsal_r"), dtype=np.int16)[:, ::-1]
    assert np.abs(photo_left - flipped_right).mean() > 5.0


def test_palmar_views_show_palm_lines_and_creases_instead_of_nails():
    polished = [i for i in range(60) if identity_params(i).polished
                and np.abs(np.array(identity_params(i).nail_color) - np.array(identity_params(i).skin)).sum() > 200][:4]
    assert polished
    for identity in polished:
        nail = np.array(identity_params(identity).nail_color)
        near = {}
        for aspect in ("dorsal_r", "palmar_r"):
            pixels = np.asarray(render_hand(identity, 0, size=128, aspect=aspect), dtype=np.float64)
            near[aspect] = int((np.abs(pixels - nail).sum(axis=2) < 60).sum())
        assert near["dorsal_r"] > 15 and near["palmar_r"] < near["dorsal_r"] / 5, (identity, near)
    for identity in range(8):
        palm = palm_side(identity, 0, "palmar_r")
        assert len(palm.principal) >= 3 and len(palm.flexion) == 5 and all(1 <= n <= 2 for c in palm.flexion for n in c)
        # The palm is paler than the back of the hand; left and right palms share the person's line layout.
        assert np.mean(palm.tone) > np.mean(identity_params(identity).skin)
        left = palm_side(identity, 0, "palmar_l")
        assert left != palm
        assert np.allclose(np.array(left.principal[:3]), np.array(palm.principal[:3]), atol=0.2)


def test_aspect_vocabulary_and_mirroring():
    assert [aspect_index(a) for a in FOUR] == [0, 1, 2, 3] and ASPECTS == FOUR
    assert normalise_aspect("Dorsal-Left") == "dorsal_l" and mirrored("palmar_l") == "palmar_r"
    with pytest.raises(DataError, match="unknown aspect 'sideways'"):
        normalise_aspect("sideways")


def test_synthetic_four_aspect_manifest_marks_each_record_and_is_deterministic(tmp_path):
    cfg = SyntheticConfig(train_ids=3, test_ids=3, images_per_id=3, image_size=32, aspects=("palmar_l", "dorsal_r"))
    assert cfg.aspects == ("dorsal_r", "palmar_l")  # canonical order
    first = prepare_synthetic(tmp_path / "a", cfg, runs=2, seed=1)
    again = prepare_synthetic(tmp_path / "a", cfg, runs=2, seed=1)
    assert first.to_csv_bytes() == again.to_csv_bytes()
    assert {(r.subset, r.camid) for r in first.records} == {("dorsal_r", 0), ("palmar_l", 3)}
    for aspect in cfg.aspects:
        own = [r for r in first.records if r.subset == aspect]
        assert {r.pid for r in own if r.split in ("train", "val")} == {0, 1, 2}
        assert all(f"/{aspect}/" in r.path for r in own)
        for run in (0, 1):
            assert sorted(r.pid for r in own if r.split == "gallery" and r.run == run) == [3, 4, 5]
    image = tmp_path / "a" / "0004" / "palmar_l" / "001.png"
    assert np.array_equal(np.asarray(render_hand(4, 1, 32, 0, "palmar_l")), np.asarray(render.Image.open(image)))
    # Asking for other aspects re-renders the folder: nothing of the earlier set is left behind.
    write_synthetic_dataset(tmp_path / "a", 2, 2, size=32, aspects=("dorsal_l",))
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png")) == [
        f"{i:04d}/dorsal_l/{n:03d}.png" for i in range(2) for n in range(2)]


def test_11k_one_aspect_protocols_are_unchanged_byte_for_byte(tmp_path):
    root = make_11k_tree(tmp_path)
    for (aspect, gallery_all), expected in MAIN_11K.items():
        assert _rooted_sha(prepare_11k(root, aspect, runs=3, seed=4, gallery_all=gallery_all), root) == expected


def test_11k_all_aspects_keeps_each_aspects_test_split_and_trains_on_no_test_identity(tmp_path):
    root = make_11k_tree(tmp_path)
    with pytest.warns(DataWarning, match="0001045, 0001051"):
        both = prepare_11k_all(root, runs=3, seed=4)
    for aspect in FOUR:
        one = prepare_11k(root, aspect, runs=3, seed=4)
        key = lambda r: (r.split, r.run, r.path, r.pid)  # noqa: E731
        mine = [key(r) for r in both.records if r.subset == aspect and r.split in ("query", "gallery")]
        assert mine == [key(r) for r in one.records if r.split in ("query", "gallery")]
        assert all(r.camid == aspect_index(aspect) and record_aspect(r) == aspect
                   for r in both.records if r.subset == aspect)
    tested = {r.pid for r in both.records if r.split in ("query", "gallery")}
    assert not tested & {r.pid for r in both.records if r.split in ("train", "val")}
    assert both.identity_overlap() == []
    # 1045 trains dorsal_r and palmar_r but is a test identity of dorsal_l and palmar_l: never trained on.
    assert 1045 in tested and 2 in {r.pid for r in both.split("train")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert prepare_11k_all(root, runs=3, seed=4).to_csv_bytes() == both.to_csv_bytes()
