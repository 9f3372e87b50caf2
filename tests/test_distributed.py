"""Training past one process: real torchrun groups of two gloo processes on this machine's loopback.

No mocks: `python -m torch.distributed.run --standalone --nproc-per-node 2 -m gaa_cli train ...` starts two
ranks that exchange gradients, validation probabilities and decisions through torch.distributed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, SAMPLES, run_gaa

pytestmark = pytest.mark.subprocess

DATA = SAMPLES / "sensor_wide_train.csv"  # one channel: the model has a ridge half, fitted on rank 0 and sent to rank 1
TEST = SAMPLES / "sensor_wide_test.csv"
# a small network with a small ridge; --batch-size is the global batch: each of 2 ranks steps on 8 of 16
MODEL = ("--width", "8", "--stem-layers", "1", "--gaa-heads", "1", "--gaa-gaussians", "2", "--ridge-features", "200", "--batch-size", "16",
         "--device", "cpu", "-q")


def torchrun(*args: str, nproc: int = 2, **popen) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "gaa_cli", *map(str, args)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a shared machine; also silences torchrun's note about it
    return env


def _run(cmd: list[str], timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**_env(), **env})


def _accuracy(run_dir: Path) -> float:
    r = run_gaa("evaluate", run_dir, TEST, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["accuracy"]


def _gaa_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gaa: ")]


@pytest.mark.slow
def test_two_processes_train_one_run_as_good_as_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    r = _run(torchrun("train", DATA, "--out", two, "--epochs", "6", *MODEL))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # rank 0 speaks for the run: every note once, never twice
    notes = _gaa_lines(r.stderr)
    assert notes and len(notes) == len(set(notes)), notes
    names = sorted(p.name for p in two.iterdir() if not p.name.startswith("."))
    assert names == ["best.safetensors", "config.toml", "curves.png", "last.safetensors", "metrics.jsonl"] or \
        names == ["best.safetensors", "config.toml", "last.safetensors", "metrics.jsonl"], names
    assert not list(two.glob(".*.tmp"))
    history = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == list(range(1, 7))

    r1 = run_gaa("train", DATA, "--out", one, "--epochs", "6", *MODEL)
    assert r1.returncode == 0, r1.stderr
    acc_two, acc_one = _accuracy(two), _accuracy(one)
    # the same samples in every step and the same ridge; only BatchNorm's batch statistics (over 8 samples per
    # rank instead of 16) and the order of float sums differ: within the noise of 140 test samples
    assert acc_two > 0.6 and abs(acc_two - acc_one) <= 0.1, (acc_two, acc_one)


def _epochs_saved(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_a_killed_two_process_run_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = torchrun("train", DATA, "--out", run, "--epochs", "40", *MODEL)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**_env(), "GAA_SAVE_EVERY_S": "0"},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while _epochs_saved(run) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, at once: no chance to save
        _, stderr = proc.communicate(timeout=30)
    saved = _epochs_saved(run)
    assert 2 <= saved < 40, (saved, stderr[-2000:])

    r = _run(torchrun("train", "--resume", run, "-q"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(line.startswith("gaa: note: resuming") for line in _gaa_lines(r.stderr)), r.stderr
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == list(range(1, 41))
    assert _accuracy(run) > 0.6


def test_bad_input_under_torchrun_is_one_line_from_rank_0(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file where the run directory should be")
    r = _run(torchrun("train", DATA, "--out", taken, *MODEL))
    assert r.returncode != 0
    errors = [line for line in _gaa_lines(r.stderr) if line.startswith("gaa: error:")]
    assert errors == [f"gaa: error: {taken}: exists and is not a directory; choose another --out"], r.stderr[-3000:]
