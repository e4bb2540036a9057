"""The package reads top-down: a module imports (at module level) only from its own layer or the layers
below it, as docs/architecture.md describes. Imports inside functions are the documented exceptions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "amcl"

#: Layer of each module or package, bottom up (docs/architecture.md, "Layers").
LAYERS = {
    "amcl": 0, "errors": 0, "files": 0, "options": 0, "policies": 0, "specs": 0, "stats": 0,
    "losses": 1, "nn": 1, "distributed": 1, "knn": 1, "optim": 1, "profiling": 1,
    "config": 2,
    "runs": 3,
    "monitoring": 4, "checkpointing": 4, "callbacks": 4, "loggers": 4,
    "data": 5,
    "methods": 6,
    "trainer": 7, "train": 7,
    "eval": 8, "export": 8,
    "compare_grid": 9, "compare_tables": 9, "compare": 9, "demo": 9, "cli": 9, "cli_options": 9, "cli_reference": 9,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["amcl"]


def _modules() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = ("amcl", *path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:  # module level only: imports inside functions are deliberate and documented
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "amcl":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "amcl"]
    return found


def test_every_module_has_a_layer():
    assert {_name(p).split(".")[1] for p in _modules() if _name(p) != "amcl"} <= set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _name(p))
def test_no_module_imports_from_a_layer_above_it(path):
    module = _name(path)
    upward = [name for name in _top_level_imports(path) if _layer(name) > _layer(module)]
    assert not upward, f"{module} (layer {_layer(module)}) imports {upward}"
