"""HandCLIP checkpoints: tensors and plain data only, written atomically, read with weights_only=True.

A checkpoint is a dict::

    {"format": "handclip-checkpoint", "version": 1,
     "spec": {...},          # what build_model needs: model section, image size, num_ids, ...
     "config": {...} | None, # the full run configuration (Config.to_dict())
     "state_dict": {...},    # HandCLIP.state_dict()
     "extra": {...}}         # caller's plain data: label_map, epoch, metrics, optimizer states, ...

The model is rebuilt from ``spec`` with random init, then the stored state dict is loaded, so
the original backbone weights file is never needed again.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_open, sha256_file
from ..config import config_from_dict
from ..errors import CheckpointError, ConfigError, HandCLIPError
from .handclip import HandCLIP, build_model
from .weights import (
    describe_mismatch,
    first_line,
    is_torchscript_archive,
    looks_like_torch_file,
    quiet_weights_only_load,
    weights_only_reason,
)

CHECKPOINT_FORMAT = "handclip-checkpoint"
CHECKPOINT_VERSION = 1

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "spec_data_config",
    "model_fingerprint",
    "state_dict_sha256",
]

# Exactly the types torch.load(weights_only=True) accepts (subclasses such as defaultdict are refused).
_PLAIN = (str, int, float, bool, complex, bytes, type(None))
_MAPPINGS = (dict, collections.OrderedDict, collections.Counter)  # Counter: MultiStepLR milestones
_SEQUENCES = (list, tuple, set)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError if ``value`` holds anything torch.load(weights_only=True) would refuse."""
    kind = type(value)
    if kind in _PLAIN or isinstance(value, (torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return
    if kind in _MAPPINGS:
        for key, item in value.items():
            if type(key) not in _PLAIN:
                raise TypeError(f"checkpoint entry {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"checkpoint entry {where} is a {kind.__name__}; store only tensors, numbers, strings, "
        f"lists and dicts (convert numpy arrays with torch.from_numpy or .tolist())"
    )


def _config_dict(config) -> dict | None:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    if isinstance(config, dict):
        return config
    raise TypeError(f"config must be a handclip Config or a dict, not {type(config).__name__}")


def save_checkpoint(path: str | os.PathLike, model: HandCLIP, config, extra: dict | None = None) -> Path:
    """Write ``model`` (+ config and plain ``extra`` data) to ``path`` atomically; returns the path."""
    if not getattr(model, "spec", None):
        raise TypeError("save_checkpoint needs a model made by build_model (it records how to rebuild it)")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    config_dict = _config_dict(config)
    _check_plain(config_dict, "config")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": model.spec,
        "config": config_dict,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw checkpoint dict, loaded with weights_only=True and checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path) and is_torchscript_archive(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (such as OpenAI's original CLIP files), not a HandCLIP "
            f"checkpoint; backbone weights go in model.weights"
        )
    if not looks_like_torch_file(path):
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file (it does not start like a file written by torch.save)")
    try:
        payload = quiet_weights_only_load(path, map_location=map_location)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, which could run "
            f"code when loaded ({weights_only_reason(exc)}), so it is not a HandCLIP checkpoint"
        ) from None
    except Exception as exc:  # torch raises KeyError/RuntimeError/EOFError/... on damaged files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a HandCLIP checkpoint (backbone weights go in model.weights, not here)"
        )
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, but this HandCLIP reads version {CHECKPOINT_VERSION}"
        )
    for key in ("spec", "state_dict", "extra"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path} is missing its '{key}' entry")
    return payload


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the model stored at ``path``: returns (model in eval mode, Config or None, extra dict)."""
    path = Path(path)
    payload = read_checkpoint(path, map_location=map_location)
    spec = payload["spec"]
    try:
        model_section = dict(spec["model"], weights=None)  # rebuilt from the stored tensors, not the original file
        model = build_model(model_section, spec_data_config(spec), int(spec["num_ids"]))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} has an incomplete model description (missing {exc})") from None
    except HandCLIPError as exc:
        raise CheckpointError(f"checkpoint {path} describes a model this HandCLIP cannot build: {exc}") from None
    model.spec["weights_source"] = spec.get("weights_source", "random")
    state = payload["state_dict"]
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"checkpoint {path} does not match the architecture it describes: {problem}")
    model.load_state_dict(state, strict=True)
    model.eval()
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = sha256_file(path)

    config = payload.get("config")
    if config is not None:
        try:
            config = config_from_dict(config, source=str(path))
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path} holds a configuration this HandCLIP cannot read: {exc}") from None
    return model, config, payload["extra"]


def spec_data_config(spec: dict):
    """The data settings of the evaluation transform a checkpoint's model was trained with, from its spec.

    Checkpoints written before the interpolation was recorded were evaluated with a bicubic resize after a
    bicubic shrink to twice the input size; they keep exactly that, so their features do not change.
    """
    from ..config import DataConfig

    size = tuple(spec["image_size"])
    fields = {"image_size": size, "pixel_mean": tuple(spec["pixel_mean"]), "pixel_std": tuple(spec["pixel_std"])}
    if "interpolation" in spec:
        fields.update(interpolation=spec["interpolation"], cache_resolution=spec.get("cache_resolution"))
    else:
        fields.update(interpolation={"train": "bicubic", "eval": "bicubic"}, cache_resolution=2 * max(size))
    return DataConfig(**fields)


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and bytes), independent of file layout."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: HandCLIP, config=None) -> dict:
    """What a gallery index must agree on with the model that searches it (all JSON-serialisable)."""
    spec = model.spec or {}
    model_section = spec.get("model", {})
    config_dict = _config_dict(config) or {}
    data = config_dict.get("data", {})
    return {
        "backbone": model_section.get("backbone"),
        "kind": model.kind,
        "image_size": list(spec.get("image_size") or data.get("image_size") or []),
        "patch_stride": model_section.get("patch_stride"),
        "rn_last_stride": model_section.get("rn_last_stride") if model.kind == "rn" else None,
        "neck_feat": model.neck_feat,
        "feature_dim": int(model.feature_dim),
        "embed_dim": int(model.embed_dim),
        "num_ids": int(model.num_ids),
        "pixel_mean": list(spec.get("pixel_mean") or data.get("pixel_mean") or []),
        "pixel_std": list(spec.get("pixel_std") or data.get("pixel_std") or []),
        "feature_normalisation": "l2",
        "checkpoint_sha256": getattr(model, "checkpoint_sha256", None),
        "weights_sha256": state_dict_sha256(model),
    }
