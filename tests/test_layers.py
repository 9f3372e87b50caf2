"""The shape of the code: imports point down, the library stands alone, the declared torch floor is the tested one."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib

import pytest
import torch

from .conftest import ROOT

# gaa_cli's modules from the bottom up: a module may import only modules of a lower rank.
RANKS = {
    "errors": 0, "files": 1, "data": 2, "plots": 2, "config": 3, "metrics": 3, "ridge_solve": 3, "random_features": 4, "model": 5, "device": 5,
    "precision": 5, "compiled": 5, "distributed": 6, "streaming": 7,
    "tensors": 6, "progress": 6, "explain": 6, "checkpoint": 7, "train": 8, "inference": 8, "runs": 9, "api": 10, "cli": 10, "__main__": 11,
}


def _imports(path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
    return found


def _rank(module: str) -> int | None:
    parts = module.split(".")
    return RANKS.get(parts[1]) if len(parts) > 1 and parts[0] == "gaa_cli" else None


def test_every_cli_module_has_a_rank():
    names = {p.stem if p.parent.name == "gaa_cli" else p.parent.name for p in (ROOT / "gaa_cli").rglob("*.py")}
    assert names - {"__init__"} == set(RANKS)


def test_cli_imports_point_down():
    wrong = []
    for path in (ROOT / "gaa_cli").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 2:
            continue  # gaa_cli/__init__: the version, loaded lazily from the library
        own = RANKS[parts[1]]
        for target in _imports(path):
            rank = _rank(target)
            if rank is not None and target.split(".")[1] != parts[1] and rank >= own:
                wrong.append(f"{'/'.join(parts)} imports {target}")
    assert not wrong, wrong


def test_library_imports_only_torch_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"torch", "gaussian_adaptive_attention"}
    for path in (ROOT / "gaussian_adaptive_attention").rglob("*.py"):
        roots = {name.split(".")[0] for name in _imports(path)}
        assert roots <= allowed, f"{path.name} imports {sorted(roots - allowed)}"


@pytest.mark.subprocess
def test_importing_the_library_loads_no_cli_and_no_data_stack():
    code = "import sys, gaussian_adaptive_attention; print(sorted(m for m in ('gaa_cli', 'pandas', 'pyarrow', 'typer', 'rich') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def _torch_floor() -> tuple[int, int]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"torch\b", d))
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_runs_on_the_declared_torch_floor():
    """CI installs the oldest torch the project declares, so the floor is what the suite actually ran on."""
    installed = tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    floor = _torch_floor()
    assert installed >= floor
    if os.environ.get("CI"):
        assert installed == floor, f"CI runs torch {torch.__version__}, but pyproject declares torch>={floor[0]}.{floor[1]}"
