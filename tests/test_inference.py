"""One feature path: evaluation, enrolment and validation during training give the same feature for the
same image, because all three go through ``handclip.model.inference.Encoder``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from training_helpers import base_config

from handclip import api
from handclip.config import DataConfig, SyntheticConfig
from handclip.data.manifest import Manifest
from handclip.gallery.enrol import EnrolItem
from handclip.model.checkpoint import state_dict_sha256
from handclip.model.handclip import build_model
from handclip.model.inference import Encoder
from handclip.synthetic.dataset import prepare_synthetic
from handclip.train import engine


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    """96 px images for a 32 px model, so the working resolution (the pre-shrink) changes pixels."""
    root = tmp_path_factory.mktemp("large")
    manifest = prepare_synthetic(root / "images", SyntheticConfig(train_ids=6, test_ids=2, images_per_id=4,
                                                                  image_size=96), runs=1, seed=0)
    path = root / "manifest.csv"
    manifest.write(path)
    return path


def test_evaluate_enrol_and_validation_give_bit_identical_features(large_images, tmp_path, monkeypatch):
    # A non-default working resolution (default: 2 x 32 = 64), the decode cache on while training.
    config = base_config(large_images, data={"cache_resolution": 40, "decode_cache": True},
                         stage1={"epochs": 1}, stage2={"epochs": 1, "eval_every": 1}, output_dir=str(tmp_path))
    # Two training images of each of four identities: the first ones as queries, the second as gallery.
    train = Manifest.read(large_images).split("train")
    pids = sorted({r.pid for r in train})[:4]
    records = [[r for r in train if r.pid == pid][k] for k in (0, 1) for pid in pids]
    probes = [r.path for r in records]
    seen = []  # (model weights hash, features of the probes) at every validation

    def spy(encoder, manifest, eval_cfg=None):
        seen.append((state_dict_sha256(encoder.model), encoder.features(probes, batch_size=64)))
        return real(encoder, manifest, eval_cfg)

    real = engine.evaluate_validation
    monkeypatch.setattr(engine, "evaluate_validation", spy)
    run = api.train(config, run_dir=tmp_path / "run")

    trained = Encoder.from_checkpoint(run.best_checkpoint)
    assert trained.data_cfg.cache_resolution == 40  # the run's pixel pipeline, not the default one
    at_validation = [feats for digest, feats in seen if digest == state_dict_sha256(trained.model)]
    assert at_validation, "best.pt is the model of one of the validations"

    # evaluate: the probes as one run's query + gallery, in their order
    split = [dataclasses.replace(r, split="query" if i < 4 else "gallery", run=0) for i, r in enumerate(records)]
    result = api.evaluate(trained, Manifest(split), eval_cfg=config.eval.model_copy(update={"batch_size": 64}))
    evaluated = np.stack([result.features[p] for p in probes])

    # enrol: the probes as one batch into a new gallery
    session = api.ExaminerSession.open(tmp_path / "gallery", run.best_checkpoint, create=True)
    session.enrol([EnrolItem(p, str(r.pid)) for p, r in zip(probes, records)])
    enrolled = session.snapshot().vectors()

    assert np.array_equal(evaluated, at_validation[-1])
    assert np.array_equal(enrolled, evaluated)
    # The check has teeth: the default working resolution gives other features for these images.
    spec = trained.model.spec
    default = Encoder.for_model(trained.model, DataConfig(image_size=tuple(spec["image_size"]),
                                                          pixel_mean=tuple(spec["pixel_mean"]),
                                                          pixel_std=tuple(spec["pixel_std"]), num_workers=0))
    assert not np.array_equal(default.features(probes, batch_size=64), evaluated)


def test_loading_settings_never_change_features(large_images):
    config = base_config(large_images, data={"cache_resolution": 48})
    model = build_model(config.model, config.data, 6)
    probes = [r.path for r in Manifest.read(large_images).split("val")]
    encoder = Encoder.for_model(model, config.data.model_copy(update={"decode_cache": False, "num_workers": 0}))
    plain = encoder.features(probes)
    assert np.array_equal(encoder.with_loading(decode_cache=True).features(probes), plain)
    assert np.array_equal(encoder.with_loading(decode_cache=True).features(probes), plain)  # cache hit
    assert np.array_equal(encoder.single_pass().features(probes), plain)
    with pytest.raises(ValueError, match="image_size is not a loading setting"):
        encoder.with_loading(image_size=(64, 64))


def test_flip_averages_over_the_left_right_mirror(tmp_path):
    """Flip test-time augmentation is the mean of an image's and its left-right mirror's features, so it
    gives an image and its mirror the same feature, and a left-right symmetric image the feature it has
    without flip. A flip of the wrong axis (up-down) breaks both."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 32, 3), dtype=np.uint8)
    symmetric = np.concatenate([pixels[:, :16], pixels[:, :16][:, ::-1]], axis=1)  # its own mirror, not up-down
    images = {"x": pixels, "mirror": pixels[:, ::-1], "symmetric": symmetric, "upside_down": symmetric[::-1]}
    paths = []
    for name, array in images.items():
        Image.fromarray(np.ascontiguousarray(array)).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    data = DataConfig(image_size=(40, 32), num_workers=0, decode_cache=False)
    encoder = Encoder.for_model(Encoder.zero_shot("tiny-cnn", image_size=data.image_size).model, data)
    plain, flipped = encoder.features(paths), encoder.features(paths, flip=True)

    # The model itself tells an image from its mirror and from its upside-down copy, so each check below
    # has room to fail.
    assert np.abs(plain[0] - plain[1]).max() > 1e-4 and np.abs(plain[2] - plain[3]).max() > 1e-4
    np.testing.assert_allclose(flipped[0], flipped[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(flipped[2], plain[2], rtol=0, atol=1e-6)
