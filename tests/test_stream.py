"""Reading in chunks: evaluate and predict read their input chunk by chunk, in bounded memory, and give what a
whole read gives. Chunk sizes here are tiny ($GAA_CHUNK_ROWS, or SequenceStream's chunk_rows) so that every
boundary case happens in a small file: a sequence split across chunks, an error in a later chunk, a folder
whose files share a chunk, rows skipped across chunks."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaa_cli.data import SequenceStream, load
from gaa_cli.data.load import concat
from gaa_cli.errors import DataError
from gaa_cli.inference import evaluate, load_model, predict
from gaa_cli.metrics import Scores, classification_report
from gaa_cli.runs import write_predictions

from .conftest import TINY, run_gaa
from .test_bad_inputs import csv, error_line, gaa, parquet, wide_frame


@contextlib.contextmanager
def chunk_rows(n: int | None):
    """$GAA_CHUNK_ROWS set to `n` (unset for None) inside the block."""
    old = os.environ.pop("GAA_CHUNK_ROWS", None)
    if n is not None:
        os.environ["GAA_CHUNK_ROWS"] = str(n)
    try:
        yield
    finally:
        os.environ.pop("GAA_CHUNK_ROWS", None)
        if old is not None:
            os.environ["GAA_CHUNK_ROWS"] = old


def streamed(path, rows: int, **kwargs):
    stream = SequenceStream(path, chunk_rows=rows, **kwargs)
    chunks = list(stream)
    return chunks, stream


def assert_same_data(a, b):
    np.testing.assert_array_equal(a.x, b.x)
    assert a.lengths.tolist() == b.lengths.tolist()
    assert (a.ids is None) == (b.ids is None) and (a.ids is None or a.ids.tolist() == b.ids.tolist())
    assert (a.labels is None) == (b.labels is None) and (a.labels is None or a.labels.tolist() == b.labels.tolist())
    assert a.missing == b.missing


def error_of(fn) -> str:
    with pytest.raises(DataError) as e:
        fn()
    return str(e.value)


def long_rows(lengths: list[int], seed: int = 0, shuffle_within: bool = False) -> pd.DataFrame:
    """Long layout, each id's rows together (in time order unless `shuffle_within`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(lengths):
        steps = rng.permutation(n) if shuffle_within else range(n)
        rows += [{"id": f"s{i:03d}", "time": int(t), "v": round(float(rng.normal()), 3), "w": float(t), "label": "ab"[i % 2]} for t in steps]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------
# chunks give what a whole read gives


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 1000])
def test_a_long_sequence_split_across_chunks_is_one_sequence(tmp_path, rows):
    df = long_rows([7, 2, 9, 3, 12, 2, 5], shuffle_within=True)
    for path in (csv(tmp_path / "l.csv", df), parquet(tmp_path / "l.parquet", df)):
        whole = load(path, layout="long")
        chunks, stream = streamed(path, rows, layout="long")
        assert_same_data(concat(chunks), whole)
        assert stream.notes == whole.notes
        assert sum(len(c.lengths) for c in chunks) == 7 and (len(chunks) > 1) == (rows < len(df))


def test_parquet_row_groups_and_folders_are_read_batch_by_batch(tmp_path):
    df = long_rows([4, 6, 3, 8, 5, 2, 7, 4])
    single = tmp_path / "rg.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), single, row_group_size=5)
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, part in enumerate(np.array_split(np.arange(len(df)), 4)):  # files cut through sequences: one dataset
        parquet(folder / f"p{k}.parquet", df.iloc[part])
    for path in (single, folder):
        whole = load(path, layout="long")
        for rows in (2, 5, 11):
            chunks, _ = streamed(path, rows, layout="long")
            assert_same_data(concat(chunks), whole)
    lists = pa.table({"id": [f"r{i}" for i in range(9)], "v": pa.array([[float(i)] * (2 + i % 3) for i in range(9)]), "label": list("ababababa")})
    pq.write_table(lists, single, row_group_size=2)
    chunks, _ = streamed(single, 4)
    assert [len(c.lengths) for c in chunks] == [4, 4, 1]
    assert_same_data(concat(chunks), load(single))


