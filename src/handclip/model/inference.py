"""One path from a model to retrieval features.

Protocol evaluation, validation during training, enrolment and search all get their features from
``Encoder.features`` (or ``extract_features`` beneath it), so one image gives one feature whichever
workflow asks. An ``Encoder`` is a model in eval mode plus the evaluation pixel pipeline it was
trained with: for a checkpoint, the run's whole ``data`` section (input size, working resolution,
normalisation, interpolation, ...), except the settings that only say how images are loaded on the
machine at hand (decode cache, cache folder, loader workers), which never change a pixel
(docs/method.md, "One feature path").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, DataConfig, ModelConfig
from ..data.loaders import build_eval_loader
from ..errors import DataError
from ..runtime import autocast, resolve_device
from .checkpoint import load_checkpoint, model_fingerprint, spec_data_config
from .handclip import build_model

# Data settings that choose how images are loaded here, not what pixels the model sees.
LOADING_FIELDS = ("decode_cache", "cache_dir", "num_workers", "skip_bad")


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


@torch.inference_mode()
def extract_features(model, records: Sequence, data_cfg: DataConfig, batch_size: int = 128, flip: bool = False,
                     device=None, progress: bool = False) -> np.ndarray:
    """Encode ``records`` (records with ``.path``, or paths) in order: float32 [N, feature_dim], L2-normalised.

    With ``flip`` the feature is the mean of the image's and its mirror's (then normalised).
    """
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    loader = build_eval_loader(data_cfg, list(records), batch_size)
    chunks = []
    iterator = loader
    if progress:
        # disable=None: no bar when stderr is not a terminal (logs, pipes), so errors stay on one clean line
        iterator = tqdm(loader, desc="features", unit="batch", leave=False, disable=None)
    try:
        for batch in iterator:
            images = batch[0].to(device, non_blocking=True)
            with autocast(device):
                feats = model.extract(images).float()
                if flip:
                    feats = feats + model.extract(torch.flip(images, dims=[3])).float()
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
    """A HandCLIP model with the pixel pipeline its features are defined by.

    ``label`` names it in reports; ``checkpoint`` is the file it came from (None for a zero-shot or
    in-training model); ``config`` the run configuration the checkpoint recorded, if any.
    """

    model: torch.nn.Module
    data_cfg: DataConfig
    device: torch.device
    label: str = "HandCLIP"
    checkpoint: str | None = None
    config: Config | None = field(default=None, repr=False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device=None) -> "Encoder":
        """A trained HandCLIP checkpoint (``RUN/best.pt``), on ``device``, in eval mode."""
        device = resolve_device(device)
        model, config, _ = load_checkpoint(path, map_location="cpu")
        model.to(device).eval()
        label = f"HandCLIP ({model.spec['model']['backbone']})"
        return cls(model, eval_data_config(config, model.spec), device, label, str(Path(path).resolve()), config)

    @classmethod
    def zero_shot(cls, backbone: str, weights: str | None = None, image_size=None,
                  allow_unsafe_weights: bool = False, device=None, seed: int = 0) -> "Encoder":
        """A backbone with its pretrained (or random, seeded) weights, through the same feature path as a
        trained model (``HandCLIP.extract``), so stage-0 numbers are comparable."""
        device = resolve_device(device)
        data_cfg = DataConfig(image_size=tuple(image_size) if image_size else (224, 224))
        model_cfg = ModelConfig(backbone=backbone, weights=weights, allow_unsafe_weights=allow_unsafe_weights)
        # A random-init baseline is seeded, so the same command gives the same numbers twice.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(model_cfg, data_cfg, num_ids=1)
        model.to(device).eval()
        source = Path(weights).name if weights else "random init"
        return cls(model, data_cfg, device, f"zero-shot {backbone} ({source})")

    @classmethod
    def for_model(cls, model, data_cfg: DataConfig, device=None, label: str = "HandCLIP") -> "Encoder":
        """An in-memory model (during training, or in a notebook) with the data section it is trained on."""
        return cls(model, data_cfg, resolve_device(device), label)

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    def fingerprint(self) -> dict:
        """What a gallery must agree on with this model (see ``model_fingerprint``)."""
        return model_fingerprint(self.model, self.config)

    def with_loading(self, **settings) -> "Encoder":
        """The same encoder with other loading settings (``LOADING_FIELDS``); its features are unchanged."""
        unknown = sorted(set(settings) - set(LOADING_FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]} is not a loading setting (those are {', '.join(LOADING_FIELDS)})")
        data_cfg = self.data_cfg.model_copy(update=settings)
        return Encoder(self.model, data_cfg, self.device, self.label, self.checkpoint, self.config)

    def single_pass(self) -> "Encoder":
        """The same encoder loading each image once, in this process: no decode cache (every image is
        read once, so caching its pixels would only fill the disk) and no loader workers (starting them
        for every small enrolment batch cost 4x the throughput, benchmarks/bench_enrol.py)."""
        return self.with_loading(decode_cache=False, num_workers=0)

    def features(self, images: Sequence, batch_size: int = 128, flip: bool = False,
                 progress: bool = False) -> np.ndarray:
        """L2-normalised features of ``images`` (records or paths), in order."""
        return extract_features(self.model, images, self.data_cfg, batch_size=batch_size, flip=flip,
                                device=self.device, progress=progress)


def load_encoder(checkpoint: str | os.PathLike, device=None) -> Encoder:
    """A HandCLIP checkpoint's encoder for enrolment, search and calibration: each image read once, in
    this process (``Encoder.single_pass``), with the features evaluation uses."""
    return Encoder.from_checkpoint(checkpoint, device=device).single_pass()
