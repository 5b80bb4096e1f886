import numpy as np
import pytest
from PIL import Image

from handclip.data.images import ImageProblem, load_rgb, scan_images
from handclip.errors import DataError


def _jpeg(path, size=(64, 48), colour=(200, 120, 40)):
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path


@pytest.fixture
def corpus(tmp_path):
    """The bad-image corpus of issue 7, plus a good JPEG."""
    files = {}
    files["good"] = _jpeg(tmp_path / "good.jpg")
    data = _jpeg(tmp_path / "full.jpg", size=(200, 160)).read_bytes()
    files["truncated"] = tmp_path / "truncated.jpg"
    files["truncated"].write_bytes(data[: len(data) // 2])
    (tmp_path / "full.jpg").unlink()
    files["empty"] = tmp_path / "empty.jpg"
    files["empty"].write_bytes(b"")
    alpha = np.zeros((20, 30, 4), np.uint8)
    alpha[..., 0] = 255          # red ...
    alpha[:, :15, 3] = 255       # ... opaque on the left half, fully transparent on the right
    files["alpha"] = tmp_path / "alpha.png"
    Image.fromarray(alpha, "RGBA").save(files["alpha"])
    deep = np.zeros((20, 20), np.uint16)
    deep[:, :10] = 65535
    deep[:, 10:] = 32896          # 128 * 257
    files["16bit"] = tmp_path / "deep.png"
    Image.fromarray(deep).save(files["16bit"])
    files["cmyk"] = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(files["cmyk"], "JPEG", quality=95)  # pure red
    files["tiny"] = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(files["tiny"])
    files["text"] = tmp_path / "notes.jpg"
    files["text"].write_text("this is not an image\n")
    files["missing"] = tmp_path / "missing.jpg"
    return files


def test_alpha_16bit_and_cmyk_load_as_correct_rgb(corpus):
    alpha = load_rgb(corpus["alpha"])
    assert alpha.mode == "RGB" and alpha.size == (30, 20)
    assert alpha.getpixel((2, 5)) == (255, 0, 0)
    assert alpha.getpixel((25, 5)) == (255, 255, 255)   # transparent -> white background, not black

    deep = load_rgb(corpus["16bit"])
    assert deep.mode == "RGB"
    assert deep.getpixel((2, 2)) == (255, 255, 255)      # scaled, not clipped to 255 for everything
    assert deep.getpixel((15, 2)) == (128, 128, 128)

    cmyk = load_rgb(corpus["cmyk"])
    assert cmyk.mode == "RGB"
    r, g, b = cmyk.getpixel((5, 5))
    assert r > 230 and g < 25 and b < 25


def test_palette_grey_and_la_modes(tmp_path):
    palette = Image.new("P", (8, 8))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").getpixel((1, 1)) == (10, 200, 30)
    Image.new("L", (8, 8), 77).save(tmp_path / "l.png")
    assert load_rgb(tmp_path / "l.png").getpixel((0, 0)) == (77, 77, 77)
    Image.new("LA", (8, 8), (50, 0)).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)


@pytest.mark.parametrize("name,fragment", [
    ("truncated", "truncated or corrupt"),
    ("empty", "empty file (0 bytes)"),
    ("text", "not a readable image"),
    ("missing", "file not found"),
])
def test_unusable_files_raise_data_error_naming_the_file(corpus, name, fragment):
    with pytest.raises(DataError) as info:
        load_rgb(corpus[name])
    message = str(info.value)
    assert str(corpus[name]) in message and fragment in message


def test_load_rgb_returns_a_detached_image(corpus):
    image = load_rgb(corpus["good"])
    corpus["good"].unlink()                  # the file handle must already be closed
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.asarray(image).mean() > 50


def test_scan_reports_every_problem_at_once(corpus, tmp_path):
    (tmp_path / "a_dir.jpg").mkdir()
    paths = [str(p) for p in corpus.values()] + [str(corpus["text"]), str(tmp_path / "a_dir.jpg")]
    problems = scan_images(paths, min_size=16, workers=4)
    assert all(isinstance(p, ImageProblem) for p in problems)
    reasons = {p.path: p.reason for p in problems}
    assert len(problems) == len(reasons)                         # duplicates checked once
    assert [p.path for p in problems] == sorted(reasons)         # sorted by path
    assert set(reasons) == {str(corpus[k]) for k in ("truncated", "empty", "tiny", "text", "missing")} | {
        str(tmp_path / "a_dir.jpg")}
    assert "too small (1x1" in reasons[str(corpus["tiny"])]
    assert "truncated" in reasons[str(corpus["truncated"])]
    assert "0 bytes" in reasons[str(corpus["empty"])]
    assert "not a readable image" in reasons[str(corpus["text"])]
    assert "not found" in reasons[str(corpus["missing"])]
    assert "directory" in reasons[str(tmp_path / "a_dir.jpg")]
    # The same answer with one worker (no thread pool).
    assert scan_images(paths, min_size=16, workers=1) == problems


def test_scan_min_size_and_clean_input(corpus, tmp_path):
    good = [corpus["good"], corpus["alpha"], corpus["16bit"], corpus["cmyk"]]
    assert scan_images(good, min_size=16) == []
    assert scan_images([], min_size=16) == []
    small = scan_images(good, min_size=30)
    # good is 64x48, alpha 30x20, 16-bit 20x20, cmyk 24x24
    assert {p.path for p in small} == {str(corpus["alpha"]), str(corpus["16bit"]), str(corpus["cmyk"])}


def test_scan_detects_corruption_inside_a_large_jpeg(tmp_path):
    # A truncated big JPEG is detected even though the scan decodes JPEGs at reduced scale.
    data = _jpeg(tmp_path / "big.jpg", size=(1600, 1200)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: int(len(data) * 0.9)])
    problems = scan_images([tmp_path / "big.jpg", tmp_path / "cut.jpg"], min_size=16)
    assert [p.path for p in problems] == [str(tmp_path / "cut.jpg")]
