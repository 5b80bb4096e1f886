"""Query preparation (crop, rotate, mirror): the transform's checks and order, the search embedding the
prepared image, and an audit record from which the prepared image is recomputed and re-hashed; through
the CLI, the REST API and the case report."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_helpers import add_keys, enrolled_gallery, make_assets, png_bytes

from fastapi.testclient import TestClient  # noqa: E402

from handclip import cli as cli_module  # noqa: E402
from handclip.atomic import sha256_file  # noqa: E402
from handclip.data.images import load_rgb  # noqa: E402
from handclip.data.query_transform import QueryTransform, pixels_sha256, png_bytes as prepared_png  # noqa: E402
from handclip.errors import DataError  # noqa: E402
from handclip.forensic.audit import AuditLog  # noqa: E402
from handclip.serve.app import create_app  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402


def _numbered(width: int, height: int) -> Image.Image:
    """An image whose every pixel is distinct, so where each one ends up can be checked."""
    values = np.arange(width * height * 3, dtype=np.uint32).reshape(height, width, 3)
    return Image.fromarray((values * 7 % 251).astype(np.uint8), "RGB")


# ------------------------------------------------------------------ the transform itself
@pytest.mark.parametrize("crop, rotate, message", [
    ("1,2,3", 0, "is not x,y,w,h"), ("a,b,c,d", 0, "is not x,y,w,h"), ("1.5,2,30,30", 0, "is not x,y,w,h"),
    ("-1,0,30,30", 0, "x and y must be 0 or more"), ("0,0,0,30", 0, "width and height must be positive"),
    (None, "nan", "rotate 'nan' is not an angle"), (None, float("inf"), "rotate inf is not an angle"),
    (None, 360.5, "from -360 to 360"), (None, "ninety", "is not an angle")])
def test_bad_values_are_refused_in_one_line_naming_the_value(crop, rotate, message):
    with pytest.raises(DataError, match=message) as caught:
        QueryTransform.parse(crop, rotate)
    assert "\n" not in str(caught.value)


def test_a_box_outside_the_image_or_too_small_to_search_is_refused_naming_both():
    transform = QueryTransform.parse("10,10,60,20")
    with pytest.raises(DataError, match=r"crop 10,10,60,20 leaves image exhibit.png \(64x48 pixels"):
        transform.check((64, 48), "exhibit.png")
    transform.check((70, 48), "exhibit.png")  # fits
    with pytest.raises(DataError, match="both sides must be at least 16"):
        QueryTransform.parse("0,0,40,15").check((64, 48), "exhibit.png")


def test_crop_rotate_and_mirror_apply_in_that_order():
    image = _numbered(40, 30)
    pixels = np.asarray(image)
    box = QueryTransform.parse("5,4,20,10")
    assert np.array_equal(np.asarray(box.apply(image)), pixels[4:14, 5:25])
    # 90 degrees clockwise after the crop: the crop's bottom-left pixel becomes the top-left one
    turned = np.asarray(QueryTransform.parse("5,4,20,10", 90).apply(image))
    assert turned.shape == (20, 10, 3) and np.array_equal(turned, np.rot90(pixels[4:14, 5:25], k=-1))
    # the mirror comes last: mirroring the turned crop, not turning a mirrored one
    both = np.asarray(QueryTransform.parse("5,4,20,10", 90, True).apply(image))
    assert np.array_equal(both, turned[:, ::-1])
    assert not np.array_equal(both, np.rot90(pixels[4:14, 5:25][:, ::-1], k=-1))
    assert np.array_equal(np.asarray(QueryTransform.parse(None, -270).apply(image)), np.rot90(pixels, k=-1))


def test_a_fine_angle_grows_the_canvas_and_is_deterministic():
    image = _numbered(40, 30)
    first = QueryTransform.parse(None, 12.5).apply(image)
    assert first.width > 40 and first.height > 30
    assert first.getpixel((0, 0)) == (255, 255, 255)  # the new corners are white
    assert pixels_sha256(first) == pixels_sha256(QueryTransform.parse(None, 12.5).apply(image.copy()))
    assert prepared_png(first) == prepared_png(QueryTransform.parse(None, 12.5).apply(image.copy()))


def test_the_box_is_in_pixels_of_the_exif_oriented_photo(tmp_path):
    upright = _numbered(30, 50)  # as a person sees it: 30 wide, 50 high
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the sensor's 50 x 30, with orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    assert load_rgb(path).size == (30, 50)
    with pytest.raises(DataError, match="leaves image"):
        QueryTransform.parse("0,0,40,20").check(load_rgb(path).size, "phone.png")
    out = QueryTransform.parse("2,30,20,18").apply(load_rgb(path))
    assert np.array_equal(np.asarray(out), np.asarray(upright)[30:48, 2:22])


def test_a_record_gives_back_the_same_transform():
    transform = QueryTransform.parse(" 1, 2 ,30,40", "-7.25", True)
    assert QueryTransform.from_record(transform.as_record()) == transform
    assert QueryTransform.parse(None, "-0", False).is_identity and QueryTransform.parse(None, 360).is_identity
    with pytest.raises(DataError, match="is not one HandCLIP wrote"):
        QueryTransform.from_record({"crop": [1, 2, 30, 40], "rotate": 0, "mirror": False})


# ------------------------------------------------------------------ search, audit record, CLI
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("transform-assets"))


@pytest.fixture(scope="module")
def master_gallery(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("transform-master") / "gallery")


@pytest.fixture
def gallery(master_gallery, tmp_path):
    return Path(shutil.copytree(master_gallery, tmp_path / "gallery"))


def _recompute(result: dict) -> tuple[str, str]:
    """The prepared image made again from the original file and the recorded transform: (PNG, pixels) hashes."""
    prepared = QueryTransform.from_record(result["transform"]).apply(load_rgb(result["query"]))
    return hashlib.sha256(prepared_png(prepared)).hexdigest(), pixels_sha256(prepared)


def test_cli_search_embeds_the_prepared_image_and_the_record_reproduces_it(assets, gallery, tmp_path, capsys):
    original = tmp_path / "exhibit 7.png"
    shutil.copy(assets["images"] / "0002" / "001.png", original)
    assert cli_module.main(["search", "--index", str(gallery), "--query", str(original), "--crop", "8,4,40,52",
                            "--rotate", "90", "--mirror", "--top-k", "5", "--device", "cpu",
                            "--json", str(tmp_path / "found.json")]) == 0
    record = AuditLog(gallery).records()[-1]
    result = record["results"][0]
    # the original: its name and the hash of the untouched upload
    assert result["name"] == "exhibit 7.png" and result["sha256"] == sha256_file(original)
    assert result["transform"] == {"order": ["orient", "crop", "rotate", "mirror"], "crop": [8, 4, 40, 52],
                                   "rotate": 90.0, "mirror": True}
    assert record["arguments"]["crop"] == "8,4,40,52" and record["arguments"]["mirror"] is True
    prepared = result["prepared"]
    assert prepared["size"] == [52, 40] and prepared["original_size"] == [64, 64]
    # recomputed from the original and the transform alone, it hashes to what was recorded and stored
    assert _recompute(result) == (prepared["sha256"], prepared["pixels_sha256"])
    assert sha256_file(prepared["path"]) == prepared["sha256"]
    assert {"role": "prepared query", "path": prepared["path"], "sha256": prepared["sha256"]} in record["files"]
    # the search embedded the prepared image: searching that file unchanged gives the very same scores
    assert cli_module.main(["search", "--index", str(gallery), "--query", prepared["path"], "--top-k", "5",
                            "--device", "cpu"]) == 0
    plain = AuditLog(gallery).records()[-1]["results"][0]
    assert plain["transform"] is None and plain["prepared"] is None
    assert [(c["identity"], c["score"]) for c in plain["candidates"]] == \
        [(c["identity"], c["score"]) for c in result["candidates"]]
    # ... and not the original
    assert cli_module.main(["search", "--index", str(gallery), "--query", str(original), "--top-k", "5",
                            "--device", "cpu"]) == 0
    unprepared = AuditLog(gallery).records()[-1]["results"][0]
    assert [c["score"] for c in unprepared["candidates"]] != [c["score"] for c in result["candidates"]]
    capsys.readouterr()
    assert cli_module.main(["audit", "verify", "--index", str(gallery)]) == 0  # the prepared file re-hashes
    Path(prepared["path"]).write_bytes(png_bytes(Image.new("RGB", (40, 52))))
    assert cli_module.main(["audit", "verify", "--index", str(gallery)]) != 0
    assert "prepared query file" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--crop", "40,40,40,40"], "crop 40,40,40,40 leaves image 000.png (64x64 pixels"),
    (["--crop", "1,2,3"], "crop '1,2,3' is not x,y,w,h"),
    (["--rotate", "nan"], "rotate nan is not an angle"),
    (["--rotate", "720"], "rotate 720.0 is not an angle in degrees from -360 to 360")])
def test_cli_refuses_a_bad_transform_in_one_line_and_records_nothing(assets, gallery, capsys, flags, message):
    before = len(AuditLog(gallery).records())
    code = cli_module.main(["search", "--index", str(gallery), "--query", str(assets["images"] / "0001" / "000.png"),
                            "--device", "cpu", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert len(AuditLog(gallery).records()) == before
    assert not (gallery / "prepared").exists()


# ------------------------------------------------------------------ the REST API and the case report
@pytest.fixture
def service(assets, gallery):
    keys = add_keys(gallery)
    state = ServiceState(gallery, calibration=str(assets["calibration"]), device="cpu", batch_size=2)
    with TestClient(create_app(state), base_url="http://localhost") as client:
        yield client, keys, gallery


def _post(client, key, path: Path, **form):
    return client.post("/api/v1/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                       data=form, headers={"X-API-Key": key})


def test_rest_search_prepares_the_upload_and_the_report_shows_original_and_prepared(service, assets, tmp_path):
    from pypdf import PdfReader

    client, keys, index = service
    query = assets["images"] / "0003" / "002.png"
    found = _post(client, keys["both"], query, crop="4,6,50,40", rotate="-15.5", mirror="true", report="true",
                  case_id="2026/027")
    assert found.status_code == 200, found.text
    answer = found.json()["queries"][0]
    assert answer["transform"]["crop"] == [4, 6, 50, 40] and answer["transform"]["rotate"] == -15.5
    assert "path" not in answer["prepared"]  # hashes only: no server path in an answer
    record = AuditLog(index).records()[-1]
    result = record["results"][0]
    assert result["name"] == "002.png" and result["sha256"] == hashlib.sha256(query.read_bytes()).hexdigest()
    assert _recompute(result) == (answer["prepared"]["sha256"], answer["prepared"]["pixels_sha256"])
    assert record["arguments"]["crop"] == "4,6,50,40" and record["arguments"]["rotate"] == -15.5
    pdf = client.get(found.json()["report"], headers={"X-API-Key": keys["both"]})
    assert pdf.status_code == 200
    reader = PdfReader(io.BytesIO(pdf.content))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert "crop x,y,w,h = 4,6,50,40 px; rotated 15.5° anticlockwise; mirrored left-right" in text
    assert answer["prepared"]["sha256"] in text and "the red box is the crop searched" in text
    assert len(reader.pages[0].images) >= 3  # the original with its box, the prepared query, candidates
    (tmp_path / "report.pdf").write_bytes(pdf.content)


@pytest.mark.parametrize("form, message", [
    ({"crop": "30,30,40,40"}, "crop 30,30,40,40 leaves image '000.png' (64x64 pixels"),
    ({"crop": "1,2,3,x"}, "crop: "), ({"crop": "-1,0,30,30"}, "crop: "),
    ({"crop": "0,0,10,40"}, "both sides must be at least 16"),
    ({"rotate": "nan"}, "rotate: "), ({"rotate": "inf"}, "rotate: "), ({"rotate": "400"}, "rotate: "),
    ({"rotate": ""}, "rotate: empty value"), ({"mirror": "perhaps"}, "mirror: ")])
def test_rest_refuses_a_bad_transform_with_422_and_records_nothing(service, assets, form, message):
    client, keys, index = service
    before = len(AuditLog(index).records())
    refused = _post(client, keys["both"], assets["images"] / "0001" / "000.png", **form)
    assert refused.status_code == 422, refused.text
    assert message in refused.json()["error"], refused.json()
    assert len(AuditLog(index).records()) == before
    assert not (index / "serve" / "queries").exists() and not (index / "prepared").exists()