def test_csv_chunks_keep_the_csv_rules(tmp_path):
    """Text ids and labels as written, NA strings, a saved index column and trailing commas, chunk after chunk."""
    df = wide_frame(n=12, steps=4)
    df.insert(0, "id", [f"{i:04d}" for i in range(12)])
    df["label"] = ["NA", "01", "1"] * 4
    df.loc[7, "t01"] = np.nan
    path = tmp_path / "w.csv"
    df.to_csv(path)  # with the pandas index as a first, unnamed column
    path.write_text(path.read_text().replace("\n", ",\n"))  # and a trailing comma on every line
    whole = load(path, allow_missing=True)
    chunks, stream = streamed(path, 5, allow_missing=True)
    assert_same_data(concat(chunks), whole)
    assert stream.notes == whole.notes and any("saved row index" in n for n in whole.notes)
    assert whole.ids.tolist()[:3] == ["0000", "0001", "0002"] and whole.labels.tolist()[:3] == ["NA", "01", "1"]


def test_notes_count_over_every_chunk(tmp_path):
    seqs = [[1.0, 2.0]] * 10
    seqs[3], seqs[8] = None, []
    vals = [None if s is None else list(s) for s in seqs]
    vals[5] = [1.0, None]
    table = pa.table({"id": [f"r{i}" for i in range(9)] + ["r0"], "v": pa.array(vals, pa.list_(pa.float64())), "label": list("ab" * 5)})
    path = parquet(tmp_path / "holes.parquet", table)
    whole = load(path, skip_empty=True, allow_missing=True)
    _, stream = streamed(path, 3, skip_empty=True, allow_missing=True)
    assert stream.notes == whole.notes
    joined = " | ".join(whole.notes)
    assert "skipped 2 rows with no values at all (first: id 'r3')" in joined and "kept 1 missing value" in joined
    assert "repeats values" in joined  # r0 comes back in the last chunk


# ----------------------------------------------------------------------------
# errors in later chunks name the file's own rows


def test_errors_in_a_later_chunk_name_the_files_rows(tmp_path):
    df = long_rows([5] * 12)
    bad = df.astype({"v": object})
    bad.loc[47, "v"] = "abc"
    cases = [
        (bad, {}),
        (df.assign(v=df["v"].where(df.index != 51)), {}),  # a missing value
        (df.assign(label=df["label"].where(df.index != 38, "z")), {}),  # a label changing within a sequence
        (df.assign(time=df["time"].where(df.index != 44, 3)), {}),  # two rows for one (id, time)
    ]
    for k, (frame, kwargs) in enumerate(cases):
        path = csv(tmp_path / f"bad{k}.csv", frame)
        want = error_of(lambda: load(path, layout="long", **kwargs))
        for rows in (4, 10):
            assert error_of(lambda: streamed(path, rows, layout="long", **kwargs)) == want
    assert "row 48" in error_of(lambda: streamed(tmp_path / "bad0.csv", 10, layout="long"))


def test_errors_in_a_later_file_of_a_folder_name_that_file(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    parquet(folder / "a.parquet", pd.DataFrame({"x": [1.0, 2.0, 3.0], "label": list("aba")}))
    parquet(folder / "b.parquet", pd.DataFrame({"x": [4.0, np.nan], "label": list("ab")}))
    want = error_of(lambda: load(folder))
    assert "row 2 of b.parquet" in want
    for rows in (1, 2, 4):
        assert error_of(lambda: streamed(folder, rows)) == want


def test_a_long_file_not_grouped_by_id_is_refused_when_read_in_chunks(tmp_path):
    """The documented rule: a long file larger than one chunk must keep each id's rows together; one that fits
    in a chunk is read whole, as always (with a time column, in any row order)."""
    df = long_rows([4, 4, 4, 4])
    df = pd.concat([df.iloc[:2], df.iloc[4:], df.iloc[2:4]], ignore_index=True)  # s000's last two rows at the end
    path = csv(tmp_path / "l.csv", df)
    assert load(path, layout="long").lengths.tolist() == [4, 4, 4, 4]
    for rows in (3, 6, 15):
        message = error_of(lambda: streamed(path, rows, layout="long"))
        assert message == (f"{path}: the rows of id 's000' are not together (row 2, then again at row 15); a file larger than one "
                           "chunk is read chunk by chunk, so each sequence's rows must be together: sort the file by id")
    with chunk_rows(5):
        r = gaa("predict", MODELS["list"], path, "--layout", "long")
    assert "sort the file by id" in error_line(r, 2)  # (to stdout, the chunks before the error are written: see the README)


def test_chunk_size_from_the_environment_must_be_a_number(tmp_path):
    path = csv(tmp_path / "w.csv", wide_frame(n=6, steps=4))
    with chunk_rows(None):
        os.environ["GAA_CHUNK_ROWS"] = "lots"
        r = gaa("predict", MODELS["wide"], path)
    assert "$GAA_CHUNK_ROWS is 'lots'" in error_line(r, 2)


# ----------------------------------------------------------------------------
# predict and evaluate: the same output whatever the chunks

MODELS: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def models(tmp_path_factory):
    """A tiny model for one-channel list/long files (channel 'v') and one for 8-step wide files."""
    d = tmp_path_factory.mktemp("models")
    lists = pa.table({"id": [f"t{i}" for i in range(24)], "v": pa.array([np.random.default_rng(i).normal(size=4 + i % 5).round(3).tolist() for i in range(24)]),
                      "label": ["ab"[i % 2] for i in range(24)]})
    for kind, data in (("list", parquet(d / "train.parquet", lists)), ("wide", csv(d / "train.csv", wide_frame(n=24, steps=8)))):
        r = gaa("train", data, *TINY, "--ridge-features", "0", "--out", d / kind)
        assert r.code == 0, r.stderr
        MODELS[kind] = d / kind
    yield MODELS


def _write_case(tmp: Path, layout: str, lengths: list[int], seed: int) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(seed)
    ids = [f"{i:03d}" for i in range(len(lengths))]
    labels = ["ab"[k] for k in rng.integers(0, 2, len(lengths))]
    values = [rng.normal(size=n).round(3).tolist() for n in lengths]
    if layout == "wide-csv":
        df = pd.DataFrame(np.array([np.resize(v, 8) for v in values]), columns=[f"t{j:02d}" for j in range(8)])
        df.insert(0, "id", ids)
        df["label"] = labels
        return csv(tmp / "w.csv", df), []
    if layout == "list-parquet":
        return parquet(tmp / "l.parquet", pa.table({"id": ids, "v": pa.array(values), "label": labels})), []
    rows = pd.DataFrame([{"id": i, "time": t, "v": v, "label": lab} for i, vals, lab in zip(ids, values, labels) for t, v in enumerate(vals)])
    if layout == "long-csv":
        return csv(tmp / "l.csv", rows), ["--layout", "long"]
    return parquet(tmp / "l.parquet", rows), ["--layout", "long"]


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Row for row: ids, order and labels exactly; probabilities to float32 rounding (a batch's kernels sum in an
    order that depends on where a sequence sits in its batch, so the last bit may differ)."""
    assert list(a.columns) == list(b.columns)
    assert a.iloc[:, 0].tolist() == b.iloc[:, 0].tolist()
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs].to_numpy(np.float64), b[probs].to_numpy(np.float64), rtol=1e-5, atol=1e-6)
    margin = np.sort(a[probs].to_numpy(np.float64), axis=1)
    clear = (margin[:, -1] - margin[:, -2]) > 1e-5 if len(probs) > 1 else np.ones(len(a), bool)
    assert (a["prediction"][clear] == b["prediction"][clear]).all()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(layout=st.sampled_from(["wide-csv", "long-csv", "long-parquet", "list-parquet"]),
       lengths=st.lists(st.integers(2, 9), min_size=1, max_size=12), rows=st.integers(1, 12), seed=st.integers(0, 999))
def test_predict_and_evaluate_in_chunks_equal_the_whole_file(tmp_path_factory, layout, lengths, rows, seed):
    tmp = tmp_path_factory.mktemp("case")
    path, extra = _write_case(tmp, layout, lengths, seed)
    loaded = load_model(MODELS["wide" if layout == "wide-csv" else "list"], "cpu")
    from gaa_cli.data import ReadOptions

    opts = ReadOptions(layout="long" if extra else "auto")
    with chunk_rows(None):
        whole, whole_notes = predict(loaded, path, opts)
        report, report_notes = evaluate(loaded, path, opts)
    with chunk_rows(rows):
        chunked, notes = predict(loaded, path, opts)
        report2, notes2 = evaluate(loaded, path, opts)
    _frames_equal(chunked, whole)
    assert notes == whole_notes and notes2 == report_notes
    assert report2.pop("log_loss") == pytest.approx(report.pop("log_loss"), rel=1e-5)
    if report != report2:  # only a prediction on a knife's edge may flip between float32 roundings
        assert report["n_samples"] == report2["n_samples"] and abs(report["accuracy"] - report2["accuracy"]) <= 1 / report["n_samples"]


def test_rows_skipped_across_chunks_keep_their_place(tmp_path):
    seqs = [np.random.default_rng(i).normal(size=5).round(3).tolist() for i in range(11)]
    for k in (0, 4, 5, 10):
        seqs[k] = None if k % 2 else []
    table = pa.table({"id": [f"r{i:02d}" for i in range(11)], "v": pa.array(seqs, pa.list_(pa.float64())), "label": ["ab"[i % 2] for i in range(11)]})
    path = parquet(tmp_path / "holes.parquet", table)
    outputs = {}
    for rows in (None, 1, 3, 4):
        with chunk_rows(rows):
            r = gaa("predict", MODELS["list"], path, "--skip-empty-rows", "--format", "jsonl")
        assert r.code == 0, r.stderr
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        assert [row["id"] for row in lines] == [f"r{i:02d}" for i in range(11)]
        assert [row["prediction"] is None for row in lines] == [i in (0, 4, 5, 10) for i in range(11)]
        outputs[rows] = (lines, [n for n in r.stderr.splitlines() if "skipped" in n])
    for rows in (1, 3, 4):
        assert outputs[rows][1] == outputs[None][1] == [f"gaa: note: {path}: skipped 4 rows with no values at all (first: id 'r00') because of --skip-empty-rows"]


def test_row_numbers_of_a_file_without_ids_continue_across_chunks(tmp_path):
    df = wide_frame(n=10, steps=8, seed=3)
    path = csv(tmp_path / "no_id.csv", df)
    with chunk_rows(3):
        r = gaa("predict", MODELS["wide"], path)
    assert r.code == 0, r.stderr
    out = pd.read_csv(io.StringIO(r.stdout), dtype=str)
    assert out["series_id"].tolist() == [str(i) for i in range(10)]


def test_written_chunks_equal_one_frame_in_every_format(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "prediction": ["x", None, "y", "x"],
                          "prob_x": np.array([0.9, np.nan, 0.2, 0.6], np.float32), "prob_y": np.array([0.1, np.nan, 0.8, 0.4], np.float32)})
    chunks = [frame.iloc[:1], frame.iloc[1:2], frame.iloc[2:]]  # the second chunk holds only a skipped row
    for fmt in ("csv", "jsonl"):
        one, many = io.StringIO(), io.StringIO()
        write_predictions(frame, fmt, None, one)
        write_predictions(iter(chunks), fmt, None, many)
        assert one.getvalue() == many.getvalue()
    write_predictions(frame, "parquet", tmp_path / "one.parquet", io.StringIO())
    write_predictions(iter([c.reset_index(drop=True) for c in chunks]), "parquet", tmp_path / "many.parquet", io.StringIO())
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "many.parquet"))


def test_scores_summed_over_chunks_equal_the_report_of_all(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=50).astype(np.float32)
    y = rng.integers(-1, 3, 50)
    whole = classification_report(y, probs, ["a", "b", "c"])
    scores = Scores(3)
    for part in np.array_split(np.arange(50), 7):
        scores.add(y[part], probs[part])
    chunked = scores.report(["a", "b", "c"])
    assert chunked.pop("log_loss") == pytest.approx(whole.pop("log_loss"), rel=1e-12)
    assert chunked == whole


@pytest.mark.subprocess
def test_the_cli_streams_a_long_csv_to_parquet_and_a_failing_chunk_leaves_no_file(tmp_path):
    df = long_rows([6, 3, 8, 2, 5, 7, 4, 3])
    path = csv(tmp_path / "l.csv", df)
    out = tmp_path / "p.parquet"
    whole = run_gaa("predict", MODELS["list"], path, "--layout", "long", "--format", "parquet", "--output", out)
    assert whole.returncode == 0, whole.stderr
    expected = pd.read_parquet(out)
    chunked = run_gaa("predict", MODELS["list"], path, "--layout", "long", "--format", "parquet", "--output", out, "--force",
                      env={"GAA_CHUNK_ROWS": "4"})
    assert chunked.returncode == 0, chunked.stderr
    _frames_equal(pd.read_parquet(out), expected)
    assert pd.read_parquet(out)["id"].tolist() == [f"s{i:03d}" for i in range(8)]
    bad = df.astype({"v": object})
    bad.loc[len(df) - 2, "v"] = "oops"  # in the last chunk
    csv(path, bad)
    r = run_gaa("predict", MODELS["list"], path, "--layout", "long", "--format", "parquet", "--output", tmp_path / "new.parquet",
                env={"GAA_CHUNK_ROWS": "4"})
    assert r.returncode == 2 and f"row {len(df) - 1} (id 's007') has 'oops'" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "new.parquet").exists() and not list(tmp_path.glob(".new.parquet.*"))
