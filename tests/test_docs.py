"""The README is a front door that stays true: short, every `handclip` command in it parses as written,
every link resolves, and the layout it and docs/development.md describe is the tree's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from handclip.cli import UsageError, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PACKAGE = ROOT / "src" / "handclip"


def fenced_commands(text: str) -> list[str]:
    """Each `handclip ...` command line of the text's fenced bash blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "handclip":
                commands.append(line)
    return commands


def test_the_readme_is_a_front_door_of_about_200_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("command", fenced_commands(README.read_text(encoding="utf-8")))
def test_every_readme_command_parses_as_written(command):
    try:
        build_parser().parse_args(shlex.split(command, comments=True)[1:])
    except UsageError as exc:
        pytest.fail(f"README command does not parse: {command}\n  {exc}")


def test_the_command_checker_refuses_a_wrong_command():
    [command] = fenced_commands("```bash\nhandclip search --index g --no-such-flag  # comment\n```\n")
    with pytest.raises(UsageError):
        build_parser().parse_args(shlex.split(command, comments=True)[1:])


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _modules() -> set[str]:
    """Every module but the per-command ones (checked against the CLI's commands below)."""
    return {p.name for p in PACKAGE.rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "commands"}


def test_commands_holds_one_module_per_cli_command():
    from handclip.cli import COMMANDS

    modules = {p.stem for p in (PACKAGE / "commands").glob("*.py") if p.name != "__init__.py"}
    assert modules == {name.replace("-", "_") for name in COMMANDS}


def test_development_layout_names_every_module_and_only_modules_that_exist():
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = text[text.index("```\nsrc/handclip/"):]
    layout = layout[:layout.index("```", 4)]
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", layout))
    assert _modules() - named == set(), "modules missing from docs/development.md"
    assert named - _modules() == set(), "docs/development.md names modules that do not exist"


def test_readme_layout_table_names_every_package():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Layout"):text.index("## Tests")]
    named = set(re.findall(r"`([a-z_]+)/`", table))
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert named == packages
