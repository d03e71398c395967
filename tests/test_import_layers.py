"""Imports flow one way, in the layer order written in docs/DESIGN.md.

Every ``import`` / ``from ... import`` in ``src/boldgpt`` (at module level and inside
functions alike) and every ``importlib.import_module("boldgpt...")`` string is checked:
a module may import modules of its own layer or of lower layers, never of a higher one.
The order itself is read from the ``layers`` block of docs/DESIGN.md, so the document
and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DESIGN = REPO / "docs" / "DESIGN.md"


def read_layers(text: str) -> dict[str, int]:
    """Module prefix -> layer number, from the fenced ```layers block."""
    match = re.search(r"```layers\n(.*?)```", text, re.S)
    if not match:
        raise AssertionError("docs/DESIGN.md has no ```layers block")
    layers: dict[str, int] = {}
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        number, *modules = line.split()
        for module in modules:
            if module in layers:
                raise AssertionError(f"{module} is listed twice in the layers block")
            layers[module] = int(number)
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """Layer of the longest listed prefix of ``module`` (None: not listed)."""
    best = None
    for prefix, number in layers.items():
        inside = module == prefix or module.startswith(prefix + ".")
        if inside and (best is None or len(prefix) > len(best[0])):
            best = (prefix, number)
    return None if best is None else best[1]


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, known: set[str], src: Path = SRC) -> list[tuple[int, str]]:
    """(line, imported module) for every boldgpt import in a file, anywhere in it.
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module in
    ``known`` (a package's ``__init__`` is imported on the way either way)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found += [(node.lineno, name) for name in subs or [target]]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name.split(".")[0] == "boldgpt"]


def violations(layers: dict[str, int], src: Path = SRC) -> list[str]:
    """Every import in ``src/boldgpt`` that goes to a higher layer, or a module that is
    in no layer."""
    problems = []
    files = sorted((src / "boldgpt").rglob("*.py"))
    known = {module_name(f, src) for f in files}
    for path in files:
        importer = module_name(path, src)
        own = layer_of(importer, layers)
        if own is None:
            problems.append(f"{importer}: not placed in any layer of docs/DESIGN.md")
            continue
        reported: set[int] = set()
        for line, target in imports_of(path, known, src):
            if target not in known or line in reported:
                continue
            theirs = layer_of(target, layers)
            if theirs is None:
                problems.append(f"{importer}: imports {target}, which is in no layer")
            elif theirs > own:
                reported.add(line)
                problems.append(
                    f"{path.relative_to(src)}:{line}: {importer} (layer {own}) imports "
                    f"{target} (layer {theirs}), a higher layer"
                )
    return problems


def test_imports_follow_the_layer_order_of_the_design_document():
    layers = read_layers(DESIGN.read_text())
    problems = violations(layers)
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_check_catches_upward_imports_anywhere_in_a_file(tmp_path):
    """The checker itself, on a fake tree: a function-level import, a relative import
    and an import_module string from a lower layer to a higher one are all reported;
    downward imports are not."""
    layers = {"boldgpt": 0, "boldgpt.models": 5, "boldgpt.engine": 8}
    pkg = tmp_path / "boldgpt"
    (pkg / "models").mkdir(parents=True)
    (pkg / "engine").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "train.py").write_text("from boldgpt.models import net\n")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "net.py").write_text(
        "import importlib\n"
        "def f():\n"
        "    from boldgpt.engine import train\n"
        "    from ..engine import train as t2\n"
        "    return importlib.import_module('boldgpt.engine.train')\n"
    )
    problems = violations(layers, tmp_path)
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5"], problems
    assert all("boldgpt.models.net (layer 5) imports boldgpt.engine" in p for p in problems)


@pytest.mark.parametrize(
    "packages",
    [
        "boldgpt.data, boldgpt.models",
        "boldgpt.data.schema, boldgpt.data.nsd_flat, boldgpt.data.cache, boldgpt.data.transforms",
        "boldgpt.models.igpt, boldgpt.models.beit, boldgpt.models.registry",
    ],
)
def test_data_and_models_import_light(packages):
    """The loader, the schema and the models pull in neither `datasets` (about 1 s per
    process and loader worker), nor the simulator, scipy or scikit-image."""
    heavy = ["datasets", "scipy", "skimage", "boldgpt.sim"]
    code = (
        f"import sys; import {packages}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing {packages} imported: {out}"
