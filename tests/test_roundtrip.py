"""What goes in comes out unchanged: labels and ids spelled as written, every row kept in place, and a
prediction that depends on its own sequence only. Property tests over random labels, ids and layouts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaa_cli.checkpoint import load as load_checkpoint
from gaa_cli.config import DataShape, ModelConfig, TrainConfig, resolve
from gaa_cli.data import load
from gaa_cli.model import SequenceClassifier

from .conftest import TINY
from .test_bad_inputs import csv, error_line, gaa, wide_frame

# spellings that a careless reader turns into something else: numbers, booleans, padding zeros, markup
LABELS = st.sampled_from(["01", "1", "2", "001", "1.0", "true", "True", "false", "NA", "None", "[/]", "[bold]x", "a,b", 'q"q', "é", " x", "-0"])
IDS = st.sampled_from(["0000", "0001", "007", "7", "1e3", "true", "[red]", "x y", "0x10", "-1", "١٢"])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _csv_text(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A CSV written by hand, every field quoted, so that the file holds exactly these spellings."""
    quote = lambda v: '"' + v.replace('"', '""') + '"'  # noqa: E731
    path.write_text("\n".join(",".join(map(quote, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _write(tmp: Path, layout: str, labels: list[str], ids: list[str], lengths: list[int], seed: int) -> Path:
    """A file holding one sequence per (label, id) in the given layout; values drawn at random."""
    rng = np.random.default_rng(seed)
    values = [np.round(rng.normal(size=n), 3) for n in lengths]
    if layout == "wide-csv":
        steps = max(lengths)
        return _csv_text(tmp / "w.csv", ["id", *[f"t{j}" for j in range(steps)], "label"],
                         [[i, *[str(v) for v in np.resize(vals, steps)], lab] for i, vals, lab in zip(ids, values, labels)])
    if layout == "long-csv":
        rows = [[i, str(t), str(v), lab] for i, vals, lab in zip(ids, values, labels) for t, v in enumerate(vals)]
        order = rng.permutation(len(rows))  # shuffled: the time column orders the steps
        return _csv_text(tmp / "l.csv", ["id", "time", "v", "label"], [rows[k] for k in order])
    table = pa.table({"id": ids, "v": pa.array([v.tolist() for v in values], pa.list_(pa.float64())), "label": labels})
    pq.write_table(table, tmp / "l.parquet")
    return tmp / "l.parquet"


@st.composite
def datasets(draw):
    n = draw(st.integers(4, 8))
    labels = draw(st.lists(LABELS, min_size=n, max_size=n).filter(lambda ls: len(set(ls)) >= 2))
    ids = draw(st.lists(IDS, min_size=n, max_size=n, unique=True))
    lengths = draw(st.lists(st.integers(2, 9), min_size=n, max_size=n))
    layout = draw(st.sampled_from(["wide-csv", "long-csv", "list-parquet"]))
    return layout, labels, ids, lengths, draw(st.integers(0, 1000))


@SETTINGS
@given(case=datasets())
def test_labels_and_ids_are_read_exactly_as_written(case):
    layout, labels, ids, lengths, seed = case
    with tempfile.TemporaryDirectory() as tmp:
        d = load(_write(Path(tmp), layout, labels, ids, lengths, seed), min_classes=2)
    order = [ids.index(i) for i in d.ids]  # long: in order of first appearance in the shuffled file
    assert sorted(d.ids.tolist()) == sorted(ids)
    assert d.labels.tolist() == [labels[k] for k in order]
    if layout != "long-csv":
        assert d.ids.tolist() == ids  # one row per sequence: the file's order


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=datasets())
def test_train_predict_evaluate_spell_labels_and_ids_as_the_file(tmp_path_factory, case):
    layout, labels, ids, lengths, seed = case
    tmp_path = tmp_path_factory.mktemp("case")
    data = _write(tmp_path, layout, labels, ids, lengths, seed)
    run = tmp_path / "run"
    r = gaa("train", data, *TINY, "--ridge-features", "50", "--out", run)
    assert r.code == 0, r.stderr
    classes = load_checkpoint(run / "best.safetensors").meta["classes"]
    assert sorted(classes) == sorted(set(labels))
    r = gaa("predict", run, data, "--format", "jsonl")
    assert r.code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert all(row["prediction"] in classes for row in rows)
    assert all(set(row) == {"id", "prediction", *(f"prob_{c}" for c in classes)} for row in rows)
    r = gaa("evaluate", run, data, "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["labels"] == classes and [c["label"] for c in report["per_class"]] == classes


def test_class_order_is_numeric_where_every_label_is_a_number(tmp_path):
    from gaa_cli.tensors import class_list

    assert class_list(np.array(["10", "2", "01", "1"], dtype=object)) == ["01", "1", "2", "10"]
    assert class_list(np.array(["b", "10", "a"], dtype=object)) == ["10", "a", "b"]


def test_ids_pass_through_even_when_the_training_file_had_none(tmp_path):
    train = csv(tmp_path / "train.csv", wide_frame(n=24, steps=8))
    run = tmp_path / "run"
    assert gaa("train", train, *TINY, "--out", run).code == 0
    test = wide_frame(n=5, steps=8, seed=1)
    r = gaa("predict", run, csv(tmp_path / "no_id.csv", test))
    assert r.code == 0, r.stderr
    out = pd.read_csv(pd.io.common.StringIO(r.stdout), dtype=str)
    assert out.columns[0] == "series_id" and out["series_id"].tolist() == ["0", "1", "2", "3", "4"]  # row numbers
    test.insert(0, "id", ["0000", "0001", "0002", "0010", "0011"])
    r = gaa("predict", run, csv(tmp_path / "with_id.csv", test))
    assert r.code == 0, r.stderr
    out = pd.read_csv(pd.io.common.StringIO(r.stdout), dtype=str)
    assert out.columns[0] == "id" and out["id"].tolist() == ["0000", "0001", "0002", "0010", "0011"]
    assert "using column 'id' as the row id" in r.stderr


# ----------------------------------------------------------------------------
# a prediction depends on its own sequence only


@st.composite
def model_configs(draw):
    axes = draw(st.sampled_from(["time", "features", "both"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    return ModelConfig(
        width=8 * heads, stride=draw(st.integers(1, 3)), stem_layers=draw(st.integers(0, 2)), kernel_size=draw(st.sampled_from([3, 5])),
        gaa_layers=draw(st.integers(0, 2)), gaa_heads=heads, gaa_gaussians=draw(st.integers(1, 3)), gaa_axes=axes,
        gaa_mixture=draw(st.booleans()), ridge_features=draw(st.sampled_from([0, 200])),
        attention=draw(st.sampled_from(["gaussian", "dot"])) if axes == "time" else "gaussian",
    )


@settings(max_examples=40, deadline=None)
@given(cfg=model_configs(), lengths=st.lists(st.integers(2, 40), min_size=2, max_size=5), channels=st.integers(1, 3), seed=st.integers(0, 99))
def test_a_prediction_does_not_depend_on_its_batch(cfg, lengths, channels, seed):
    """Scored alone at its own length, or padded beside longer and shorter sequences: the same probabilities."""
    torch.manual_seed(seed)
    t = max(lengths)
    cfg, _ = resolve(cfg, TrainConfig(), DataShape(len(lengths), t, channels, 3))
    model = SequenceClassifier(cfg, channels, 3).eval()
    x = torch.randn(len(lengths), t, channels)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    x = x * mask[:, :, None]
    if model.ridge is not None:
        model.ridge.fit(x, mask, torch.tensor([0, 1, 2, 0, 1][: len(lengths)]), torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = model.probabilities(x, mask)
        for i, n in enumerate(lengths):
            alone = model.probabilities(x[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(alone[0], together[i], atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------
# no silent NaN, and refusals by name


def test_values_far_outside_the_training_scale_give_finite_probabilities(tmp_path):
    train = csv(tmp_path / "train.csv", wide_frame(n=24, steps=8))
    run = tmp_path / "run"
    assert gaa("train", train, *TINY, "--ridge-features", "50", "--out", run).code == 0
    test = wide_frame(n=3, steps=8, seed=1)
    test.iloc[0, 2] = 1e36
    test.iloc[1, :8] = -3e38
    r = gaa("predict", run, csv(tmp_path / "wild.csv", test), "--format", "jsonl")
    assert r.code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    probs = np.array([[v for k, v in row.items() if k.startswith("prob_")] for row in rows])
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_a_degenerate_stored_normalisation_never_writes_nan(tmp_path):
    from gaa_cli import checkpoint as ckpt_io

    train = csv(tmp_path / "train.csv", wide_frame(n=24, steps=8))
    run = tmp_path / "run"
    assert gaa("train", train, *TINY, "--out", run).code == 0
    ck = ckpt_io.load(run / "best.safetensors")
    ck.meta["normalization"] = {"mean": [0.0], "std": [1e-300]}
    ckpt_io.save(tmp_path / "odd.safetensors", ck)
    r = gaa("predict", tmp_path / "odd.safetensors", train, "--format", "jsonl")
    if r.code == 0:
        assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    else:
        error_line(r, r.code)


def test_a_channel_without_any_value_is_refused_by_name(tmp_path):
    df = pd.DataFrame({"id": np.repeat([f"s{i}" for i in range(6)], 4), "time": np.tile(range(4), 6),
                       "good": np.arange(24.0), "empty": np.nan, "label": np.repeat(list("ababab"), 4)})
    r = gaa("train", csv(tmp_path / "l.csv", df), *TINY, "--allow-missing", "--out", tmp_path / "run")
    line = error_line(r, 2)
    assert "'empty'" in line and "no values at all" in line and not (tmp_path / "run").exists()
