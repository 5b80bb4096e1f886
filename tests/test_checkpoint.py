"""Checkpoints: exact round trip, weights_only loading, clear refusals, malicious pickles never run."""

import os
import pickle
import zipfile

import pytest
import torch

from handclip.config import config_from_dict
from handclip.errors import CheckpointError
from handclip.model import checkpoint as ckpt
from handclip.model.backbone import create_clip
from handclip.model.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from handclip.model.handclip import build_model
from handclip.model.weights import load_weights_file


def _config(backbone, image_size, **model):
    return config_from_dict({"model": {"backbone": backbone, **model}, "data": {"image_size": list(image_size)}})


def _trained_a_little(config, num_ids=5):
    torch.manual_seed(0)
    model = build_model(config.model, config.data, num_ids)
    model.train()
    with torch.no_grad():
        model(torch.randn(6, 3, *config.data.image_size))  # non-trivial BN running statistics
        model.prompt_learner.ctx.add_(0.1)
    return model.eval()


@pytest.mark.parametrize(
    "backbone,image_size,extra_model",
    [("tiny-vit", (96, 64), {"patch_stride": 6, "neck_feat": "after"}), ("tiny-rn", (64, 48), {"rn_last_stride": 1}),
     ("tiny-cnn", (64, 48), {"rn_last_stride": 2})],
)
def test_round_trip_gives_identical_features(tmp_path, backbone, image_size, extra_model):
    config = _config(backbone, image_size, **extra_model)
    model = _trained_a_little(config)
    extra = {"label_map": {17: 0, 23: 1}, "epoch": 7, "metrics": {"rank1": 0.5}, "rng": torch.get_rng_state()}
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, config, extra)

    loaded, loaded_config, loaded_extra = load_checkpoint(path)
    images = torch.randn(3, 3, *image_size)
    with torch.no_grad():
        assert torch.equal(model.extract(images), loaded.extract(images))
        assert torch.equal(model.all_text_features(), loaded.all_text_features())
    assert not loaded.training
    assert loaded_config == config
    assert loaded_extra["label_map"] == {17: 0, 23: 1} and loaded_extra["epoch"] == 7
    assert torch.equal(loaded_extra["rng"], extra["rng"])
    # Plain data only: torch's safe loader reads it directly.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ckpt.CHECKPOINT_FORMAT and raw["version"] == ckpt.CHECKPOINT_VERSION

    a, b = model_fingerprint(model, config), model_fingerprint(loaded, loaded_config)
    assert a["weights_sha256"] == b["weights_sha256"]
    assert b["checkpoint_sha256"] == ckpt.sha256_file(path)
    assert a["feature_dim"] == model.feature_dim and a["image_size"] == list(image_size)


def test_checkpoint_does_not_need_the_original_weights_file(tmp_path):
    weights = tmp_path / "backbone.pt"
    torch.save(create_clip("tiny-vit", image_size=(64, 64)).state_dict(), weights)
    config = _config("tiny-vit", (64, 64), weights=str(weights))
    model = _trained_a_little(config)
    save_checkpoint(tmp_path / "m.pt", model, config, {})
    weights.unlink()
    loaded, _, _ = load_checkpoint(tmp_path / "m.pt")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.extract(images), loaded.extract(images))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = _config("tiny-vit", (64, 64))
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    save_checkpoint(path, _trained_a_little(config), config, {"epoch": 1})
    return path


