"""`gaa explain` and the figures: the decomposition against the model's own logits, the importances against an
oracle that follows explain.py's definition sequence by sequence, and the files it writes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaa_cli.config import DataShape, ModelConfig, TrainConfig, resolve
from gaa_cli.explain import explain_batch
from gaa_cli.inference import explain, load_model
from gaa_cli.model import SequenceClassifier

from .conftest import SAMPLES, TINY
from .test_bad_inputs import csv, error_line, gaa, long_frame, wide_frame

PNG = b"\x89PNG\r\n\x1a\n"


def _model(cfg: ModelConfig, t: int, channels: int, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    cfg, _ = resolve(cfg, TrainConfig(), DataShape(8, t, channels, 3))
    model = SequenceClassifier(cfg, channels, 3).eval()
    for m in model.modules():  # BatchNorm away from the identity, so that the oracle sees every part at work
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _batch(n: int, t: int, c: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(2, t // 3), t + 1, (n,), generator=g)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return torch.randn(n, t, c, generator=g) * mask[:, :, None], mask


CONFIGS = st.builds(
    ModelConfig, width=st.sampled_from([8, 16]), stride=st.integers(1, 3), stem_layers=st.integers(0, 2), kernel_size=st.sampled_from([3, 5]),
    gaa_layers=st.integers(0, 2), gaa_heads=st.sampled_from([1, 2]), gaa_axes=st.sampled_from(["time", "features", "both"]),
    gaa_mixture=st.booleans(), ridge_features=st.just(0),
)


@settings(max_examples=20, deadline=None)
@given(cfg=CONFIGS, channels=st.integers(1, 3))
def test_the_logits_are_exactly_the_sum_of_the_steps(cfg, channels):
    model = _model(cfg, 30, channels)
    x, mask = _batch(4, 30, channels)
    with torch.no_grad():
        per_step, valid = model.per_step(x, mask)
        decomposed = (per_step @ model.head.weight.T).sum(1) + model.head.bias
        torch.testing.assert_close(decomposed, model(x, mask), atol=1e-5, rtol=1e-5)
        assert not per_step[~valid].any()  # padded stem steps contribute nothing


def _oracle(model: SequenceClassifier, x: torch.Tensor, mask: torch.Tensor, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sequence i's step and channel importances, alone, straight from explain.py's definition."""
    n = int(mask[i].sum())
    xi, mi = x[i : i + 1, :n].clone().requires_grad_(True), mask[i : i + 1, :n]
    with torch.no_grad():
        predicted = int(model.probabilities(xi, mi).argmax())
        p = torch.softmax(model(xi, mi), -1)[0]
    per_step, valid = model.per_step(xi, mi)
    c = per_step[0] @ model.head.weight.T  # (T', K)
    contrast = c[:, predicted] - c @ p
    r = contrast.detach().clamp_min(0) * valid[0]
    r = r / r.sum() if r.sum() > 0 else valid[0].float() / valid[0].sum()
    (grad,) = torch.autograd.grad((r * contrast).sum(), xi)
    ev = (grad * xi).sum(-1)[0].detach().clamp_min(0)
    steps = (ev / ev.sum() if ev.sum() > 0 else torch.full((n,), 1 / n)).numpy()
    if x.shape[2] == 1:
        return steps, None
    with torch.no_grad():
        def z(v):
            logits = model(v, mi)[0]
            return logits[predicted] - logits @ p
        drops = []
        for ch in range(x.shape[2]):
            v = xi.detach().clone()
            v[:, :, ch] = 0
            drops.append(float(z(xi.detach()) - z(v)))
    d = np.maximum(drops, 0)
    return steps, d / d.sum() if d.sum() > 0 else np.full(len(d), 1 / len(d))


