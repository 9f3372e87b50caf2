"""One process against two torchrun (gloo, CPU) processes, with the same global batch, side by side in one run.

Generates a list-layout Parquet training file and a test file (two channels, 64 steps; four classes told apart
by the order of two bumps), trains the same model on it with `gaa train` in one process and with
`torchrun --standalone --nproc-per-node 2 -m gaa_cli train`, and prints each run's training samples per second
(training samples x epochs over the seconds its epochs took, validation included), wall time of the whole
command (process start-up included) and test accuracy (`gaa evaluate`). The single process runs twice: with
every core as a thread, and with one thread (what each of torchrun's processes gets).

    python benchmarks/distributed.py [--n 4000] [--epochs 3] [--width 32] [--batch-size 64]

The two processes get half of the cores each as threads (OMP_NUM_THREADS; torchrun's own default is 1). On a machine whose
cores are shared, or with only two, expect little or no speed-up: the two ranks exchange every gradient
through gloo, and the model is small.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def bumps(path: Path, n: int, seed: int, steps: int = 64) -> Path:
    """Four classes: a bump on channel 0 then on channel 1, or the other way round, early or late."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(steps)
    x = 0.5 * rng.standard_normal((n, steps, 2)).astype(np.float32)  # (N, T, C)
    for i, k in enumerate(y):
        first, second = (0, 1) if k % 2 == 0 else (1, 0)
        at = rng.integers(8, 20) + (24 if k >= 2 else 0)
        x[i, :, first] += np.exp(-0.5 * ((t - at) / 2.0) ** 2) * 2
        x[i, :, second] += np.exp(-0.5 * ((t - at - 10) / 2.0) ** 2) * 2
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * steps)
    cols = {f"ch{c}": pa.ListArray.from_arrays(offsets, pa.array(x[:, :, c].ravel())) for c in range(2)}
    cols["label"] = pa.array(np.array(["a", "b", "c", "d"])[y])
    pq.write_table(pa.table(cols), path, row_group_size=max(1, n // 16))
    return path


def train(cmd: list[str], run: Path, test: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ev = subprocess.run([sys.executable, "-m", "gaa_cli", "evaluate", str(run), str(test), "--json", "--device", "cpu"], capture_output=True, text=True)
    acc = json.loads(ev.stdout)["accuracy"] if ev.returncode == 0 else float("nan")
    seconds = sum(m["seconds"] for m in history)
    return {"history": history, "seconds": seconds, "wall": wall, "accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="training sequences")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64, help="the global batch: each of the two ranks steps on half of it")
    ap.add_argument("--stream", action="store_true", help="stream the training file (each rank reads its own row groups)")
    args = ap.parse_args()
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, test = bumps(folder / "train.parquet", args.n, 0), bumps(folder / "test.parquet", 1000, 1)
        common = ["train", str(data), "--epochs", str(args.epochs), "--width", str(args.width), "--batch-size", str(args.batch_size),
                  "--ridge-features", "0", "--val-split", "0.1", "--device", "cpu", "-q", "--force"] + (["--stream"] if args.stream else [])
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        single = [sys.executable, "-m", "gaa_cli", *common]
        group = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "gaa_cli", *common]
        runs = [(f"1 proc x {cores} thr", single, cores), ("1 proc x 1 thr", single, 1), (f"2 proc x {max(1, cores // 2)} thr", group, max(1, cores // 2))]
        results = []
        for i, (_, cmd, threads) in enumerate(runs):
            out = folder / f"run{i}"
            results.append(train([*cmd, "--out", str(out)], out, test, {**env, "OMP_NUM_THREADS": str(threads)}))
        n_train = round(args.n * 0.9)
        print(f"{args.n:,} sequences (64 steps, 2 channels), {args.epochs} epochs, width {args.width}, global batch {args.batch_size}, "
              f"{cores} cores{', streamed' if args.stream else ''}")
        print(f"{'':<24}" + "".join(f"{name:>17}" for name, _, _ in runs))
        rows = [
            ("training samples/s", lambda r: f"{n_train * args.epochs / r['seconds']:,.0f}"),
            ("epoch seconds (sum)", lambda r: f"{r['seconds']:.1f}"),
            ("command wall seconds", lambda r: f"{r['wall']:.1f}"),
            ("last train loss", lambda r: f"{r['history'][-1]['train_loss']:.4f}"),
            ("validation accuracy", lambda r: f"{r['history'][-1].get('val_acc', float('nan')):.4f}"),
            ("test accuracy (1000)", lambda r: f"{r['accuracy']:.4f}"),
        ]
        for name, cell in rows:
            print(f"{name:<24}" + "".join(f"{cell(r):>17}" for r in results))

if __name__ == "__main__":
    main()
