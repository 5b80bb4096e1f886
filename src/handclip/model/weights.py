"""Loading CLIP weights safely: local files (OpenAI's TorchScript archives, state dicts, safetensors)
or open_clip pretrained tags, never running untrusted pickle code.

A TorchScript archive or a pickle that holds more than tensors can run arbitrary code when loaded, so
it is only opened when its SHA-256 is one of OpenAI's official CLIP files or the user says they trust
it (``model.allow_unsafe_weights``). Everything else goes through ``torch.load(weights_only=True)``.
Weights are loaded strictly, and a mismatch is reported key by key. ``read_weights_file`` also says
whether a file is OpenAI's own (a TorchScript archive, or a state dict with OpenAI's metadata entries),
which needs a QuickGELU backbone.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..atomic import sha256_file
from ..errors import CheckpointError

# that contains its SHA-256 (https://openaipublic.azureedge.net/clip/models/<sha256>/<name>.pt),
# as listed in open_clip/pretrained.py. Only these pickle/TorchScript files load without
# ``allow_unsafe_weights``.
KNOWN_OPENAI_SHA256: dict[str, str] = {
    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762": "RN50.pt",
    "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599": "RN101.pt",
    "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd": "RN50x4.pt",
    "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa": "RN50x16.pt",
    "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c": "RN50x64.pt",
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af": "ViT-B-32.pt",
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f": "ViT-B-16.pt",
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836": "ViT-L-14.pt",
    "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02": "ViT-L-14-336px.pt",
}

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Keys OpenAI's TorchScript archives carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")



@lru_cache(maxsize=32)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) so large weights are hashed once."""
    stat = os.stat(path)
    return _cached_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def is_known_openai_file(path: str | os.PathLike) -> bool:
    return file_sha256(path) in KNOWN_OPENAI_SHA256


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_torch_file(path) -> bool:
    """torch.save writes a zip archive (new format) or a pickle starting with the PROTO opcode."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def quiet_weights_only_load(path, map_location="cpu"):
    """torch.load(weights_only=True) without torch's pickle-protocol UserWarning on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no details'}"[:200]


def weights_only_reason(exc: BaseException) -> str:
    """The useful part of torch's weights_only refusal, e.g. 'Unsupported global: GLOBAL io.open ...'."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split())
        detail = detail.split(". Please use", 1)[0].split(" Check the documentation", 1)[0]
        return detail[:200] or "unsupported pickle content"
    return first_line(exc)


def _unsafe_refusal(path: Path, kind: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load {path}: it is a {kind}, which can run arbitrary code when loaded ({reason}), "
        f"and its SHA-256 is not one of OpenAI's official CLIP files; if you trust it, pass "
        f"--set model.allow_unsafe_weights=true (allow_unsafe_weights=True), or convert it to a "
        f"plain state_dict or .safetensors file"
    )


def load_weights_file(path: str | os.PathLike, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat state dict, never running untrusted pickle code (``read_weights_file``)."""
    return read_weights_file(path, allow_unsafe)[0]


