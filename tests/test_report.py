"""Pictures and HTML report: files appear whole, decode, carry the content, and vanish on failure."""

import base64
import math
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from handclip.errors import DataError, HandCLIPError
from handclip.evaluate.metrics import aggregate_runs
from handclip.evaluate.plots import plot_cmc, plot_training_curves, ranked_list_sheet
from handclip.evaluate.report import html_report, markdown_table


def fake_hand(path, pid, n):
    rng = np.random.default_rng(pid * 10 + n)
    img = Image.new("RGB", (48, 64), tuple(int(v) for v in rng.integers(120, 230, 3)))
    draw = ImageDraw.Draw(img)
    draw.ellipse([12, 30, 36, 60], fill=(200 - 20 * pid, 150, 110))
    for f in range(4):
        draw.rectangle([12 + 6 * f, 8 + (f % 2) * 4, 16 + 6 * f, 34], fill=(200 - 20 * pid, 150, 110))
    img.save(path)
    return str(path)


def png_size(path):
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        return img.size


def no_temp_files(directory):
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_cmc_plot(tmp_path):
    out = tmp_path / "cmc.png"
    plot_cmc({"model": np.linspace(0.6, 1.0, 50), "baseline": [0.2, 0.4]}, out, max_rank=20)
    w, h = png_size(out)
    assert 500 <= w <= 1200 and 350 <= h <= 900
    assert no_temp_files(tmp_path)
    with pytest.raises(HandCLIPError):
        plot_cmc({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_ranked_list_sheet(tmp_path):
    paths = {(p, n): fake_hand(tmp_path / f"h{p}_{n}.png", p, n) for p in range(4) for n in range(3)}
    queries = [(paths[(p, 0)], p) for p in range(3)]
    rankings = [
        [(paths[(g, n)], g, 0.1 * i) for i, (g, n) in enumerate(sorted(paths, key=lambda k: (k[0] != q, k)))
         if n > 0]
        for q in range(3)
    ]
    out = tmp_path / "sheet.png"
    ranked_list_sheet(queries, rankings, out, top_k=5)
    w, h = png_size(out)
    assert w > h and 600 <= w <= 1400 and 300 <= h <= 900  # 3 rows of 1 + 5 tiles
    # green and red frames both present
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3).astype(int)
    green = np.all(np.abs(pixels - [0x1A, 0x98, 0x50]) < 12, axis=1).sum()
    red = np.all(np.abs(pixels - [0xD7, 0x30, 0x27]) < 12, axis=1).sum()
    assert green > 500 and red > 500


def test_ranked_list_sheet_missing_image_leaves_nothing(tmp_path):
    good = fake_hand(tmp_path / "q.png", 0, 0)
    out = tmp_path / "out" / "sheet.png"
    with pytest.raises(DataError, match="missing.png: file not found"):
        ranked_list_sheet([(good, 0)], [[(good, 0, 0.1), (str(tmp_path / "missing.png"), 1, 0.2)]], out)
    assert not out.exists()
    assert not out.parent.exists() or no_temp_files(out.parent)
    with pytest.raises(HandCLIPError, match="2 queries but 1 rankings"):
        ranked_list_sheet([(good, 0), (good, 0)], [[]], out)


def test_training_curves(tmp_path):
    history = [dict(epoch=e, stage=1, loss=2 / e, loss_i2t=1 / e, lr=1e-4 * e) for e in range(1, 6)]
    history += [dict(epoch=e, stage=2, loss=1 / e, loss_id=0.5 / e, lr=5e-6, val_rank1=0.5 + 0.05 * e,
                     val_mAP=0.4 + 0.05 * e if e % 2 else math.nan) for e in range(1, 6)]
    out = tmp_path / "curves.png"
    plot_training_curves(history, out)
    w, h = png_size(out)
    assert 1000 <= w <= 1800 and 500 <= h <= 1000  # two stage rows
    one = tmp_path / "one.png"
    plot_training_curves([dict(epoch=1, loss=1.0)], one)
    assert png_size(one)[1] < h  # a single row
    with pytest.raises(HandCLIPError):
        plot_training_curves([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_markdown_table_formats_percent_and_mean_std():
    agg = aggregate_runs([{"rank1": 0.9, "mAP": 0.8}, {"rank1": 0.8, "mAP": 0.7}])
    table = markdown_table([{"method": "HandCLIP", "rank1": agg["rank1"], "mAP": agg["mAP"], "runs": 2},
                            {"method": "zero|shot", "rank1": 0.5, "mAP": 0.25, "runs": 1}])
    lines = table.strip().splitlines()
    assert lines[0] == "| method | Rank-1 | mAP | runs |"
    assert lines[2] == "| HandCLIP | 85.00 ± 5.00 | 75.00 ± 5.00 | 2 |"
    assert lines[3] == "| zero\\|shot | 50.00 | 25.00 | 1 |"


def test_html_report_is_self_contained(tmp_path):
    plot_cmc({"model": [0.5, 0.9, 1.0]}, tmp_path / "cmc.png")
    table = markdown_table([{"method": "HandCLIP", "rank1": 0.875, "mAP": 0.5}])
    out = tmp_path / "report.html"
    html_report(out, "Demo <report>", table, [("CMC", tmp_path / "cmc.png")], sections={"Notes": "a < b"})
    text = out.read_text()
    assert "<th>Rank-1</th>" in text and "<td>87.50</td>" in text
    assert "Demo &lt;report&gt;" in text and "a &lt; b" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 1
    assert base64.b64decode(images[0]) == (tmp_path / "cmc.png").read_bytes()
    assert "src=\"file:" not in text and "http" not in text.replace("http-equiv", "")


def test_html_report_bad_image_leaves_nothing(tmp_path):
    (tmp_path / "fake.png").write_text("not a png")
    out = tmp_path / "report.html"
    with pytest.raises(DataError, match="fake.png is not a PNG"):
        html_report(out, "t", "| a |\n|---|\n| 1 |\n", [tmp_path / "fake.png"])
    with pytest.raises(DataError, match="nope.png could not be read"):
        html_report(out, "t", "| a |\n|---|\n| 1 |\n", [tmp_path / "nope.png"])
    assert not out.exists() and no_temp_files(tmp_path)
