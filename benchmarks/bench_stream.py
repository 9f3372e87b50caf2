"""Peak memory and throughput of `gaa predict` as the input grows: files larger than memory are read in chunks, so
the peak resident memory should stay flat while the file grows a hundredfold.

Generates list-layout Parquet files (64 steps, 2 channels) of 10^4, 10^5 and 10^6 sequences and long-layout CSV
files (16 steps) of 10^4 and 10^5 sequences, trains one small model on a few thousand sequences, then runs
`gaa predict MODEL FILE --format parquet --output OUT` in a child process for each file, and reports the child's
peak resident memory (`os.wait4`'s ru_maxrss) and sequences predicted per second.

    python benchmarks/bench_stream.py [--sizes 10000,100000,1000000] [--long-sizes 10000,100000] [--width 16]
    python benchmarks/bench_stream.py --code /path/to/other/checkout   # the same runs with another version's gaa_cli

Figures in the README were measured with this script; timings on a shared machine are noisy, so compare the
numbers of one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_files import list_parquet, long_files, run_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="list-layout Parquet files, in sequences")
    ap.add_argument("--long-sizes", default="10000,100000", help="long-layout CSV files, in sequences of 16 steps")
    ap.add_argument("--width", default="16", help="--width of the model (default-width models predict several times slower)")
    ap.add_argument("--code", default=None, help="a folder holding another version's gaa_cli package, put first on PYTHONPATH")
    ap.add_argument("--keep", default=None, help="generate the files in this folder and keep them (reused when present)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.code, env.get("PYTHONPATH")) if p)
    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.keep or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)

    train = folder / "train_list.parquet"
    if not train.exists():
        list_parquet(train, 2000, seed=7)
    run = folder / "model"
    secs, _, code, err = run_child(["train", str(train), "--epochs", "1", "--width", args.width, "--device", "cpu", "-q",
                                    "--out", str(run), "--force"], env)
    assert code == 0, err
    print(f"model: --width {args.width}, trained in {secs:.0f} s; peak RSS and throughput of gaa predict (one process each)")
    print(f"{'input':<34}{'sequences':>11}{'MB':>8}{'peak RSS MB':>13}{'seconds':>9}{'seq/s':>9}")

    cases = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        path = folder / f"list_{n}.parquet"
        if not path.exists():
            list_parquet(path, n)
        cases.append(("list layout, Parquet, 64 steps", path, n, []))
    for n in (int(s) for s in args.long_sizes.split(",") if s):
        path = folder / f"long_{n}.csv"
        if not path.exists():
            long_files(folder, n)
        cases.append(("long layout, CSV, 16 steps", path, n, ["--layout", "long"]))
    for title, path, n, extra in cases:
        out = folder / "predictions.parquet"
        secs, rss, code, err = run_child(["predict", str(run), str(path), "--format", "parquet", "--output", str(out), "--force",
                                          "--device", "cpu", *extra], env)
        if code != 0:
            print(f"{title:<34}{n:>11,}  failed: {err.strip().splitlines()[-1] if err.strip() else code}")
            continue
        print(f"{title:<34}{n:>11,}{path.stat().st_size / 1e6:>8.0f}{rss / 2**20:>13.0f}{secs:>9.1f}{n / secs:>9,.0f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
