"""Shared by the UCR/UEA benchmarks: aeon's bundled datasets as Parquet, the real `gaa` CLI, and the baselines.

The datasets ship inside the aeon wheel (`aeon/datasets/data`), so nothing is downloaded. Each split goes to
gaa as list-layout Parquet, one list column per channel; variable-length sets go to gaa as they are, and to
the baselines (which need equal lengths) padded to the longest length by repeating each series' last value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PUBLIC_FIVE = ["GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions", "JapaneseVowels"]
MORE = ["OSULeaf", "ACSF1", "PickupGestureWiimoteZ"]  # looked at while tuning: not a pristine hold-out


def aeon_data_dir() -> Path:
    import aeon

    return Path(aeon.__file__).parent / "datasets" / "data"


def load_split(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Series as a list of (C, T_i) float arrays, and the labels; read from aeon's bundled .ts files."""
    from aeon.datasets import load_from_ts_file

    path = aeon_data_dir() / name / f"{name}_{split}.ts"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; this aeon wheel does not bundle {name}")
    X, y = load_from_ts_file(str(path))
    return [np.asarray(x, dtype=np.float64) for x in X], np.asarray(y).astype(str)


def write_parquet(series: list[np.ndarray], y: np.ndarray, path: Path) -> None:
    channels = series[0].shape[0]
    columns = {"series_id": pa.array([f"s{i:05d}" for i in range(len(series))])}
    for c in range(channels):
        columns[f"c{c}"] = pa.array([s[c].tolist() for s in series], type=pa.list_(pa.float64()))
    columns["label"] = pa.array(y.tolist())
    pq.write_table(pa.table(columns), path)


def prepare(name: str, work: Path) -> tuple[tuple, tuple, Path, Path]:
    """(train, test) splits in memory, and their Parquet files under work/name/."""
    train, test = load_split(name, "TRAIN"), load_split(name, "TEST")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(*train, folder / "train.parquet")
    write_parquet(*test, folder / "test.parquet")
    return train, test, folder / "train.parquet", folder / "test.parquet"


def pad_edge(series: list[np.ndarray], length: int) -> np.ndarray:
    """(N, C, length): each series padded at the end by repeating its last value."""
    return np.stack([np.pad(s, ((0, 0), (0, length - s.shape[1])), mode="edge") for s in series])


def gaa(*args: object, threads: int) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, with `threads` threads; stops the benchmark with its stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-m", "gaa_cli", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"gaa {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return r


def train_and_score(train: Path, test: Path, run_dir: Path, seed: int, extra: list[str], threads: int) -> tuple[float, float]:
    """(test accuracy, seconds of the whole `gaa train` process) of one run."""
    t0 = time.perf_counter()
    gaa("train", train, "--out", run_dir, "--seed", seed, "--quiet", "--force", *extra, threads=threads)
    seconds = time.perf_counter() - t0
    report = json.loads(gaa("evaluate", run_dir, test, "--json", threads=threads).stdout)
    return report["accuracy"], seconds


def baseline(kind: str, train: tuple, test: tuple) -> tuple[float, float]:
    """(test accuracy, fit seconds) of aeon's MiniRocket or MultiRocket-Hydra: defaults, random_state=0, one thread."""
    import torch  # Hydra's transform runs on torch

    torch.set_num_threads(1)
    if kind == "minirocket":
        from aeon.classification.convolution_based import MiniRocketClassifier as Classifier
    else:
        from aeon.classification.convolution_based import MultiRocketHydraClassifier as Classifier
    length = max(s.shape[1] for s in train[0] + test[0])
    x_train, x_test = pad_edge(train[0], length), pad_edge(test[0], length)
    # an untimed fit first: aeon's numba functions compile on first use, and that once-per-process cost
    # (minutes on a loaded machine) is not the fit's
    Classifier(random_state=0, n_jobs=1).fit(x_train, train[1])
    clf = Classifier(random_state=0, n_jobs=1)
    t0 = time.perf_counter()
    clf.fit(x_train, train[1])
    seconds = time.perf_counter() - t0
    return float((clf.predict(x_test) == test[1]).mean()), seconds


def halves(run_dir: Path, test: Path) -> dict[str, float]:
    """Test accuracy of the trained network alone and of the ridge alone, from the same checkpoint (NaN: no such half)."""
    from gaa_cli.data import load
    from gaa_cli.inference import load_model
    from gaa_cli.tensors import predict_proba, to_tensors

    loaded = load_model(run_dir, device="cpu")
    t = to_tensors(load(test, schema=loaded.schema), loaded.meta["normalization"], loaded.meta["classes"])
    y = t.y.numpy()
    out = {"network": float((predict_proba(loaded.model, t, loaded.device, part="network").argmax(1) == y).mean())}
    ridge = loaded.model.ridge is not None and loaded.model.ridge.fitted
    out["ridge"] = float((predict_proba(loaded.model, t, loaded.device, part="ridge").argmax(1) == y).mean()) if ridge else float("nan")
    out["blend"] = float(loaded.model.blend)
    return out
