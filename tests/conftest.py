"""Shared helpers and fixtures.

Tiers (markers registered in pyproject.toml): `slow` (a full training recipe or a
build; deselect with `-m "not slow"`), `subprocess` (runs the real CLI or Python in
a child process), `cuda` (needs a GPU; skipped without one). Tests that are not
about accuracy train TINY configs, never the full recipe.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"
# A model that trains in about a second: for tests of mechanics, not of accuracy.
TINY = ("--epochs", "1", "--width", "8", "--gaa-heads", "1", "--gaa-layers", "1", "--gaa-gaussians", "2", "--stem-layers", "1", "--batch-size", "8", "-q")


def run_gaa(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess: `python -m gaa_cli ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "gaa_cli", *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES
