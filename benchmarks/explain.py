"""How faithful `gaa explain` is: the pointing game and deletion, against captum's tools, a random map and the
Gaussian attention weights themselves.

For the pointing-game set (pointing_data.py: a class pattern 5% of the length at a random place, and a salient
class-independent distractor elsewhere) and each named UCR/UEA set bundled in aeon:
  1. `gaa train TRAIN --ridge-features 0` through the real CLI (so the network alone decides, and the maps
     explain every prediction), then everything below on that one checkpoint;
  2. importance maps of the test sequences: `gaa explain`'s (gaa_cli.inference.explain, the code the CLI
     runs), the raw attention weights of the first Gaussian layer over time (mean over channels, each stem
     step's weight given to the input steps of its stride), captum's IntegratedGradients (50 steps, baseline 0
     = the training mean) and Occlusion (window 5% of the length, stride half of it, baseline 0), both for
     the predicted class's logit and summed over channels, and a random map;
  3. pointing (pointing set only): the fraction of test sequences whose top step lies within the pattern
     +- 3 steps, over all of them and over the correctly classified ones;
  4. deletion: each sequence's top 20% of steps by the map set to the sequence's per-channel mean; the
     network's accuracy lost. Controls: the bottom 20% of the same map, and a random contiguous window of the
     same size (`--draws` draws, averaged). Ties in a map are broken at random.
All maps are compared on the first `--captum-n` test sequences (captum's tools are slow); `gaa explain`, the
attention weights and the random map are also scored on the whole test split. Seconds per sequence are wall
time in this process (batches of 64 for `gaa explain`, one sequence at a time for captum), with
--threads torch threads; only their ratios are meaningful on a shared machine.

Time: training dominates. With the default recipe, Pointing took 11 and GunPoint 10 minutes to train on the
2-core machine under heavy load from other jobs (GunPoint's took 68 s there when idle, docs/benchmarks.md); the maps and captum
(100 sequences) then take 2 to 5 minutes per set. `--train-args "--time-limit 5m"` bounds each training, at the
price of weaker networks on the slow sets (ArrowHead: 0.606 accuracy instead of about 0.85).

    pip install -e ".[bench]"
    OMP_NUM_THREADS=1 python benchmarks/explain.py --json explain.json          # the default run
    python benchmarks/explain.py --datasets GunPoint --captum-n 20 --no-pointing  # a short one
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pointing_data import NAME as POINTING
from pointing_data import PointingConfig
from pointing_data import write as write_pointing
from ucr_data import gaa, prepare

DATASETS = ["GunPoint", "ArrowHead", "OSULeaf", "BasicMotions"]
FRACTION = 0.2
TOLERANCE = 3  # steps either side of the pattern that still count as a hit


@dataclass
class TestSet:
    x: torch.Tensor  # (N, T, C) normalised as the model saw its training data
    mask: torch.Tensor  # (N, T) bool
    y: np.ndarray  # (N,) class indices
    pos: np.ndarray | None  # (N, 2) the pattern's [start, end), pointing set only


@dataclass
class Map:
    name: str
    scores: np.ndarray  # (n, T) importance per input step of the first n sequences; higher = more important
    seconds: float  # per sequence


# --- the maps ---------------------------------------------------------------------------------------------


def gaa_map(loaded, test_path: Path, t_max: int) -> Map:
    from gaa_cli.inference import explain

    t0 = time.perf_counter()
    result, _ = explain(loaded, test_path, batch_size=64)
    seconds = (time.perf_counter() - t0) / len(result.steps)
    scores = np.zeros((len(result.steps), t_max))
    for i, s in enumerate(result.steps):
        scores[i, : len(s)] = s
    return Map("gaa explain", scores, seconds)


def attention_map(model, ts: TestSet) -> Map | None:
    """The first Gaussian layer's weights, mean over channels, repeated over each stem step's stride; None
    unless that layer attends over time."""
    if model.gaa is None or model.cfg.attention == "dot" or model.gaa.layers[0].norm_axis != 1:
        return None
    layer = model.gaa.layers[0]
    t0 = time.perf_counter()
    with torch.no_grad():
        per_step, valid = model.per_step(ts.x, ts.mask)  # (N, T', 2W), (N, T')
        b, t, w2 = per_step.shape
        w, heads = w2 // 2, model.cfg.gaa_heads
        n = valid.sum(1).clamp_min(1).to(per_step.dtype)[:, None, None]
        h = per_step[..., :w] * n  # (N, T', W): the stem's output (its share of the mean times n)
        z = h.reshape(b, t, heads, w // heads).transpose(1, 2).reshape(b, heads * t, w // heads)  # (N, H*T', W/H)
        _, weights = layer(z, mask=valid[:, :, None].repeat(1, heads, 1), return_attention_details=True)
        weights = weights.reshape(b, heads, t, w // heads).transpose(1, 2).reshape(b, t, w).mean(2)  # (N, T')
    stem = weights.repeat_interleave(model.cfg.stride, dim=1)[:, : ts.x.shape[1]]  # (N, T)
    seconds = (time.perf_counter() - t0) / b
    return Map("attention weights", (stem * ts.mask).numpy(), seconds)


def captum_maps(model, ts: TestSet, n: int) -> list[Map]:
    from captum.attr import IntegratedGradients, Occlusion

    def forward(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(x, mask)

    ig, occ = IntegratedGradients(forward), Occlusion(forward)
    out = {"IntegratedGradients": np.zeros((n, ts.x.shape[1])), "Occlusion": np.zeros((n, ts.x.shape[1]))}
    secs = {k: 0.0 for k in out}
    for i in range(n):
        length = int(ts.mask[i].sum())
        x, mask = ts.x[i : i + 1, :length], ts.mask[i : i + 1, :length]  # (1, L, C), (1, L)
        with torch.no_grad():
            target = int(model(x, mask).argmax())
        window = max(3, round(0.05 * length))
        t0 = time.perf_counter()
        a = ig.attribute(x, baselines=0.0, target=target, additional_forward_args=(mask,), n_steps=50, internal_batch_size=50)
        secs["IntegratedGradients"] += time.perf_counter() - t0
        out["IntegratedGradients"][i, :length] = a.sum(2)[0].detach().numpy()
        t0 = time.perf_counter()
        a = occ.attribute(x, sliding_window_shapes=(window, x.shape[2]), strides=(max(1, window // 2), x.shape[2]), baselines=0.0,
                          target=target, additional_forward_args=(mask,), perturbations_per_eval=32)
        secs["Occlusion"] += time.perf_counter() - t0
        out["Occlusion"][i, :length] = a.sum(2)[0].detach().numpy()
    return [Map(k, v, secs[k] / max(n, 1)) for k, v in out.items()]


# --- the measures -----------------------------------------------------------------------------------------


def ranked(scores: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Valid steps from the most to the least important; ties in random order."""
    return np.lexsort((rng.random(length), -scores[:length]))


