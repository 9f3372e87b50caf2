"""Training from Parquet row groups streamed through a shuffle buffer (streaming.py), against a whole read."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from gaa_cli import streaming
from gaa_cli.data import ReadOptions, load
from gaa_cli.distributed import Dist
from gaa_cli.errors import UsageError
from gaa_cli.inference import load_model
from gaa_cli.runs import TrainRequest, run_training
from gaa_cli.tensors import fit_normalization

READ = dict(label="label", need_labels=True, allow_missing=False, min_length=2, skip_empty=False)


def _file(path, n=240, groups=8, seed=0):
    """A list-layout file of `n` sequences of 10 to 24 steps, in `groups` row groups: two classes by the sign of a slope."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    lengths = rng.integers(10, 25, n)
    seqs = [((2 * k - 1) * np.linspace(0, 1, m) + 0.3 * rng.standard_normal(m) + 5).round(3).tolist() for k, m in zip(y, lengths)]
    table = pa.table({"series_id": [f"s{i:04d}" for i in range(n)], "x": seqs, "label": np.where(y == 1, "up", "down")})
    pq.write_table(table, path, row_group_size=-(-n // groups))
    return path


def test_row_numbers_hash_to_a_split_that_is_stable_and_near_its_fraction():
    rows = np.arange(100_000)
    h = streaming.unit_hash(rows, 0)
    assert np.array_equal(h, streaming.unit_hash(rows, 0)) and not np.array_equal(h, streaming.unit_hash(rows, 1))
    assert ((h >= 0) & (h < 1)).all()
    assert abs((h < 0.1).mean() - 0.1) < 0.005
    assert np.array_equal(streaming.unit_hash(rows[5:9], 0), h[5:9])  # a row's hash is its own, whatever it is read with


def test_the_survey_equals_a_whole_read(tmp_path):
    path = _file(tmp_path / "d.parquet")
    data = streaming.StreamedData(path, dict(READ))
    assert len(data.groups) == 8 and data.schema.layout == "list"
    s = data.survey(0, Dist())
    whole = load(path)
    assert s.n == len(whole.lengths) and s.max_length == whole.lengths.max() and s.labels == {"up", "down"}
    norm, want = streaming.normalization(s, str(path)), fit_normalization(whole)
    np.testing.assert_allclose(norm["mean"], want["mean"], rtol=1e-9)
    np.testing.assert_allclose(norm["std"], want["std"], rtol=1e-6)
    # each rank of two reads its own row groups; together, every one once
    assert sorted(data.mine(Dist(0, 2)) + data.mine(Dist(1, 2))) == list(range(8))
    sp = streaming.split(s, 0.25, 0)
    held = set(s.val.rows[sp.val].tolist())
    assert held == set(np.flatnonzero(streaming.unit_hash(np.arange(s.n), 0) < 0.25).tolist())
    assert sp.n_train == s.n - len(held) and not held & set(s.sample.rows[sp.sample].tolist())


@pytest.mark.slow
def test_streamed_training_writes_a_run_that_evaluates(tmp_path):
    path = _file(tmp_path / "d.parquet")
    req = TrainRequest(path, out=tmp_path / "run", read=ReadOptions(),
                       train_options={"stream": True, "epochs": 4, "batch_size": 16, "device": "cpu", "val_split": 0.25},
                       model_options={"width": 8, "stem_layers": 1, "ridge_features": 100})
    notes: list[str] = []
    result = run_training(req, console=Console(file=io.StringIO()), show_progress=False, notes=notes.extend)
    meta = load_model(result.run_dir).meta
    assert meta["train_config"]["stream"] is True and meta["sources"]["stream"] == "True"
    assert meta["stream"]["row_groups"] == 8 and meta["stream"]["ridge_sample"] == meta["n_train_samples"]  # under SAMPLE_MAX: all of them
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 4
    assert result.metrics["val_acc"] > 0.8  # the slope's sign is easy

    resumed = run_training(TrainRequest(None, resume=result.run_dir), console=Console(file=io.StringIO()), show_progress=False, notes=notes.extend)
    assert resumed.epochs_run == 4  # finished: nothing left to train, and the first pass agreed with the saved fingerprint


def test_stream_refuses_csv_and_the_long_layout(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,x\n")
    with pytest.raises(UsageError, match="--stream reads Parquet"):
        streaming.should_stream(csv, True, 4.0)
    long = tmp_path / "long.parquet"
    pq.write_table(pa.table({"series_id": ["a", "a", "b", "b"], "t": [0, 1, 0, 1], "v": [1.0, 2.0, 3.0, 4.0], "label": ["x", "x", "y", "y"]}), long)
    with pytest.raises(UsageError, match="one row per sequence"):
        streaming.StreamedData(long, dict(READ))
    assert not streaming.should_stream(long, None, 4.0)  # small: loaded whole
    assert streaming.should_stream(long, None, 0.0)  # above the threshold (0 GB)


def test_an_epoch_read_again_from_a_step_gives_the_same_batches(tmp_path, monkeypatch):
    """What a resumed streamed run relies on: an epoch's batches are a function of the seed, the epoch and the
    rank, so reading past the first k gives exactly the batches k, k + 1, ...; the buffer is small here, so
    batches come out before every row group is read."""
    monkeypatch.setenv("GAA_STREAM_BUFFER_MB", "0.01")
    path = _file(tmp_path / "d.parquet")
    data = streaming.StreamedData(path, dict(READ))
    s = data.survey(0, Dist())
    sp = streaming.split(s, 0.2, 0)
    norm, classes = streaming.normalization(s, str(path)), streaming.class_names(s.labels)
    plan = streaming.Plan(data, sp.cut, 0, norm, classes, "mean", s.max_length, 16, 12, sp.n_train, Dist())
    whole = list(plan.epoch(3))
    assert len(whole) == 12 and all(len(b) == 16 for b in whole)
    again = list(plan.epoch(3, skip=5))
    assert len(again) == 7
    for a, b in zip(whole[5:], again, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = list(plan.epoch(4))
    assert not all(torch.equal(a.y, b.y) for a, b in zip(whole, other))  # another epoch, another order
    held = set(s.val.rows[sp.val].tolist())
    assert len(held) and sp.n_train + len(held) == s.n
