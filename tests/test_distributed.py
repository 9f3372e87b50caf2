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

import numpy as np
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


def _epochs_saved(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun starts its workers in sessions of their own: killing its
    process group leaves them running)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_two_processes_survive_a_kill_and_train_as_well_as_one(tmp_path):
    """A two-process run killed after its second epoch (torchrun and both ranks, by SIGKILL: nothing saved on the
    way out) resumes under torchrun to the end; its run directory holds one run that evaluate loads, trained as
    well as one process with the same global batch."""
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = torchrun("train", DATA, "--out", two, "--epochs", "8", *MODEL)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**_env(), "GAA_SAVE_EVERY_S": "0"},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _epochs_saved(two) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        workers = _children(proc.pid)
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, stderr = proc.communicate(timeout=60)
    for pid in workers:  # gone before the resumed run starts
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            time.sleep(0.02)
    saved = _epochs_saved(two)
    assert 2 <= saved < 8, (saved, stderr[-2000:])

    r = _run(torchrun("train", "--resume", two, "-q"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    notes = _gaa_lines(r.stderr)  # rank 0 speaks for the run: every note once
    assert any(line.startswith("gaa: note: resuming") for line in notes) and len(notes) == len(set(notes)), notes
    names = sorted(p.name for p in two.iterdir() if not p.name.startswith("."))
    assert set(names) - {"curves.png"} == {"best.safetensors", "config.toml", "last.safetensors", "metrics.jsonl"}, names
    history = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == list(range(1, 9))

    r1 = run_gaa("train", DATA, "--out", one, "--epochs", "8", *MODEL, env={"OMP_NUM_THREADS": "1"})
    assert r1.returncode == 0, r1.stderr
    single = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    # the same samples in every step (the global batch of 16, split 8 + 8), the same augmentation and the same
    # ridge; only BatchNorm's batch statistics (over 8 samples per rank) and the order of float sums differ
    assert abs(history[-1]["train_loss"] - single[-1]["train_loss"]) < 0.05, (history[-1], single[-1])
    assert abs(history[-1]["val_acc"] - single[-1]["val_acc"]) <= 0.1, (history[-1], single[-1])
    assert _accuracy(two) > 0.6


def test_bad_input_under_torchrun_is_one_line_from_rank_0(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file where the run directory should be")
    r = _run(torchrun("train", DATA, "--out", taken, *MODEL))
    assert r.returncode != 0
    errors = [line for line in _gaa_lines(r.stderr) if line.startswith("gaa: error:")]
    assert errors == [f"gaa: error: {taken}: exists and is not a directory; choose another --out"], r.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_stream_their_own_row_groups_to_the_same_split(tmp_path):
    """Streamed under torchrun: each rank surveys and trains on its own row groups; the merged first pass gives
    the split and the statistics one process finds."""
    from gaa_cli import streaming
    from gaa_cli.distributed import Dist
    from gaa_cli.inference import load_model

    from .test_streaming import READ, _file

    path = _file(tmp_path / "d.parquet", n=240, groups=6)
    r = _run(torchrun("train", path, "--stream", "--out", tmp_path / "run", "--epochs", "2", "--val-split", "0.25", *MODEL), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = load_model(tmp_path / "run").meta
    assert meta["stream"]["processes"] == 2
    one = streaming.StreamedData(path, dict(READ)).survey(0, Dist())
    sp = streaming.split(one, 0.25, 0)
    assert meta["n_train_samples"] == sp.n_train and meta["stream"]["validation_hash_below"] == sp.cut
    norm = streaming.normalization(one, str(path))
    for key in ("mean", "std"):
        np.testing.assert_allclose(meta["normalization"][key], norm[key], rtol=1e-9)
