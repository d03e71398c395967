"""Structure rules of the code base that a reader relies on: the engine and the CLI
are made of short functions (one screen each), and the CLI only parses and calls."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "boldgpt"
MAX_LINES = 80


def long_functions(folder: Path, limit: int = MAX_LINES) -> list[str]:
    """``file:line name (N lines)`` for every function or method over ``limit`` lines
    (decorators excluded, docstring included)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("part", ["engine", "cli"])
def test_engine_and_cli_functions_fit_on_a_screen(part):
    assert long_functions(PACKAGE / part) == []


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"m.py:5 long ({MAX_LINES + 1} lines)"]


def test_cli_modules_import_no_heavy_library_at_module_level():
    """CLI modules parse and call: numpy, torch and the like are imported inside the
    command functions, so `boldgpt --help` stays fast and the logic lives elsewhere."""
    heavy = {"numpy", "torch", "pandas", "pyarrow", "datasets", "matplotlib", "sklearn"}
    offenders = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in heavy]
    assert offenders == []