def test_architecture_mismatch_is_refused_naming_the_file(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    payload["state_dict"]["bottleneck.weight"] = torch.ones(7)
    del payload["state_dict"]["classifier.weight"]
    bad = tmp_path / "tampered.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match=r"tampered\.pt does not match.*bottleneck\.weight.*classifier\.weight"):
        load_checkpoint(bad)


def test_incompatible_version_and_foreign_files_are_refused(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future\.pt has format version 99"):
        load_checkpoint(tmp_path / "future.pt")

    torch.save(create_clip("tiny-vit", image_size=(64, 64)).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a HandCLIP checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")

    data = saved.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello, not a model")
    for name in ("truncated.pt", "text.pt"):
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + " is corrupt"):
            load_checkpoint(tmp_path / name)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + " is corrupt"):
            load_weights_file(tmp_path / name)

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_non_plain_extra_is_rejected_before_writing(tmp_path):
    import numpy as np

    config = _config("tiny-rn", (64, 64))
    model = build_model(config.model, config.data, 3)
    with pytest.raises(TypeError, match=r"extra\['state'\]\[1\] is a ndarray"):
        save_checkpoint(tmp_path / "x.pt", model, config, {"state": [1, np.zeros(3)]})
    assert not (tmp_path / "x.pt").exists() and os.listdir(tmp_path) == []


def test_crash_while_saving_keeps_the_previous_checkpoint(saved, tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(saved.read_bytes())
    config = _config("tiny-vit", (64, 64))
    model = _trained_a_little(config)
    real_save = torch.save

    def crash_midway(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, model, config, {"epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    _, _, extra = load_checkpoint(target)
    assert extra == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary file left behind


# ---------------------------------------------------------------------------- malicious pickles


class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_files(tmp_path, marker):
    plain = tmp_path / "evil_plain.pt"
    plain.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    legacy = tmp_path / "evil_protocol2.pt"  # protocol 2 reaches the GLOBAL opcode in torch's checker
    legacy.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "version": 1, "hook": _Payload(marker)}, zipped)
    assert not marker.exists()
    return [plain, legacy, zipped]


def test_malicious_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for path in _malicious_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match="refusing to load"):
            load_checkpoint(path)
        assert not marker.exists()


def test_malicious_pickle_weights_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for path in _malicious_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match=r"refusing to load .*allow_unsafe_weights") as refused:
            load_weights_file(path)
        if path.name == "evil_protocol2.pt":
            assert "open" in str(refused.value)  # names the global it would have called
        with pytest.raises(CheckpointError, match="refusing to load"):
            create_clip("tiny-vit", weights=str(path), image_size=(64, 64))
        assert not marker.exists()
    # The explicit flag is what it says: the user's trust, and the payload then runs.
    with pytest.raises(CheckpointError):
        load_weights_file(tmp_path / "evil_plain.pt", allow_unsafe=True)
    assert marker.exists()


def test_unknown_torchscript_needs_the_flag(tmp_path):
    module = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "scripted.pt"
    torch.jit.save(module, str(path))
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="TorchScript archive.*SHA-256"):
        load_weights_file(path)
    state = load_weights_file(path, allow_unsafe=True)
    assert set(state) == {"weight", "bias"}


def test_checkpoint_and_weights_are_not_confused(saved, tmp_path):
    with pytest.raises(CheckpointError, match=r"good\.pt is a HandCLIP checkpoint, not backbone weights"):
        create_clip("tiny-vit", weights=str(saved), image_size=(64, 64))
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match=r"scripted\.pt is a TorchScript archive.*not a HandCLIP checkpoint"):
        load_checkpoint(path)


def test_training_state_round_trips_through_a_checkpoint(tmp_path):
    import collections
    import random

    config = _config("tiny-rn", (64, 64))
    model = _trained_a_little(config)
    model.set_stage2_trainable()
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [3, 5])
    out = model(torch.randn(4, 3, 64, 64))
    sum(torch.nn.functional.cross_entropy(l, torch.tensor([0, 1, 2, 3])) for l in out.logits).backward()
    optimizer.step()
    scheduler.step()
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
    }
    save_checkpoint(tmp_path / "state.pt", model, config, extra)
    _, _, loaded = load_checkpoint(tmp_path / "state.pt")
    assert isinstance(loaded["scheduler"]["milestones"], collections.Counter)
    restored = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])
    first = next(iter(optimizer.state.values()))["exp_avg"]
    assert torch.equal(next(iter(restored.state.values()))["exp_avg"], first)
    random.setstate(loaded["python_rng"])
    with pytest.raises(TypeError, match="defaultdict"):
        save_checkpoint(tmp_path / "bad.pt", model, config, {"x": collections.defaultdict(list)})
