"""Reading data files: every layout against a plain loop oracle, schemas, samples, and every user error.

All inputs are real files written into tmp_path (CSV text, or Parquet via pyarrow).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaa_cli.data import Schema, SequenceData, load, read_table
from gaa_cli.errors import DataError, GaaError, UsageError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"

# ----------------------------------------------------------------------------
# helpers


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def fails(path, *words, kind=DataError, **kwargs) -> str:
    """Load must raise `kind` with a one-line message containing every word."""
    with pytest.raises(kind) as info:
        load(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"
    return msg


def note(data: SequenceData, *words) -> str:
    hits = [n for n in data.notes if all(w in n for w in words)]
    assert hits, f"no note with {words}: {data.notes}"
    return hits[0]


def long_oracle(df: pd.DataFrame, id_col, time_col, channels, label):
    """Sequences from a long table, the obvious way: one id at a time."""
    seqs, labels, ids = [], [], []
    for i in dict.fromkeys(df[id_col].tolist()):  # first appearance
        rows = df[df[id_col] == i]
        if time_col is not None:
            rows = rows.sort_values(time_col, kind="stable")
        seqs.append(rows[channels].to_numpy(np.float32))
        labels.append(rows[label].iloc[0])
        ids.append(i)
    return seqs, labels, ids


def assert_padded(data: SequenceData, seqs: list[np.ndarray]):
    """x holds each sequence left-aligned and zeros after its length."""
    assert data.x.dtype == np.float32 and data.lengths.dtype == np.int64
    assert data.x.shape == (len(seqs), max(len(s) for s in seqs), seqs[0].shape[1])
    assert data.lengths.tolist() == [len(s) for s in seqs]
    for k, s in enumerate(seqs):
        np.testing.assert_array_equal(data.x[k, : len(s)], s)
        assert not data.x[k, len(s) :].any()


# ----------------------------------------------------------------------------
# layouts


def test_wide_csv_numeric_headers_in_column_order(tmp_path):
    f = write(tmp_path / "w.csv", "2,0,1,label\n1.5,2,3,a\n4,5,6,b\n7,8,9.25,a\n")
    d = load(f)
    assert d.schema == Schema("wide", "label", None, None, ["2", "0", "1"])
    assert d.x.shape == (3, 3, 1)
    np.testing.assert_array_equal(d.x[:, :, 0], [[1.5, 2, 3], [4, 5, 6], [7, 8, 9.25]])
    assert d.lengths.tolist() == [3, 3, 3]
    assert d.labels.dtype == object and d.labels.tolist() == ["a", "b", "a"]
    assert d.ids is None and d.missing == 0
    note(d, "w.csv", "wide")


def test_wide_integer_labels_are_text_and_id_column_is_used(tmp_path):
    f = write(tmp_path / "w.csv", "id,x1,x2,label\nr1,1,2,0\nr2,3,4,1\nr3,5,6,1\n")
    d = load(f, min_classes=2)
    assert d.schema.id_col == "id" and d.schema.features == ["x1", "x2"]
    assert d.ids.tolist() == ["r1", "r2", "r3"]
    assert d.labels.tolist() == ["0", "1", "1"]  # labels are text, exactly as written
    note(d, "'id'", "--id-col")


def test_numeric_parquet_labels_and_ids_become_text_pyarrows_way(tmp_path):
    f = parquet(tmp_path / "w.parquet", {"id": [7, 8], "a": [1.0, 2.0], "b": [3, 4], "label": [1.0, 2.5]})
    d = load(f)
    assert d.labels.tolist() == ["1", "2.5"] and d.ids.tolist() == ["7", "8"]
    f = parquet(tmp_path / "b.parquet", {"a": [1.0, 2.0], "b": [3, 4], "label": [True, False]})
    assert load(f).labels.tolist() == ["true", "false"]


def test_long_matches_oracle_with_shuffled_rows_and_unequal_lengths(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(30):
        n = int(rng.integers(1, 12))
        for t in rng.permutation(n):
            rows.append({"series_id": f"s{k}", "time": float(t) * 0.5, "a": rng.normal(), "b": rng.normal(), "label": "xyz"[k % 3]})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)  # interleaved ids
    df.to_csv(tmp_path / "long.csv", index=False)
    d = load(tmp_path / "long.csv")
    seqs, labels, ids = long_oracle(df, "series_id", "time", ["a", "b"], "label")
    assert d.schema == Schema("long", "label", "series_id", "time", ["a", "b"])
    assert_padded(d, seqs)
    assert d.labels.tolist() == labels and d.ids.tolist() == ids
    note(d, "long", "'series_id' repeats")
    note(d, "'time'", "--time-col")


def test_long_integer_ids_and_iso_dates_as_time(tmp_path):
    f = write(
        tmp_path / "l.csv",
        "sample_id,when,v,label\n7,2024-01-03,3,p\n7,2024-01-01,1,p\n5,2024-01-02,20,q\n7,2024-01-02,2,p\n5,2024-01-01,10,q\n",
    )
    d = load(f, time_col="when")
    assert d.ids.tolist() == ["7", "5"]
    assert_padded(d, [np.array([[1], [2], [3]], np.float32), np.array([[10], [20]], np.float32)])
    assert d.labels.tolist() == ["p", "q"]


def test_long_without_time_column_uses_file_order_when_rows_are_together(tmp_path):
    f = write(tmp_path / "l.csv", "id,v,label\nb,3,x\nb,1,x\na,5,y\na,4,y\na,6,y\n")
    d = load(f)
    assert d.schema.time_col is None
    assert_padded(d, [np.array([[3], [1]], np.float32), np.array([[5], [4], [6]], np.float32)])
    note(d, "no time column", "file order", "--time-col")


def test_list_parquet_matches_oracle(tmp_path):
    rng = np.random.default_rng(1)
    lens = rng.integers(1, 9, size=12)
    a = [rng.normal(size=n).astype(np.float32) for n in lens]
    b = [rng.normal(size=n) for n in lens]
    f = parquet(
        tmp_path / "l.parquet",
        {
            "name": [f"n{i}" for i in range(12)],
            "a": pa.array([v.tolist() for v in a], pa.list_(pa.float32())),
            "b": pa.array([v.tolist() for v in b], pa.list_(pa.float64())),
            "label": ["u", "v"] * 6,
            "weight": np.arange(12.0),  # a plain numeric column: not a channel in list layout
        },
    )
    d = load(f, id_col="name")
    assert d.schema == Schema("list", "label", "name", None, ["a", "b"])
    assert_padded(d, [np.stack([x, y.astype(np.float32)], axis=1) for x, y in zip(a, b)])
    assert d.ids.tolist() == [f"n{i}" for i in range(12)] and d.labels.tolist() == ["u", "v"] * 6
    note(d, "list", "hold lists")
    note(d, "ignored 1 column", "'weight'")


def test_list_layout_without_id_column(tmp_path):
    f = parquet(tmp_path / "l.parquet", {"c": [[1.0, 2.0], [3.0]], "label": ["a", "b"]})
    d = load(f)
    assert d.ids is None and d.lengths.tolist() == [2, 1]


def test_auto_detection_names_are_case_insensitive(tmp_path):
    f = write(tmp_path / "l.csv", "Series_ID,TimeStamp,v,label\nq,2,1,a\nq,1,0,a\n")
    d = load(f)
    assert (d.schema.id_col, d.schema.time_col) == ("Series_ID", "TimeStamp")
    assert d.x[0, :, 0].tolist() == [0, 1]


def test_explicit_overrides(tmp_path):
    f = write(tmp_path / "l.csv", "k,ord,a,b,c,y\n1,1,1,2,3,u\n1,0,4,5,6,u\n2,0,7,8,9,w\n")
    d = load(f, layout="long", label="y", id_col="k", time_col="ord", features=["c", "a"])
    assert d.schema == Schema("long", "y", "k", "ord", ["c", "a"])
    np.testing.assert_array_equal(d.x[0], [[6, 4], [3, 1]])
    note(d, "ignored 1 column", "'b'", "--features")


def test_layout_can_be_forced_to_wide_despite_repeated_ids(tmp_path):
    f = write(tmp_path / "w.csv", "id,a,label\n1,1,x\n1,2,y\n")
    d = load(f, layout="wide")
    assert d.x.shape == (2, 1, 1) and d.ids.tolist() == ["1", "1"]
    note(d, "repeats values")


def test_non_numeric_columns_are_ignored_with_a_note_and_booleans_are_numbers(tmp_path):
    f = write(tmp_path / "w.csv", "subject,a,flag,label\nann,1,True,x\nbob,2,false,y\n")
    d = load(f)
    assert d.schema.features == ["a", "flag"]
    np.testing.assert_array_equal(d.x[:, :, 0], [[1, 1], [2, 0]])
    note(d, "ignored 1 column", "not numeric", "'subject'")


def test_saved_pandas_index_is_dropped_with_a_note(tmp_path):
    pd.DataFrame({"a": [1.0, 2.0], "label": ["x", "y"]}).to_csv(tmp_path / "w.csv")  # index=True
    d = load(tmp_path / "w.csv")
    assert d.schema.features == ["a"]
    note(d, "first column", "row index")


def test_na_like_strings_are_missing_numbers_but_valid_class_names(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,label\n1,NA,None\n2,3,NA\n4,?,x\n")
    d = load(f, allow_missing=True)
    assert d.labels.tolist() == ["None", "NA", "x"] and d.missing == 2
    assert read_table(f)["label"].tolist() == ["None", "NA", "x"]


def test_gzipped_csv(tmp_path):
    with gzip.open(tmp_path / "w.csv.gz", "wt") as f:
        f.write("a,b,label\n1,2,x\n3,4,y\n")
    assert load(tmp_path / "w.csv.gz").x.shape == (2, 2, 1)


def test_odd_column_names(tmp_path):
    f = write(tmp_path / "w.csv", '"é t 1",2024,"a,b",label\n1,2,3,x\n4,5,6,y\n')
    d = load(f)
    assert d.schema.features == ["é t 1", "2024", "a,b"]


def test_folder_of_parquet_files_in_name_order(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    parquet(folder / "b.parquet", {"a": [3.0], "label": ["y"]})
    parquet(folder / "a.parquet", {"a": [1.0, 2.0], "label": ["x", "x"]})
    (folder / "_SUCCESS").write_text("")
    assert read_table(folder)["a"].tolist() == [1.0, 2.0, 3.0]
    assert load(folder).x[:, 0, 0].tolist() == [1.0, 2.0, 3.0]
    # rows are named by file within a folder
    parquet(folder / "c.parquet", {"a": [float("nan")], "label": ["z"]})
    fails(folder, "row 1 of c.parquet", "'a'")


def test_read_table_keeps_list_columns(tmp_path):
    f = parquet(tmp_path / "l.parquet", {"c": [[1.0, 2.0], [3.0]], "label": ["a", "b"]})
    df = read_table(f)
    assert list(df.columns) == ["c", "label"] and list(df["c"][0]) == [1.0, 2.0]


def test_missing_values_allowed_stay_nan_and_are_counted(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,label\n1,,x\n,2,y\n3,4,x\n")
    d = load(f, allow_missing=True)
    assert d.missing == 2 and int(np.isnan(d.x).sum()) == 2
    note(d, "2 missing values", "--allow-missing")
    f = parquet(tmp_path / "l.parquet", {"c": [[1.0, None], [3.0]], "label": ["a", "b"]})
    d = load(f, allow_missing=True)
    assert d.missing == 1 and np.isnan(d.x[0, 1, 0]) and d.x[1, 1, 0] == 0


def test_shuffled_long_file_of_100k_rows_loads_every_value(tmp_path):
    """Speed is measured in benchmarks/; here only the result: every value lands at its (id, time) place."""
    n_ids, steps = 2000, 50
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "series_id": np.repeat(np.arange(n_ids), steps),
            "t": np.tile(np.arange(steps), n_ids),
            "a": rng.normal(size=n_ids * steps).round(3),
            "b": rng.normal(size=n_ids * steps).round(3),
            "label": np.repeat(rng.choice(["p", "q"], size=n_ids), steps),
        }
    )
    want = df[["a", "b"]].to_numpy(np.float32).reshape(n_ids, steps, 2)
    df.sample(frac=1.0, random_state=0).to_csv(tmp_path / "big.csv", index=False)
    d = load(tmp_path / "big.csv")
    assert d.x.shape == (n_ids, steps, 2)
    order = np.argsort([int(i) for i in d.ids])  # ids come back in order of first appearance
    np.testing.assert_array_equal(d.x[order], want)


# ----------------------------------------------------------------------------
# schema


def test_schema_round_trip():
    s = Schema("long", "label", "id", None, ["a", "b"])
    assert Schema.from_dict(s.to_dict()) == s
    assert s.to_dict() == {"layout": "long", "label": "label", "id_col": "id", "time_col": None, "features": ["a", "b"]}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"extra": 1, "more": 2}, ["unknown", "extra", "more"]),
        ({"layout": "tall"}, ["layout", "tall"]),
        ({"label": 3}, ["label"]),
        ({"features": "ab"}, ["features"]),
        ({"features": ["a", 1]}, ["features"]),
    ],
)
def test_schema_from_dict_rejects_bad_input(change, words):
    d = {**Schema("wide", "label", None, None, ["a"]).to_dict(), **change}
    with pytest.raises(ValueError) as info:
        Schema.from_dict(d)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_schema_from_dict_names_missing_keys():
    with pytest.raises(ValueError, match="features"):
        Schema.from_dict({"layout": "wide", "label": "y", "id_col": None, "time_col": None})


def test_reading_with_a_saved_schema(tmp_path):
    train = load(write(tmp_path / "train.csv", "id,t,a,b,label\n1,0,1,2,x\n1,1,3,4,x\n2,0,5,6,y\n"))
    test = write(tmp_path / "test.csv", "note,label,b,a,t,id\nhi,x,20,10,0,9\nhi,x,40,30,1,9\n")
    d = load(test, schema=train.schema)
    assert d.schema.features == ["a", "b"]  # the schema's order, not the file's
    np.testing.assert_array_equal(d.x[0], [[10, 20], [30, 40]])
    note(d, "ignored 1 column", "not in the model's schema", "'note'")
    # predict: no labels needed; a label column present is ignored silently
    p = load(test, schema=train.schema, need_labels=False)
    assert p.labels is None and p.ids.tolist() == ["9"]
    assert not any("'label'" in n for n in p.notes)
    nolabel = write(tmp_path / "nolabel.csv", "id,t,a,b\n9,0,1,2\n")
    assert load(nolabel, schema=train.schema, need_labels=False).x.shape == (1, 1, 2)
    fails(nolabel, "nolabel.csv", "'label'", "--label", schema=train.schema)


def test_saved_schema_missing_and_mistyped_columns(tmp_path):
    schema = Schema("long", "label", "id", "t", ["a", "b"])
    f = write(tmp_path / "renamed.csv", "id,t,A,B,label\n1,0,1,2,x\n")
    fails(f, "renamed.csv", "'a'", "'b'", "'A'", "rename", "--features", schema=schema)
    f = write(tmp_path / "typed.csv", "id,t,a,b,label\n1,0,1,2,x\n1,1,1,oops,x\n")
    fails(f, "typed.csv", "'b'", "row 2", "'oops'", schema=schema)


def test_saved_wide_schema_with_fewer_time_steps(tmp_path):
    schema = Schema("wide", "label", None, None, ["t0", "t1", "t2", "t3"])
    f = write(tmp_path / "short.csv", "t0,t1,label\n1,2,x\n")
    fails(f, "short.csv", "has 2 of the 4", "'t2'", schema=schema)


def test_keyword_overrides_replace_schema_fields(tmp_path):
    schema = Schema("wide", "label", None, None, ["a"])
    f = write(tmp_path / "w.csv", "a,b,y\n1,2,x\n")
    d = load(f, schema=schema, label="y", features=["b"])
    assert d.schema.label == "y" and d.x[0, 0, 0] == 2


# ----------------------------------------------------------------------------
# the bundled samples


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("gestures_long_train.csv", (220, 72, 3), {"left", "right", "cw", "ccw"}),
        ("gestures_train.parquet", (220, 72, 3), {"left", "right", "cw", "ccw"}),
        ("gestures_long_test.csv", (100, None, 3), {"left", "right", "cw", "ccw"}),
        ("gestures_test.parquet", (100, None, 3), {"left", "right", "cw", "ccw"}),
        ("sensor_wide_train.csv", (260, 100, 1), {"normal", "spike", "drift"}),
        ("sensor_wide_test.csv", (140, 100, 1), {"normal", "spike", "drift"}),
    ],
)
def test_samples_load(name, shape, classes):
    d = load(SAMPLES / name, min_classes=2)
    assert d.x.shape[0] == shape[0] and d.x.shape[2] == shape[2]
    if shape[1] is not None:
        assert d.x.shape[1] == shape[1]
    assert set(d.labels) == classes and all(isinstance(v, str) for v in d.labels)
    assert 32 <= d.lengths.min() and d.lengths.max() <= 100
    counts = pd.Series(d.labels).value_counts()
    assert counts.max() - counts.min() <= 1  # balanced
    assert (d.ids is None) == name.startswith("sensor")


def test_samples_long_and_list_hold_the_same_sequences():
    for split in ("train", "test"):
        a = load(SAMPLES / f"gestures_long_{split}.csv")
        b = load(SAMPLES / f"gestures_{split}.parquet")
        np.testing.assert_array_equal(a.x, b.x)
        assert a.lengths.tolist() == b.lengths.tolist()
        assert a.labels.tolist() == b.labels.tolist() and a.ids.tolist() == b.ids.tolist()


def test_samples_are_small():
    total = sum(p.stat().st_size for p in SAMPLES.iterdir() if p.suffix in (".csv", ".parquet"))
    assert total < 800 * 1024


# ----------------------------------------------------------------------------
# errors: files


def test_missing_file(tmp_path):
    fails(tmp_path / "nope.csv", "nope.csv", "no such file")


def test_folder_without_parquet_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("a\n1\n")
    fails(tmp_path / "d", "no .parquet files", ".csv")


def test_folder_named_like_a_file(tmp_path):
    (tmp_path / "data.csv").mkdir()
    fails(tmp_path / "data.csv", "data.csv", "is a folder")


def test_unsupported_extension(tmp_path):
    msg = fails(write(tmp_path / "x.tsv", "a\tb\n"), "x.tsv", "'.tsv'", ".csv", ".csv.gz", ".parquet")
    assert "folder" in msg


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz", "e.parquet"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    fails(tmp_path / name, name, "empty", "0 bytes")


def test_blank_csv(tmp_path):
    fails(write(tmp_path / "b.csv", "\n\n  \n"), "b.csv", "no data")


def test_header_only(tmp_path):
    fails(write(tmp_path / "h.csv", "a,b,label\n"), "h.csv", "no data rows")
    f = parquet(tmp_path / "h.parquet", {"a": pa.array([], pa.float64()), "label": pa.array([], pa.string())})
    fails(f, "h.parquet", "no rows")


def test_random_bytes_as_parquet(tmp_path):
    (tmp_path / "r.parquet").write_bytes(np.random.default_rng(0).bytes(500))
    fails(tmp_path / "r.parquet", "r.parquet", "not a readable Parquet file", "really Parquet")


def test_csv_text_named_parquet(tmp_path):
    fails(write(tmp_path / "c.parquet", "a,b\n1,2\n"), "c.parquet", "Parquet", "name it .csv")


def test_binary_junk_as_csv(tmp_path):
    (tmp_path / "j.csv").write_bytes(b"a,b\n\x00\x01\x02\xff" * 20)
    fails(tmp_path / "j.csv", "j.csv", "binary")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "p.csv")
    fails(tmp_path / "p.csv", "p.csv", "Parquet", "name it .parquet")


def test_csv_that_is_not_utf8(tmp_path):
    (tmp_path / "l1.csv").write_bytes("a,label\n1,café\n2,x\n".encode("latin-1"))
    fails(tmp_path / "l1.csv", "l1.csv", "UTF-8", "line 2")


def test_utf16_csv(tmp_path):
    (tmp_path / "u16.csv").write_bytes("a,label\n1,x\n".encode("utf-16"))
    fails(tmp_path / "u16.csv", "u16.csv", "UTF-16", "UTF-8")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "z.csv.gz").write_bytes(b"not gzip at all")
    fails(tmp_path / "z.csv.gz", "z.csv.gz", "gzip")
    whole = gzip.compress(("a,b,label\n" + "1.5,2.5,x\n3,4,y\n" * 20000).encode())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    fails(tmp_path / "cut.csv.gz", "cut.csv.gz", "complete")


def test_truncated_parquet(tmp_path):
    f = parquet(tmp_path / "t.parquet", {"a": np.arange(1000.0), "label": ["x", "y"] * 500})
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    fails(f, "t.parquet", "not a readable Parquet file", "complete")


def test_folder_whose_schemas_disagree(tmp_path):
    parquet(tmp_path / "1.parquet", {"a": [1.0], "label": ["x"]})
    parquet(tmp_path / "2.parquet", {"b": [1.0], "label": ["x"]})
    fails(tmp_path, "2.parquet", "1.parquet", "'a'", "'b'", "one schema")


def test_folder_whose_types_disagree(tmp_path):
    parquet(tmp_path / "1.parquet", {"a": [1.0], "label": ["x"]})
    parquet(tmp_path / "2.parquet", {"a": [1], "label": ["x"]})
    fails(tmp_path, "2.parquet", "'a'", "int64", "double")


def test_semicolon_separated(tmp_path):
    fails(write(tmp_path / "s.csv", "a;b;label\n1;2;x\n"), "s.csv", "';'", "comma")
    # decimal commas (a European spreadsheet export) make the rows look ragged to a comma parser
    fails(write(tmp_path / "e.csv", "a;b;label\n1,5;2,25;x\n"), "e.csv", "';' (decimal commas?)", "'.' as the decimal mark")


# ----------------------------------------------------------------------------
# errors: labels


def test_missing_label_column(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,Class\n1,2,x\n")
    fails(f, "w.csv", "'label'", "'a', 'b', 'Class'", "--label", "--label Class")


def test_label_column_all_empty(tmp_path):
    fails(write(tmp_path / "w.csv", "a,label\n1,\n2,\n"), "w.csv", "'label'", "every row")


def test_rows_with_empty_labels(tmp_path):
    f = write(tmp_path / "w.csv", "a,label\n1,x\n2,\n3,y\n4,  \n")
    fails(f, "w.csv", "'label'", "2 rows", "rows 2, 4")


def test_one_class_only(tmp_path):
    f = write(tmp_path / "w.csv", "a,label\n1,x\n2,x\n")
    assert load(f).labels.tolist() == ["x", "x"]  # fine for evaluation
    fails(f, "w.csv", "only 1 class", "'x'", "at least 2", min_classes=2)


def test_label_changes_within_a_sequence(tmp_path):
    f = write(tmp_path / "l.csv", "id,t,a,label\n1,0,1,x\n1,1,2,x\n2,0,1,y\n2,1,1,z\n")
    fails(f, "l.csv", "id '2'", "'y'", "'z'", "row 3", "row 4")


# ----------------------------------------------------------------------------
# errors: values


def test_non_numeric_value_in_a_feature_column(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,label\n1,2,x\n3,four point two,y\n5,6,x\n")
    fails(f, "w.csv", "'b'", "row 2", "'four point two'")


def test_long_value_is_truncated_in_the_message(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,label\n1,2,x\n3," + "z" * 500 + ",y\n")
    msg = fails(f, "w.csv", "'b'", "row 2")
    assert len(msg) < 300


def test_missing_values_without_allow_missing(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,label\n1,2,x\n3,,y\n5,,x\n7,8,y\n")
    fails(f, "w.csv", "'b'", "2 missing values", "row 2", "--allow-missing")


def test_missing_value_in_long_layout_names_the_id(tmp_path):
    f = write(tmp_path / "l.csv", "id,t,a,label\nq,0,1,x\nq,1,,x\n")
    fails(f, "l.csv", "'a'", "row 2", "id 'q'", "--allow-missing")


def test_missing_value_inside_a_list(tmp_path):
    f = parquet(tmp_path / "l.parquet", {"id": ["u", "v"], "c": [[1.0], [2.0, None]], "label": ["a", "b"]})
    fails(f, "l.parquet", "'c'", "row 2", "id 'v'", "step 2", "--allow-missing")


@pytest.mark.parametrize("value", ["inf", "-inf", "1e40"])
def test_infinite_values_are_always_an_error(tmp_path, value):
    f = write(tmp_path / "w.csv", f"a,b,label\n1,2,x\n3,{value},y\n")
    fails(f, "w.csv", "'b'", "row 2", "infinite", allow_missing=True)


def test_ragged_row_with_more_fields(tmp_path):
    fails(write(tmp_path / "r.csv", "a,b,label\n1,2,x\n3,4,y,9\n5,6,x\n"), "r.csv", "row 2", "4 fields", "3 columns")
    fails(write(tmp_path / "f.csv", "a,b,label\n1,2,x,9\n3,4,y\n"), "f.csv", "row 1", "4 fields")


def test_trailing_comma_in_header_and_rows_is_harmless(tmp_path):
    d = load(write(tmp_path / "t.csv", "a,b,label,\n1,2,x,\n3,4,y,\n"))
    assert d.schema.features == ["a", "b"]
    note(d, "no name")


def test_unnamed_column_with_values(tmp_path):
    fails(write(tmp_path / "u.csv", "a,,label\n1,2,x\n3,4,y\n"), "u.csv", "column 2", "no name")


def test_ragged_row_with_fewer_fields(tmp_path):
    fails(write(tmp_path / "r.csv", "label,a,b\nx,1,2\ny,3\n"), "r.csv", "'b'", "row 2", "missing")


def test_duplicate_id_time_pairs(tmp_path):
    f = write(tmp_path / "l.csv", "id,t,a,label\n1,0,1,x\n1,1,2,x\n1,1,3,x\n")
    fails(f, "l.csv", "id '1'", "time '1'", "row 2", "row 3")


def test_interleaved_ids_without_time_column(tmp_path):
    f = write(tmp_path / "l.csv", "id,a,label\n1,1,x\n2,1,y\n1,2,x\n")
    fails(f, "l.csv", "id '1'", "row 1", "row 3", "--time-col")


def test_time_column_with_empty_cells(tmp_path):
    fails(write(tmp_path / "l.csv", "id,t,a,label\n1,0,1,x\n1,,2,x\n"), "l.csv", "time column 't'", "row 2")


def test_list_channels_of_different_lengths(tmp_path):
    f = parquet(tmp_path / "l.parquet", {"a": [[1.0], [1.0, 2.0]], "b": [[1.0], [1.0]], "label": ["x", "y"]})
    fails(f, "l.parquet", "row 2", "'a'", "'b'", "different lengths")


def test_empty_list(tmp_path):
    f = parquet(tmp_path / "l.parquet", {"a": [[1.0], []], "label": ["x", "y"]})
    fails(f, "l.parquet", "row 2", "empty", "length 0")


def test_list_layout_on_csv(tmp_path):
    fails(write(tmp_path / "w.csv", "a,label\n1,x\n"), "w.csv", "list layout", "CSV", layout="list")


def test_list_of_strings(tmp_path):
    f = parquet(tmp_path / "l.parquet", {"a": [["p"], ["q"]], "label": ["x", "y"]})
    fails(f, "l.parquet", "'a'", "string", layout="list", features=["a"])


def test_no_feature_columns_left(tmp_path):
    fails(write(tmp_path / "w.csv", "id,name,label\n1,ann,x\n2,bob,y\n"), "w.csv", "no numeric feature columns", "--features")


def test_features_that_do_not_exist(tmp_path):
    f = write(tmp_path / "w.csv", "a,b,label\n1,2,x\n")
    fails(f, "w.csv", "'c'", "'zz'", "'a', 'b', 'label'", features=["a", "c", "zz"])


def test_unknown_layout(tmp_path):
    f = write(tmp_path / "w.csv", "a,label\n1,x\n")
    fails(f, "'tall'", "auto", "wide", kind=UsageError, layout="tall")


def test_bad_option_values(tmp_path):
    f = write(tmp_path / "w.csv", "a,label\n1,x\n")
    fails(f, "features", kind=UsageError, features="a")
    fails(f, "'label'", "feature", kind=UsageError, features=["a", "label"])
    fails(f, "long layout only", kind=UsageError, layout="wide", time_col="a")


def test_given_id_or_time_column_not_in_file(tmp_path):
    f = write(tmp_path / "w.csv", "a,label\n1,x\n")
    fails(f, "'key'", "--id-col", id_col="key")


def test_id_column_with_missing_values(tmp_path):
    fails(write(tmp_path / "l.csv", "id,t,a,label\n1,0,1,x\n,1,2,x\n1,1,3,x\n"), "l.csv", "id column 'id'", "row 2")
    fails(write(tmp_path / "w.csv", "id,a,label\nr1,1,x\n,2,y\n"), "w.csv", "id column 'id'", "row 2")


def test_long_layout_without_any_id_column(tmp_path):
    fails(write(tmp_path / "l.csv", "k,a,label\n1,1,x\n"), "l.csv", "id column", "--id-col", layout="long")


def test_duplicate_column_names_in_csv(tmp_path):
    fails(write(tmp_path / "d.csv", "a,b,a,label\n1,2,3,x\n"), "d.csv", "'a'", "repeat")


def test_duplicate_column_names_in_parquet(tmp_path):
    t = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array(["x"])], names=["a", "a", "label"])
    pq.write_table(t, tmp_path / "d.parquet")
    fails(tmp_path / "d.parquet", "d.parquet", "'a'", "repeat")


# ----------------------------------------------------------------------------
# properties: any input gives data or a GaaError, never another exception

NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
CELLS = {
    "int": st.one_of(st.none(), st.integers(-(10**6), 10**6)),
    "float": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    "str": st.one_of(st.none(), st.sampled_from(["", " ", "a", "1.5", "NaN", "x,y", 'q"q', "é", "🙂"]), st.text(max_size=4)),
    "bool": st.one_of(st.none(), st.booleans()),
}


@st.composite
def frames(draw):
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    n = draw(st.integers(0, 6))
    cols = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(CELLS)))
        cols[name] = draw(st.lists(CELLS[kind], min_size=n, max_size=n))
    return pd.DataFrame(cols, columns=names)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_long_and_list_layouts_match_the_oracle(tmp_path, data):
    n_ids = data.draw(st.integers(1, 6))
    if data.draw(st.booleans()):
        ids = data.draw(st.lists(st.integers(-5, 99), min_size=n_ids, max_size=n_ids, unique=True))
    else:
        ids = data.draw(st.lists(st.text("abcé ", min_size=1, max_size=3).filter(str.strip), min_size=n_ids, max_size=n_ids, unique=True))
    lens = data.draw(st.lists(st.integers(1, 5), min_size=n_ids, max_size=n_ids))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    rows = [
        {"id": i, "time": int(t) * 10 - 3, "a": round(float(rng.normal()), 3), "b": float(rng.integers(-9, 9)), "label": "pq"[k % 2]}
        for k, (i, n) in enumerate(zip(ids, lens))
        for t in rng.permutation(n)
    ]
    df = pd.DataFrame(rows).iloc[rng.permutation(len(rows))].reset_index(drop=True)
    df.to_csv(tmp_path / "long.csv", index=False)
    d = load(tmp_path / "long.csv", layout="long")
    seqs, labels, order = long_oracle(df, "id", "time", ["a", "b"], "label")
    assert_padded(d, seqs)
    assert d.ids.tolist() == [str(i) for i in order] and d.labels.tolist() == labels
    lists = pa.table(
        {
            "id": [str(i) for i in order],
            "a": pa.array([s[:, 0].astype(float).tolist() for s in seqs], pa.list_(pa.float64())),
            "b": pa.array([s[:, 1].tolist() for s in seqs], pa.list_(pa.float32())),
            "label": labels,
        }
    )
    pq.write_table(lists, tmp_path / "list.parquet")
    e = load(tmp_path / "list.parquet")
    np.testing.assert_array_equal(e.x, d.x)
    assert e.lengths.tolist() == d.lengths.tolist() and e.labels.tolist() == labels


def _try_load(path, **kwargs):
    try:
        d = load(path, **kwargs)
    except GaaError as e:
        assert "\n" not in str(e), str(e)
        return
    assert d.x.dtype == np.float32 and d.x.ndim == 3 and len(d.lengths) == len(d.x)
    assert (d.lengths >= 1).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=frames(), data=st.data())
def test_any_small_table_loads_or_raises_gaa_error(tmp_path, df, data):
    cols = list(df.columns)
    kwargs = {
        "layout": data.draw(st.sampled_from(["auto", "wide", "long", "list"])),
        "label": data.draw(st.sampled_from(cols + ["label"])),
        "need_labels": data.draw(st.booleans()),
        "allow_missing": data.draw(st.booleans()),
    }
    if data.draw(st.booleans()):
        kwargs["id_col"] = data.draw(st.sampled_from(cols))
    df.to_csv(tmp_path / "p.csv", index=False)
    _try_load(tmp_path / "p.csv", **kwargs)
    try:
        df.to_parquet(tmp_path / "p.parquet", index=False)
    except (pa.ArrowException, ValueError, TypeError):
        return  # pandas/pyarrow could not write this frame; nothing to read
    _try_load(tmp_path / "p.parquet", **kwargs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "replace"))))
def test_any_bytes_load_or_raise_gaa_error(tmp_path, raw):
    for name in ("b.csv", "b.parquet", "b.csv.gz"):
        (tmp_path / name).write_bytes(raw)
        _try_load(tmp_path / name, layout="auto", label="label")


def test_list_schema_read_as_long_finds_the_time_column(tmp_path):
    # a model trained on the list layout, applied to the same sequences in a long CSV whose rows are shuffled
    rng = np.random.default_rng(0)
    rows = [(sid, t, float(10 * i + t), float(-t), lab) for i, (sid, lab) in enumerate([("s1", "x"), ("s2", "y")]) for t in range(5)]
    frame = pd.DataFrame(rows, columns=["series_id", "t", "a", "b", "label"]).iloc[rng.permutation(10)]
    f = tmp_path / "long.csv"
    frame.to_csv(f, index=False)
    schema = Schema("list", "label", "series_id", None, ["a", "b"])
    d = load(f, schema=schema, layout="long")
    assert d.schema.time_col == "t" and any("'t' to order the steps" in n for n in d.notes)
    np.testing.assert_array_equal(d.x[0, :, 0], [0, 1, 2, 3, 4])  # ordered by t, not by file row
    np.testing.assert_array_equal(d.x[1, :, 1], [0, -1, -2, -3, -4])
    explicit = load(f, schema=schema, layout="long", time_col="t")
    np.testing.assert_array_equal(d.x, explicit.x)