def read_weights_file(path: str | os.PathLike, allow_unsafe: bool = False) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read a weights file into a flat state dict, never running untrusted pickle code.

    Returns (state dict, why the file is OpenAI's own or None): a TorchScript archive, or a state dict
    with OpenAI's metadata entries (``input_resolution``, ``context_length``, ``vocab_size``).

    - ``.safetensors``: read with safetensors.
    - plain ``torch.save`` state dicts: ``torch.load(weights_only=True)``.
    - TorchScript archives (OpenAI's original ``.pt``) and pickles that need arbitrary objects:
      only when the file's SHA-256 is an official OpenAI file or ``allow_unsafe`` is True;
      otherwise a CheckpointError explains why and how to proceed. The file's code never runs
      before that decision.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is a directory, not a file" if path.is_dir() else f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({first_line(exc)})") from None
        return _as_state_dict(obj, path), _openai_mark(obj)

    if is_torchscript_archive(path):
        if not allow_unsafe and not is_known_openai_file(path):
            raise _unsafe_refusal(path, "TorchScript archive", "it needs weights_only=False")
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # corrupt archive: report, do not traceback
            raise CheckpointError(f"weights file {path} is not a loadable TorchScript archive ({first_line(exc)})") from None
        return _as_state_dict(scripted.state_dict(), path), "a TorchScript archive, as OpenAI ships CLIP"

    if not looks_like_torch_file(path):
        raise CheckpointError(f"weights file {path} is corrupt or not a PyTorch file (it does not start like a file written by torch.save)")
    try:
        obj = quiet_weights_only_load(path)
    except pickle.UnpicklingError as exc:
        # weights_only refused something: a global (class/function) or an unusual pickle. Only
        # trusted files may go on to the full unpickler.
        if not allow_unsafe and not is_known_openai_file(path):
            raise _unsafe_refusal(path, "pickle holding more than tensors", weights_only_reason(exc)) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CheckpointError(f"weights file {path} could not be read ({first_line(exc2)})") from None
    except Exception as exc:  # torch raises KeyError/RuntimeError/EOFError/... on damaged files
        raise CheckpointError(f"weights file {path} is corrupt or not a PyTorch file ({first_line(exc)})") from None
    if isinstance(obj, nn.Module):  # a whole pickled model (only reachable when trusted)
        obj = obj.state_dict()
    if isinstance(obj, dict) and obj.get("format") == "handclip-checkpoint":
        raise CheckpointError(
            f"{path} is a HandCLIP checkpoint, not backbone weights; load it as a checkpoint "
            f"(handclip.model.checkpoint.load_checkpoint) instead of passing it as model.weights"
        )
    state = _as_state_dict(obj, path)
    return state, _openai_mark(obj.get("state_dict", obj) if isinstance(obj, dict) else obj)


def _openai_mark(obj) -> str | None:
    """Why a state dict is (converted from) OpenAI's own file, or None: its OpenAI metadata entries."""
    if not isinstance(obj, dict):
        return None
    keys = {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k for k in obj}
    found = [k for k in _OPENAI_EXTRA_KEYS if k in keys]
    return f"a state dict with OpenAI's metadata entries ({', '.join(found)})" if found else None


def _as_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap training checkpoints ({'state_dict': ...}, DDP 'module.' prefixes) into tensors."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"weights file {path} does not hold a state dict (key {key!r} is not a string)")
        if key.startswith("module."):
            key = key[len("module."):]
        if key in _OPENAI_EXTRA_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"weights file {path}: entry '{key}' is a {type(value).__name__}, not a tensor")
        state[key] = value
    return state


def describe_mismatch(model_state: dict, file_state: dict) -> Optional[str]:
    missing = [k for k in model_state if k not in file_state]
    unexpected = [k for k in file_state if k not in model_state]
    shapes = [
        f"{k} {tuple(file_state[k].shape)} in the file vs {tuple(model_state[k].shape)} in the model"
        for k in model_state
        if k in file_state and file_state[k].shape != model_state[k].shape
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    return ", ".join(parts) or None


def load_state_into_clip(clip: nn.Module, state: dict[str, torch.Tensor], path, name: str) -> None:
    """Strictly load ``state`` into ``clip``; a CheckpointError names the file and first mismatches."""
    state = dict(state)
    model_state = clip.state_dict()
    # Scalar vs 1-element logit_scale is a storage detail, not an architecture difference.
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in model_state and state[key].numel() == model_state[key].numel() == 1:
            state[key] = state[key].reshape(model_state[key].shape)
    problem = describe_mismatch(model_state, state)
    if problem:
        raise CheckpointError(f"weights file {path} does not match backbone '{name}': {problem}")
    clip.load_state_dict(state, strict=True)


def resolve_weights(name: str, weights: str, allow_unsafe: bool, tags: list[str]) -> tuple[dict, str, str | None]:
    """Return (state dict, description of its source, why it is OpenAI's own file or None) for a local file
    or one of ``tags``, the backbone's open_clip pretrained tags."""
    text = str(weights)
    looks_like_file = (
        os.path.exists(text) or os.sep in text or "/" in text or text.lower().endswith(_WEIGHT_SUFFIXES)
    )
    if looks_like_file:
        state, openai = read_weights_file(text, allow_unsafe)
        return state, text, openai
    if text not in tags and text.lower() not in tags:
        shown = ", ".join(tags[:6]) if tags else "none"
        raise CheckpointError(
            f"model.weights '{text}' is neither an existing file nor a pretrained tag of '{name}' "
            f"(known tags: {shown})"
        )
    if _hf_offline():
        raise CheckpointError(
            f"pretrained tag '{text}' of '{name}' would need a download, but HF_HUB_OFFLINE is set; "
            f"download the weights once and pass the local file as model.weights"
        )
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    try:
        file = download_pretrained(get_pretrained_cfg(name, text))
    except Exception as exc:
        raise CheckpointError(f"could not download pretrained tag '{text}' of '{name}' ({exc})") from None
    # open_clip verifies OpenAI downloads against the SHA-256 in their URL, so they are trusted.
    state, openai = read_weights_file(file, allow_unsafe=True)
    return state, f"{name}:{text}", openai
