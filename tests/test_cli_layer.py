"""The command line stays a thin layer over ``handclip.api``.

The rule, for every module of ``handclip/commands/`` (one per ``handclip`` command):

- ``add_arguments(parser)`` declares the options. It may read option tables (choices, defaults) from
  light modules; building the parser must never load torch (checked below by running it).
- ``run(args)`` checks and normalises the arguments, then calls exactly one public function of
  ``handclip.api`` per action of the command (``audit``, ``case`` and ``gallery`` have two actions,
  ``serve-keys`` three), and
  prints its result. ``api.load_config`` and ``api.demo_config`` may come first: they turn
  ``--config``/``--set`` into a ``Config``, the argument the action takes.
- Outside ``add_arguments`` a command imports nothing of HandCLIP but ``handclip.api`` (inside
  ``run``, after the cheap checks: it loads torch), ``handclip.errors``, ``handclip.config``
  (argument limits and validation) and ``handclip.preflight`` (torch-free checks that the given files
  exist); of the rest only the standard library and pydantic (whose validation errors become one line
  naming the option). Run logic lives in the packages.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handclip.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "handclip"
COMMAND_MODULES = sorted((PACKAGE / "commands").glob("[!_]*.py"))
# Commands with sub-actions: one api function each.
ACTIONS = {"audit": 2, "case": 2, "gallery": 2, "serve_keys": 3, "evaluate": 2}
NORMALISERS = {"load_config", "demo_config"}
ALLOWED_HANDCLIP = {"handclip.errors", "handclip.config", "handclip.preflight"}
ALLOWED_OTHERS = set(sys.stdlib_module_names) | {"__future__", "pydantic"}


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _imported(node: ast.AST) -> set[str]:
    """Absolute names of the modules an import node brings in (``from .. import api`` -> handclip.api)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        if not node.level:
            return {node.module}
        base = ".".join(["handclip", "commands"][:2 - node.level + 1])
        module = f"{base}.{node.module}" if node.module else base
        return {f"{module}.{alias.name}" if module == "handclip" else module for alias in node.names}
    return set()


def _imports_outside(tree: ast.Module, skipped: ast.AST | None) -> set[str]:
    inside = set(ast.walk(skipped)) if skipped is not None else set()
    return {name for node in ast.walk(tree) if node not in inside for name in _imported(node)}


def _api_calls(function: ast.FunctionDef) -> set[str]:
    return {node.func.attr for node in ast.walk(function)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "api"}


def test_there_is_one_command_module_per_command():
    assert {p.stem for p in COMMAND_MODULES} == {name.replace("-", "_") for name in COMMANDS}


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=lambda p: p.stem)
def test_run_calls_one_public_api_function_per_action(path):
    from handclip import api

    functions = _functions(ast.parse(path.read_text(encoding="utf-8")))
    assert {"add_arguments", "run"} <= set(functions), f"{path.name} lacks add_arguments or run"
    called = _api_calls(functions["run"])
    assert called <= set(api.__all__), f"{path.name} calls {sorted(called - set(api.__all__))}, not in api.__all__"
    actions = called - NORMALISERS
    assert len(actions) == ACTIONS.get(path.stem, 1), f"{path.name} run() calls api.{sorted(actions)}"


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=lambda p: p.stem)
def test_commands_import_only_the_api_errors_config_and_the_standard_library(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = _functions(tree)
    outside = _imports_outside(tree, functions.get("add_arguments"))
    ours = {name for name in outside if name.startswith("handclip")}
    assert ours - ALLOWED_HANDCLIP - {"handclip.api"} == set(), f"{path.name} reaches past the api: {sorted(ours)}"
    others = {name.split(".")[0] for name in outside if not name.startswith("handclip")}
    assert others <= ALLOWED_OTHERS, f"{path.name} imports {sorted(others - ALLOWED_OTHERS)}"
    top_level = {name for node in tree.body for name in _imported(node)}
    assert "handclip.api" not in top_level, f"{path.name} imports the api (torch) when the parser is built"


def test_the_checker_sees_a_command_that_reaches_past_the_api():
    source = ("from ..errors import DataError\n"
              "def add_arguments(parser):\n    from ..datasets import DATASETS\n"
              "def run(args):\n    from .. import api\n    from ..gallery.session import ExaminerSession\n"
              "    api.load_config(None)\n    api.train(None)\n    api.evaluate(None)\n")
    tree = ast.parse(source)
    functions = _functions(tree)
    assert _imports_outside(tree, functions["add_arguments"]) == {
        "handclip.errors", "handclip.api", "handclip.gallery.session"}
    assert _api_calls(functions["run"]) - NORMALISERS == {"train", "evaluate"}


def test_help_and_usage_errors_do_not_load_torch():
    """``handclip --help`` and a command line argparse refuses answer without loading torch (seconds)."""
    code = ("import sys; from handclip import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit as exc:\n    help_code = exc.code\n"
            "usage_code = cli.main(['search', '--index', 'g'])\n"
            "print(help_code, usage_code, 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert shown.stdout.split()[-3:] == ["0", "2", "False"], shown.stdout + shown.stderr
    assert "--query" in shown.stderr


def test_the_api_docstring_and_the_user_guide_use_only_what_the_api_exports():
    """The examples a notebook user copies name only public functions of ``handclip.api``."""
    import re

    from handclip import api

    guide = (PACKAGE.parents[1] / "docs" / "user-guide.md").read_text(encoding="utf-8")
    for where, text in (("api.py", api.__doc__), ("docs/user-guide.md", guide)):
        named = set(re.findall(r"\bapi\.(\w+)", text))
        assert named and named <= set(api.__all__), f"{where} names api.{sorted(named - set(api.__all__))}"
    assert all(callable(getattr(api, name)) for name in api.__all__)


def _exports_for_type_checkers() -> dict[str, tuple[str, str]]:
    """What api.py's ``if TYPE_CHECKING:`` block imports: public name -> (module, its name there)."""
    tree = ast.parse((PACKAGE / "api.py").read_text(encoding="utf-8"))
    [block] = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    return {alias.asname or alias.name: (node.module, alias.name)
            for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_the_api_loads_each_name_from_where_type_checkers_and_the_layering_test_see_it():
    from handclip import api

    assert _exports_for_type_checkers() == api._EXPORTS
    assert set(api.__all__) == set(api._EXPORTS) and set(api.__all__) <= set(dir(api))
    assert api.evaluate.__name__ == "evaluate_manifest" and api.demo.__name__ == "run_demo"


def test_commands_that_need_no_model_do_not_load_torch(tmp_path):
    """``handclip scan``, ``prepare`` and ``serve-keys`` answer without waiting seconds for torch: the api
    imports each function's package only when it is used."""
    from handclip.gallery.metadata import GALLERY_FILE
    from handclip.serve.keys import GALLERY_MARKER

    assert GALLERY_MARKER == GALLERY_FILE
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / GALLERY_FILE).write_text("{}")
    code = ("import sys; from handclip import cli\n"
            f"print(cli.main(['serve-keys', 'list', '--index', {str(tmp_path / 'g')!r}]),\n"
            f"      cli.main(['scan', '--manifest', {str(tmp_path / 'none.csv')!r}]),\n"
            f"      cli.main(['prepare', 'folder', '--root', {str(tmp_path / 'none')!r}]),\n"
            "      'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert shown.stdout.split()[-4:] == ["0", "2", "2", "False"], shown.stdout + shown.stderr
    assert "no API keys in" in shown.stdout and "none.csv" in shown.stderr
