import logging
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handclip.config import DataConfig
from handclip.data import cache as cache_module
from handclip.data.cache import DecodeCache, FirstResize, decode_resized
from handclip.data.dataset import ManifestDataset
from handclip.data.loaders import build_eval_loader, build_train_loader, first_resize, working_resolution
from handclip.data.transforms import build_transforms
from handclip.errors import ConfigError, DataError


@dataclass(frozen=True)
class Rec:
    path: str
    pid: int


def write_image(path: Path, width=120, height=90, seed=0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    recs = []
    for pid in range(6):
        for n in range(4):
            path = write_image(folder / f"{pid}_{n}.jpg", 120 + 8 * n, 90, seed=10 * pid + n)
            recs.append(Rec(str(path), 100 + pid))
    return recs


def small_cfg(tmp_path, **kw) -> DataConfig:
    base = {"image_size": (32, 32), "num_workers": 0, "cache_dir": str(tmp_path / "cachedir"), "cache_resolution": 64}
    return DataConfig(**{**base, **kw})


def test_cache_keeps_aspect_and_never_enlarges(tmp_path):
    big = write_image(tmp_path / "big.png", 200, 100)
    small = write_image(tmp_path / "small.png", 40, 30)
    cache = DecodeCache(tmp_path / "c", resolution=64)
    assert cache.get(big).shape == (32, 64, 3)
    assert cache.get(small).shape == (30, 40, 3)
    np.testing.assert_array_equal(cache.get(small), np.asarray(Image.open(small).convert("RGB")))
    assert cache.misses == 2 and cache.hits == 1


def test_second_read_comes_from_the_cache_without_decoding(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.jpg", 300, 200)
    cache = DecodeCache(tmp_path / "c", resolution=100)
    first = cache.get(path).copy()

    def no_decoding(p):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "load_image", no_decoding)
    again = DecodeCache(tmp_path / "c", resolution=100)  # a later run or another worker
    np.testing.assert_array_equal(again.get(path), first)
    assert again.hits == 1
    with pytest.raises(AssertionError):  # another resolution is another entry
        DecodeCache(tmp_path / "c", resolution=80).get(path)


@pytest.mark.parametrize("train", [True, False])
def test_cached_tensor_equals_uncached_tensor(records, tmp_path, train):
    transform = build_transforms(small_cfg(tmp_path), train)
    uncached = ManifestDataset(records, transform, first_resize=64)
    cached = ManifestDataset(records, transform, decode_cache=DecodeCache(tmp_path / "c", 64))
    for _ in range(2):  # first pass fills the cache, second reads it
        for i in range(len(records)):
            torch.manual_seed(i)
            random.seed(i)  # timm's random erasing draws its box from Python's generator
            a = uncached[i]
            torch.manual_seed(i)
            random.seed(i)
            b = cached[i]
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert cached.decode_cache.hits == len(records)


def test_rewritten_source_is_decoded_again(tmp_path):
    path = tmp_path / "img.bmp"  # BMP: same dimensions -> same file size, so only mtime tells them apart
    write_image(path, 50, 40, seed=1, fmt="BMP")
    cache = DecodeCache(tmp_path / "c", resolution=64)
    old = cache.get(path).copy()
    stat = path.stat()
    write_image(path, 50, 40, seed=2, fmt="BMP")
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    new = cache.get(path)
    assert not np.array_equal(new, old)
    np.testing.assert_array_equal(new, np.asarray(Image.open(path).convert("RGB")))
    # same mtime but different size (e.g. a copy that preserved timestamps) is also a new entry
    write_image(path, 60, 40, seed=3, fmt="BMP")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.get(path).shape == (40, 60, 3)


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "garbage", "empty"])
def test_corrupt_entry_is_decoded_again_not_a_crash(tmp_path, damage, caplog):
    path = write_image(tmp_path / "a.png", 80, 60)
    cache = DecodeCache(tmp_path / "c", resolution=64)
    good = cache.get(path).copy()
    entry = cache.entry_path(path)
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_pixel":
        data[-10] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="handclip.data.cache"):
        np.testing.assert_array_equal(cache.get(path), good)
    assert "corrupt" in caplog.text
    assert cache.misses == 2
    np.testing.assert_array_equal(DecodeCache(tmp_path / "c", 64).get(path), good)  # entry was rewritten
    assert entry.read_bytes() != bytes(data)


def _fill(args):
    cache_dir, paths, order_seed = args
    cache = DecodeCache(cache_dir, resolution=48)
    order = np.random.default_rng(order_seed).permutation(len(paths))
    return {paths[i]: int(cache.get(paths[i]).astype(np.int64).sum()) for i in order}


def test_two_processes_filling_the_same_cache(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", 96, 72, seed=i)) for i in range(24)]
    cache_dir = str(tmp_path / "shared")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_fill, [(cache_dir, paths, 0), (cache_dir, paths, 1)])
    assert results[0] == results[1]
    entries = list(Path(cache_dir).rglob("*.px"))
    assert len(entries) == len(paths)
    assert not [p for p in Path(cache_dir).rglob("*") if p.is_file() and p.suffix != ".px"]  # no temp files left
    cache = DecodeCache(cache_dir, resolution=48)
    for path in paths:
        np.testing.assert_array_equal(cache.get(path), decode_resized(path, 48))
    assert cache.hits == len(paths) and cache.misses == 0


