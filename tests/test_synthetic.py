"""The procedural synthetic hand set: determinism, identity structure, folder layout, re-use."""

import json

import numpy as np
import pytest
from PIL import Image

from handclip.errors import DataError
from handclip.synthetic.dataset import MARKER_NAME, write_synthetic_dataset
from handclip.synthetic.hand_params import identity_params
from handclip.synthetic.render import render_hand


def _pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_render_is_deterministic_rgb_of_requested_size():
    for size in (32, 64, 96):
        a, b = render_hand(3, 1, size=size, seed=7), render_hand(3, 1, size=size, seed=7)
        assert a.mode == "RGB" and a.size == (size, size)
        assert np.array_equal(_pixels(a), _pixels(b))


def test_identity_sample_and_seed_each_change_the_image():
    base = _pixels(render_hand(3, 1))
    for other in (render_hand(4, 1), render_hand(3, 2), render_hand(3, 1, seed=1)):
        assert np.abs(base - _pixels(other)).mean() > 2.0


def test_identity_params_are_fixed_per_identity_and_differ_between_identities():
    assert identity_params(5, seed=2) == identity_params(5, seed=2)
    hands = [identity_params(i) for i in range(40)]
    lengths = np.array([h.finger_lengths for h in hands])
    skins = np.array([h.skin for h in hands])
    # Every identity has its own finger proportions; tones and palms span a real range.
    assert len({tuple(np.round(r, 6)) for r in lengths}) == 40
    assert lengths.std(axis=0).min() > 0.03
    assert skins.mean(axis=1).max() - skins.mean(axis=1).min() > 60
    assert np.ptp([h.palm_width for h in hands]) > 0.15
    assert identity_params(5, seed=0) != identity_params(5, seed=1)


def test_hand_is_drawn_in_the_frame_with_skin_coloured_pixels():
    # The hand's own skin colour (before lighting) must appear on a good share of the image.
    for identity in range(6):
        skin = np.array(identity_params(identity).skin)
        hits = []
        for sample in range(4):
            px = _pixels(render_hand(identity, sample)).astype(np.float64)
            ratio = px / (skin + 1.0)
            # Lighting scales channels together (within a colour cast); the background rarely does.
            uniform = (ratio.std(axis=2) < 0.12) & (ratio.mean(axis=2) > 0.5) & (ratio.mean(axis=2) < 1.6)
            hits.append(uniform.mean())
        assert np.mean(hits) > 0.08, (identity, hits)


def test_bad_arguments_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="size"):
        render_hand(0, 0, size=8)
    with pytest.raises(DataError, match="identity"):
        render_hand(-1, 0)
    with pytest.raises(DataError, match="0 x 3"):
        write_synthetic_dataset(tmp_path / "s", 0, 3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_synthetic_dataset(tmp_path / "file", 2, 2)


def test_dataset_layout_counts_and_content(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", num_ids=4, images_per_id=3, size=32, seed=1)
    assert root == tmp_path / "syn"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == ["0000", "0001", "0002", "0003"]
    for folder in folders:
        assert sorted(p.name for p in (root / folder).iterdir()) == ["000.png", "001.png", "002.png"]
    img = Image.open(root / "0002" / "001.png")
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.array_equal(_pixels(img), _pixels(render_hand(2, 1, size=32, seed=1)))
    assert not list(root.rglob("*.tmp")), "temporary files left behind"
    marker = json.loads((root / MARKER_NAME).read_text())
    assert (marker["num_ids"], marker["images_per_id"], marker["size"], marker["seed"]) == (4, 3, 32, 1)


def test_complete_dataset_is_not_rendered_again(tmp_path, monkeypatch):
    root = write_synthetic_dataset(tmp_path / "syn", 3, 2, size=32)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    import handclip.synthetic.dataset as synthetic

    def fail(*args, **kwargs):
        raise AssertionError("rendered again although the folder was complete")

    monkeypatch.setattr(synthetic, "render_hand", fail)
    write_synthetic_dataset(tmp_path / "syn", 3, 2, size=32)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == mtimes


def test_missing_image_or_changed_parameters_trigger_a_rerender(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", 3, 2, size=32, seed=0)
    (root / "0001" / "001.png").unlink()
    write_synthetic_dataset(root, 3, 2, size=32, seed=0)
    assert (root / "0001" / "001.png").is_file()

    # New seed and fewer ids: images match the new parameters and stale files are gone.
    write_synthetic_dataset(root, 2, 3, size=48, seed=5)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["0000", "0001"]
    assert sorted(p.name for p in (root / "0001").iterdir()) == ["000.png", "001.png", "002.png"]
    img = Image.open(root / "0001" / "002.png")
    assert img.size == (48, 48)
    assert np.array_equal(_pixels(img), _pixels(render_hand(1, 2, size=48, seed=5)))
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == 5


def test_interrupted_render_is_not_mistaken_for_complete(tmp_path, monkeypatch):
    import handclip.synthetic.dataset as synthetic

    write_synthetic_dataset(tmp_path / "syn", 2, 2, size=32, seed=0)
    calls = {"n": 0}
    real = synthetic.render_hand

    def crash_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_hand", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "syn", 2, 2, size=32, seed=9)
    assert not (tmp_path / "syn" / MARKER_NAME).exists()
    monkeypatch.setattr(synthetic, "render_hand", real)
    write_synthetic_dataset(tmp_path / "syn", 2, 2, size=32, seed=9)
    img = Image.open(tmp_path / "syn" / "0001" / "001.png")
    assert np.array_equal(_pixels(img), _pixels(real(1, 1, size=32, seed=9)))


def test_parallel_render_matches_serial_rendering(tmp_path, monkeypatch):
    import handclip.synthetic.dataset as synthetic

    monkeypatch.setattr(synthetic, "PARALLEL_MIN_IMAGES", 4)
    monkeypatch.setattr(synthetic, "_worker_count", lambda: 2)
    root = write_synthetic_dataset(tmp_path / "syn", 4, 3, size=16, seed=3)
    assert len(list(root.rglob("*.png"))) == 12
    for identity in range(4):
        for sample in range(3):
            img = Image.open(root / f"{identity:04d}" / f"{sample:03d}.png")
            assert np.array_equal(_pixels(img), _pixels(render_hand(identity, sample, size=16, seed=3)))
