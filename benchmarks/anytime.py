"""Accuracy against wall time: gaa under a --time-limit, beside MiniRocket and MultiRocket-Hydra, in one run.

For each dataset (the public five, then OSULeaf, ACSF1 and PickupGestureWiimoteZ, which were looked at while
tuning) and each seed:
  - aeon's MiniRocketClassifier and MultiRocketHydraClassifier (defaults, random_state=0, one thread each):
    test accuracy and fit seconds;
  - `gaa train --time-limit B` for each budget B (5, 15, 30, 60, 120 s of `gaa train` wall time, start-up
    included), for B = 3x MiniRocket's fit time, and with no limit (the default): test accuracy and the real
    wall seconds of the whole process (a budget below gaa's start-up and ridge fit cannot be met: the ridge
    half is always fitted, and the table shows the seconds it took);
  - from each default run's checkpoint, the network alone and the ridge alone, and the weight chosen for them.
Then the three targets: mean accuracy at 3x MiniRocket's fit time >= MiniRocket's mean; mean accuracy at the
default budget >= MultiRocket-Hydra's mean; no dataset more than 1 point below MiniRocket at the default.

    pip install -e ".[bench]"
    python benchmarks/anytime.py                                  # everything: about 2 hours on 2 cores
    python benchmarks/anytime.py --datasets GunPoint --seeds 0 --budgets 5 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ucr_data import MORE, PUBLIC_FIVE, baseline, halves, prepare, train_and_score

BUDGETS = [5, 15, 30, 60, 120]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=PUBLIC_FIVE + MORE)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budgets", nargs="+", type=float, default=BUDGETS, help="seconds of gaa train wall time")
    p.add_argument("--threads", type=int, default=2, help="threads of each gaa process (the baselines run on one)")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = p.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gaa-anytime-"))
    rows = []
    cols = [f"{b:g}s" for b in args.budgets] + ["3xMR", "default"]
    print(f"{'dataset':<22} {'MR acc':>7} {'MR s':>6} {'MRH acc':>7} {'MRH s':>6} " + " ".join(f"{c:>14}" for c in cols)
          + f" {'network':>8} {'ridge':>7} {'weight':>6}", flush=True)
    for name in args.datasets:
        train, test, train_file, test_file = prepare(name, work)
        mr_acc, mr_s = baseline("minirocket", train, test)
        mrh_acc, mrh_s = baseline("multirocket-hydra", train, test)
        row = {"dataset": name, "minirocket": [mr_acc, mr_s], "multirocket_hydra": [mrh_acc, mrh_s], "gaa": {c: [] for c in cols}, "halves": []}
        limits = [f"{b:g}s" for b in args.budgets] + [f"{max(3 * mr_s, 0.01):.3f}s", None]
        for seed in args.seeds:
            for col, limit in zip(cols, limits):
                extra = ["--time-limit", limit] if limit else []
                run = work / name / f"run-{col}-{seed}"
                row["gaa"][col].append(train_and_score(train_file, test_file, run, seed, extra, args.threads))
            row["halves"].append(halves(work / name / f"run-default-{seed}", test_file))
        rows.append(row)

        def cell(col: str) -> str:
            accs, secs = zip(*row["gaa"][col])
            return f"{statistics.mean(accs):.4f}@{statistics.mean(secs):.0f}s"

        h = row["halves"]
        print(f"{name:<22} {mr_acc:>7.4f} {mr_s:>6.2f} {mrh_acc:>7.4f} {mrh_s:>6.2f} " + " ".join(f"{cell(c):>14}" for c in cols)
              + f" {statistics.mean(x['network'] for x in h):>8.4f} {statistics.mean(x['ridge'] for x in h):>7.4f}"
              + f" {statistics.mean(x['blend'] for x in h):>6.2f}", flush=True)

    def mean_acc(col: str) -> float:
        return statistics.mean(statistics.mean(a for a, _ in r["gaa"][col]) for r in rows)

    mr = statistics.mean(r["minirocket"][0] for r in rows)
    mrh = statistics.mean(r["multirocket_hydra"][0] for r in rows)
    print(f"{'MEAN':<22} {mr:>7.4f} {'':>6} {mrh:>7.4f} {'':>6} " + " ".join(f"{mean_acc(c):>14.4f}" for c in cols))
    worst = min(statistics.mean(a for a, _ in r["gaa"]["default"]) - r["minirocket"][0] for r in rows)
    print("targets:")
    print(f"  mean at 3x MiniRocket's fit time {mean_acc('3xMR'):.4f} >= MiniRocket's mean {mr:.4f}: {'met' if mean_acc('3xMR') >= mr else 'MISSED'}")
    print(f"  mean at the default budget {mean_acc('default'):.4f} >= MultiRocket-Hydra's mean {mrh:.4f}: {'met' if mean_acc('default') >= mrh else 'MISSED'}")
    print(f"  worst dataset at the default budget, against MiniRocket: {worst:+.4f} (>= -0.01: {'met' if worst >= -0.01 else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
