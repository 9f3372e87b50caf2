"""Where the seconds of a default training run go: loading, the ridge, optimiser steps, validation,
BatchNorm re-estimation, saving.

Runs `gaa_cli.train.fit` in this process under cProfile and reads each phase's cumulative time off the
functions that do it, so that the same script measures any version of the code (`--repo` imports gaa_cli
from another checkout: `git worktree add /tmp/old <commit>`, then `--repo /tmp/old`, for a before/after):

    python benchmarks/profile_train.py                          # the bundled samples, 2 threads
    python benchmarks/profile_train.py --repo /tmp/old          # the same on an older commit
    python benchmarks/profile_train.py --data GunPoint --epochs 50   # a UCR set (needs the bench extra)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# phase -> (file suffix, function name) of the functions whose cumulative time is the phase's
PHASES = {
    "ridge features + solve": ("random_features.py", "fit"),
    "validation": ("tensors.py", "predict_proba"),
    "BatchNorm re-estimation": ("train.py", "refresh_batchnorm"),
    "saving": ("checkpoint.py", "save"),
}


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """The cumulative seconds of the outermost calls of a function (recursion counted once)."""
    total = 0.0
    for (file, _, func), (_, _, _, ct, _) in stats.stats.items():
        if func == name and file.endswith(suffix):
            total += ct
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose gaa_cli is profiled")
    p.add_argument("--data", nargs="+", default=["gestures_train.parquet", "sensor_wide_train.csv"],
                   help="files under sample_data/, or UCR names (aeon's bundled sets)")
    p.add_argument("--epochs", type=int, default=None, help="shorter runs [default: the recipe's]")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(args.repo))
    import torch

    torch.set_num_threads(args.threads)
    from rich.console import Console

    from gaa_cli.config import ModelConfig, TrainConfig
    from gaa_cli.data import load
    from gaa_cli.train import fit

    if "predict_proba" not in open(args.repo / "gaa_cli" / "tensors.py").read() if (args.repo / "gaa_cli" / "tensors.py").exists() else True:
        PHASES["validation"] = ("train.py", "predict_proba")  # before tensors.py existed
    print(f"{'data':<26} {'total s':>8} {'load':>7} " + " ".join(f"{k:>24}" for k in PHASES) + f" {'steps and the rest':>19}")
    for name in args.data:
        path = ROOT / "sample_data" / name
        if not path.exists():
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from ucr_data import prepare

            path = prepare(name, Path(tempfile.mkdtemp()))[2]
        t0 = time.perf_counter()
        data = load(path)
        load_s = time.perf_counter() - t0
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        fit(data, None, ModelConfig(), TrainConfig(epochs=args.epochs, device="cpu"), Path(tempfile.mkdtemp()),
            console=Console(file=io.StringIO()), show_progress=False)
        prof.disable()
        total = time.perf_counter() - t0
        stats = pstats.Stats(prof)
        phases = {k: cumulative(stats, *where) for k, where in PHASES.items()}
        rest = total - sum(phases.values())
        print(f"{name:<26} {total + load_s:>8.2f} {load_s:>7.2f} " + " ".join(f"{v:>24.2f}" for v in phases.values()) + f" {rest:>19.2f}", flush=True)


if __name__ == "__main__":
    main()
