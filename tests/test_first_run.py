"""The snags of a first run with ordinary files: layout hints, rows with no values, gaps filled without
spikes, text the terminal must not interpret, an odd environment, a checkpoint too large to load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gaa_cli.tensors import fill_gaps

from .conftest import ROOT, TINY
from .test_bad_inputs import csv, error_line, gaa, parquet, wide_frame


def test_a_long_file_with_an_unknown_id_name_gets_a_layout_hint(tmp_path):
    rows = [{"device_id": f"d{i}", "value": float(i * 10 + t), "label": "ab"[i % 2]} for i in range(6) for t in range(5)]
    r = gaa("train", csv(tmp_path / "long.csv", pd.DataFrame(rows)), *TINY, "--out", tmp_path / "run")
    line = error_line(r, 2)
    assert "this looks like long layout: pass --layout long --id-col device_id" in line
    notes = [n for n in r.stderr.splitlines() if n.startswith("gaa: note: ")]
    assert any("read as wide layout" in n for n in notes)  # the layout note comes before the error
    r = gaa("train", tmp_path / "long.csv", *TINY, "--layout", "long", "--id-col", "device_id", "--out", tmp_path / "run")
    assert r.code == 0, r.stderr


def test_the_lone_text_column_is_suggested_as_the_label(tmp_path):
    df = wide_frame().rename(columns={"label": "activity"})
    line = error_line(gaa("train", csv(tmp_path / "w.csv", df), *TINY, "--out", tmp_path / "run"), 2)
    assert "perhaps --label activity?" in line


def _with_holes(tmp_path):
    """A list file in which row 2 has no list at all and row 4 empty lists."""
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=6).tolist() for _ in range(12)]
    seqs[2], seqs[4] = None, []
    table = pa.table({"id": [f"r{i:02d}" for i in range(12)], "v": pa.array(seqs, pa.list_(pa.float64())), "label": list("ab" * 6)})
    return parquet(tmp_path / "holes.parquet", table)


def test_rows_without_values_are_skipped_on_request_and_keep_their_place_in_predictions(tmp_path):
    data = _with_holes(tmp_path)
    line = error_line(gaa("train", data, *TINY, "--out", tmp_path / "run"), 2)
    assert "has no list at row 3 (id 'r02')" in line and "--skip-empty-rows" in line
    r = gaa("train", data, *TINY, "--skip-empty-rows", "--out", tmp_path / "run")
    assert r.code == 0, r.stderr
    assert "skipped 2 rows with no values at all (first: id 'r02')" in r.stderr
    r = gaa("predict", tmp_path / "run", data, "--skip-empty-rows", "--format", "jsonl")
    assert r.code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["id"] for row in rows] == [f"r{i:02d}" for i in range(12)]
    for i, row in enumerate(rows):
        empty = i in (2, 4)
        assert (row["prediction"] is None) == empty
        assert all((v is None) == empty for k, v in row.items() if k.startswith("prob_"))
    r = gaa("predict", tmp_path / "run", data, "--skip-empty-rows")
    assert r.stdout.splitlines()[3] == "r02,,,"  # CSV: the id, then empty fields
    r = gaa("evaluate", tmp_path / "run", data, "--skip-empty-rows", "--json")
    assert r.code == 0 and json.loads(r.stdout)["n_samples"] == 10


@pytest.mark.parametrize("method, want", [
    ("interpolate", [1.0, 1.0, 2.0, 3.0, 3.0]),  # a straight line through the gap; the ends take the nearest value
    ("ffill", [1.0, 1.0, 1.0, 3.0, 3.0]),  # the last value before the gap (the first value for a leading gap)
])
def test_fill_modes_put_no_spike_into_a_series(method, want):
    x = np.array([[[np.nan], [1], [np.nan], [3], [np.nan], [9]]], dtype=np.float32)  # step 5 is padding
    assert fill_gaps(x, np.array([5]), method)[0, :5, 0].tolist() == want
    assert fill_gaps(x, np.array([5]), method)[0, 5, 0] == 9  # padding untouched


def test_fill_on_the_command_line_implies_allow_missing(tmp_path):
    df = wide_frame(n=24, steps=8)
    df.iloc[3, 2] = np.nan
    r = gaa("train", csv(tmp_path / "gaps.csv", df), *TINY, "--fill", "interpolate", "--out", tmp_path / "run")
    assert r.code == 0, r.stderr
    assert "kept 1 missing value" in r.stderr


def test_labels_and_paths_with_brackets_are_printed_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short, relative paths: the tables do not wrap them
    df = wide_frame(n=24, steps=8)
    df["label"] = np.array(["[/]", "[bold]x", "a[b]"])[np.arange(24) % 3]
    folder = Path("[red]runs")
    folder.mkdir()
    data = csv(folder / "w[1].csv", df)
    run = folder / "run"
    r = gaa("train", data, *TINY, "--out", run)
    assert r.code == 0, r.stderr
    assert str(run) in r.stdout
    r = gaa("evaluate", run, data)
    assert r.code == 0, r.stderr
    for text in ("[/]", "[bold]x", "a[b]", str(data)):
        assert text in r.stdout


def test_a_newline_in_a_file_name_keeps_the_error_on_one_line(tmp_path):
    error_line(gaa("train", tmp_path / "two\nlines.csv", *TINY), 2)


@pytest.mark.subprocess
@pytest.mark.parametrize("env_change", ["no HOME", "a HOME nobody can write"])
def test_runs_without_a_usable_home(tmp_path, env_change):
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", "GAA_CACHE_DIR")}
    if env_change != "no HOME":
        env["HOME"] = "/nonexistent/home"
    data = csv(tmp_path / "w.csv", wide_frame())
    r = subprocess.run([sys.executable, "-m", "gaa_cli", "train", str(data), *TINY, "--out", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_a_checkpoint_larger_than_memory_is_refused_cleanly(tmp_path, monkeypatch):
    from gaa_cli import checkpoint as ckpt_io

    huge = tmp_path / "huge.safetensors"
    with open(huge, "wb") as f:
        f.truncate(64 << 30)  # a sparse file: 64 GiB on paper, nothing on disk
    monkeypatch.setattr(ckpt_io, "_memory_bytes", lambda: 16 << 30)
    line = error_line(gaa("predict", huge, tmp_path / "x.csv"), 2)
    assert "64.0 GiB" in line and "memory" in line
