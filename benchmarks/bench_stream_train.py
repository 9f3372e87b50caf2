"""Peak memory of training: the data loaded whole against the data streamed from Parquet row groups.

Generates a list-layout Parquet file (64 steps, 2 channels, row groups of 10,000 sequences) and runs
`gaa train FILE --epochs 1` on it twice in a child process, with --no-stream (the data read whole, then held as
compact float32 tensors) and with --stream (a first pass over the row groups, then batches through a shuffle
buffer of $GAA_STREAM_BUFFER_MB, here --buffer-mb), and reports each child's peak resident memory
(`os.wait4`'s ru_maxrss), per value of the file's (N, T, C) data (raw float32: 4 bytes a value), and its time.
A small network (--width) keeps the epoch short: the memory is the data's, not the model's.

    python benchmarks/bench_stream_train.py [--n 200000] [--buffer-mb 32] [--width 8]

As the file grows, the whole read's peak grows with it; the streamed run's stays near the sum of the shuffle
buffer, one row group, the validation split (at most streaming.VAL_MAX sequences) and the ridge sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_files import list_parquet, run_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="sequences of the training file")
    ap.add_argument("--buffer-mb", type=float, default=32.0, help="the streamed run's shuffle buffer")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    env = {**os.environ, "GAA_STREAM_BUFFER_MB": str(args.buffer_mb)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = list_parquet(folder / "train.parquet", args.n, block=10_000)
        values = args.n * 64 * 2
        print(f"{args.n:,} sequences x 64 steps x 2 channels = {values:,} values ({values * 4 / 1e6:,.0f} MB as float32); "
              f"file {data.stat().st_size / 1e6:,.0f} MB; shuffle buffer {args.buffer_mb:g} MB")
        print(f"{'':<12}{'peak RSS MB':>12}{'bytes/value':>13}{'seconds':>9}  train loss")
        for mode in ("--no-stream", "--stream"):
            run = folder / mode.strip("-")
            secs, peak, code, err = run_child(["train", str(data), mode, "--epochs", "1", "--width", str(args.width), "--stem-layers", "1",
                                               "--batch-size", str(args.batch_size), "--ridge-features", "0", "--device", "cpu", "-q",
                                               "--out", str(run), "--force"], env)
            if code:
                raise SystemExit(f"gaa train {mode} failed: {err[-2000:]}")
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            print(f"{mode:<12}{peak / 1e6:>12,.0f}{peak / values:>13.1f}{secs:>9.1f}  {last['train_loss']:.4f}")
        secs, peak, code, err = run_child(["--version"], env)
        print(f"{'(start-up)':<12}{peak / 1e6:>12,.0f}{'':>13}{secs:>9.1f}   a gaa process that only imports torch and prints its version")


if __name__ == "__main__":
    main()
