"""The ridge half on multichannel data, on or off: test accuracy of the whole model through the real CLI.

For each dataset (aeon's bundled BasicMotions and JapaneseVowels, and the bundled 3-channel gestures sample)
and seed: `gaa train` with the default recipe (the ridge on: each channel through its own random kernel) and
with `--ridge-features 0` (the network alone), then `gaa evaluate` on the test split; for runs with a ridge,
the network alone and the ridge alone from the same checkpoint, and the network's weight chosen on held-out
predictions (the network alone of a ridge-on run trained on 80% of a small set; a ridge-off run trains on all of it). With `--old-repo`, a third
variant runs another checkout's CLI with `--ridge-features 10000`: for commit 49bce8b, the ridge whose kernels
apply the same kernel to every channel they sum. `--ridge-only` fits the ridge alone on all of each training split
(no network), with each channel through its own kernel and with the same kernel on every channel
(random_features.CHANNEL_KERNELS), and prints its test accuracy.

    python benchmarks/multichannel.py                                  # 3 datasets x 2 seeds x 2 variants
    python benchmarks/multichannel.py --ridge-only                     # the ridge alone, both kernel rules (seconds)
    git worktree add /tmp/old 49bce8b && python benchmarks/multichannel.py --old-repo /tmp/old
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

from ucr_data import halves, prepare

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"gestures": (ROOT / "sample_data" / "gestures_train.parquet", ROOT / "sample_data" / "gestures_test.parquet")}


def gaa(repo: Path, *args: object, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(repo)}
    r = subprocess.run([sys.executable, "-m", "gaa_cli", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"gaa {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def ridge_only(datasets: list[str], seeds: list[int], work: Path) -> None:
    """Test accuracy of the ridge half alone, fitted on the whole training split, under both channel-kernel rules."""
    import torch

    from gaa_cli import random_features
    from gaa_cli.data import load
    from gaa_cli.tensors import class_list, fit_normalization, to_tensors

    print(f"{'dataset':<16} {'rule':<22} " + " ".join(f"{'seed ' + str(s):>7}" for s in seeds) + f" {'mean':>7}", flush=True)
    for name in datasets:
        train, test = SAMPLES[name] if name in SAMPLES else prepare(name, work)[2:]
        data = load(train)
        norm, classes = fit_normalization(data), class_list(data.labels)
        tr = to_tensors(data, norm, classes)
        te = to_tensors(load(test, schema=data.schema), norm, classes)
        for rule in (True, False):
            random_features.CHANNEL_KERNELS = rule
            accs = []
            for seed in seeds:
                r = random_features.RandomFeatureRidge(10_000, tr.x.shape[1], tr.x.shape[2], len(classes))
                r.fit(tr.x, tr.mask, tr.y, torch.Generator().manual_seed(seed), smoothing=0.1)
                with torch.no_grad():
                    accs.append(float((r(te.x, te.mask).argmax(1) == te.y).float().mean()))
            label = "own kernel per channel" if rule else "same kernel"
            print(f"{name:<16} {label:<22} " + " ".join(f"{a:>7.4f}" for a in accs) + f" {statistics.mean(accs):>7.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["BasicMotions", "JapaneseVowels", "gestures"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--old-repo", type=Path, default=None, help="also run this checkout with --ridge-features 10000")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--variants", nargs="+", default=["on", "off"], choices=["on", "off"],
                   help="ridge on (the default recipe) and/or off (--ridge-features 0)")
    p.add_argument("--ridge-only", action="store_true", help="the ridge half alone, under both channel-kernel rules")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gaa-multichannel-"))
    if args.ridge_only:
        return ridge_only(args.datasets, args.seeds, work)
    variants = {f"ridge {v}": (ROOT, [] if v == "on" else ["--ridge-features", "0"]) for v in args.variants}
    if args.old_repo:
        variants["same kernel (old)"] = (args.old_repo, ["--ridge-features", "10000"])
    rows = []
    print(f"{'dataset':<16} {'variant':<18} " + " ".join(f"{'seed ' + str(s):>7}" for s in args.seeds)
          + f" {'mean':>7} {'train s':>8} {'network alone':>13} {'ridge alone':>11} {'net weight':>10}", flush=True)
    for name in args.datasets:
        train, test = SAMPLES[name] if name in SAMPLES else prepare(name, work)[2:]
        for label, (repo, extra) in variants.items():
            accs, secs, net, ridge, weight = [], [], [], [], []
            for seed in args.seeds:
                run = work / name / f"{label.replace(' ', '_')}-{seed}"
                t0 = time.perf_counter()
                gaa(repo, "train", train, "--out", run, "--seed", seed, "--quiet", "--force", *extra, threads=args.threads)
                secs.append(time.perf_counter() - t0)
                accs.append(json.loads(gaa(repo, "evaluate", run, test, "--json", threads=args.threads))["accuracy"])
                h = halves(run, test)  # this checkout reads the old one's checkpoints: the same buffers, read the same way
                net.append(h["network"])
                ridge.append(h["ridge"])
                weight.append(h["blend"])
            rows.append({"dataset": name, "variant": label, "accuracy": accs, "seconds": secs, "network_alone": net, "ridge_alone": ridge,
                         "network_weight": weight})
            print(f"{name:<16} {label:<18} " + " ".join(f"{a:>7.4f}" for a in accs) + f" {statistics.mean(accs):>7.4f}"
                  + f" {statistics.mean(secs):>8.1f} {statistics.mean(net):>13.4f} {statistics.mean(ridge):>11.4f}"
                  + f" {statistics.mean(weight):>10.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
