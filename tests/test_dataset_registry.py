"""The dataset registry: every built-in dataset is registered once, config and CLI both go through it,
and data/ never imports synthetic/ (the synthetic dataset registers itself from its own package)."""

import ast
import typing
from pathlib import Path

import pytest
from helpers_datasets import make_folder_tree

import handclip
import handclip.datasets
from handclip import cli
from handclip.config import DataConfig, SyntheticConfig
from handclip.data.manifest import Manifest
from handclip.data.protocols import prepare_folder
from handclip.data.registry import DatasetRegistry, DatasetSpec, Option
from handclip.datasets import DATASETS, prepare_from_config
from handclip.errors import DataError
from handclip.synthetic.dataset import prepare_synthetic

PACKAGE = Path(handclip.__file__).parent


def test_the_registry_holds_exactly_the_datasets_a_config_may_name():
    names = typing.get_args(DataConfig.model_fields["dataset"].annotation)
    assert list(DATASETS) == sorted(names) == ["11k", "folder", "hd", "synthetic"]
    for name in names:
        assert DATASETS.get(name).name == name
    with pytest.raises(DataError, match="unknown dataset 'imagenet' \\(expected one of 11k, folder, hd, synthetic\\)"):
        DATASETS.get("imagenet")


def test_prepare_from_config_goes_through_each_dataset(tmp_path):
    folder = make_folder_tree(tmp_path / "f", {f"id{k}": 3 for k in range(6)})
    cfg = DataConfig(dataset="folder", root=str(folder), runs=2, split_seed=5)
    assert prepare_from_config(cfg, tmp_path) == prepare_folder(folder, runs=2, seed=5)
    small = SyntheticConfig(train_ids=3, test_ids=2, images_per_id=3, image_size=16, seed=2)
    synthetic = DataConfig(dataset="synthetic", synthetic=small, runs=2, split_seed=1)
    manifest = prepare_from_config(synthetic, tmp_path / "work")  # no data.root: rendered under the workdir
    assert manifest == prepare_synthetic(tmp_path / "work" / "synthetic", small, runs=2, seed=1)
    assert (tmp_path / "work" / "synthetic" / "0004" / "002.png").is_file()


class _Toy(DatasetSpec):
    options = (Option("--colour", "which colour"), Option("--test-ids", "how many test ids"))

    def from_config(self, data_cfg, workdir):
        raise AssertionError("not used")

    def from_args(self, args):
        return prepare_folder(args.root, runs=args.runs, seed=args.seed, test_ids=int(args.test_ids),
                              dataset=args.colour)


def test_prepare_command_takes_its_datasets_and_their_options_from_the_registry(monkeypatch, tmp_path, capsys):
    registry = DatasetRegistry()
    registry.register("toy")(_Toy)
    registry.register("folder")(type(DATASETS.get("folder")))
    monkeypatch.setattr(handclip.datasets, "DATASETS", registry)
    monkeypatch.setattr(cli, "COMMANDS", {"prepare": cli.COMMANDS["prepare"]})
    folder = make_folder_tree(tmp_path / "f", {f"id{k}": 3 for k in range(4)})
    out = tmp_path / "toy.csv"
    assert cli.main(["prepare", "toy", "--root", str(folder), "--colour", "teal", "--test-ids", "1",
                     "--out", str(out)]) == 0
    assert Manifest.read(out) == prepare_folder(folder, runs=10, seed=0, test_ids=1, dataset="teal")
    capsys.readouterr()
    # An option of another registered dataset is refused by name; one no dataset has is unknown to argparse.
    assert cli.main(["prepare", "folder", "--root", str(folder), "--colour", "red"]) == 2
    assert "--colour applies to the toy dataset only, not folder" in capsys.readouterr().err
    assert cli.main(["prepare", "toy", "--root", str(folder), "--aspect", "dorsal_r"]) == 2
    assert "unrecognized arguments: --aspect" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--help"])
    shown = capsys.readouterr().out
    assert "{folder,toy}" in shown and "toy only: which colour" in shown
    assert "folder: test identities as a count or a fraction (default half); toy: how many test ids" in " ".join(
        shown.split())


def test_registry_refuses_a_second_dataset_of_one_name_and_clashing_options():
    registry = DatasetRegistry()
    registry.register("toy")(_Toy)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("toy")(_Toy)

    class Clash(_Toy):
        options = (Option("--colour", "a number", {"type": int}),)

    registry.register("clash")(Clash)
    with pytest.raises(ValueError, match="--colour differently"):
        registry.options()
    with pytest.raises(ValueError, match="default"):
        Option("--colour", "which colour", {"default": "red"})


def _imported_modules(path: Path) -> set[str]:
    """Every handclip module ``path`` imports, inside functions included."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # a module's package, or an __init__'s own
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("handclip")}


def _reached(module: str) -> set[str]:
    """Every handclip module that importing ``module`` can load, through imports at any depth."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = PACKAGE.parent.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo += sorted(_imported_modules(path))
    return seen


def test_data_never_imports_synthetic_or_the_catalogue_and_synthetic_sits_below_training():
    for path in sorted((PACKAGE / "data").glob("*.py")):
        bad = {m for m in _imported_modules(path) if m.startswith(("handclip.synthetic", "handclip.datasets"))}
        assert not bad, f"{path.name} imports {bad}"
    # One exception: the tiny pretraining is a recipe on the training loop, so synthetic/pretrain.py uses
    # train.loop and train.hooks. Those reach neither synthetic/ nor the registry (train.engine, which
    # prepares data through the registry, stays out of reach), so no import path leads back.
    loop_core = ("handclip.train.loop", "handclip.train.hooks")
    for path in sorted((PACKAGE / "synthetic").glob("*.py")):
        above = ("handclip.train", "handclip.workflows", "handclip.commands", "handclip.api", "handclip.datasets")
        bad = {m for m in _imported_modules(path) if m.startswith(above)
               and not (path.name == "pretrain.py" and m.startswith(loop_core))}
        assert not bad, f"synthetic/{path.name} imports {bad}"
    for core in loop_core:
        back = {m for m in _reached(core) if m.startswith(("handclip.synthetic", "handclip.datasets",
                                                            "handclip.train.engine"))}
        assert not back, f"{core} reaches {back}"
    assert "handclip.train.loop" in _reached("handclip.synthetic.pretrain")  # the checker follows the recipe


def test_building_the_command_line_reads_the_registry_without_loading_torch():
    """``handclip prepare``'s options come from the registry, read on every command line: that must
    not load torch (seconds) for commands that never use it."""
    import os
    import subprocess
    import sys

    code = ("import sys; from handclip import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'handclip.datasets') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert shown.strip() == "['handclip.datasets']"
