"""The layout shows the architecture: a package per deployed part over a few shared modules, imports
pointing one way, small modules, and one owner per contract."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_ping import contract
from tests.support.processes import REPO

PACKAGE = REPO / "node_ping"
PARTS = ("probe", "discover", "diagnose")
"""The separately deployed programs: the DaemonSet prober, the discovery controller, diagnose."""
SHARED = ("contract", "settings", "targets", "signals", "logs", "kube", "liveness")
"""The modules under the parts; every top-level module but the command group is one of them."""
ENTRY = ("node_ping", "node_ping.__main__", "node_ping.cli")
"""The package and the command group: over the parts, the only modules that may import them."""
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path): path for path in sorted(root.rglob("*.py"))}


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at the top or inside a function, as absolute names."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def internal_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    return {imported for imported in imports(path) if imported in known and imported not in (name, "node_ping")}


def part_of(name: str) -> str:
    """`node_ping.probe.cycle` -> `probe`; a shared module -> its own name."""
    return name.split(".")[1] if name.count(".") >= 1 else ""


class TestPackages:
    """Imports point down: the command group over the parts, the parts over the shared modules."""

    def test_each_part_is_a_package_with_its_own_command_module(self) -> None:
        known = modules()
        for part in PARTS:
            assert f"node_ping.{part}" in known and f"node_ping.{part}.command" in known, part

    def test_every_top_level_module_is_shared_or_the_command_group(self) -> None:
        """A new shared module is listed in SHARED, so the checks below cover it too."""
        top_level = {name for name in modules() if name.count(".") <= 1 and part_of(name) not in PARTS}
        assert top_level == {*ENTRY, *(f"node_ping.{shared}" for shared in SHARED)}

    def test_shared_modules_import_no_part(self) -> None:
        known = modules()
        for shared in SHARED:
            name = f"node_ping.{shared}"
            wrong = {imported for imported in internal_imports(name, known[name], known)
                     if part_of(imported) in (*PARTS, "cli")}
            assert not wrong, f"{name} imports {wrong}"

    def test_no_part_imports_another(self) -> None:
        known = modules()
        for name, path in known.items():
            own = part_of(name)
            if own not in PARTS:
                continue
            wrong = {imported for imported in internal_imports(name, path, known)
                     if part_of(imported) in PARTS and part_of(imported) != own}
            assert not wrong, f"{name} imports {wrong}"

    def test_no_import_cycles(self) -> None:
        known = modules()
        graph = {name: internal_imports(name, path, known) for name, path in known.items()}
        done: set[str] = set()

        def visit(name: str, trail: tuple[str, ...]) -> None:
            if name in trail:
                pytest.fail("import cycle: " + " -> ".join((*trail[trail.index(name):], name)))
            if name in done:
                return
            for imported in graph[name]:
                # A package's __init__ is imported on the way to any of its modules: not an edge back.
                if not name.startswith(f"{imported}."):
                    visit(imported, (*trail, name))
            done.add(name)

        for name in graph:
            visit(name, ())


class TestModules:
    """Small modules, each saying its job."""

    @pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
    def test_at_most_400_lines_and_a_docstring(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= MAX_LINES
        assert ast.get_docstring(ast.parse(text)), f"{path} has no module docstring"


class TestOneOwner:
    """Metric names are spelled in node_ping/contract.py only; tests share helpers, not modules."""

    def test_metric_names_are_spelled_only_in_the_contract(self) -> None:
        names = {metric.base for metric in contract.ALL_METRICS}
        prefixes = {family.prefix for family in contract.FAMILIES}
        spelled = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names | prefixes), key=len, reverse=True))
                             + r")")
        for name, path in modules().items():
            if name == "node_ping.contract":
                continue
            found = spelled.findall(path.read_text(encoding="utf-8"))
            assert not found, f"{path.relative_to(REPO)} spells {sorted(set(found))}: use node_ping.contract"

    def test_test_modules_import_only_helpers(self) -> None:
        tests = REPO / "tests"
        for path in sorted(tests.rglob("*.py")):
            wrong = {imported for imported in imports(path)
                     if imported.startswith("tests.") and not imported.startswith(("tests.support", "tests.conftest"))}
            assert not wrong, f"{path.relative_to(REPO)} imports {wrong}: shared helpers belong in tests/support"

    def test_no_helper_is_copied(self) -> None:
        """A helper is written once in tests/ (shared ones in tests/support) and imported, never copied:
        no two functions have the same body."""
        bodies: dict[str, str] = {}
        for path in sorted((REPO / "tests").rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("test_"):
                    continue
                statements = node.body[1:] if ast.get_docstring(node) else node.body
                if len(statements) < 2:
                    continue  # a one-line body is an expression, not a helper worth sharing
                body = ast.dump(ast.Module(body=statements, type_ignores=[]))
                where = f"{path.relative_to(REPO)}:{node.name}"
                assert body not in bodies, f"{where} repeats {bodies[body]}"
                bodies[body] = where
