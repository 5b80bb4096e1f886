"""Shared pieces of the training tests: a tiny synthetic manifest, a tiny config, a training context."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch

from handclip.config import config_from_dict
from handclip.train.loop import Hook

TINY = {
    "seed": 0,
    "data": {"image_size": [32, 32], "num_workers": 0, "decode_cache": False, "runs": 2,
             "augment": {"hflip_p": 0.5, "pad": 2, "random_erasing_p": 0.3}},
    "model": {"backbone": "tiny-vit"},
    "stage1": {"epochs": 2, "batch_size": 16, "warmup_epochs": 1},
    "stage2": {"epochs": 2, "ids_per_batch": 4, "images_per_id": 2, "lr": 1e-3, "warmup_epochs": 1},
    "runtime": {"device": "cpu", "progress": False},
    "eval": {"batch_size": 64},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def base_config(manifest_path, **sections):
    raw = _merge(TINY, {"data": {"manifest": str(manifest_path)}})
    return config_from_dict(_merge(raw, sections))


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """8 training identities x 4 images (one to val), 4 test identities, 32x32, 2 runs."""
    from handclip.config import SyntheticConfig
    from handclip.synthetic.dataset import prepare_synthetic

    root = tmp_path_factory.mktemp("tiny_synthetic")
    manifest = prepare_synthetic(root / "images", SyntheticConfig(train_ids=8, test_ids=4, images_per_id=4,
                                                                  image_size=32), runs=2, seed=0)
    path = root / "manifest.csv"
    manifest.write(path)
    return path


def make_context(config, run_dir=None):
    """What ``train()`` builds before its stages, without the run-folder set-up."""
    from handclip.data.manifest import Manifest
    from handclip.model.handclip import build_model
    from handclip.runtime import seed_everything
    from handclip.train import distributed as ddp
    from handclip.train.engine import RunFolder, TrainContext, check_training_data

    seed_everything(config.seed)
    manifest = Manifest.read(config.data.manifest)
    records, label_map = check_training_data(manifest, config.stage2, True)
    model = build_model(config.model, config.data, len(label_map))
    run = RunFolder(run_dir or tempfile.mkdtemp(prefix="handclip-ctx-"))
    state = {"stage": None, "epoch": 0, "completed": [], "history": [], "best": None, "stages": ["stage1", "stage2"]}
    return TrainContext(config, manifest, records, label_map, model, torch.device("cpu"), run, ddp.DistInfo(),
                        state, progress=False)


class StopBefore(Hook):
    """Raises KeyboardInterrupt before the first step of ``epoch`` (0-based), as a SIGTERM would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def before_step(self, loop):
        if loop.epoch == self.epoch:
            raise KeyboardInterrupt
