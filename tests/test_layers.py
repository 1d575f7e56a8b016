"""The package's layers, read from the source: who may import whom, where torch may come in, no cycles.

The rules (docs/architecture.md): torch is imported at module level only under ``engine/`` and ``cli/``
(and by ``demo.py``'s models); ``engine/`` and ``reports/`` import neither ``plugin/`` nor ``cli/``, nor
each other; the plugin reaches the engine only from inside functions, so loading it imports no torch; the
shared modules at the top import none of the layers; no import cycle, not even through an import made
inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pytest_dualgpu"
NAME = "pytest_dualgpu"

#: What each layer may import, at any depth of the source (from inside functions too).
MAY_IMPORT = {
    "shared": {"shared"},
    "engine": {"shared", "engine"},
    "reports": {"shared", "reports"},
    "plugin": {"shared", "reports", "plugin", "engine"},
    "cli": {"shared", "engine", "reports", "cli", "entry"},
    "demo": {"shared"},
    "entry": {"shared", "engine", "reports", "cli"},
}
#: Layers whose modules may import torch when they are imported.
TORCH_AT_IMPORT = {"engine", "cli", "demo"}
#: Modules that stand where a moved module used to, for code written against it.
REEXPORTS = {f"{NAME}.report": "reports"}


@dataclass(frozen=True)
class Import:
    target: str  # the module imported, or the package a name was imported from
    at_import: bool  # runs when the importing module is imported (not inside a function or TYPE_CHECKING)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in REEXPORTS:
        return REEXPORTS[module]
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("engine", "reports", "plugin", "cli"):
        return parts[1]
    if module == f"{NAME}.demo":
        return "demo"
    if module in (NAME, f"{NAME}.__main__"):
        return "entry"
    return "shared"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> Iterator[Import]:
    """Every import in the file, resolved to a module of the package where it names one."""
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, at_import: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            deferred = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if deferred or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)):
                yield from visit(child, at_import=False)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, at_import, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = (
                        module_name(path)
                        if path.name == "__init__.py"
                        else module_name(path)[: -len(path.stem) - 1]
                    )
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    yield Import(submodule if submodule in known else base, at_import, child.lineno)
            else:
                yield from visit(child, at_import)

    yield from visit(tree, at_import=True)


def all_imports() -> dict[str, list[Import]]:
    found = modules()
    known = set(found)
    return {module: list(imports(path, known)) for module, path in found.items()}


def test_every_module_imports_only_from_the_layers_below_it() -> None:
    wrong = [
        f"{module}:{found.line} ({layer(module)}) imports {found.target} ({layer(found.target)})"
        for module, found_imports in all_imports().items()
        for found in found_imports
        if found.target.startswith(NAME) and layer(found.target) not in MAY_IMPORT[layer(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_torch_is_imported_at_module_level_only_in_the_engine_and_the_command() -> None:
    wrong = [
        f"{module}:{found.line} imports {found.target} when it is imported"
        for module, found_imports in all_imports().items()
        for found in found_imports
        if found.at_import and found.target.split(".")[0] == "torch" and layer(module) not in TORCH_AT_IMPORT
    ]
    assert not wrong, "\n".join(wrong)


def test_the_plugin_reaches_the_engine_only_from_inside_functions() -> None:
    wrong = [
        f"{module}:{found.line} imports {found.target} when it is imported"
        for module, found_imports in all_imports().items()
        if layer(module) in ("plugin", "shared", "reports")
        for found in found_imports
        if found.at_import and layer(found.target) in ("engine", "cli")
    ]
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle() -> None:
    """Imports inside functions count too: a cycle through one works only while the function runs late."""
    graph = {
        module: {found.target for found in found_imports if found.target.startswith(NAME)}
        for module, found_imports in all_imports().items()
    }
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            if target != module:
                walk(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The walk itself: an engine module that imports the plugin, and torch in a report, are seen."""
    engine = tmp_path / "engine.py"
    engine.write_text(
        "import torch\nfrom pytest_dualgpu.plugin import hooks\n\n"
        "def later():\n    import pytest_dualgpu.cli\n"
    )
    found = list(imports(engine, {f"{NAME}.plugin.hooks"}))
    assert [(item.target, item.at_import) for item in found] == [
        ("torch", True),
        (f"{NAME}.plugin.hooks", True),
        (f"{NAME}.cli", False),
    ]
    assert layer(f"{NAME}.plugin.hooks") not in MAY_IMPORT[layer(f"{NAME}.engine.call")]
    assert layer(f"{NAME}.reports.rows") not in TORCH_AT_IMPORT
