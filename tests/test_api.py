"""The Python API (gaa_cli/api.py): Model.predict on tables in memory gives what `gaa predict` writes for the
same rows, errors are the CLI's, GaaClassifier behaves as a scikit-learn estimator, and the Dask example scores a
folder exactly as `gaa predict` does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gaa_cli import GaaClassifier, Model
from gaa_cli.errors import DataError, GaaError, UsageError

from .conftest import ROOT, TINY
from .test_bad_inputs import csv, error_line, gaa, parquet, wide_frame
from .test_stream import _frames_equal

TINY_PARAMS = dict(epochs=1, width=8, stem_layers=1, batch_size=8, ridge_features=0, device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny models: on the bundled gestures (list layout, 3 channels) and on a wide CSV."""
    d = tmp_path_factory.mktemp("api")
    out = {}
    for kind, data in (("list", ROOT / "sample_data" / "gestures_train.parquet"), ("wide", csv(d / "w.csv", wide_frame(n=24, steps=8)))):
        r = gaa("train", data, *TINY, "--ridge-features", "0", "--out", d / kind)
        assert r.code == 0, r.stderr
        out[kind] = d / kind
    return out


def cli_predictions(run, data, *extra) -> pd.DataFrame:
    r = gaa("predict", run, data, "--format", "jsonl", *extra)
    assert r.code == 0, r.stderr
    return pd.DataFrame([json.loads(line) for line in r.stdout.splitlines()])


def test_model_predict_on_tables_in_every_layout_equals_gaa_predict(runs, tmp_path):
    model = Model.load(runs["list"])
    test = ROOT / "sample_data" / "gestures_test.parquet"
    want = cli_predictions(runs["list"], test)
    _frames_equal(model.predict(pq.read_table(test)), want)
    _frames_equal(model.predict(pd.read_parquet(test)), want)
    long_csv = ROOT / "sample_data" / "gestures_long_test.csv"
    got = model.predict(pacsv.read_csv(long_csv), layout="long")
    _frames_equal(got, cli_predictions(runs["list"], long_csv, "--layout", "long"))
    assert any("'t' to order the steps" in n for n in model.notes)  # the notes gaa predict prints
    wide = wide_frame(n=7, steps=8, seed=5)
    got = Model.load(runs["wide"]).predict(wide)
    _frames_equal(got, cli_predictions(runs["wide"], csv(tmp_path / "t.csv", wide)))
    assert got["series_id"].tolist() == list(range(7))  # no id column: the row's position
    assert list(model.empty_predictions(pq.read_table(test).column_names).dtypes) == list(model.predict(pq.read_table(test)).dtypes)


def test_model_errors_are_the_clis_errors(runs, tmp_path):
    model = Model.load(runs["list"])
    frame = pd.read_parquet(ROOT / "sample_data" / "gestures_test.parquet").drop(columns=["acc_y"])
    with pytest.raises(DataError) as e:
        model.predict(frame, name="batch 7")
    line = error_line(gaa("predict", runs["list"], parquet(tmp_path / "t.parquet", frame)), 2)
    assert line == f"gaa: error: {e.value.message.replace('batch 7', str(tmp_path / 't.parquet'))}"
    with pytest.raises(UsageError, match="expected a pandas DataFrame or a pyarrow Table, found dict"):
        model.predict({"acc_x": [[1.0]]})
    with pytest.raises(GaaError):
        Model.load(tmp_path / "nowhere")


def test_model_evaluate_equals_gaa_evaluate(runs):
    test = ROOT / "sample_data" / "gestures_test.parquet"
    r = gaa("evaluate", runs["list"], test, "--json")
    want = json.loads(r.stdout)
    got = Model.load(runs["list"]).evaluate(pq.read_table(test))
    for key in ("n_samples", "labels", "confusion_matrix", "per_class"):
        assert got[key] == want[key]
    assert got["log_loss"] == pytest.approx(want["log_loss"], rel=1e-5)


def test_the_classifier_is_a_scikit_learn_estimator():
    pytest.importorskip("sklearn")
    from sklearn.base import clone, is_classifier

    est = GaaClassifier(width=16, lr=1e-3, layout="wide")
    assert is_classifier(est)
    params = est.get_params()
    assert params["width"] == 16 and params["lr"] == 1e-3 and params["epochs"] is None and params["gaa_axes"] == "time"
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    assert twin.set_params(epochs=3).epochs == 3
    with pytest.raises(TypeError, match="unknown parameters widht"):
        GaaClassifier(widht=3)
    with pytest.raises(UsageError, match="'width' = 0: must be an integer"):
        GaaClassifier(width=0).fit(np.zeros((4, 4)), ["a", "b"] * 2)


def test_fit_predict_score_on_arrays_and_frames():
    pytest.importorskip("sklearn")
    df = wide_frame(n=30, steps=8)
    X, y = df.drop(columns=["label"]).to_numpy(), df["label"].to_numpy()
    est = GaaClassifier(**TINY_PARAMS).fit(X, y)
    assert est.classes_.tolist() == ["a", "b", "c"]
    proba = est.predict_proba(X)
    assert proba.shape == (30, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert est.predict(X).tolist() == est.classes_[proba.argmax(1)].tolist()
    assert 0 <= est.score(X, y) <= 1
    framed = GaaClassifier(**TINY_PARAMS).fit(df)  # the label column of the frame
    assert framed.score(df) == framed.score(df.drop(columns=["label"]), df["label"])


def test_cross_val_score_and_a_pipeline():
    pytest.importorskip("sklearn")
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    df = wide_frame(n=30, steps=8, seed=1)
    X, y = df.drop(columns=["label"]), df["label"]
    scores = cross_val_score(GaaClassifier(**TINY_PARAMS), X, y, cv=2)
    assert scores.shape == (2,) and ((0 <= scores) & (scores <= 1)).all()
    pipe = make_pipeline(FunctionTransformer(lambda frame: frame * 10.0), GaaClassifier(**TINY_PARAMS))
    pipe.fit(X, y)
    assert pipe.predict(X).shape == (30,) and 0 <= pipe.score(X, y) <= 1


@pytest.mark.subprocess
def test_without_scikit_learn_the_classifier_names_the_extra_and_the_rest_works():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import gaa_cli\n"
            "assert gaa_cli.Model.load\n"
            "try:\n    gaa_cli.GaaClassifier\nexcept ImportError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'GaaClassifier needs scikit-learn, which is not installed: pip install "gaa[sklearn]"'


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside dask, with pandas 3
def test_dask_scores_a_folder_as_gaa_predict_does(runs, tmp_path):
    pytest.importorskip("dask.dataframe")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from dask_predict import score_folder
    finally:
        sys.path.remove(str(ROOT / "examples"))
    table = pq.read_table(ROOT / "sample_data" / "gestures_test.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, at in enumerate(range(0, table.num_rows, 30)):
        pq.write_table(table.slice(at, 30), folder / f"part-{k:03d}.parquet", row_group_size=8)
    got = score_folder(runs["list"], str(folder), scheduler="threads")
    want = cli_predictions(runs["list"], folder)
    _frames_equal(got, want)
    assert len(got) == table.num_rows
