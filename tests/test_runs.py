"""A run directory belongs to one process; a command says which checkpoint it uses; --force replaces only on
success; SIGTERM is Ctrl-C; progress reaches a log file. Real subprocesses where a second process is the point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaa_cli import checkpoint as ckpt_io
from gaa_cli.files import RunLock, holder

from .conftest import ROOT, TINY
from .test_bad_inputs import csv, digest, error_line, gaa, wide_frame

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GAA_SAVE_EVERY_S": "0.5"}
SLOW_RECIPE = ("--width", "8", "--stem-layers", "1", "--batch-size", "4", "--epochs", "400", "--ridge-features", "0", "--device", "cpu")


def start(*args: object, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gaa_cli", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"))


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def epochs_done(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.fixture
def running(tmp_path):
    """A training run in the background, past its first two epochs; stopped at the end of the test."""
    data = csv(tmp_path / "train.csv", wide_frame(n=60, steps=32))
    run = tmp_path / "run"
    proc = start("train", data, *SLOW_RECIPE, "-q", "--out", run, log=tmp_path / "bg")
    wait_for(proc, lambda: epochs_done(run) >= 2, "two epochs")
    yield {"proc": proc, "run": run, "data": data, "log": tmp_path / "bg"}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.subprocess
def test_a_second_writer_is_refused_and_a_reader_is_told_the_run_is_unfinished(running, tmp_path):
    run, data = running["run"], running["data"]
    assert holder(run) == f" (pid {running['proc'].pid})"
    before = digest(run)
    r = gaa("train", data, *TINY, "--out", run, "--force")
    line = error_line(r, 2)
    assert "another gaa process (pid" in line and "is training into this run directory" in line
    r = gaa("evaluate", run, data, "--json")
    assert r.code == 0, r.stderr
    warning = next(line for line in r.stderr.splitlines() if line.startswith("gaa: warning: "))
    assert "of an unfinished run" in warning and "still being trained" in warning
    assert set(before) <= set(digest(run))  # the second writer touched nothing (the first one goes on writing)


@pytest.mark.subprocess
def test_sigterm_saves_and_says_how_to_resume(running):
    proc, run = running["proc"], running["run"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    err = running["log"].with_suffix(".err").read_text()
    assert err.strip().splitlines()[-1] == (
        f"gaa: interrupted: stopped by SIGTERM: saved a resumable checkpoint at {run / 'last.safetensors'}; continue with: gaa train --resume {run}")
    loop = ckpt_io.load(run / "last.safetensors").meta["resume"]["loop"]
    assert loop["step"] > 0 or loop["epoch"] >= 2  # saved where it stopped
    assert holder(run) is None  # the lock went with the process


def _wait_for_handler(pid: int, sig: int, timeout: float = 60.0) -> None:
    """Until the process catches `sig` (Linux: the SigCgt mask of /proc/PID/status), however loaded the machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        if int(fields["SigCgt"], 16) >> (sig - 1) & 1:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not install a handler for signal {sig} in {timeout} s")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_sigterm_while_starting_exits_143(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gaa_cli", "train", str(csv(tmp_path / "t.csv", wide_frame())), *TINY, "--out", str(tmp_path / "r")],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for_handler(proc.pid, signal.SIGTERM)  # installed first thing; the imports of torch and pandas follow
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err


def test_a_finished_run_says_which_checkpoint_is_used(tmp_path):
    data = csv(tmp_path / "train.csv", wide_frame())
    run = tmp_path / "run"
    assert gaa("train", data, *TINY, "--ridge-features", "0", "--out", run).code == 0
    r = gaa("predict", run, data)
    assert r.code == 0 and "gaa: warning" not in r.stderr
    assert f"gaa: note: using {run / 'best.safetensors'}: the best model of its finished run (epoch 1 of 1)" in r.stderr


def test_a_run_stopped_before_its_first_epoch_has_no_model_to_use(tmp_path):
    data = csv(tmp_path / "train.csv", wide_frame())
    run = tmp_path / "run"
    assert gaa("train", data, *TINY, "--ridge-features", "0", "--out", run).code == 0
    ck = ckpt_io.load(run / "last.safetensors")
    ck.meta.update(epoch=0, kind="last")
    ck.meta["resume"]["loop"].update(epoch=0, finished=False, history=[], best_epoch=0)
    ckpt_io.save(run / "last.safetensors", ck)
    (run / "best.safetensors").unlink()
    line = error_line(gaa("evaluate", run, data), 2)
    assert "holds no trained model yet" in line and f"gaa train --resume {run}" in line


def test_force_keeps_the_old_run_when_the_new_one_is_refused(tmp_path):
    data = csv(tmp_path / "train.csv", wide_frame())
    run = tmp_path / "run"
    assert gaa("train", data, *TINY, "--out", run).code == 0
    before = digest(run)
    r = gaa("train", data, *TINY, "--out", run, "--force", "--gaa-heads", "3", "--width", "8")  # refused: heads must divide the width
    error_line(r, 2)
    assert digest(run) == before
    r = gaa("train", data, *TINY, "--out", run, "--force", "--epochs", "2")  # accepted: the old run is replaced
    assert r.code == 0, r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_progress_off_a_terminal_is_plain_lines(tmp_path):
    data = csv(tmp_path / "train.csv", wide_frame())
    r = subprocess.run([sys.executable, "-m", "gaa_cli", "train", str(data), *[a for a in TINY if a != "-q"], "--epochs", "3", "--out", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert lines and lines[-1].startswith("epoch 3/3  step 9/9  loss ")  # the last epoch always gets its line
    assert "\x1b[" not in r.stderr and "\r" not in r.stderr  # no bar, no terminal codes


def test_lock_is_exclusive_within_one_machine(tmp_path):
    with RunLock(tmp_path):
        assert holder(tmp_path) == f" (pid {os.getpid()})"
        with pytest.raises(Exception, match="another gaa process"):
            RunLock(tmp_path).__enter__()
    assert holder(tmp_path) is None


def test_metrics_of_a_killed_run_stay_whole(running):
    running["proc"].kill()
    running["proc"].wait()
    for line in (running["run"] / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
