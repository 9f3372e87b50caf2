"""Reading speed and the memory of training data, measured side by side in one run.

1. Read + convert: `gaa_cli.data.load` and `tensors.to_tensors` (what evaluate and predict do with a file), as a
   ratio of pyarrow reading the same file on its own (`pyarrow.parquet.read_table`; for CSV,
   `pyarrow.csv.read_csv`). The list layout in Parquet, the long layout in Parquet and in CSV. The best of
   --repeat runs of each, interleaved, so that a busy machine slows both sides alike.
2. Training samples per second of a default-width model (`gaa train`'s recipe) over one epoch.
3. Bytes of memory per training value: the peak and the held resident memory of a child process that loads a
   list-layout file and prepares training (train.prepare: normalisation, the training tensors), less its
   memory before loading, per value of the (N, T, C) data; the raw float32 size is 4 bytes a value.

    python benchmarks/bench_load.py [--n 100000] [--long-n 100000] [--repeat 3]

Compare versions by running it with PYTHONPATH pointing at another checkout's copy of the package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_files import list_parquet, long_files  # noqa: E402


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_ratios(folder: Path, n: int, long_n: int, repeat: int) -> None:
    from gaa_cli.data import Schema, load
    from gaa_cli.tensors import to_tensors

    lst = list_parquet(folder / f"list_{n}.parquet", n)
    long_pq, long_csv = long_files(folder, long_n)
    norm2 = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}
    cases = [
        ("list layout, Parquet", lst, lambda: pq.read_table(lst), Schema("list", "label", "series_id", None, ["ch0", "ch1"])),
        ("long layout, Parquet", long_pq, lambda: pq.read_table(long_pq), Schema("long", "label", "series_id", "t", ["ch0", "ch1"])),
        ("long layout, CSV", long_csv, lambda: pacsv.read_csv(long_csv), Schema("long", "label", "series_id", "t", ["ch0", "ch1"])),
    ]
    print(f"read + convert to tensors, as a ratio of pyarrow alone (best of {repeat})")
    print(f"{'file':<24}{'rows':>12}{'MB':>8}{'pyarrow s':>11}{'gaa s':>9}{'ratio':>7}")
    for title, path, arrow, schema in cases:
        def gaa() -> None:
            to_tensors(load(path, schema=schema, need_labels=True), norm2, None)

        a, g = [], []
        for _ in range(repeat):
            a.append(_time(arrow))
            g.append(_time(gaa))
        rows = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else long_n * 16
        print(f"{title:<24}{rows:>12,}{path.stat().st_size / 1e6:>8.1f}{min(a):>11.3f}{min(g):>9.3f}{min(g) / min(a):>7.2f}")


TRAIN_MEMORY = r"""
import json, resource, sys
import psutil
from gaa_cli.config import ModelConfig, TrainConfig
from gaa_cli.data import load
from gaa_cli.train import prepare
proc = psutil.Process()
before = proc.memory_info().rss
data = load(sys.argv[1], min_classes=2)
values = data.x.size
run = prepare(data, None, ModelConfig(), TrainConfig(device="cpu"), {})
held = proc.memory_info().rss - before
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
import pyarrow
pyarrow.default_memory_pool().release_unused()  # what gaa train does after loading (runs.py)
released = proc.memory_info().rss - before
print(json.dumps({"values": values, "held": held, "peak": peak, "released": released, "train_bytes": run.train.x.nbytes + run.train.mask.nbytes}))
"""


def train_memory(folder: Path, n: int) -> None:
    path = folder / f"list_{n}.parquet"
    r = subprocess.run([sys.executable, "-c", TRAIN_MEMORY, str(path)], capture_output=True, text=True, check=True)
    m = json.loads(r.stdout)
    v = m["values"]
    print(f"\ntraining memory, list layout, {n:,} sequences x 64 steps x 2 channels = {v:,} values (raw float32: 4 bytes each)")
    print(f"  held after train.prepare (the loaded data + the training tensors): {m['held'] / v:5.1f} bytes a value")
    print(f"  peak while loading and preparing:                              {m['peak'] / v:5.1f} bytes a value")
    print(f"  held once Arrow's allocator has released its cached memory:     {m['released'] / v:5.1f} bytes a value")
    print(f"  the training tensors themselves (x float32 + mask):            {m['train_bytes'] / v:5.1f} bytes a value")


def train_speed(folder: Path, samples: int) -> None:
    data = list_parquet(folder / f"train_{samples}.parquet", samples, seed=1)
    run = folder / "run"
    cmd = [sys.executable, "-m", "gaa_cli", "train", str(data), "--epochs", "1", "--val-split", "0", "--device", "cpu", "-q",
           "--out", str(run), "--force"]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    print(f"\ntraining, default width, one epoch of {samples:,} sequences (64 steps, 2 channels): "
          f"{epoch['seconds']:.1f} s, {samples / epoch['seconds']:,.0f} samples/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="sequences of the list-layout file")
    ap.add_argument("--long-n", type=int, default=100_000, help="sequences (16 steps each) of the long-layout files")
    ap.add_argument("--train-n", type=int, default=2_000, help="sequences of the training-speed run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        read_ratios(folder, args.n, args.long_n, args.repeat)
        train_memory(folder, args.n)
        train_speed(folder, args.train_n)


if __name__ == "__main__":
    main()
