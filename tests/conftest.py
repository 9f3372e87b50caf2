import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"


def run_gaa(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run the real CLI in a subprocess: `python -m gaa_cli ARGS`."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "gaa_cli", *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES
