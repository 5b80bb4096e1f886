"""One path from a model to retrieval features.

Protocol evaluation, validation during training, enrolment and search all get their features from
``Encoder.features`` (or ``extract_features`` beneath it), so one image gives one feature whichever
workflow asks. An ``Encoder`` is a model in eval mode plus the evaluation pixel pipeline it was
trained with: for a checkpoint, the run's whole ``data`` section (input size, working resolution,
normalisation, interpolation, ...), except the settings that only say how images are loaded on the
machine at hand (decode cache, cache folder, loader workers), which never change a pixel
(docs/method.md, "One feature path").

An ``Encoder`` also says how its features are computed: ``precision`` (fp32, or bf16 autocast where the
hardware multiplies bf16 natively, ``runtime.resolve_inference_precision``) and ``engine`` (PyTorch, or
ONNX Runtime running the model's exported graph, optionally int8-quantised). Features always leave in
float32, L2-normalised once, here (docs/method.md, "Feature precision and engines").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..aspects import ASPECTS, aspect_index, mirrored, record_aspect
from ..config import Config, DataConfig, ModelConfig
from ..config_base import INFERENCE_ENGINES
from ..data.loaders import build_eval_loader
from ..errors import ConfigError, DataError
from ..runtime import autocast, inference_dtype, resolve_device, resolve_inference_precision
from .checkpoint import load_checkpoint, model_fingerprint, spec_data_config
from .handclip import build_model

# Data settings that choose how images are loaded here, not what pixels the model sees.
LOADING_FIELDS = ("decode_cache", "cache_dir", "num_workers", "skip_bad")
# How features can be computed: PyTorch, or ONNX Runtime on the exported graph (fp32, or int8 weights).
ENGINES = INFERENCE_ENGINES


def eval_data_config(config: Config | None, spec: dict) -> DataConfig:
    """The evaluation pixel pipeline of a checkpoint: its run's data section, loading settings reset.

    The resize (interpolation, pre-shrink) comes from the model's spec, which for checkpoints written
    before it was recorded holds the resize they were evaluated with (``spec_data_config``), so their
    features do not change with the newer defaults.
    """
    recorded = spec_data_config(spec)
    if config is None:
        return recorded
    defaults = DataConfig()
    data = config.data.model_copy(update={name: getattr(defaults, name) for name in LOADING_FIELDS})
    return data.model_copy(update={"interpolation": recorded.interpolation, "cache_resolution": recorded.cache_resolution})


def _worker_error_line(exc: Exception) -> str:
    """The original one-line message of an error re-raised by a DataLoader worker.

    torch wraps a worker's exception as "Caught X in DataLoader worker process N.\\nOriginal Traceback ..."
    with the traceback in the message; the user should see the last line only, without the type name.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    head, sep, message = last.partition(": ")
    return message if sep and "Error" in head else last


def aspect_labels(model, records: Sequence, aspects: Sequence | None = None) -> torch.Tensor | None:
    """The aspect index of each image for a model with aspect embeddings (``aspects`` as given, else each
    record's own, ``handclip.aspects.record_aspect``); None for a model without them."""
    if getattr(model, "aspect_embedding", None) is None:
        return None
    if aspects is not None and len(aspects) != len(records):
        raise DataError(f"{len(aspects)} aspect(s) given for {len(records)} image(s)")
    named = list(aspects) if aspects is not None else [record_aspect(r) for r in records]
    for record, aspect in zip(records, named):
        if aspect is None:
            path = getattr(record, "path", record)
            raise DataError(f"the model reads each photo's aspect (model.sie: aspect) but none is given for {path}; "
                            f"state it (--query-aspect / --aspect) or use a manifest whose records carry it")
    return torch.tensor([aspect_index(a) for a in named], dtype=torch.long)
def for_inference(model):
    """``model`` laid out for fast inference: a ResNet image tower in channels-last memory (oneDNN's NHWC
    convolutions: 1.25x fp32 and 1.2-2x bf16 on the 2-core CPU; docs/method.md), as training lays
    it out (``runtime.channels_last``); a ViT is left as it is."""
    if getattr(model, "kind", None) == "rn":
        model.image_encoder.to(memory_format=torch.channels_last)
    return model


def _aspect_label_pair(model, records: Sequence, aspects: Sequence | None, mirror: bool):
    """(labels of the images as encoded, labels of their mirrors), or (None, None) for a model without
    aspect embeddings; with ``mirror`` the images are encoded mirrored, so the two swap."""
    labels = aspect_labels(model, records, aspects)
    if labels is None:
        return None, None
    mirror_labels = torch.tensor([aspect_index(mirrored(ASPECTS[i])) for i in labels.tolist()], dtype=torch.long)
    return (mirror_labels, labels) if mirror else (labels, mirror_labels)


@torch.inference_mode()
def extract_features(model, records: Sequence, data_cfg: DataConfig, batch_size: int = 128, flip: bool = False,
                     device=None, progress: bool = False, precision: str = "auto", runner=None,
                     aspects: Sequence | None = None, mirror: bool = False) -> np.ndarray:
    """Encode ``records`` (records with ``.path``, or paths) in order: float32 [N, feature_dim], L2-normalised.

    With ``flip`` the feature is the mean of the image's and its mirror's (then normalised). ``mirror``
    encodes every image mirrored (left-right) instead, as a left-hand query is compared with right hands.
    ``aspects``: each image's aspect for a model with aspect embeddings (default: the records' own); a
    mirrored image is labelled with the aspect it then shows (``handclip.aspects.mirrored``).
    ``precision`` is 'auto' or a resolved precision (fp32, bf16, fp16); ``runner`` (an ``OnnxRunner``)
    computes the features in place of ``model.extract`` (never for a model with aspect embeddings:
    ``onnx_graph.refuse_aspect_model``).
    """
    device = resolve_device(device)
    records = list(records)
    labels, mirror_labels = _aspect_label_pair(model, records, aspects, mirror)
    if runner is None and precision == "auto":
        precision = resolve_inference_precision(device, precision)[0]
    dtype = None if runner is not None else inference_dtype(precision)
    extract = runner.extract if runner is not None else model.extract
    was_training = model.training
    model.eval()
    loader = build_eval_loader(data_cfg, records, batch_size)
    chunks = []
    iterator = loader
    if progress:
        # disable=None: no bar when stderr is not a terminal (logs, pipes), so errors stay on one clean line
        iterator = tqdm(loader, desc="features", unit="batch", leave=False, disable=None)
    try:
        for batch in iterator:
            images = batch[0].to(device, non_blocking=True)
            if mirror:
                images = torch.flip(images, dims=[3])
            if runner is None and getattr(model, "kind", None) == "rn":
                images = images.contiguous(memory_format=torch.channels_last)  # as the tower (for_inference)
            index = batch[2]
            kwargs = {} if labels is None else {"aspects": labels[index].to(device)}
            with autocast(device, dtype):
                feats = extract(images, **kwargs).float()
                if flip:
                    flipped = {} if labels is None else {"aspects": mirror_labels[index].to(device)}
                    feats = feats + extract(torch.flip(images, dims=[3]), **flipped).float()
            chunks.append(torch.nn.functional.normalize(feats, dim=1).cpu())
    except DataError as exc:  # an unreadable image met in a loader worker: one line, not a worker traceback
        raise DataError(_worker_error_line(exc)) from None
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, getattr(model, "feature_dim", 0)), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


