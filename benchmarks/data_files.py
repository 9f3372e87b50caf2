"""Generated data files for the data benchmarks (bench_load.py, bench_stream.py, bench_stream_train.py): the same
random sequences in the list layout (Parquet, one row per sequence, a list<float> column per channel) and in the
long layout (Parquet and CSV, one row per step), with string ids and three classes; and `run_child`, which runs
`gaa` on them in a child process and reports its peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CLASSES = np.array(["left", "right", "still"])


def _values(rng: np.random.Generator, n: int, steps: int, channels: int) -> np.ndarray:
    return rng.normal(size=(n, steps, channels)).round(3).astype(np.float32)  # (N, T, C)


def list_parquet(path: Path, n: int, steps: int = 64, channels: int = 2, seed: int = 0, block: int = 100_000) -> Path:
    """`n` sequences of `steps` steps, written a block at a time (so that a million rows need little memory)."""
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, block):
        m = min(block, n - start)
        x = _values(rng, m, steps, channels)
        offsets = pa.array(np.arange(m + 1, dtype=np.int32) * steps)
        cols = {"series_id": pa.array([f"s{i:08d}" for i in range(start, start + m)])}
        for c in range(channels):
            cols[f"ch{c}"] = pa.ListArray.from_arrays(offsets, pa.array(x[:, :, c].ravel()))
        cols["label"] = pa.array(CLASSES[rng.integers(0, len(CLASSES), m)])
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def long_table(n: int, steps: int, channels: int = 2, seed: int = 0, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = _values(rng, n, steps, channels)
    cols = {"series_id": pa.array(np.repeat([f"s{i:08d}" for i in range(start, start + n)], steps)),
            "t": pa.array(np.tile(np.arange(steps), n))}
    for c in range(channels):
        cols[f"ch{c}"] = pa.array(x[:, :, c].ravel())
    cols["label"] = pa.array(np.repeat(CLASSES[rng.integers(0, len(CLASSES), n)], steps))
    return pa.table(cols)


def long_files(folder: Path, n: int, steps: int = 16, channels: int = 2, seed: int = 0, block: int = 50_000) -> tuple[Path, Path]:
    """The long layout as Parquet and as CSV (sorted by id, then time), written a block of sequences at a time."""
    pq_path, csv_path = folder / f"long_{n}.parquet", folder / f"long_{n}.csv"
    writer = None
    with open(csv_path, "wb") as f:
        for start in range(0, n, block):
            table = long_table(min(block, n - start), steps, channels, seed + start, start)
            writer = writer or pq.ParquetWriter(pq_path, table.schema)
            writer.write_table(table)
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=start == 0, quoting_style="none"))
    writer.close()
    return pq_path, csv_path


def run_child(args: list[str], env: dict) -> tuple[float, int, int, str]:
    """(seconds, peak RSS in bytes, exit code, stderr) of `python -m gaa_cli ARGS`."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "gaa_cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status), err
