"""The code's structure: imports flow one way (infra at the bottom, runtimes, exporters, validation,
then training and reports, the command line on top), no module imports itself through others, the executor and
``--help`` load no torch, and an import inside a function says why it is there."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each package may import its own layer's modules and those of lower layers, never higher ones.
LAYERS = {"infra": 0, "runtimes": 1, "exporters": 2, "validation": 3, "training": 4, "reports": 4, "cli": 5}


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imported(node: ast.AST, module: str) -> list[str]:
    """The project modules an import statement loads (a ``from package import submodule`` loads
    the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative
            base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return [name for name in names if name in MODULES]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its code (functions included)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = {name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for name in _imported(node, module) if name != module}
    return graph


def test_the_module_import_graph_has_no_cycle():
    try:
        list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_imports_point_down_the_layers():
    upward = [f"{a} imports {b}" for a, targets in import_graph().items() for b in targets
              if a.split(".")[0] != b.split(".")[0]
              and LAYERS[a.split(".")[0]] <= LAYERS[b.split(".")[0]]]
    assert not upward, upward


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    found = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here, above = lines[node.lineno - 1], lines[node.lineno - 2]
                    if "# lazy:" not in here and not above.strip().startswith("# lazy:"):
                        found.append((node.lineno, here.strip()))
    return found


@pytest.mark.parametrize("path", sorted([*MODULES.values(), ROOT / "conftest.py", *(ROOT / "tests").rglob("*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_an_import_inside_a_function_says_why(path):
    """Imports belong at the top; the few that wait for a function (a dependency that is slow to
    import, or needed on one path only) carry a ``# lazy: reason`` comment."""
    unexplained = _function_imports(path)
    assert not unexplained, [f"{path.name}:{line}: {text}" for line, text in unexplained]


def _loaded_after(statement: str) -> list[str]:
    probe = (f"import sys; {statement}; import json; "
             "print(json.dumps(sorted(m for m in ('torch', 'nemo', 'coremltools') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_executor_imports_no_torch():
    assert _loaded_after("import runtimes.mil") == []


def test_the_command_line_parses_without_torch_coremltools_or_nemo():
    assert _loaded_after("from cli.main import build_parser; build_parser().format_help()") == []


def test_the_contract_and_tolerances_import_no_torch():
    assert _loaded_after("import exporters.components, validation.tolerances") == []
