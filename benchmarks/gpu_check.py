"""Train the same recipes on the GPU and on the CPU and compare them: accuracy, training speed, peak GPU memory.

Run by gpu_check.sh (which installs, runs the tests and the block benchmark first); on its own:

    python benchmarks/gpu_check.py                    # the bundled sample and GunPoint, GPU against CPU
    python benchmarks/gpu_check.py --cpu-dry-run      # no GPU: the plumbing only (tiny schedules, both runs on the CPU,
                                                      # the 'GPU' one in bf16, --compile through the aot_eager backend)

For each data set it trains, with the same seed and the default recipe (the same schedule on both devices):

- on the GPU at the default precision (auto: bf16, or fp16 with a GradScaler), and with ``--compile`` for the
  sample (unless ``--no-compile``);
- on the CPU in float32;

then scores each best checkpoint on the test file (predicting on the device it trained on) and prints training
samples per second (samples x epochs / seconds in optimiser steps; for the compiled run those seconds include
compiling), the test accuracy and the peak GPU memory
(``torch.cuda.max_memory_allocated`` during the run). It also predicts and explains on the GPU through the real
CLI. The check fails (exit 1) when a run fails, when a GPU run's accuracy falls below the CPU's by more than the
noise of the test set's size allows (2.5 standard errors of a difference of two accuracies, at least 0.05), or
when the GPU was not used. The results also go to ``--json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from gaa_cli.data import ReadOptions  # noqa: E402
from gaa_cli.inference import evaluate, load_model  # noqa: E402
from gaa_cli.runs import TrainRequest, run_training  # noqa: E402

SAMPLE = ("sample", ROOT / "sample_data" / "gestures_train.parquet", ROOT / "sample_data" / "gestures_test.parquet")
UCR = "GunPoint"
QUICK = {"epochs": 2, "width": 8, "stem_layers": 1}  # --cpu-dry-run: seconds, not accuracy


@dataclass
class Result:
    data: str
    device: str
    precision: str
    compiled: bool
    accuracy: float
    samples_per_s: float
    seconds: float
    peak_gpu_mib: float
    n_test: int


def train_and_score(name: str, train: Path, test: Path, out: Path, device: str, precision: str, compiled: bool, quick: bool) -> Result:
    model_options = dict(QUICK) if quick else {}
    epochs = model_options.pop("epochs", None)
    train_options = {"device": device, "precision": precision, "compile": compiled, "seed": 0, "epochs": epochs}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    req = TrainRequest(data=train, out=out, force=True, model_options=model_options, train_options=train_options)
    notes: list[str] = []
    result = run_training(req, console=Console(file=io.StringIO()), show_progress=False, notes=notes.extend)
    seconds = time.perf_counter() - t0
    for n in notes:
        if "--compile" in n:
            print(f"  note: {n}")
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    loaded = load_model(result.best_path, device)
    report, _ = evaluate(loaded, test, ReadOptions())
    meta = loaded.meta
    steps_s = result.timings.get("steps", float("nan"))
    samples = meta["n_train_samples"] * result.epochs_run
    return Result(name, device, meta.get("precision", "?"), compiled, float(report["accuracy"]), samples / steps_s if steps_s else float("nan"),
                  seconds, peak, int(report["n_samples"]))


def tolerance(acc: float, n: int) -> float:
    """How far two accuracies on the same n test samples may differ by chance: 2.5 standard errors of the
    difference of two independent estimates, at least 0.05."""
    return max(0.05, 2.5 * math.sqrt(2 * max(acc * (1 - acc), 0.01) / n))


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gaa_cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="no GPU: tiny schedules, the 'GPU' runs on the CPU in bf16")
    parser.add_argument("--no-compile", action="store_true", help="skip the --compile run")
    parser.add_argument("--no-ucr", action="store_true", help="skip the UCR set (needs aeon)")
    parser.add_argument("--work", type=Path, help="folder for runs and data [default: a temporary one]")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (no GPU, or a CPU-only torch); run with --cpu-dry-run to check the plumbing", file=sys.stderr)
        return 1
    gpu, gpu_precision = ("cpu", "bf16") if dry else ("cuda", "auto")
    if dry:  # inductor on a CPU takes minutes; the plumbing needs only the tracing (see gaa_cli/train.py)
        os.environ.setdefault("GAA_COMPILE_BACKEND", "aot_eager")
    where = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    print(f"gpu_check: torch {torch.__version__}, {where}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads")
    work = args.work or Path(tempfile.mkdtemp(prefix="gaa-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)

    sets = [SAMPLE]
    if not args.no_ucr:
        try:
            from ucr_data import prepare

            _, _, train, test = prepare(UCR, work / "ucr")
            sets.append((UCR, train, test))
        except (ImportError, SystemExit) as e:  # aeon missing, or without this set
            print(f"gpu_check: FAIL: cannot prepare {UCR} ({e}); install aeon (pip install aeon) or pass --no-ucr")
            return 1

    results: list[Result] = []
    failures: list[str] = []
    for name, train, test in sets:
        runs = [(gpu, gpu_precision, False), ("cpu", "fp32", False)]
        if name == "sample" and not args.no_compile:
            runs.insert(1, (gpu, gpu_precision, True))
        by_kind = {}
        for device, precision, compiled in runs:
            label = f"{name} on {device} ({precision}{', compiled' if compiled else ''})"
            print(f"gpu_check: training {label} ...", flush=True)
            try:
                r = train_and_score(name, train, test, work / f"{name}-{device}-{precision}-{int(compiled)}", device, precision, compiled, dry)
            except Exception as e:  # noqa: BLE001 - reported, and the check fails
                failures.append(f"{label}: {type(e).__name__}: {e}")
                print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
                continue
            results.append(r)
            by_kind[(device, compiled)] = r
            print(f"  accuracy {r.accuracy:.3f}, {r.samples_per_s:.0f} training samples/s, {r.seconds:.1f} s in all, "
                  f"peak GPU memory {r.peak_gpu_mib:.0f} MiB, precision {r.precision}", flush=True)
        cpu = by_kind.get(("cpu", False))
        for (device, compiled), r in by_kind.items():
            if cpu is None or r is cpu:
                continue
            tol = tolerance(cpu.accuracy, cpu.n_test)
            if r.accuracy < cpu.accuracy - tol and not dry:
                failures.append(f"{name}: accuracy on {device}{' compiled' if compiled else ''} {r.accuracy:.3f} is below the CPU's "
                                f"{cpu.accuracy:.3f} by more than {tol:.3f}")
            if not dry and r.precision == "fp32":
                failures.append(f"{name}: the GPU run used fp32; auto should pick bf16 or fp16")

    # predict and explain through the real CLI, on the GPU
    if results:
        run = work / f"sample-{gpu}-{gpu_precision}-0"
        test = SAMPLE[2]
        for cmd in (("predict", run, test, "--device", gpu), ("explain", run, test, "--device", gpu, "-q")):
            r = cli(*cmd)
            ok = r.returncode == 0 and r.stdout.strip()
            print(f"gpu_check: gaa {cmd[0]} --device {gpu}: {'ok' if ok else 'FAILED'}")
            if not ok:
                failures.append(f"gaa {cmd[0]} --device {gpu} exited {r.returncode}: {r.stderr.strip().splitlines()[-1:] or ''}")

    print("\n| data | device | precision | compiled | test accuracy | training samples/s | seconds | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.data} | {r.device} | {r.precision} | {'yes' if r.compiled else 'no'} | {r.accuracy:.3f} | {r.samples_per_s:.0f} "
              f"| {r.seconds:.1f} | {r.peak_gpu_mib:.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": [r.__dict__ for r in results], "failures": failures}, indent=1) + "\n")
    if failures:
        print("\ngpu_check: FAIL\n" + "\n".join(f"- {f}" for f in failures))
        return 1
    print("\ngpu_check: training, prediction and explanation OK" + (" (CPU dry run: plumbing only)" if dry else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
