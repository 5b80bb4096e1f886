"""The package layering stays as docs/method.md's layout describes it: no import loop between modules or
between packages (imports inside functions included), and no arrow against the layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "handclip"

# Arrows that must never exist: the lower layer never reaches up.
FORBIDDEN = {
    ("evaluate", "gallery"), ("gallery", "evaluate"),
    ("forensic", "evaluate"), ("forensic", "gallery"), ("forensic", "train"), ("forensic", "serve"),
    ("model", "train"), ("model", "evaluate"), ("model", "gallery"), ("model", "forensic"),
    ("data", "model"), ("data", "train"), ("data", "evaluate"), ("data", "gallery"), ("data", "synthetic"),
    # The tiny pretraining (synthetic/) is a recipe on train's loop, so train never imports synthetic.
    ("train", "synthetic"), ("train", "gallery"), ("train", "serve"), ("gallery", "serve"), ("gallery", "train"),
    ("serve", "commands"), ("gallery", "commands"), ("train", "commands"), ("evaluate", "commands"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every handclip module ``path`` imports, at any depth of the file (functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("handclip"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("handclip"):
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # "from .pkg import module"
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path, name):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "(root)"


def package_graph() -> dict[str, set[str]]:
    packages = defaultdict(set)
    for source, targets in import_graph().items():
        for target in targets:
            # A package's __init__ importing its own modules is not an arrow between packages.
            if _package(source) != _package(target) and target != "handclip":
                packages[_package(source)].add(_package(target))
    return packages


def test_no_import_loop_between_modules():
    assert _cycle(import_graph()) is None, " -> ".join(_cycle(import_graph()))


def test_no_import_loop_between_packages():
    graph = {k: {t for t in v if t != "(root)"} for k, v in package_graph().items() if k != "(root)"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_arrow_against_the_layers():
    arrows = {(s, t) for s, targets in package_graph().items() for t in targets}
    assert not arrows & FORBIDDEN, sorted(arrows & FORBIDDEN)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from ..gallery.reader import GalleryReader\n", encoding="utf-8")
    assert "handclip.gallery.reader" in _imports(module, "handclip.evaluate.probe")
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
