"""Regenerate the figures of README.md and docs/ from the bundled sample data, with the real CLI.

    python scripts/readme_figures.py            # trains on sample_data/gestures_train.parquet (a minute or two)
    python scripts/readme_figures.py --run RUN  # reuse a trained run directory

Writes docs/images/gestures_explained.png (a few test gestures with the steps the model relied on shaded),
docs/images/gestures_by_class.png (mean importance over time and over channels, per predicted class) and
docs/images/gestures_curves.png (the training curves). Needs matplotlib (`pip install "gaa[plot]"`).
Training is seeded, but float sums differ with the thread count and the CPU, so figures drawn on another
machine may differ in detail.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"


def gaa(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gaa_cli", *args], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a run directory trained on the gestures sample")
    args = ap.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            gaa("train", "sample_data/gestures_train.parquet", "--out", str(run), "--quiet")
        out = Path(tmp) / "explained"
        gaa("explain", str(run), "sample_data/gestures_test.parquet", "--out", str(out), "--quiet")
        for src, dst in [(out / "examples.png", "gestures_explained.png"), (out / "importance_by_class.png", "gestures_by_class.png"),
                         (run / "curves.png", "gestures_curves.png")]:
            shutil.copyfile(src, IMAGES / dst)
            print(f"wrote {IMAGES / dst}")


if __name__ == "__main__":
    main()
