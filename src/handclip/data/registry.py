"""The dataset registry: each dataset says how it prepares its protocol manifest (docs/method.md,
"Protocols"), from a config's ``data`` section or from ``handclip prepare``'s command line.

A dataset is a ``DatasetSpec`` subclass registered under its name::

    @register_dataset("hd")
    class HD(DatasetSpec):
        \"\"\"HD (PolyU-IITD hand dorsal).\"\"\"

        def from_config(self, data_cfg, workdir): ...
        def from_args(self, args): ...

``options`` lists the ``handclip prepare`` options only that dataset takes (``--aspect`` for 11k);
the options every dataset takes (``--root``, ``--runs``, ``--seed``, ``--keep-small-ids``, ``--keep-bad``,
``--no-image-check``) belong to the command. Datasets register themselves where they are defined: 11k, HD and folder in
``handclip.data.protocols``, synthetic in ``handclip.synthetic.dataset``. ``handclip.datasets``
imports every one of them, so code that needs them all (``prepare``, training, the demo) goes
through it rather than through this module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from ..errors import DataError
from .manifest import Manifest


@dataclass(frozen=True)
class Option:
    """One ``handclip prepare`` option of a dataset: its flag, what it means, and argparse's keywords.

    An option left out on the command line is ``None`` (``False`` for a switch), so ``prepare`` can
    tell which ones were given and refuse those the chosen dataset does not take."""

    flag: str
    help: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if "default" in self.kwargs or "dest" in self.kwargs:
            raise ValueError(f"option {self.flag}: a dataset option keeps argparse's default and dest")

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def unset(self) -> Any:
        """The value the option has when it is not given."""
        return False if self.kwargs.get("action") == "store_true" else None


class DatasetSpec:
    """How one dataset prepares a manifest; ``name`` is set by ``register_dataset``."""

    name: str = ""
    options: tuple[Option, ...] = ()

    def from_config(self, data_cfg, workdir: Path) -> Manifest:
        """The manifest ``data_cfg`` (a ``DataConfig`` without ``manifest``) asks for; files the
        dataset itself must write (rendered images) go under ``workdir`` unless ``data_cfg`` says where."""
        raise NotImplementedError

    def from_args(self, args: argparse.Namespace) -> Manifest:
        """The manifest ``handclip prepare <name>`` asks for (``args`` holds every dataset's options)."""
        raise NotImplementedError


Spec = TypeVar("Spec", bound=type[DatasetSpec])


class DatasetRegistry:
    """Datasets by name, listed in name order (not import order, which depends on what was imported first)."""

    def __init__(self) -> None:
        self._specs: dict[str, DatasetSpec] = {}

    def register(self, name: str) -> Callable[[Spec], Spec]:
        """Class decorator: register one instance of the ``DatasetSpec`` subclass under ``name``."""
        def add(cls: Spec) -> Spec:
            if name in self._specs:
                raise ValueError(f"dataset {name!r} is already registered (by {type(self._specs[name]).__qualname__})")
            if not issubclass(cls, DatasetSpec):
                raise TypeError(f"{cls.__qualname__} is not a DatasetSpec")
            cls.name = name
            self._specs[name] = cls()
            return cls
        return add

    def get(self, name: str) -> DatasetSpec:
        key = str(name).lower()
        if key not in self._specs:
            raise DataError(f"unknown dataset {name!r} (expected one of {', '.join(self)})")
        return self._specs[key]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._specs))

    def __len__(self) -> int:
        return len(self._specs)

    def options(self) -> list[tuple[Option, list[tuple[str, str]]]]:
        """Every dataset option once, with the datasets that take it and what it means for each.

        Two datasets may share a flag (``--test-ids``) if argparse treats it the same for both."""
        merged: dict[str, tuple[Option, list[tuple[str, str]]]] = {}
        for name in self:
            for option in self._specs[name].options:
                first, owners = merged.setdefault(option.flag, (option, []))
                if dict(first.kwargs) != dict(option.kwargs):
                    raise ValueError(f"datasets {owners[0][0]} and {name} declare {option.flag} differently")
                owners.append((name, option.help))
        return list(merged.values())


DATASETS = DatasetRegistry()


def register_dataset(name: str) -> Callable[[Spec], Spec]:
    """``@register_dataset("11k")``: add a ``DatasetSpec`` subclass to ``DATASETS``."""
    return DATASETS.register(name)


def root_arg(args: argparse.Namespace) -> str:
    """``--root``, which every dataset needs (synthetic: where its images are written)."""
    if not args.root:
        raise DataError(f"prepare {args.dataset} needs --root DIR")
    return args.root


def small_ids_arg(args: argparse.Namespace) -> str:
    """The small-identity policy ``--keep-small-ids`` asks for."""
    return "keep" if args.keep_small_ids else "error"


def bad_images_arg(args: argparse.Namespace) -> str:
    """The bad-image policy ``--keep-bad`` and ``--no-image-check`` ask for (default: leave them out)."""
    if getattr(args, "no_image_check", False):
        return "unchecked"
    return "keep" if getattr(args, "keep_bad", False) else "leave_out"


__all__ = ["DATASETS", "DatasetRegistry", "DatasetSpec", "Option", "bad_images_arg", "register_dataset", "root_arg",
           "small_ids_arg"]
