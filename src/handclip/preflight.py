"""Checks of a command's inputs that need no torch, so a typo answers at once.

``handclip train``, ``evaluate``, ``calibrate``, ``enrol`` and ``search`` load torch, which takes seconds;
the files and folders they are given are checked here first, each mistake one line naming the flag or
config key and the path (the CLI layer, ``handclip.commands``, calls these before the api). Also here,
because it only reads a ``Config``: the settings a command ignores (``ignored_settings``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .errors import ConfigError, DataError

# A model.weights value ending so, or holding a folder separator, is a file; otherwise an open_clip tag.
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


def require_file(flag: str, path: str | os.PathLike | None, what: str = "file", hint: str = "") -> None:
    """DataError ``FLAG: WHAT PATH does not exist`` (or: is a folder) unless ``path`` is an existing file;
    None passes. ``hint`` follows in brackets."""
    if path is None:
        return
    target, hint = Path(path).expanduser(), f" ({hint})" if hint else ""
    if target.is_dir():
        raise DataError(f"{flag}: {what} {path} is a folder, not a file{hint}")
    if not target.is_file():
        raise DataError(f"{flag}: {what} {path} does not exist{hint}")


def require_folder(flag: str, path: str | os.PathLike | None, what: str = "folder", hint: str = "") -> None:
    """DataError unless ``path`` is an existing folder; None passes."""
    if path is None:
        return
    target, hint = Path(path).expanduser(), f" ({hint})" if hint else ""
    if target.exists() and not target.is_dir():
        raise DataError(f"{flag}: {what} {path} is a file, not a folder{hint}")
    if not target.is_dir():
        raise DataError(f"{flag}: {what} {path} does not exist{hint}")


def require_file_or_folder(flag: str, path: str | os.PathLike | None, what: str) -> None:
    """DataError unless ``path`` exists (a file or a folder); None passes."""
    if path is not None and not Path(path).expanduser().exists():
        raise DataError(f"{flag}: {path} does not exist ({what})")


def weights_is_path(value: str) -> bool:
    """``model.weights`` names a file (not an open_clip tag such as ``openai``)."""
    return "/" in value or os.sep in value or value.lower().endswith(_WEIGHT_SUFFIXES)


def check_input_paths(config: Config) -> None:
    """Refuse (one ConfigError naming the key) an input file or folder of ``config`` that does not exist:
    ``data.manifest``, else ``data.root`` of a dataset read from disk, and a ``model.weights`` file."""
    data = config.data
    if data.manifest:
        manifest = Path(data.manifest).expanduser()
        if not manifest.is_file():
            problem = "is a folder, not a manifest CSV" if manifest.is_dir() else "does not exist"
            raise ConfigError(f"data.manifest {data.manifest} {problem} (write one with `handclip prepare`)")
    elif data.dataset != "synthetic" and data.root and not Path(data.root).expanduser().is_dir():
        raise ConfigError(f"data.root {data.root} is not a folder that exists")
    weights = config.model.weights
    if weights and weights_is_path(weights) and not Path(weights).expanduser().is_file():
        raise ConfigError(f"model.weights {weights} does not exist (nothing is downloaded; give a local file)")


def ignored_settings(config: Config, command: str = "train", manifest_datasets: set[str] | None = None) -> list[str]:
    """The settings of ``config`` that differ from the defaults but that ``command`` does not read, each one
    sentence naming the key and what is used instead: ``train`` ignores ``pretrain`` (only ``handclip demo``
    and ``pretrain-tiny`` run it), which misleads when it asks for a pretraining and no ``model.weights``
    is given; data read from a
    manifest ignores how it would have been prepared (``data.synthetic`` is not mentioned for a manifest of
    synthetic hands only, ``manifest_datasets``: it is how that manifest was made)."""
    defaults, data, notes = Config(), config.data, []
    # A pretrain section that asks for no pretraining misleads nobody when train skips it.
    if command == "train" and config.pretrain.enabled and not config.model.weights:
        notes.append("the pretrain section is ignored by `handclip train`, which starts from model.weights "
                     "(none: random init); `handclip pretrain-tiny --config FILE --out tiny.pt` makes the "
                     "pretrained tiny CLIP, then --set model.weights=tiny.pt")
    made_here = data.manifest and manifest_datasets == {"synthetic"}
    if (data.dataset != "synthetic" or data.manifest) and data.synthetic != defaults.data.synthetic and not made_here:
        source = f"data.manifest {data.manifest}" if data.manifest else f"data.dataset {data.dataset}"
        notes.append(f"data.synthetic is ignored: the images come from {source}")
    if data.manifest:
        given = [f"data.{key}" for key in ("root", "aspect", "runs", "split_seed", "gallery_all")
                 if getattr(data, key) != getattr(defaults.data, key)]
        if given:
            notes.append(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} ignored: data.manifest "
                         f"{data.manifest} already holds the splits (set them in `handclip prepare` instead)")
    return notes


__all__ = ["check_input_paths", "ignored_settings", "require_file", "require_file_or_folder", "require_folder",
           "weights_is_path"]