@pytest.mark.parametrize("cfg, channels", [
    (ModelConfig(width=8, stem_layers=2, ridge_features=0), 1),
    (ModelConfig(width=16, stride=2, gaa_heads=2, gaa_layers=2, ridge_features=0), 3),
    (ModelConfig(width=8, gaa_axes="both", gaa_mixture=True, ridge_features=0), 2),
    (ModelConfig(width=8, attention="dot", gaa_heads=2, ridge_features=0), 2),
])
def test_importances_match_their_definition_and_do_not_depend_on_the_batch(cfg, channels):
    model = _model(cfg, 40, channels)
    x, mask = _batch(5, 40, channels, seed=1)
    e = explain_batch(model, x, mask)
    assert torch.isfinite(e.steps).all() and (e.steps >= 0).all() and not e.steps[~mask].any()
    torch.testing.assert_close(e.steps.sum(1), torch.ones(5))
    torch.testing.assert_close(e.stem.sum(1), torch.ones(5))
    for i in range(5):
        steps, chans = _oracle(model, x, mask, i)
        n = int(mask[i].sum())
        np.testing.assert_allclose(e.steps[i, :n].numpy(), steps, atol=2e-5)
        if chans is not None:
            np.testing.assert_allclose(e.channels[i].numpy(), chans, atol=2e-5)
    assert (e.channels is None) == (channels == 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny network-only run on the long gestures sample (3 channels) and one on a wide univariate file."""
    d = tmp_path_factory.mktemp("explain")
    out = {"dir": d}
    r = gaa("train", SAMPLES / "gestures_long_train.csv", *TINY, "--width", "16", "--out", d / "long")
    assert r.code == 0, r.stderr
    out["long"] = d / "long"
    wide = csv(d / "wide.csv", wide_frame(n=30, steps=20))
    r = gaa("train", wide, *TINY, "--ridge-features", "0", "--out", d / "wide")
    assert r.code == 0, r.stderr
    out["wide"], out["wide_data"] = d / "wide", wide
    return out


def test_explain_writes_tables_equal_to_the_model_and_readable_figures(runs, tmp_path):
    test = SAMPLES / "gestures_long_test.csv"
    r = gaa("explain", runs["long"], test, "--out", tmp_path / "ex", "-q")
    assert r.code == 0, r.stderr
    steps = pq.read_table(tmp_path / "ex" / "importance.parquet").to_pandas()
    chans = pq.read_table(tmp_path / "ex" / "channels.parquet").to_pandas()
    preds = pq.read_table(tmp_path / "ex" / "predictions.parquet").to_pandas()
    assert list(steps.columns) == ["series_id", "step", "importance"] and list(chans.columns) == ["series_id", "channel", "importance"]
    assert set(chans["channel"]) == {"acc_x", "acc_y", "acc_z"}
    np.testing.assert_allclose(steps.groupby("series_id", sort=False)["importance"].sum(), 1, atol=1e-5)
    np.testing.assert_allclose(chans.groupby("series_id", sort=False)["importance"].sum(), 1, atol=1e-5)
    assert (steps["importance"] >= 0).all() and np.isfinite(steps["importance"]).all()
    # steps are 0-based positions after ordering by the time column, one row per step of every sequence
    raw = pd.read_csv(test, dtype={"series_id": str})
    assert steps.groupby("series_id", sort=False)["step"].apply(list).to_dict() == {
        k: list(range(len(v))) for k, v in raw.groupby("series_id", sort=False)}
    # the numbers are what the model computes for the same input
    loaded = load_model(runs["long"], "cpu")
    again, _ = explain(loaded, test)
    first = str(again.ids[0])
    np.testing.assert_allclose(steps[steps["series_id"] == first]["importance"].to_numpy(), again.steps[0], rtol=1e-6)
    # predictions agree with gaa predict, id for id
    r = gaa("predict", runs["long"], test, "--format", "jsonl")
    predicted = {row["series_id"]: row["prediction"] for row in map(json.loads, r.stdout.splitlines())}
    assert dict(zip(preds["series_id"], preds["prediction"])) == predicted
    for png in ("importance_by_class.png", "examples.png"):
        assert (tmp_path / "ex" / png).read_bytes()[:8] == PNG
    # an earlier explanation is not overwritten without --force
    line = error_line(gaa("explain", runs["long"], test, "--out", tmp_path / "ex"), 2)
    assert "--force" in line


def test_explain_without_out_prints_a_summary_per_class(runs):
    r = gaa("explain", runs["long"], SAMPLES / "gestures_long_test.csv", "-q")
    assert r.code == 0, r.stderr
    for word in ("class", "where in time", "top channels", "acc_"):
        assert word in r.stdout
    assert any(ch in r.stdout for ch in "▁▂▃▄▅▆▇█")


def test_data_without_ids_gets_row_numbers_and_one_channel_has_no_channel_table(runs, tmp_path):
    r = gaa("explain", runs["wide"], runs["wide_data"], "--out", tmp_path / "ex", "-q")
    assert r.code == 0, r.stderr
    steps = pq.read_table(tmp_path / "ex" / "importance.parquet").to_pandas()
    assert list(steps.columns) == ["series_id", "step", "importance"]
    assert sorted(steps["series_id"].unique()) == list(range(30)) and len(steps) == 30 * 20
    assert not (tmp_path / "ex" / "channels.parquet").exists()


def test_without_matplotlib_the_tables_are_written_and_one_line_says_what_to_install(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    r = gaa("explain", runs["wide"], runs["wide_data"], "--out", tmp_path / "ex", "-q")
    assert r.code == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("gaa: note: ") and "matplotlib" in line]
    assert len(notes) == 1 and 'pip install "gaa[plot]"' in notes[0]
    assert (tmp_path / "ex" / "importance.parquet").exists() and not (tmp_path / "ex" / "examples.png").exists()
    r = gaa("evaluate", runs["wide"], runs["wide_data"], "--plot", tmp_path / "cm.png")
    assert r.code == 0 and "accuracy" in r.stdout and 'pip install "gaa[plot]"' in r.stderr


def test_training_draws_its_curves_and_evaluate_its_confusion_matrix(runs, tmp_path):
    assert (runs["wide"] / "curves.png").read_bytes()[:8] == PNG
    r = gaa("evaluate", runs["long"], SAMPLES / "gestures_long_test.csv", "--plot", tmp_path / "cm.png")
    assert r.code == 0, r.stderr
    assert (tmp_path / "cm.png").read_bytes()[:8] == PNG
    line = error_line(gaa("evaluate", runs["long"], SAMPLES / "gestures_long_test.csv", "--plot", tmp_path / "cm.png"), 2)
    assert "already exists" in line


def test_a_model_that_is_its_ridge_alone_has_nothing_to_explain(tmp_path):
    data = csv(tmp_path / "w.csv", wide_frame(n=40))
    assert gaa("train", data, *TINY, "--ridge-features", "200", "--time-limit", "0.001s", "--out", tmp_path / "run").code == 0
    line = error_line(gaa("explain", tmp_path / "run", data), 2)
    assert "ridge half alone" in line and "last.safetensors" in line


def test_info_describes_a_checkpoint(runs):
    r = gaa("info", runs["long"], "--json")
    assert r.code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["classes"] == ["ccw", "cw", "left", "right"] and d["schema"]["layout"] == "long"
    assert d["parameters"]["network"] > 0 and d["size_bytes"] > 0 and d["versions"]["gaa"]
    r = gaa("info", runs["long"])
    assert r.code == 0 and "classes" in r.stdout and "acc_x" in r.stdout


def test_long_frame_is_usable(tmp_path):  # the catalogue's long layout, explained through the CLI end to end
    data = csv(tmp_path / "l.csv", long_frame())
    assert gaa("train", data, *TINY, "--out", tmp_path / "run").code == 0
    r = gaa("explain", tmp_path / "run", data, "-q")
    assert r.code == 0 and "c1" in r.stdout
