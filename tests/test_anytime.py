"""Anytime training: the ridge half is a model at once, a time limit plans the schedule, and the two halves are
weighed by held-out evidence."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from gaa_cli import checkpoint as ckpt_io
from gaa_cli.config import ModelConfig, TrainConfig, parse_duration, validate
from gaa_cli.data import load
from gaa_cli.errors import UsageError
from gaa_cli.inference import load_model
from gaa_cli.tensors import predict_proba, to_tensors
from gaa_cli.train import BLENDS, choose_blend, fit

from .conftest import TINY
from .test_bad_inputs import csv, gaa, wide_frame


def test_choose_blend_is_the_lowest_held_out_log_loss_on_the_grid():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    net = rng.dirichlet(np.ones(3), 40)
    ridge = np.eye(3)[y] * 0.7 + 0.1  # a good ridge: most of the weight goes to it
    w, scores = choose_blend(net, ridge, y)

    def loss(v: float) -> float:
        p = v * net + (1 - v) * ridge
        return float(-np.log(p[np.arange(40), y]).mean())

    assert w == min(BLENDS, key=loss) and w <= 0.2  # far better: the lowest loss, well beyond its standard error
    assert scores["val_loss"] == pytest.approx(loss(w))
    assert choose_blend(np.eye(3)[y] * 0.7 + 0.1, net, y)[0] >= 0.8  # and the other way round


def test_on_a_handful_of_held_out_samples_the_weight_stays_even():
    """The network alone has the lowest loss on these five samples, but one sample decides it: not evidence."""
    y = np.zeros(5, dtype=int)
    net = np.array([[0.8, 0.2]] * 4 + [[0.3, 0.7]])
    ridge = np.array([[0.6, 0.4]] * 5)
    lowest = min(BLENDS, key=lambda w: -np.log((w * net + (1 - w) * ridge)[:, 0]).mean())
    assert lowest == 1.0 and choose_blend(net, ridge, y)[0] == 0.5


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1.5h", 5400), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10x", "-5s", "0", "nan", "1e400s"])
def test_bad_time_limits_are_refused_by_name(bad):
    with pytest.raises(UsageError, match="--time-limit"):
        validate(ModelConfig(), TrainConfig(time_limit=bad))


def _run(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def _data(tmp_path):
    return load(csv(tmp_path / "train.csv", wide_frame(n=60, steps=24)))


def test_the_ridge_alone_is_saved_before_the_network_trains(tmp_path):
    """A budget spent before the network can start leaves the ridge half, complete and loadable, as the model."""
    lines: list[str] = []
    result = fit(_data(tmp_path), None, ModelConfig(width=8, ridge_features=500), TrainConfig(time_limit="0.001s"), _run(tmp_path),
                 console=Console(file=io.StringIO()), show_progress=False, notes=lines.extend)
    assert result.best_epoch == 0 and result.epochs_run == 0 and result.plan["epochs"] == 0
    assert any("saved the ridge half as the run's first model" in n for n in lines)
    assert any("the ridge half alone is the model" in n for n in lines)
    loaded = load_model(tmp_path / "run", "cpu")
    assert float(loaded.model.blend) == 0.0 and loaded.meta["epoch"] == 0
    t = to_tensors(_data(tmp_path), loaded.meta["normalization"], loaded.meta["classes"])
    np.testing.assert_array_equal(predict_proba(loaded.model, t, loaded.device), predict_proba(loaded.model, t, loaded.device, part="ridge"))
    assert "the ridge half alone" in loaded.notes[0]


def test_the_validated_blend_replaces_the_ridge_first_model(tmp_path):
    result = fit(_data(tmp_path), None, ModelConfig(width=8, ridge_features=500), TrainConfig(epochs=4, batch_size=8), _run(tmp_path),
                 console=Console(file=io.StringIO()), show_progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validated = [m for m in history if "val_acc" in m]
    assert validated == history[-1:]  # a small set: only the last epoch is weighed against the ridge
    final = validated[0]
    assert {"blend", "val_acc_network", "val_acc_ridge"} <= set(final)
    assert "val_acc" in ckpt_io.peek_meta(tmp_path / "run" / "last.safetensors")["ridge_first"]  # reported all the same
    assert result.best_epoch == 4  # the blend chosen on held-out predictions, whatever the ridge alone scored
    best = load_model(tmp_path / "run", "cpu")
    assert float(best.model.blend) == final["blend"] and best.meta["epoch"] == 4


def test_a_time_limit_plans_the_schedule_and_says_so(tmp_path):
    lines: list[str] = []
    result = fit(_data(tmp_path), None, ModelConfig(width=8, ridge_features=0), TrainConfig(time_limit="10m", epochs=7), _run(tmp_path),
                 console=Console(file=io.StringIO()), show_progress=False, notes=lines.extend)
    plan = result.plan
    assert plan["epochs"] == 7 == result.epochs_run  # ten minutes hold the whole (short) schedule
    assert plan["step_s"] > 0 and plan["limit_s"] == 600
    assert any(n.startswith("plan: 7 epochs of") and "10m time limit" in n for n in lines)
    assert load_model(tmp_path / "run", "cpu").meta["train_config"]["time_limit"] == "10m"


def test_time_limit_on_the_command_line(tmp_path):
    r = gaa("train", csv(tmp_path / "w.csv", wide_frame()), *TINY, "--time-limit", "0.001s", "--out", tmp_path / "run")
    assert r.code == 0, r.stderr
    assert "time limit" in r.stdout and "the ridge half alone" in r.stdout
    assert gaa("evaluate", tmp_path / "run", tmp_path / "w.csv").code == 0


def test_without_held_out_data_the_halves_are_averaged_and_that_is_said(tmp_path):
    lines: list[str] = []
    fit(_data(tmp_path), None, ModelConfig(width=8, ridge_features=500), TrainConfig(epochs=1, val_split=0.0), _run(tmp_path),
        console=Console(file=io.StringIO()), show_progress=False, notes=lines.extend)
    assert any("averaged 50/50" in n and "--val-split" in n for n in lines)
    assert float(load_model(tmp_path / "run", "cpu").model.blend) == 0.5
    assert torch.equal(torch.tensor(0.5), ckpt_io.load(tmp_path / "run" / "best.safetensors").model["blend"])
