"""gaa against MiniRocket on real UCR/UEA data, through the real CLI.

For each dataset bundled inside the aeon wheel (loaded offline from aeon's own
datasets/data folder), the TRAIN and TEST splits are written to Parquet (list
layout: one list column per channel), then
  - `gaa train TRAIN.parquet` with default settings and `gaa evaluate --json` on TEST,
    once per seed, as subprocesses;
  - from each of those checkpoints, the accuracy of its two halves alone: the
    network (convolutional stem, GaussianBlock, head) and the random-feature ridge
    classifier whose probabilities the default model averages with the network's;
  - the same recipe with the GaussianBlock replaced by the identity (`--gaa-layers 0`),
    for the first `--ablation-seeds` seeds (default 1, to keep a run short), with
    and without its ridge half;
  - aeon's MiniRocketClassifier (defaults, random_state=0) on the same split.
With --variants, the script runs the widened ablation instead: for each dataset (also `gestures`, the bundled
sample in sample_data/, and `Pointing`, the pointing-game set of pointing_data.py) and each named variant of
the model (VARIANTS below: the default GaussianBlock, a mixture of Gaussians, attention over features, over
both axes, two layers, the identity, dot-product attention), `gaa train` with the variant's options for every
seed in --seeds, and a table of the test accuracy of the whole model and of its network alone.
Variable-length sets (JapaneseVowels) go to gaa as they are; MiniRocket gets a
copy in which every series is padded to the longest length by repeating its
last value (MiniRocket needs equal lengths).

    pip install -e ".[bench]"
    python benchmarks/ucr.py                       # the five datasets, seeds 0 1 2
    python benchmarks/ucr.py --datasets GunPoint --seeds 0 --no-ablation
    python benchmarks/ucr.py --variants all --seeds 0 1 --datasets GunPoint ArrowHead ItalyPowerDemand \
        BasicMotions JapaneseVowels OSULeaf ACSF1 PickupGestureWiimoteZ gestures Pointing   # the full ablation
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pointing_data import NAME as POINTING
from pointing_data import write as write_pointing

DATASETS = ["GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions", "JapaneseVowels"]
SAMPLE = "gestures"  # sample_data/gestures_{train,test}.parquet
VARIANTS = {  # name -> `gaa train` options
    "default": [],
    "mixture": ["--gaa-mixture"],
    "features": ["--gaa-axes", "features"],
    "both axes": ["--gaa-axes", "both"],
    "two layers": ["--gaa-layers", "2"],
    "identity": ["--gaa-layers", "0"],
    "dot": ["--attention", "dot"],
}


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
    series = [np.asarray(x, dtype=np.float64) for x in X]  # each (C, T_i)
    return series, np.asarray(y).astype(str)


def write_parquet(series: list[np.ndarray], y: np.ndarray, path: Path) -> None:
    channels = series[0].shape[0]
    columns = {"series_id": pa.array([f"s{i:05d}" for i in range(len(series))])}
    for c in range(channels):
        columns[f"c{c}"] = pa.array([s[c].tolist() for s in series], type=pa.list_(pa.float64()))
    columns["label"] = pa.array(y.tolist())
    pq.write_table(pa.table(columns), path)


def pad_edge(series: list[np.ndarray], length: int) -> np.ndarray:
    """(N, C, length): each series padded at the end by repeating its last value."""
    return np.stack([np.pad(s, ((0, 0), (0, length - s.shape[1])), mode="edge") for s in series])


def gaa(*args: str, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-m", "gaa_cli", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"gaa {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return r


def run_gaa(train: Path, test: Path, run_dir: Path, seed: int, extra: list[str], threads: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    gaa("train", train, "--out", run_dir, "--seed", seed, "--quiet", "--force", *extra, threads=threads)
    seconds = time.perf_counter() - t0
    report = json.loads(gaa("evaluate", run_dir, test, "--json", threads=threads).stdout)
    return report["accuracy"], seconds


def branch_accuracies(run_dir: Path, test: Path) -> tuple[float, float]:
    """Test accuracy of the trained network alone and of the ridge classifier alone, from the same checkpoint."""
    import torch

    from gaa_cli.data import load
    from gaa_cli.inference import load_model
    from gaa_cli.tensors import to_tensors

    loaded = load_model(run_dir, device="cpu")
    t = to_tensors(load(test, schema=loaded.schema), loaded.meta["normalization"], loaded.meta["classes"])
    with torch.no_grad():
        net = (loaded.model(t.x, t.mask).argmax(1) == t.y).float().mean().item()
        ridge = (loaded.model.ridge(t.x, t.mask).argmax(1) == t.y).float().mean().item() if loaded.model.ridge is not None else float("nan")
    return net, ridge


def run_minirocket(train: tuple, test: tuple) -> tuple[float, float]:
    from aeon.classification.convolution_based import MiniRocketClassifier

    length = max(s.shape[1] for s in train[0] + test[0])
    x_train, x_test = pad_edge(train[0], length), pad_edge(test[0], length)
    clf = MiniRocketClassifier(random_state=0)
    t0 = time.perf_counter()
    clf.fit(x_train, train[1])
    seconds = time.perf_counter() - t0
    return float((clf.predict(x_test) == test[1]).mean()), seconds


def fmt(values: list[float]) -> str:
    if all(v != v for v in values):  # all NaN: the model has no such half
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def variant_files(name: str, work: Path) -> tuple[Path, Path]:
    """(train, test) Parquet files of a UCR/UEA set, the bundled gestures sample or the pointing-game set."""
    if name == SAMPLE:
        data = Path(__file__).resolve().parents[1] / "sample_data"
        return data / "gestures_train.parquet", data / "gestures_test.parquet"
    if name == POINTING:
        return write_pointing(work / name)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(*load_split(name, "TRAIN"), folder / "train.parquet")
    write_parquet(*load_split(name, "TEST"), folder / "test.parquet")
    return folder / "train.parquet", folder / "test.parquet"


def run_variants(args: argparse.Namespace, work: Path) -> None:
    """The widened ablation: test accuracy (whole model / network alone) per dataset and variant, mean over seeds."""
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)} or all")
    rows = []
    print("| dataset | " + " | ".join(names) + " |\n|---|" + "---|" * len(names), flush=True)
    for name in args.datasets:
        train, test = variant_files(name, work)
        row = {"dataset": name}
        for v in names:
            accs, nets, secs = [], [], []
            for seed in args.seeds:
                run = work / name / f"{v.replace(' ', '-')}-{seed}"
                a, s = run_gaa(train, test, run, seed, VARIANTS[v] + args.train_args.split(), args.threads)
                accs.append(a)
                secs.append(s)
                nets.append(branch_accuracies(run, test)[0])
            row[v] = {"accuracy": accs, "network": nets, "train_seconds": secs}
        rows.append(row)
        print(f"| {name} | " + " | ".join(f"{statistics.mean(row[v]['accuracy']):.4f} / {statistics.mean(row[v]['network']):.4f}" for v in names) + " |", flush=True)
    means = [f"{statistics.mean(statistics.mean(r[v]['accuracy']) for r in rows):.4f} / {statistics.mean(statistics.mean(r[v]['network']) for r in rows):.4f}" for v in names]
    print("| **mean** | " + " | ".join(means) + " |")
    print(f"\neach cell: test accuracy of the whole model / of its network alone, mean over seeds {args.seeds}")
    if args.json:
        args.json.write_text(json.dumps({"variants": {v: VARIANTS[v] for v in names}, "seeds": args.seeds, "train_args": args.train_args, "rows": rows}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS, help="subset of datasets (any classification set in aeon's data folder)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--no-ablation", action="store_true", help="skip the identity-instead-of-GaussianBlock runs")
    p.add_argument("--ablation-seeds", type=int, default=1, help="how many of the seeds the ablation runs (default: the first)")
    p.add_argument("--no-minirocket", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=None, help="keep Parquet files and runs here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--variants", nargs="+", default=None, help=f"run the widened ablation instead: any of {list(VARIANTS)}, or all")
    p.add_argument("--train-args", default="", help='extra `gaa train` options for the ablation, one string (e.g. "--time-limit 60s")')
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gaa-ucr-"))
    if args.variants:
        run_variants(args, work)
        return
    rows = []
    header = f"{'dataset':<18} {'gaa acc':>17} {'MiniRocket':>10} {'gaa train s':>12} {'MR fit s':>9} {'network alone':>17} {'ridge alone':>17} {'no-GAA acc':>17} {'GAA - none':>10} {'no-GAA network':>17}"
    print(header, flush=True)
    for name in args.datasets:
        train, test = load_split(name, "TRAIN"), load_split(name, "TEST")
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        write_parquet(*train, folder / "train.parquet")
        write_parquet(*test, folder / "test.parquet")
        accs, secs, ablated, nets, ridges, ablated_nets = [], [], [], [], [], []
        for seed in args.seeds:
            a, s = run_gaa(folder / "train.parquet", folder / "test.parquet", folder / f"run-{seed}", seed, [], args.threads)
            accs.append(a)
            secs.append(s)
            net, ridge = branch_accuracies(folder / f"run-{seed}", folder / "test.parquet")
            nets.append(net)
            ridges.append(ridge)
            if not args.no_ablation and len(ablated) < args.ablation_seeds:
                a0, _ = run_gaa(folder / "train.parquet", folder / "test.parquet", folder / f"ablation-{seed}", seed, ["--gaa-layers", "0"], args.threads)
                ablated.append(a0)
                ablated_nets.append(branch_accuracies(folder / f"ablation-{seed}", folder / "test.parquet")[0])
        mr_acc, mr_sec = run_minirocket(train, test) if not args.no_minirocket else (float("nan"), float("nan"))
        row = {"dataset": name, "gaa": accs, "gaa_seconds": secs, "minirocket": mr_acc, "minirocket_seconds": mr_sec, "network": nets, "ridge": ridges, "ablation": ablated, "ablation_network": ablated_nets}
        rows.append(row)
        # the difference is taken over the seeds both ran
        delta = f"{statistics.mean(accs[: len(ablated)]) - statistics.mean(ablated):+.4f}" if ablated else "-"
        row["ablation_delta"] = statistics.mean(accs[: len(ablated)]) - statistics.mean(ablated) if ablated else None
        print(f"{name:<18} {fmt(accs):>17} {mr_acc:>10.4f} {statistics.mean(secs):>12.1f} {mr_sec:>9.1f} {fmt(nets):>17} {fmt(ridges):>17} {fmt(ablated) if ablated else '-':>17} {delta:>10} {fmt(ablated_nets) if ablated else '-':>17}", flush=True)
    def mean(key: str) -> float:  # over the datasets that have a value
        values = [statistics.mean(r[key]) if isinstance(r[key], list) else r[key] for r in rows]
        values = [v for v in values if v == v]
        return statistics.mean(values) if values else float("nan")

    abl = f"{mean('ablation'):>17.4f} {statistics.mean(r['ablation_delta'] for r in rows):>+10.4f} {mean('ablation_network'):>17.4f}" if not args.no_ablation else f"{'-':>17} {'-':>10} {'-':>17}"
    print(f"{'MEAN':<18} {mean('gaa'):>17.4f} {mean('minirocket'):>10.4f} {mean('gaa_seconds'):>12.1f} {mean('minirocket_seconds'):>9.1f} {mean('network'):>17.4f} {mean('ridge'):>17.4f} {abl}")
    worst = min(statistics.mean(r["gaa"]) - r["minirocket"] for r in rows)
    print(f"gaa mean - MiniRocket mean: {mean('gaa') - mean('minirocket'):+.4f}; worst dataset gap: {worst:+.4f}; per-seed spread is the ± (sample std over {len(args.seeds)} seeds)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
