"""How features are computed on an examiner's CPU: the precision ``auto`` chooses, bf16 features close to
fp32 and accepted by fp32 galleries (the precision is shown not to matter: docs/method.md, "Feature
precision and engines"), the ONNX export and the onnxruntime engine against PyTorch, and export refusing
what the loaders refuse."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from handclip import cli as cli_module
from handclip import runtime
from handclip.config import load_config
from handclip.errors import CheckpointError, ConfigError
from handclip.forensic.audit import AuditLog
from handclip.model.checkpoint import save_checkpoint
from handclip.model.handclip import build_model
from handclip.model.inference import Encoder

CPU = torch.device("cpu")


def _checkpoint(path: Path, backbone: str = "tiny-cnn", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = load_config(None, [f"model.backbone={backbone}", "data.image_size=[64,64]", "data.num_workers=0"])
    model = build_model(cfg.model, cfg.data, 6)
    # BNNeck and BatchNorm statistics away from their initial 0/1, so that eval mode matters in the export.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, model, cfg, {"epoch": 0})
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from handclip.synthetic.dataset import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cpu-inference")
    images = Path(write_synthetic_dataset(root / "hands", num_ids=4, images_per_id=3, size=80, seed=0))
    return {"images": images, "paths": sorted(str(p) for p in images.rglob("*.png")),
            "cnn": _checkpoint(root / "cnn.pt"), "vit": _checkpoint(root / "vit.pt", "tiny-vit")}


def cli(*args) -> int:
    return cli_module.main([str(a) for a in args])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                         (False, False, "fp32")])
def test_auto_is_bf16_exactly_where_the_cpu_multiplies_bf16_natively(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    chosen, why = runtime.resolve_inference_precision(CPU, "auto")
    assert chosen == expected
    native = "AMX" if amx else "AVX512-BF16" if avx512_bf16 else None
    assert why == (f"auto: this CPU multiplies bf16 natively ({native})" if native
                   else "auto: this CPU has no native bf16 (neither AMX nor AVX512-BF16)")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # no oneDNN: no bf16 kernels
    assert runtime.resolve_inference_precision(CPU, "auto")[0] == "fp32"
    # An explicit setting is kept whatever the CPU, and said to be as asked.
    assert runtime.resolve_inference_precision(CPU, "fp32") == ("fp32", "as asked")
    assert runtime.resolve_inference_precision(CPU, "bf16") == ("bf16", "as asked")


def test_an_unknown_precision_is_refused_naming_the_key_and_value():
    with pytest.raises(ConfigError, match="runtime.inference_precision.*'fp8'"):
        runtime.resolve_inference_precision(CPU, "fp8")
    with pytest.raises(ConfigError, match="runtime.inference_precision"):
        load_config(None, ["runtime.inference_precision=fp16"])
    assert load_config(None, ["runtime.inference_precision=bf16"]).runtime.inference_precision == "bf16"
    assert load_config(None, []).runtime.inference_precision == "auto"


@pytest.mark.parametrize("backbone", ["cnn", "vit"])
def test_bf16_features_are_bf16_and_within_cosine_0999_of_fp32(assets, backbone):
    fp32 = Encoder.from_checkpoint(assets[backbone], device="cpu", precision="fp32").single_pass()
    bf16 = fp32.computed_with("bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    a, b = fp32.features(assets["paths"]), bf16.features(assets["paths"])
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert not np.array_equal(a, b)  # bf16 really ran ...
    assert _cosines(a, b).min() >= 0.999  # ... and stays within the target of fp32
    if backbone == "cnn":
        return
    # A ViT's fp32 features are open_clip's own forward, bit for bit (the fused attention is bf16's only).
    with torch.inference_mode():
        pixels = torch.stack([fp32_pixels(fp32, p) for p in assets["paths"][:4]])
        direct = torch.nn.functional.normalize(fp32.model.extract(pixels), dim=1).numpy()
    assert np.array_equal(direct, a[:4])


def fp32_pixels(encoder: Encoder, path: str) -> torch.Tensor:
    from handclip.data.loaders import build_eval_loader

    return next(iter(build_eval_loader(encoder.data_cfg, [path], 1)))[0][0]


def test_training_validation_uses_the_configured_precision(assets, monkeypatch):
    seen = []
    real = Encoder.computed_with

    def spy(self, precision="auto", engine="torch"):
        seen.append(precision)
        return real(self, precision, engine)

    monkeypatch.setattr(Encoder, "computed_with", spy)
    cfg = load_config(None, ["model.backbone=tiny-cnn", "runtime.inference_precision=fp32"])
    from handclip.train import engine

    class Run:  # the fields validate() reads
        is_main, model, config, device, manifest = True, build_model(cfg.model, cfg.data, 6), cfg, CPU, None
        dist = type("D", (), {"enabled": False})()

    monkeypatch.setattr(engine, "evaluate_validation", lambda encoder, manifest, eval_cfg: {"rank1": 0.5})
    monkeypatch.setattr(engine.ddp, "broadcast_object", lambda obj, dist: obj)
    assert engine.TrainContext.validate(Run()) == {"rank1": 0.5}
    assert seen == ["fp32"]


# ------------------------------------------------------------------- fingerprint and audit behaviour


def test_precision_is_not_in_the_fingerprint_and_each_record_says_how_features_were_computed(assets, tmp_path,
                                                                                            capsys):
    index = tmp_path / "gallery"
    assert cli("enrol", "--checkpoint", assets["cnn"], "--images", assets["images"], "--index", index,
               "--no-progress", "--precision", "bf16") == 0
    assert "features: bf16 on cpu with PyTorch (as asked)" in capsys.readouterr().out
    query = assets["paths"][0]
    # A gallery enrolled in bf16 is searched in fp32 (and the other way round): same model, same fingerprint.
    assert cli("search", "--index", index, "--query", query, "--precision", "fp32", "--top-k", "2") == 0
    out = capsys.readouterr().out
    assert "features: fp32 on cpu with PyTorch (as asked)" in out
    expected, why = runtime.resolve_inference_precision(CPU, "auto")
    assert cli("search", "--index", index, "--query", query, "--top-k", "2") == 0
    assert f"features: {expected} on cpu with PyTorch ({why})" in capsys.readouterr().out
    records = AuditLog(index).records()
    assert [(r["command"], r["model"]["inference"]["precision"]) for r in records] == [
        ("enrol-start", "bf16"), ("enrol", "bf16"), ("search", "fp32"), ("search", expected)]
    fingerprints = {json.dumps(r["model"]["fingerprint"], sort_keys=True) for r in records}
    assert len(fingerprints) == 1
    # The bf16 and fp32 encoders agree on the fingerprint; another model's is still refused.
    fp32 = Encoder.from_checkpoint(assets["cnn"], device="cpu", precision="fp32")
    assert fp32.fingerprint() == fp32.computed_with("bf16").fingerprint()
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    assert cli("search", "--index", index, "--query", query, "--checkpoint", other, "--precision", "bf16") == 2
    assert "enrolled with a different model" in capsys.readouterr().err


def test_a_calibration_records_its_precision_and_is_accepted_across_precisions(tmp_path):
    from handclip.synthetic.dataset import prepare_synthetic
    from handclip.config import SyntheticConfig
    from handclip.forensic.calibrate import calibrate

    manifest = prepare_synthetic(tmp_path / "images", SyntheticConfig(train_ids=2, test_ids=8, images_per_id=3,
                                                                      image_size=64), runs=1, seed=0)
    manifest.write(tmp_path / "manifest.csv")
    checkpoint = _checkpoint(tmp_path / "model.pt")
    fitted = calibrate(checkpoint, tmp_path / "manifest.csv", folds=2, device="cpu", precision="bf16")
    assert fitted.summary["inference"]["precision"] == "bf16" and fitted.summary["inference"]["engine"] == "torch"
    fitted.check_model(Encoder.from_checkpoint(checkpoint, device="cpu", precision="fp32").fingerprint())


# ------------------------------------------------------------------------------------------- ONNX

@pytest.fixture
def onnxruntime():
    """Skips the test, with the reason, where the optional onnxruntime package is not installed."""
    pytest.importorskip("onnx", reason="ONNX export needs the optional onnx package (pip install 'handclip[onnx]')")
    return pytest.importorskip("onnxruntime", reason="ONNX export needs the optional onnxruntime package "
                                                     "(pip install 'handclip[onnx]')")


def _onnx_features(onnxruntime, path: Path, encoder: Encoder, paths, normalise_again: bool = False) -> np.ndarray:
    """What another runtime computes from the exported file, following the pipeline its metadata states."""
    from handclip.model.export import read_onnx_metadata

    metadata = read_onnx_metadata(path)
    pipeline = json.loads(metadata["pixel_pipeline"])
    assert pipeline["image_size"] == list(encoder.data_cfg.image_size)
    assert pipeline["pixel_mean"] == list(encoder.data_cfg.pixel_mean)
    pixels = torch.stack([fp32_pixels(encoder, p) for p in paths])  # decoded, resized, normalised once
    if normalise_again:  # fast-reid's bug: the normalisation applied a second time
        mean = torch.tensor(pipeline["pixel_mean"]).view(1, 3, 1, 1)
        std = torch.tensor(pipeline["pixel_std"]).view(1, 3, 1, 1)
        pixels = (pixels - mean) / std
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.run(["features"], {"pixels": pixels.numpy()})[0]
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


@pytest.mark.parametrize("backbone", ["cnn", "vit"])
def test_exported_onnx_features_match_pytorch_fp32_at_cosine_09999(onnxruntime, assets, tmp_path, capsys, backbone):
    out = tmp_path / "model.onnx"
    assert cli("export", "--checkpoint", assets[backbone], "--format", "onnx", "--out", out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "NOT L2-normalised" in printed and "does NOT normalise again" in printed
    encoder = Encoder.from_checkpoint(assets[backbone], device="cpu", precision="fp32").single_pass()
    reference = encoder.features(assets["paths"])
    exported = _onnx_features(onnxruntime, out, encoder, assets["paths"])
    assert _cosines(reference, exported).min() >= 0.9999
    # What tells images apart (features less their mean: a random-weight model gives every image a similar
    # feature) is kept too; normalising the pixels twice, fast-reid's bug, loses it.
    centred = reference - reference.mean(axis=0)
    assert _cosines(centred, exported - exported.mean(axis=0)).min() >= 0.999
    twice = _onnx_features(onnxruntime, out, encoder, assets["paths"], normalise_again=True)
    assert _cosines(centred, twice - twice.mean(axis=0)).min() < 0.99


def test_the_onnxruntime_engine_gives_pytorchs_features_and_keeps_the_model_in_its_mode(onnxruntime, assets):
    torch_fp32 = Encoder.from_checkpoint(assets["cnn"], device="cpu", precision="fp32").single_pass()
    onnx = torch_fp32.computed_with("auto", "onnxruntime")
    assert (onnx.engine, onnx.precision) == ("onnxruntime", "fp32") and onnx.engine_cosine >= 0.9999
    assert _cosines(torch_fp32.features(assets["paths"]), onnx.features(assets["paths"])).min() >= 0.9999
    assert onnx.fingerprint() == torch_fp32.fingerprint()
    int8 = torch_fp32.computed_with("auto", "onnxruntime-int8")
    assert int8.precision == "int8" and int8.inference_record()["cosine_to_pytorch_fp32"] >= 0.99
    training = build_model({"backbone": "tiny-cnn"}, {"image_size": [64, 64]}, num_ids=3).train()
    Encoder.for_model(training, torch_fp32.data_cfg, precision="fp32").computed_with("fp32", "onnxruntime")
    assert training.training and all(m.training for m in training.modules())
    with pytest.raises(ConfigError, match="exported fp32 graph; bf16 is PyTorch's"):
        torch_fp32.computed_with("bf16", "onnxruntime")


def test_a_model_that_reads_aspects_is_refused_by_export_and_the_onnx_engine_in_one_line(tmp_path, capsys):
    """The ONNX graph takes pixels only; a model with aspect embeddings (model.sie: aspect) needs each image's
    aspect too, so export and the onnxruntime engine refuse it instead of exporting features without it."""
    from handclip.model.onnx_graph import ExportError

    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=tiny-vit", "model.sie=aspect", "data.image_size=[32,32]",
                             "data.num_workers=0"])
    checkpoint = tmp_path / "sie.pt"
    save_checkpoint(checkpoint, build_model(cfg.model, cfg.data, 3), cfg, {"epoch": 0})
    out = tmp_path / "model.onnx"
    assert cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.sie: aspect" in err and "--engine torch" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [checkpoint]
    encoder = Encoder.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    with pytest.raises(ExportError, match=r"model.sie: aspect"):
        encoder.computed_with("fp32", "onnxruntime")


def test_exporting_a_malicious_or_unknown_checkpoint_is_refused_and_writes_nothing(assets, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    malicious = tmp_path / "malicious.pt"
    torch.save({"format": "handclip-checkpoint", "version": 1, "spec": {}, "state_dict": {}, "extra": {},
                "payload": Payload()}, malicious)
    weights = tmp_path / "weights.pt"
    torch.save(torch.load(assets["cnn"], weights_only=True)["state_dict"], weights)  # a state dict, not ours
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint, nor any PyTorch file")
    out = tmp_path / "model.onnx"
    for path, reason in ((malicious, "refusing to load"), (weights, "is not a HandCLIP checkpoint"),
                         (garbage, "corrupt or not a PyTorch file"), (tmp_path / "missing.pt", "does not exist")):
        assert cli("export", "--checkpoint", path, "--out", out) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "\n" not in err and reason in err and str(path) in err, err
        assert "this ran while loading" not in captured.out + captured.err
        assert not out.exists() and not list(tmp_path.glob("*.onnx*"))
    with pytest.raises(CheckpointError, match="refusing to load"):
        from handclip.model.export import export_onnx

        export_onnx(malicious, out)


def test_without_onnxruntime_export_and_the_engine_say_how_to_install_it(assets, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert cli("export", "--checkpoint", assets["cnn"], "--out", tmp_path / "model.onnx") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'handclip[onnx]'" in err and not (tmp_path / "model.onnx").exists()
    with pytest.raises(Exception, match=r"pip install 'handclip\[onnx\]'"):
        Encoder.from_checkpoint(assets["cnn"], device="cpu", engine="onnxruntime")