def test_unwritable_cache_still_serves_images(tmp_path, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    path = write_image(tmp_path / "a.png", 80, 60)
    cache = DecodeCache(blocker / "decode", resolution=64)
    with caplog.at_level(logging.WARNING, logger="handclip.data.cache"):
        np.testing.assert_array_equal(cache.get(path), decode_resized(path, 64))
        cache.get(path)
    assert caplog.text.count("cannot write the decode cache") == 1


def test_missing_image_names_the_file(tmp_path):
    missing = tmp_path / "gone.jpg"
    with pytest.raises(DataError, match="gone.jpg"):
        DecodeCache(tmp_path / "c", 64).get(missing)
    with pytest.raises(DataError, match="gone.jpg"):
        ManifestDataset([Rec(str(missing), 1)], None)[0]


def test_dataset_items_labels_and_label_map(records, tmp_path):
    transform = build_transforms(small_cfg(tmp_path), train=False)
    label_map = {100 + pid: pid for pid in range(6)}
    image, label, index = ManifestDataset(records, transform, label_map)[5]
    assert image.shape == (3, 32, 32) and (label, index) == (1, 5)
    assert ManifestDataset(records, transform)[5][1] == 101
    with pytest.raises(DataError, match="1_0.jpg has pid 101"):
        ManifestDataset(records, transform, {100: 0})


def test_train_loader_batches_with_cache_on_equal_cache_off(records, tmp_path):
    label_map = {100 + pid: pid for pid in range(6)}
    epochs = {}
    for cached in (False, True, True):  # off, on (fills), on (reads)
        loader = build_train_loader(small_cfg(tmp_path, decode_cache=cached), records, label_map, 3, 2, seed=4)
        torch.manual_seed(0)
        random.seed(0)
        run = []
        for epoch in range(2):
            loader.batch_sampler.set_epoch(epoch)
            for images, labels, indices in loader:
                assert images.shape == (6, 3, 32, 32)
                assert sorted(Counter(labels.tolist()).values()) == [2, 2, 2]
                assert all(records[i].pid - 100 == lab for i, lab in zip(indices.tolist(), labels.tolist()))
                run.append((images, indices))
        epochs.setdefault(cached, []).append(run)
    for on in epochs[True]:
        assert len(on) == len(epochs[False][0])
        for (a, ia), (b, ib) in zip(epochs[False][0], on):
            assert torch.equal(ia, ib) and torch.equal(a, b)
    assert len(list((tmp_path / "cachedir" / "decode").rglob("*.px"))) == len(records)


def test_eval_loader_keeps_order_and_accepts_paths_with_a_worker(records, tmp_path):
    cfg = small_cfg(tmp_path, num_workers=1)
    paths = [r.path for r in records]
    batches = list(build_eval_loader(cfg, paths, batch_size=5))
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 4]
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(len(paths)))
    assert set(torch.cat([b[1] for b in batches]).tolist()) == {-1}
    by_record = torch.cat([b[0] for b in build_eval_loader(small_cfg(tmp_path), records, 7)])
    assert torch.equal(by_record, torch.cat([b[0] for b in batches]))


def test_cache_resolution_default_and_minimum(tmp_path):
    # Default: no pre-shrink; the first resize is the transforms' own, to the input size.
    assert working_resolution(DataConfig(image_size=(224, 224))) is None
    assert first_resize(DataConfig(image_size=(256, 128)), train=True) == FirstResize(size=(256, 128), interpolation="bicubic")
    assert first_resize(DataConfig(image_size=(256, 128)), train=False).tag == "256x128:bilinear"
    assert first_resize(DataConfig(image_size=(224, 224), cache_resolution=448), train=True) == FirstResize(max_side=448)
    with pytest.raises(ConfigError, match="data.cache_resolution 100 is smaller than the input size"):
        working_resolution(DataConfig(image_size=(224, 224), cache_resolution=100))


@pytest.mark.parametrize("train", [True, False])
def test_default_first_resize_cached_or_not_equals_one_resize_of_the_original(records, tmp_path, train):
    cfg = small_cfg(tmp_path, cache_resolution=None, image_size=(24, 40))
    resize = first_resize(cfg, train)
    transform = build_transforms(cfg, train)
    uncached = ManifestDataset(records, transform, first_resize=resize)
    cached = ManifestDataset(records, transform, decode_cache=DecodeCache(tmp_path / "c", resize), first_resize=resize)
    plain = ManifestDataset(records, transform)  # the transforms' own resize of the decoded original, nothing before
    for _ in range(2):  # first pass fills the cache, second reads it
        for i in range(len(records)):
            items = []
            for dataset in (plain, uncached, cached):
                torch.manual_seed(i)
                random.seed(i)
                items.append(dataset[i][0])
            assert torch.equal(items[0], items[1]) and torch.equal(items[0], items[2])
    assert cached.decode_cache.hits == len(records)
    assert cached.decode_cache.get(records[0].path).shape == (24, 40, 3)