def accuracy(model, x: torch.Tensor, mask: torch.Tensor, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 256], mask[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((predicted.numpy() == y).mean())


def deleted(x: torch.Tensor, mask: torch.Tensor, steps: list[np.ndarray]) -> torch.Tensor:
    """x with steps[i] of sequence i set to that sequence's per-channel mean over its valid steps."""
    x = x.clone()
    for i, s in enumerate(steps):
        length = int(mask[i].sum())
        x[i, s] = x[i, :length].mean(0)
    return x


def measure(model, ts: TestSet, m: Map, rng: np.random.Generator) -> dict:
    n = len(m.scores)
    x, mask, y = ts.x[:n], ts.mask[:n], ts.y[:n]
    lengths = mask.sum(1).numpy()
    orders = [ranked(m.scores[i], int(lengths[i]), rng) for i in range(n)]
    k = [max(1, round(FRACTION * int(length))) for length in lengths]
    base = accuracy(model, x, mask, y)
    row = {"method": m.name, "sequences": n, "accuracy": base, "seconds_per_sequence": m.seconds,
           "top_drop": base - accuracy(model, deleted(x, mask, [o[:j] for o, j in zip(orders, k)]), mask, y),
           "bottom_drop": base - accuracy(model, deleted(x, mask, [o[-j:] for o, j in zip(orders, k)]), mask, y)}
    if ts.pos is not None:
        top = np.array([o[0] for o in orders])
        hit = (top >= ts.pos[:n, 0] - TOLERANCE) & (top < ts.pos[:n, 1] + TOLERANCE)
        with torch.no_grad():
            right = model(x, mask).argmax(1).numpy() == y
        row["pointing"] = float(hit.mean())
        row["pointing_correct"] = float(hit[right].mean()) if right.any() else float("nan")
    return row


def window_drop(model, ts: TestSet, n: int, draws: int, rng: np.random.Generator) -> float:
    """Accuracy lost when a random contiguous window of 20% of each sequence is deleted; mean over draws."""
    x, mask, y = ts.x[:n], ts.mask[:n], ts.y[:n]
    base = accuracy(model, x, mask, y)
    drops = []
    for _ in range(draws):
        steps = []
        for length in mask.sum(1).tolist():
            j = max(1, round(FRACTION * length))
            start = int(rng.integers(0, length - j + 1))
            steps.append(np.arange(start, start + j))
        drops.append(base - accuracy(model, deleted(x, mask, steps), mask, y))
    return float(np.mean(drops))


# --- one dataset ------------------------------------------------------------------------------------------


def test_set(loaded, test_path: Path, pos: np.ndarray | None) -> TestSet:
    from gaa_cli.data import load
    from gaa_cli.tensors import to_tensors

    t = to_tensors(load(test_path, schema=loaded.schema), loaded.meta["normalization"], loaded.meta["classes"])
    return TestSet(t.x, t.mask, t.y.numpy(), pos)


def run_dataset(name: str, work: Path, args: argparse.Namespace) -> dict:
    from gaa_cli.inference import load_model

    if name == POINTING:
        train, test = write_pointing(work / name, PointingConfig(length=args.pointing_length, n_train=args.pointing_n, n_test=args.pointing_n))
        pos = np.load(work / name / "pos_test.npy")
    else:
        _, _, train, test = prepare(name, work)
        pos = None
    run = work / name / "run"
    t0 = time.perf_counter()
    if not (args.reuse_runs and (run / "best.safetensors").is_file()):
        gaa("train", train, "--out", run, "--seed", args.seed, "--ridge-features", "0", "--quiet", "--force", *args.train_args.split(), threads=args.threads)
    train_seconds = time.perf_counter() - t0
    loaded = load_model(run, device="cpu")
    model = loaded.model
    ts = test_set(loaded, test, pos)
    rng = np.random.default_rng(args.seed)
    n = min(args.captum_n, len(ts.y))
    ours = gaa_map(loaded, test, ts.x.shape[1])
    random_map = Map("random map", rng.random(ts.mask.shape) * ts.mask.numpy(), 0.0)
    attention = attention_map(model, ts)
    whole = [m for m in (ours, attention, random_map) if m is not None]
    subset = [Map(m.name, m.scores[:n], m.seconds) for m in whole] + (captum_maps(model, ts, n) if n else [])
    rows = [measure(model, ts, m, rng) | {"subset": "all"} for m in whole]
    rows += [measure(model, ts, m, rng) | {"subset": f"first {n}"} for m in subset]
    return {"dataset": name, "train_seconds": train_seconds, "test_sequences": len(ts.y), "length": int(ts.mask.sum(1).max()),
            "channels": int(ts.x.shape[2]), "accuracy": accuracy(model, ts.x, ts.mask, ts.y),
            "window_drop": {"all": window_drop(model, ts, len(ts.y), args.draws, rng), f"first {n}": window_drop(model, ts, n, args.draws, rng)},
            "rows": rows}


def table(results: list[dict]) -> str:
    lines = ["| dataset (network acc) | method | sequences | pointing (all / correct) | top-20% drop | bottom-20% drop | random window drop | s/seq |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            point = f"{row['pointing']:.2f} / {row['pointing_correct']:.2f}" if "pointing" in row else "-"
            lines.append(f"| {r['dataset']} ({r['accuracy']:.3f}) | {row['method']} | {row['subset']} | {point} | {row['top_drop']:+.3f} | "
                         f"{row['bottom_drop']:+.3f} | {r['window_drop'][row['subset']]:+.3f} | {row['seconds_per_sequence']:.4f} |")
    return "\n".join(lines)


def compact(results: list[dict]) -> str:
    """One row per set and method, on the sequences every method was scored on (the first --captum-n)."""
    methods = ["gaa explain", "IntegratedGradients", "Occlusion", "attention weights", "random map"]
    lines = ["| set (network acc, sequences) | random window | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for r in results:
        rows = {row["method"]: row for row in r["rows"] if row["subset"] != "all"}
        n = next(iter(rows.values()))["sequences"]
        cells = []
        for m in methods:
            row = rows.get(m)
            if row is None:
                cells.append("-")
                continue
            point = f"point {row['pointing']:.2f}; " if "pointing" in row else ""
            cells.append(f"{point}{row['top_drop']:.2f} / {row['bottom_drop']:.2f}; {row['seconds_per_sequence'] * 1000:.0f} ms")
        window = r["window_drop"][next(k for k in r["window_drop"] if k != "all")]
        lines.append(f"| {r['dataset']} ({r['accuracy']:.3f}, first {n}) | {window:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS, help=f"UCR/UEA sets bundled in aeon (default: {' '.join(DATASETS)})")
    p.add_argument("--no-pointing", action="store_true", help=f"skip the synthetic pointing-game set ({POINTING})")
    p.add_argument("--pointing-length", type=int, default=256, help="length of the pointing-game sequences")
    p.add_argument("--pointing-n", type=int, default=400, help="pointing-game sequences per split")
    p.add_argument("--captum-n", type=int, default=100, help="compare with captum on the first N test sequences (0: no captum)")
    p.add_argument("--draws", type=int, default=10, help="random windows drawn per set")
    p.add_argument("--train-args", default="", help='extra `gaa train` options, one string (e.g. "--time-limit 60s")')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=None, help="keep Parquet files and runs here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file (after every set)")
    p.add_argument("--reuse-runs", action="store_true", help="measure the runs an earlier call left in --work-dir instead of training again")
    p.add_argument("--summarise", type=Path, nargs="+", default=None, help="only print the compact table of earlier --json files")
    args = p.parse_args()
    if args.summarise:
        print(compact([r for f in args.summarise for r in json.loads(f.read_text())["results"]]))
        return
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gaa-explain-"))
    names = ([] if args.no_pointing else [POINTING]) + args.datasets
    meta = {"date": datetime.date.today().isoformat(), "args": {k: str(v) for k, v in vars(args).items()}}
    results = []
    for name in names:
        results.append(run_dataset(name, work, args))
        r = results[-1]
        print(f"{name}: trained in {r['train_seconds']:.0f} s, network accuracy {r['accuracy']:.4f}", flush=True)
        print(table([r]) + "\n", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(table(results))
    print(f"\npointing: top step within the pattern +-{TOLERANCE} steps; drops are network accuracy lost (higher = the deleted steps "
          f"mattered more); captum compared on the first {args.captum_n} test sequences of each set.")


if __name__ == "__main__":
    main()
