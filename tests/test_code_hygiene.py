"""Hygiene the test command enforces: ruff lint and format, and the package structure (no import cycles, even
through function-level imports; rewards/ and rollout/ never import alignment/; inside alignment/ imports flow
cli -> reports -> learners -> recipes)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("alignment", "rewards", "rollout")
# Within alignment/: a subpackage may import those listed after it, never those before it.
LAYERS = ("cli", "reports", "learners", "recipes")


def _ruff() -> list[str]:
    ruff = Path(sys.executable).with_name("ruff")
    if ruff.exists():
        return [str(ruff)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (pip install -e .[dev])")


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(command: list[str]) -> None:
    result = subprocess.run([*_ruff(), *command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _module_graph() -> dict[str, set[str]]:
    files = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package_parts[: len(package_parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _module_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_flow_one_way() -> None:
    wrong = []
    for module, targets in _module_graph().items():
        for target in targets:
            if module.split(".")[0] in ("rewards", "rollout") and target.startswith("alignment"):
                wrong.append(f"{module} -> {target}")
            parts, target_parts = module.split("."), target.split(".")
            if parts[0] == target_parts[0] == "alignment" and len(parts) > 2 and len(target_parts) > 2:
                mine, theirs = parts[1], target_parts[1]
                if mine in LAYERS and theirs in LAYERS and LAYERS.index(theirs) < LAYERS.index(mine):
                    wrong.append(f"{module} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))