@dataclass
class Encoder:
    """A HandCLIP model with the pixel pipeline its features are defined by, and how it computes them.

    ``label`` names it in reports; ``checkpoint`` is the file it came from (None for a zero-shot or
    in-training model); ``config`` the run configuration the checkpoint recorded, if any. ``precision``
    ('fp32', 'bf16', 'fp16' or, for the int8 engine, 'int8') and ``engine`` (``ENGINES``) are resolved
    (``computed_with``); ``precision_reason`` says why, ``runner`` is the ONNX Runtime session of an
    onnxruntime engine and ``engine_cosine`` its worst cosine to PyTorch's fp32 features when checked.
    """

    model: torch.nn.Module
    data_cfg: DataConfig
    device: torch.device
    label: str = "HandCLIP"
    checkpoint: str | None = None
    config: Config | None = field(default=None, repr=False)
    precision: str = "fp32"
    engine: str = "torch"
    precision_reason: str = "as asked"
    runner: object | None = field(default=None, repr=False)
    engine_cosine: float | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device=None, precision: str = "auto",
                        engine: str = "torch") -> "Encoder":
        """A trained HandCLIP checkpoint (``RUN/best.pt``), on ``device``, in eval mode."""
        device = resolve_device(device)
        model, config, _ = load_checkpoint(path, map_location="cpu")
        for_inference(model.to(device).eval())
        label = f"HandCLIP ({model.spec['model']['backbone']})"
        encoder = cls(model, eval_data_config(config, model.spec), device, label, str(Path(path).resolve()), config)
        return encoder.computed_with(precision, engine)

    @classmethod
    def zero_shot(cls, backbone: str, weights: str | None = None, image_size=None,
                  allow_unsafe_weights: bool = False, device=None, seed: int = 0, precision: str = "auto",
                  engine: str = "torch") -> "Encoder":
        """A backbone with its pretrained (or random, seeded) weights, through the same feature path as a
        trained model (``HandCLIP.extract``), so stage-0 numbers are comparable."""
        device = resolve_device(device)
        data_cfg = DataConfig(image_size=tuple(image_size) if image_size else (224, 224))
        model_cfg = ModelConfig(backbone=backbone, weights=weights, allow_unsafe_weights=allow_unsafe_weights)
        # A random-init baseline is seeded, so the same command gives the same numbers twice.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(model_cfg, data_cfg, num_ids=1)
        for_inference(model.to(device).eval())
        source = Path(weights).name if weights else "random init"
        return cls(model, data_cfg, device, f"zero-shot {backbone} ({source})").computed_with(precision, engine)

    @classmethod
    def for_model(cls, model, data_cfg: DataConfig, device=None, label: str = "HandCLIP",
                  precision: str = "auto") -> "Encoder":
        """An in-memory model (during training, or in a notebook) with the data section it is trained on."""
        return cls(model, data_cfg, resolve_device(device), label).computed_with(precision)

    def computed_with(self, precision: str = "auto", engine: str = "torch") -> "Encoder":
        """The same model computing its features at ``precision`` (a ``runtime.inference_precision``
        setting) with ``engine``. An onnxruntime engine exports the model's graph here, in memory, and
        refuses it unless its features match PyTorch's (``onnx_graph.checked_runner``)."""
        if engine not in ENGINES:
            raise ConfigError(f"unknown inference engine '{engine}' (use {', '.join(ENGINES)})")
        if engine == "torch":
            chosen, why = resolve_inference_precision(self.device, precision)
            return dataclasses.replace(self, precision=chosen, precision_reason=why, engine=engine, runner=None,
                                       engine_cosine=None)
        resolve_inference_precision(self.device, precision)  # an unknown setting is refused as for PyTorch
        if self.device.type != "cpu":
            raise ConfigError(f"the {engine} engine runs on the CPU; pass --device cpu (or use --engine torch)")
        if precision == "bf16":
            raise ConfigError(f"the {engine} engine runs the exported fp32 graph; bf16 is PyTorch's "
                              f"(--engine torch --precision bf16)")
        from .onnx_graph import checked_runner

        int8 = engine.endswith("int8")
        runner, cosine = checked_runner(self.model, tuple(self.data_cfg.image_size), int8=int8)
        why = "dynamic int8 quantisation of the exported graph" if int8 else "the exported fp32 graph"
        return dataclasses.replace(self, precision="int8" if int8 else "fp32", precision_reason=why, engine=engine,
                                   runner=runner, engine_cosine=cosine)

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    def fingerprint(self) -> dict:
        """What a gallery must agree on with this model (see ``model_fingerprint``)."""
        return model_fingerprint(self.model, self.config)

    def inference_record(self) -> dict:
        """How this encoder computes features, for audit records and calibration files."""
        record = {"precision": self.precision, "engine": self.engine, "why": self.precision_reason,
                  "device": str(self.device)}
        if self.engine_cosine is not None:
            record["cosine_to_pytorch_fp32"] = round(self.engine_cosine, 6)
        return record

    def describe_inference(self) -> str:
        """One line: the precision and engine chosen, and why."""
        engine = "PyTorch" if self.engine == "torch" else "ONNX Runtime"
        checked = "" if self.engine_cosine is None else f"; cosine to PyTorch fp32 >= {self.engine_cosine:.5f}"
        return f"features: {self.precision} on {self.device} with {engine} ({self.precision_reason}{checked})"

    def with_loading(self, **settings) -> "Encoder":
        """The same encoder with other loading settings (``LOADING_FIELDS``); its features are unchanged."""
        unknown = sorted(set(settings) - set(LOADING_FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]} is not a loading setting (those are {', '.join(LOADING_FIELDS)})")
        return dataclasses.replace(self, data_cfg=self.data_cfg.model_copy(update=settings))

    def single_pass(self) -> "Encoder":
        """The same encoder loading each image once, in this process: no decode cache (every image is
        read once, so caching its pixels would only fill the disk) and no loader workers (starting them
        for every small enrolment batch cost 4x the throughput, benchmarks/bench_enrol.py)."""
        return self.with_loading(decode_cache=False, num_workers=0)

    @property
    def reads_aspects(self) -> bool:
        """Whether the model's features depend on the stated aspect (``model.sie: aspect``)."""
        return getattr(self.model, "aspect_embedding", None) is not None

    def features(self, images: Sequence, batch_size: int = 128, flip: bool = False,
                 progress: bool = False, aspects: Sequence | None = None, mirror: bool = False) -> np.ndarray:
        """L2-normalised features of ``images`` (records or paths), in order; ``aspects`` and ``mirror`` as
        ``extract_features`` takes them."""
        return extract_features(self.model, images, self.data_cfg, batch_size=batch_size, flip=flip,
                                device=self.device, progress=progress, precision=self.precision, runner=self.runner,
                                aspects=aspects, mirror=mirror)

    def predict_aspects(self, images: Sequence, batch_size: int = 128, mirror: bool = False) -> list[tuple[str, float]]:
        """(aspect, probability) the aspect head gives each image (``model.aspect_head``), in order."""
        return predict_aspects(self.model, images, self.data_cfg, batch_size, self.device, mirror)


@torch.inference_mode()
def predict_aspects(model, records: Sequence, data_cfg: DataConfig, batch_size: int = 128, device=None,
                    mirror: bool = False) -> list[tuple[str, float]]:
    """The aspect head's most likely aspect of each image and its probability (DataError without a head)."""
    if getattr(model, "aspect_head", None) is None:
        raise DataError("this model has no aspect head (train it with model.aspect_head: true)")
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    out: list[tuple[str, float]] = []
    try:
        for batch in build_eval_loader(data_cfg, list(records), batch_size):
            images = batch[0].to(device)
            if mirror:
                images = torch.flip(images, dims=[3])
            with autocast(device):
                probability = torch.softmax(model.aspect_logits(images).float(), dim=1).cpu()
            best = probability.argmax(dim=1)
            out += [(ASPECTS[int(k)], float(probability[i, k])) for i, k in enumerate(best)]
    except DataError as exc:
        raise DataError(_worker_error_line(exc)) from None
    finally:
        model.train(was_training)
    return out


def load_encoder(checkpoint: str | os.PathLike, device=None, precision: str = "auto", engine: str = "torch") -> Encoder:
    """A HandCLIP checkpoint's encoder for enrolment, search and calibration: each image read once, in
    this process (``Encoder.single_pass``), with the features evaluation uses."""
    return Encoder.from_checkpoint(checkpoint, device=device, precision=precision, engine=engine).single_pass()
