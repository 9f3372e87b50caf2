"""Runs that are killed, interrupted or diverge: nothing torn, nothing lost, resumable bit for bit.

Real `python -m gaa_cli` subprocesses on a small CPU model. Every process runs
with one thread, so a resumed run can be compared with an uninterrupted one
tensor for tensor (`torch.equal`).

train.py rewrites last.safetensors and metrics.jsonl at most every
$GAA_SAVE_EVERY_S seconds (and at the end; 10 by default, SAVE_EVERY_S here), so
the interrupted runs are sized from a short calibration run to last about
RUN_SECONDS: the first periodic save then lands mid-run, and the test waits for
it before it interrupts.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gaa_cli import checkpoint as ckpt_io
from gaa_cli.files import atomic_write, atomic_write_bytes

from .conftest import ROOT
from .test_bad_inputs import TINY, csv, gaa, wide_frame

SAVE_EVERY_S = 2  # train.py's cadence for last.safetensors in these runs
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GAA_SAVE_EVERY_S": str(SAVE_EVERY_S)}
RUN_SECONDS = 3 * SAVE_EVERY_S  # an uninterrupted run's length on an idle machine, so that the first periodic save is mid-run
# Small, but enough steps per epoch (24) that a signal lands inside an epoch.
RECIPE = ("--width", "8", "--gaa-heads", "1", "--gaa-layers", "1", "--gaa-gaussians", "2", "--stem-layers", "1",
          "--batch-size", "8", "--val-split", "0.2", "--patience", "0", "--seed", "3", "--device", "cpu", "-q")


def start(*args: object, log: Path) -> subprocess.Popen:
    """`python -m gaa_cli ARGS` in the background, Ctrl-C enabled, output to log.out / log.err."""
    return subprocess.Popen(
        [sys.executable, "-m", "gaa_cli", *map(str, args)],
        cwd=ROOT, env=ENV,
        stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell may ignore SIGINT
    )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    rc = proc.wait(timeout)
    return rc, log.with_suffix(".err").read_text()


def epochs_done(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return []


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb), f"{a.name}: tensor names differ"
    assert any(k.startswith("model.") for k in ta)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a.name}: {len(different)} tensors differ, e.g. {different[:3]}"


def without_time(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def assert_run_files_whole(run: Path) -> None:
    """Every file in a run directory is complete: checkpoints load, metrics and config parse."""
    for name in (ckpt_io.LAST, ckpt_io.BEST):
        if (run / name).exists():
            ckpt_io.load(run / name)
    epochs_done(run)
    tomllib.loads((run / "config.toml").read_text())


def calibrate(data: Path, run: Path) -> int:
    """Epochs for a run of about RUN_SECONDS on this machine: time four in a subprocess launched like the real runs
    (an in-process run was measured 1.5x slower than a subprocess, which once let the whole run fit in one save period)."""
    rc, err = finish(start("train", data, *RECIPE, "--epochs", "4", "--out", run, log=run.with_suffix(".calibration")), run.with_suffix(".calibration"))
    assert rc == 0, err
    epoch_s = min(m["seconds"] for m in epochs_done(run))
    return int(min(1000, max(12, np.ceil(RUN_SECONDS / epoch_s))))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> dict:
    """An uninterrupted run, and beside it the same run: killed with SIGKILL after its first periodic
    save, resumed, stopped with Ctrl-C a couple of epochs later, and resumed to the end."""
    d = tmp_path_factory.mktemp("interrupts")
    data = csv(d / "train.csv", wide_frame(n=240, steps=48, seed=5))
    epochs = calibrate(data, d / "calibration")
    ref, run = d / "ref", d / "run"
    out: dict = {"ref_dir": ref, "run": run, "epochs": epochs}
    ref_proc = start("train", data, *RECIPE, "--epochs", epochs, "--out", ref, log=d / "ref")

    first = start("train", data, *RECIPE, "--epochs", epochs, "--out", run, log=d / "first")
    wait_for(first, lambda: len(epochs_done(run)) >= 2, "a periodic save of 2 or more epochs")
    epoch_s = max(m["seconds"] for m in epochs_done(run))  # as fast as this machine runs now
    time.sleep(0.5 * epoch_s)
    first.kill()  # SIGKILL, mid-epoch
    out["kill"] = finish(first, d / "first")
    out["after_kill"] = {"files": sorted(p.name for p in run.iterdir()), "last_meta": ckpt_io.load(run / ckpt_io.LAST).meta}
    assert_run_files_whole(run)

    second = start("train", "--resume", run, "-q", log=d / "second")
    wait_for(second, lambda: "resuming" in (d / "second.err").read_text(), "the resume note")
    time.sleep(2.5 * epoch_s)
    second.send_signal(signal.SIGINT)  # Ctrl-C
    out["int"] = finish(second, d / "second")
    out["after_int"] = {"last_meta": ckpt_io.load(run / ckpt_io.LAST).meta}

    out["final"] = finish(start("train", "--resume", run, "-q", log=d / "third"), d / "third")
    out["ref"] = finish(ref_proc, d / "ref")
    return out


def test_sigkill_mid_run_leaves_whole_files(interrupted):
    rc, _ = interrupted["kill"]
    assert rc == -signal.SIGKILL
    loop = interrupted["after_kill"]["last_meta"]["resume"]["loop"]
    assert 2 <= loop["epoch"] < interrupted["epochs"]  # killed mid-run, after a periodic save
    assert loop["step"] == 0  # the last checkpoint is the end of a whole epoch
    assert {"best.safetensors", "last.safetensors", "metrics.jsonl", "config.toml"} <= set(interrupted["after_kill"]["files"])


def test_ctrl_c_saves_says_how_to_resume_and_exits_130(interrupted):
    run = interrupted["run"]
    rc, err = interrupted["int"]
    assert rc == 130, err
    assert "Traceback" not in err
    killed_at = interrupted["after_kill"]["last_meta"]["resume"]["loop"]["epoch"]
    assert f"gaa: note: resuming {run} at epoch {killed_at + 1}, step 1" in err
    last = err.strip().splitlines()[-1]
    assert last == f"gaa: interrupted: stopped by Ctrl-C: saved a resumable checkpoint at {run / 'last.safetensors'}; continue with: gaa train --resume {run}"
    loop = interrupted["after_int"]["last_meta"]["resume"]["loop"]
    assert killed_at <= loop["epoch"] < interrupted["epochs"] and loop["step"] > 0  # saved mid-epoch, with its position


def test_killed_and_interrupted_run_resumes_to_the_uninterrupted_result(interrupted):
    ref, run = interrupted["ref_dir"], interrupted["run"]
    assert interrupted["ref"][0] == 0, interrupted["ref"][1]
    rc, err = interrupted["final"]
    assert rc == 0, err
    loop = interrupted["after_int"]["last_meta"]["resume"]["loop"]
    assert f"resuming {run} at epoch {loop['epoch'] + 1}, step {loop['step'] + 1}" in err
    for name in (ckpt_io.BEST, ckpt_io.LAST):
        assert_same_tensors(ref / name, run / name)  # bit for bit
    got, want = without_time(epochs_done(run)), without_time(epochs_done(ref))
    assert len(got) == len(want) == interrupted["epochs"]
    assert [{k: v for k, v in m.items() if k != "train_loss"} for m in got] == [{k: v for k, v in m.items() if k != "train_loss"} for m in want]
    assert not list(run.glob(".*.tmp"))  # temporary files of the killed writes are cleaned up


def test_ctrl_c_then_resume_reports_the_same_train_loss(interrupted):
    assert interrupted["final"][0] == 0
    assert without_time(epochs_done(interrupted["run"])) == without_time(epochs_done(interrupted["ref_dir"]))


# ----------------------------------------------------------------------------
# divergence


def diverge(tmp_path: Path, *args: object):
    """Train with lr 10 and weight decay 10: once the warm-up passes lr 0.2 each step multiplies the
    weights by about -99, so they overflow within a few epochs."""
    data = csv(tmp_path / "small.csv", wide_frame(n=16, steps=12, seed=2))
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the step it fails at depends on the arithmetic: keep it fixed
    try:
        r = gaa("train", data, *TINY, "--lr", "10", "--weight-decay", "10", "--out", run, "--device", "cpu", *args)
    finally:
        torch.set_num_threads(threads)
    return r, run, data


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path):
    r, run, data = diverge(tmp_path, "--epochs", "20", "--batch-size", "8")
    assert r.code == 1, r.stderr
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    # (the loss, or, once train.py checks them, the weights)
    m = re.fullmatch(r"gaa: error: (.+): the (?:loss|weights) became (nan|inf|-inf|NaN or infinite) at epoch (\d+), step (\d+)(?: \(the loss was [^)]*\))?; the last good checkpoint is (.+)\. Try a lower --lr \(now 10\.0\).*", line)
    assert m, line
    epoch = int(m.group(3))
    assert m.group(1) == str(run) and m.group(5) == str(run / "last.safetensors")
    last = ckpt_io.load(run / "last.safetensors")  # whole, from before the failure, and usable
    assert last.meta["resume"]["loop"]["epoch"] < epoch and last.meta["resume"]["loop"]["step"] == 0
    assert all(bool(torch.isfinite(t).all()) for t in last.model.values())
    assert all(np.isfinite(h["train_loss"]) for h in epochs_done(run))
    r = gaa("evaluate", run, data, "--json")
    if epoch == 1:  # nothing was trained: said so, never scored as if it were a model
        assert r.code == 2 and "holds no trained model yet" in r.stderr, r.stderr
    else:
        assert r.code == 0 and "of an unfinished run" in r.stderr, r.stderr


def test_weights_that_overflow_on_the_last_step_are_a_training_error(tmp_path):
    # 8 epochs of one step: the weights overflow on the last one while its loss was still finite
    r, run, data = diverge(tmp_path, "--epochs", "8", "--batch-size", "16")
    assert r.code == 1, "training ended as a success"
    assert re.search(r"at epoch \d+, step \d+", r.stderr.strip().splitlines()[-1])
    for name in ("last.safetensors", "best.safetensors"):
        if (run / name).exists():
            assert all(bool(torch.isfinite(t).all()) for t in ckpt_io.load(run / name).model.values()), f"{name} holds NaN weights"


# ----------------------------------------------------------------------------
# atomic writes


def test_every_file_a_command_writes_is_renamed_into_place(tmp_path):
    """An audit hook sees every open() for writing and every rename: no final file is ever written in place."""
    events: list[tuple[str, str]] = []
    active = {"on": True}

    def hook(event, args):
        if not active["on"]:
            return
        if event == "open" and isinstance(args[0], (str, Path)):
            mode, flags = args[1], args[2]
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR))
            if writing:
                events.append(("write", str(args[0])))
        elif event == "os.rename":
            events.append(("rename", str(args[1])))

    sys.addaudithook(hook)  # cannot be removed: switched off below
    try:
        data = csv(tmp_path / "w.csv", wide_frame())
        run = tmp_path / "run"
        assert gaa("train", data, *TINY, "--epochs", "2", "--out", run, "--device", "cpu").code == 0
        outputs = [tmp_path / "p.csv", tmp_path / "p.jsonl", tmp_path / "p.parquet"]
        for out, fmt in zip(outputs, ("csv", "jsonl", "parquet")):
            r = gaa("predict", run, data, "--format", fmt, "--output", out)
            assert r.code == 0, r.stderr
    finally:
        active["on"] = False
    finals = [run / n for n in ("best.safetensors", "last.safetensors", "metrics.jsonl", "config.toml")] + outputs
    written = {p for kind, p in events if kind == "write"}
    renamed = {p for kind, p in events if kind == "rename"}
    for f in finals:
        assert f.is_file(), f
        assert str(f) in renamed, f"{f.name} was not renamed into place"
        assert str(f) not in written, f"{f.name} was opened for writing in place"
    others = {str(data), str(run / ".gaa-write-test"), str(run / ".lock")}  # the input; the write probe; the lock (no data)
    in_place = [p for p in written if Path(p).parent in (run, tmp_path) and p not in others and not (Path(p).name.startswith(".") and p.endswith(".tmp"))]
    assert not in_place, in_place
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new but incomple")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


WRITER = textwrap.dedent(
    """
    import sys, types
    pkg = types.ModuleType("gaa_cli")  # gaa_cli.files alone, without importing torch
    pkg.__path__ = [sys.argv[1]]
    sys.modules["gaa_cli"] = pkg
    from gaa_cli.files import atomic_write_bytes
    target, a, b = sys.argv[2], b"A" * 4_000_000 + b"end-a", b"B" * 6_000_000 + b"end-b"
    print("ready", flush=True)
    while True:
        atomic_write_bytes(target, a)
        atomic_write_bytes(target, b)
    """
)


def test_sigkill_while_writing_leaves_the_old_or_the_new_file(tmp_path):
    a, b = b"A" * 4_000_000 + b"end-a", b"B" * 6_000_000 + b"end-b"
    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, a)
    rng = random.Random(0)
    for trial in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT / "gaa_cli"), str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.3))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        content = target.read_bytes()
        assert content in (a, b), f"trial {trial}: torn file of {len(content)} bytes"


def test_ctrl_c_while_loading_libraries_is_quiet(tmp_path):
    """Ctrl-C during start-up (torch still importing): one line, exit 130, no traceback."""
    log = tmp_path / "startup"
    proc = start("train", ROOT / "sample_data" / "sensor_wide_train.csv", "--out", tmp_path / "run", log=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until torch's shared library is mapped: the import is under way
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    else:
        proc.kill()
        pytest.fail("torch never started loading")
    proc.send_signal(signal.SIGINT)
    rc, stderr = finish(proc, log, timeout=60)
    assert rc == 130, stderr
    assert stderr.startswith("gaa: interrupted:") and "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert not (tmp_path / "run").exists()
