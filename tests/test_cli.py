"""End to end through the real CLI: train, evaluate and predict on every sample dataset and layout."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gaa_cli import __version__
from gaa_cli.cli import app
from gaa_cli.data import read_table
from gaa_cli.inference import load_model

from .conftest import SAMPLES, TINY, run_gaa

runner = CliRunner()

# (train file, test file, id column or None)
DATASETS = {
    "gestures-list": ("gestures_train.parquet", "gestures_test.parquet", "series_id"),
    "gestures-long": ("gestures_long_train.csv", "gestures_long_test.csv", "series_id"),
    "sensor-wide": ("sensor_wide_train.csv", "sensor_wide_test.csv", None),
}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def trained(request, tmp_path_factory):
    """Train a tiny model once per dataset, through a real subprocess."""
    train_file, test_file, id_col = DATASETS[request.param]
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    r = run_gaa("train", SAMPLES / train_file, "--out", run_dir, *TINY, "--ridge-features", "100")
    assert r.returncode == 0, r.stderr
    return {"name": request.param, "run": run_dir, "test": SAMPLES / test_file, "id": id_col, "train_out": r}


pytestmark = pytest.mark.subprocess


def test_train_writes_a_complete_run(trained):
    run = trained["run"]
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "config.toml"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, len(lines) + 1))
    assert all(np.isfinite(m["train_loss"]) for m in lines)
    assert "best checkpoint" in trained["train_out"].stdout
    assert "layout" in trained["train_out"].stderr  # auto-detection says what it picked


def test_evaluate_json_counts_every_sample(trained):
    r = run_gaa("evaluate", trained["run"], trained["test"], "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "n_samples", "per_class", "confusion_matrix"):
        assert key in report
    labels = read_table(trained["test"])["label"]
    n = labels.size if trained["id"] is None else pd.Series(read_table(trained["test"])[trained["id"]]).nunique()
    assert report["n_samples"] == n
    assert sum(map(sum, report["confusion_matrix"])) == n
    assert {row["label"] for row in report["per_class"]} == set(labels.unique())


@pytest.mark.slow
@pytest.mark.parametrize("train_file, test_file, floor", [
    ("gestures_train.parquet", "gestures_test.parquet", 0.85),  # 3 channels, the network alone
    ("sensor_wide_train.csv", "sensor_wide_test.csv", 0.85),  # univariate: the network and the ridge
])
def test_default_recipe_reaches_accuracy(tmp_path, train_file, test_file, floor):
    """The one test about accuracy: the default recipe, as a user runs it."""
    r = run_gaa("train", SAMPLES / train_file, "--out", tmp_path / "run", "-q")
    assert r.returncode == 0, r.stderr
    r = run_gaa("evaluate", tmp_path / "run", SAMPLES / test_file, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] >= floor


def test_predict_rows_columns_and_reload(trained):
    r = run_gaa("predict", trained["run"], trained["test"])
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(io.StringIO(r.stdout))
    table = read_table(trained["test"])
    classes = sorted(table["label"].unique())
    expected_cols = [trained["id"] or "series_id"] + ["prediction"] + [f"prob_{c}" for c in classes]  # series_id: the row number
    assert list(pred.columns) == expected_cols
    probs = pred[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (pred["prediction"].to_numpy() == np.array(classes)[probs.argmax(1)]).all()
    if trained["id"]:  # one row per sequence, in order of first appearance in the file
        assert pred[trained["id"]].tolist() == list(dict.fromkeys(table[trained["id"]].tolist()))
        truth = table.drop_duplicates(trained["id"])["label"].to_numpy()
    else:
        assert len(pred) == len(table)
        truth = table["label"].to_numpy()
    acc = float((pred["prediction"].to_numpy() == truth).mean())
    report = json.loads(run_gaa("evaluate", trained["run"], trained["test"], "--json").stdout)
    assert acc == pytest.approx(report["accuracy"])
    # the checkpoint file itself (not the run dir), loaded again: identical output
    again = run_gaa("predict", trained["run"] / "best.safetensors", trained["test"])
    assert again.stdout == r.stdout


def test_evaluate_tables_and_predict_formats_in_process(trained, tmp_path):
    r = runner.invoke(app, ["evaluate", str(trained["run"]), str(trained["test"])])
    assert r.exit_code == 0, r.output
    for word in ("accuracy", "balanced accuracy", "macro f1", "log loss", "per class", "confusion matrix"):
        assert word in r.stdout
    r = runner.invoke(app, ["predict", str(trained["run"]), str(trained["test"]), "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    out = tmp_path / "p.parquet"
    r = runner.invoke(app, ["predict", str(trained["run"]), str(trained["test"]), "--format", "parquet", "--output", str(out)])
    assert r.exit_code == 0, r.output
    frame = pd.read_parquet(out)
    assert frame["prediction"].tolist() == [row["prediction"] for row in rows]
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind
    # an existing output is never overwritten without --force
    r = runner.invoke(app, ["predict", str(trained["run"]), str(trained["test"]), "--format", "parquet", "--output", str(out)])
    assert r.exit_code == 2 and "--force" in r.output


def test_features_override_reads_renamed_columns(trained, tmp_path):
    """evaluate and predict take --features: other column names, in the training order."""
    features = load_model(trained["run"], "cpu").schema.features
    new_names = [f"renamed_{i}" for i in range(len(features))]
    renamed = tmp_path / f"renamed{''.join(trained['test'].suffixes)}"
    table = read_table(trained["test"]).rename(columns=dict(zip(features, new_names)))
    table.to_parquet(renamed) if renamed.suffix == ".parquet" else table.to_csv(renamed, index=False)
    want = run_gaa("predict", trained["run"], trained["test"]).stdout
    r = run_gaa("predict", trained["run"], renamed, "--features", ",".join(new_names))
    assert r.returncode == 0, r.stderr
    assert r.stdout == want
    r = runner.invoke(app, ["evaluate", str(trained["run"]), str(renamed), "--features", ",".join(new_names[:-1]), "--json"])
    assert r.exit_code == 2 and f"names {len(features) - 1} column(s) but the model was trained on {len(features)}" in r.output
    r = runner.invoke(app, ["evaluate", str(trained["run"]), str(renamed)])
    assert r.exit_code == 2 and "--features" in r.output  # the hint names an option evaluate has


def test_version_and_module_entry_agree():
    r = run_gaa("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gaa {__version__}"
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"gaa {__version__}"


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help_has_examples(command):
    r = runner.invoke(app, [command, "--help"])
    assert r.exit_code == 0
    assert "Examples" in r.stdout and f"gaa {command}" in r.stdout


def test_help_keeps_square_brackets():
    # Rich markup would swallow "[model]" and "[default: ...]" from the help texts
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "[model] and [train] tables" in r.stdout and "[default: from the data's size]" in r.stdout


def test_help_does_not_load_torch():
    # `gaa --help` should answer at once: torch, pandas and pyarrow load inside the commands
    code = "import sys, gaa_cli.cli; print(sorted(m for m in ('torch', 'pandas', 'pyarrow') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    r = run_gaa("--help")
    assert r.returncode == 0 and "train" in r.stdout and "evaluate" in r.stdout and "predict" in r.stdout


def test_config_file_and_cli_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\ngaa_heads = 2\nwidth = 16\nridge_features = 100\n[train]\nepochs = 3\nbatch_size = 16\n")
    run = tmp_path / "run"
    r = run_gaa("train", SAMPLES / "sensor_wide_train.csv", "--config", cfg, "--epochs", "2", "--out", run, "-q")
    assert r.returncode == 0, r.stderr
    saved = (run / "config.toml").read_text()
    assert "gaa_heads = 2" in saved and "width = 16" in saved and "epochs = 2" in saved  # the CLI wins over the file
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # the saved, resolved config is itself a valid --config
    r = run_gaa("train", SAMPLES / "sensor_wide_train.csv", "--config", run / "config.toml", "--out", tmp_path / "run2", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run2" / "config.toml").read_text() == saved
    # a non-empty run directory is refused without --force, and accepted with it
    r = run_gaa("train", SAMPLES / "sensor_wide_train.csv", *TINY, "--out", run)
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_gaa("train", SAMPLES / "sensor_wide_train.csv", *TINY, "--ridge-features", "0", "--out", run, "--force")
    assert r.returncode == 0, r.stderr
