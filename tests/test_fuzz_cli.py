"""Fuzzing the command line with messy files: it trains, or refuses with one line; it never crashes.

Hypothesis builds small tables (mixed types, missing values, odd and unicode
column names, empty strings, lists) by mutating a valid table or from scratch,
writes them as real CSV / gzipped CSV / Parquet files, and runs `gaa train`
(and `gaa predict` against trained checkpoints) through Typer's CliRunner with a
one-epoch tiny model. Also arbitrary bytes under each extension. Any exit code
but 0 or 2 (1 is the code of an unexpected exception), or a traceback, fails.
"""

from __future__ import annotations

import csv as csv_module
import gzip
import io
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gaa_cli.checkpoint import load as load_checkpoint
from gaa_cli.cli import app
from gaa_cli.data import load
from gaa_cli.errors import GaaError

from .test_bad_inputs import TINY, csv, gaa, wide_frame

try:  # click < 8.2 mixes stderr into stdout unless told not to
    runner = CliRunner(mix_stderr=False)
except TypeError:
    runner = CliRunner()

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------
# tables as (name, values) columns, so names may repeat, be empty or odd

Table = list  # [(name, [value, ...]), ...]

NAMES = st.one_of(
    st.sampled_from(["label", "id", "time", "t", "series_id", "x", "Label ", "", "Unnamed: 0", "a,b", 'q"uote', "ü", "名前", "1", "nan"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)
NUMBERS = st.one_of(st.floats(-1e9, 1e9), st.integers(-10**6, 10**6), st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, -0.0]))
CELLS = st.one_of(
    NUMBERS,
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from(["", " ", "NA", "nan", "None", "1e5", " 3 ", "1,5", "∞", "١٢", "2024-01-01", "TRUE", "-", "1e39", "0x10"]),
)


def wide_base(n: int) -> Table:
    rng = np.random.default_rng(n)
    cols = [(f"t{j}", [round(float(v), 2) for v in rng.normal(size=n)]) for j in range(4)]
    return cols + [("label", ["ab"[i % 2] for i in range(n)])]


def long_base(n: int) -> Table:
    ids, times, a, b, labels = [], [], [], [], []
    for i in range(n):
        for t in range(3):
            ids.append(f"s{i}"), times.append(t), a.append(float(i + t)), b.append(float(i * t) / 3), labels.append("ab"[i % 2])
    return [("id", ids), ("time", times), ("a", a), ("b", b), ("label", labels)]


def list_base(n: int) -> Table:
    return [("id", [f"s{i}" for i in range(n)]), ("a", [[float(i), 1.0, 2.0 + i] for i in range(n)]), ("label", ["ab"[i % 2] for i in range(n)])]


@st.composite
def mutated(draw, base: str | None = None) -> tuple[str, Table]:
    """A valid table of some layout, then a few random changes to it."""
    kind = base or draw(st.sampled_from(["wide", "long", "list"]))
    table = {"wide": wide_base, "long": long_base, "list": list_base}[kind](draw(st.integers(2, 8)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["cell", "cell", "cell", "rename", "drop", "add", "rows"]))
        k = draw(st.integers(0, len(table) - 1))
        name, values = table[k]
        if op == "cell" and values:
            values = list(values)
            values[draw(st.integers(0, len(values) - 1))] = draw(CELLS)
            table[k] = (name, values)
        elif op == "rename":
            table[k] = (draw(NAMES), values)
        elif op == "drop" and len(table) > 1:
            table.pop(k)
        elif op == "add":
            table.append((draw(NAMES), draw(st.lists(CELLS, min_size=len(values), max_size=len(values)))))
        elif op == "rows":
            keep = draw(st.integers(0, len(values)))
            table = [(nm, v[:keep]) for nm, v in table]
    return kind, table


@st.composite
def scratch(draw) -> tuple[str, Table]:
    """A table from nothing: random names, lengths and cells."""
    n = draw(st.integers(0, 6))
    names = draw(st.lists(NAMES, min_size=1, max_size=5))
    return "scratch", [(nm, draw(st.lists(CELLS, min_size=n, max_size=n))) for nm in names]


def write(table: Table, folder: Path, fmt: str) -> Path | None:
    """The table as a real file; None if pyarrow cannot store it (then there is nothing to read)."""
    if fmt == "parquet":
        arrays = []
        for _, values in table:
            try:
                arrays.append(pa.array(values))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):  # mixed types: store them as text
                arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
        try:
            t = pa.Table.from_arrays(arrays, names=[nm for nm, _ in table])
            pq.write_table(t, folder / "data.parquet")
        except (pa.ArrowException, TypeError, ValueError):
            return None
        return folder / "data.parquet"
    buf = io.StringIO()
    w = csv_module.writer(buf, lineterminator="\n")
    w.writerow([nm for nm, _ in table])
    for row in zip(*(values for _, values in table)):
        w.writerow(["" if v is None else str(v) for v in row])
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    if fmt == "csv.gz":
        (folder / "data.csv.gz").write_bytes(gzip.compress(data))
        return folder / "data.csv.gz"
    (folder / "data.csv").write_bytes(data)
    return folder / "data.csv"


def assert_clean_end(result, path: Path) -> None:
    """Exit 0, or exit 2 with one `gaa: error:` line naming the file; never a traceback or exit 1."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.stderr or result.exception!r}"
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if not line.startswith("gaa: note: ")]  # notes may come first
        assert len(lines) == 1 and lines[0].startswith("gaa: error: ") and result.stderr.rstrip().endswith(lines[0]), result.stderr


TRAIN = [*TINY, "--device", "cpu", "--force"]


@FUZZ
@given(case=st.one_of(mutated(), scratch()), fmt=st.sampled_from(["csv", "parquet", "csv.gz"]), allow_missing=st.booleans())
def test_train_on_a_fuzzed_table_trains_or_refuses_cleanly(case, fmt, allow_missing):
    _, table = case
    with tempfile.TemporaryDirectory() as d:
        path = write(table, Path(d), fmt)
        if path is None:
            return
        args = ["train", str(path), *TRAIN, "--out", str(Path(d) / "run")] + (["--allow-missing"] if allow_missing else [])
        result = runner.invoke(app, args)
        assert_clean_end(result, path)
        if result.exit_code == 0:
            assert (Path(d) / "run" / "best.safetensors").is_file()
        else:
            assert not (Path(d) / "run").exists()  # a refused input leaves no run directory behind


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints trained on each base layout, for predict to be fuzzed against."""
    d = tmp_path_factory.mktemp("fuzz-models")
    out = {}
    for kind in ("wide", "long", "list"):
        path = write({"wide": wide_base, "long": long_base, "list": list_base}[kind](8), d, "parquet" if kind == "list" else "csv")
        path = path.rename(d / f"{kind}{''.join(path.suffixes)}")
        r = gaa("train", path, *TRAIN, "--out", d / kind)
        assert r.code == 0, r.stderr
        out[kind] = d / kind
    return out


@FUZZ
@given(case=mutated(), fmt=st.sampled_from(["csv", "parquet"]), command=st.sampled_from(["predict", "evaluate"]), allow_missing=st.booleans())
def test_predict_and_evaluate_on_a_fuzzed_table_end_cleanly(models, case, fmt, command, allow_missing):
    kind, table = case
    with tempfile.TemporaryDirectory() as d:
        path = write(table, Path(d), fmt)
        if path is None:
            return
        args = [command, str(models[kind]), str(path)] + (["--allow-missing"] if allow_missing else [])
        assert_clean_end(runner.invoke(app, args), path)


BYTES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200).map(lambda b: b"PAR1" + b + b"PAR1"),  # Parquet's magic at both ends
    st.binary(max_size=200).map(lambda b: b"t0,t1,label\n" + b),
)


@FUZZ
@given(raw=BYTES, suffix=st.sampled_from([".csv", ".parquet", ".csv.gz", ".safetensors"]))
def test_arbitrary_bytes_are_refused_cleanly(raw, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"file{suffix}"
        path.write_bytes(raw)
        if suffix == ".safetensors":  # as a checkpoint
            result = runner.invoke(app, ["predict", str(path), str(path.with_suffix(".csv"))])
        else:
            result = runner.invoke(app, ["train", str(path), *TRAIN, "--out", str(Path(d) / "run")])
        assert_clean_end(result, path)


@FUZZ
@given(case=st.one_of(mutated(), scratch()), fmt=st.sampled_from(["csv", "parquet"]), need_labels=st.booleans(), layout=st.sampled_from(["auto", "wide", "long", "list"]))
def test_load_raises_only_its_own_one_line_errors(case, fmt, need_labels, layout):
    """The library call under the CLI: a GaaError whose one-line message names the file, or data."""
    with tempfile.TemporaryDirectory() as d:
        path = write(case[1], Path(d), fmt)
        if path is None:
            return
        try:
            data = load(path, layout=layout, need_labels=need_labels, allow_missing=True, min_length=2)
        except GaaError as e:
            assert "\n" not in e.message
            assert str(path) in e.message or e.message.startswith("--") or "column" in e.message, e.message
            return
        assert data.x.dtype == np.float32 and data.x.shape[0] == len(data.lengths) and (data.lengths >= 2).all()


# ----------------------------------------------------------------------------
# found by fuzzing with large magnitudes


def test_the_normalisation_follows_the_scale_of_the_data(tmp_path):
    """Data times 1e20 (valid float32: |x| < 3.4e38) is the same problem: its saved std is 1e20 times as large."""
    frame = wide_frame(n=24, steps=8)
    steps = [c for c in frame.columns if c != "label"]
    stds = []
    for scale in (1.0, 1e20):
        scaled = frame.copy()
        scaled[steps] = frame[steps] * scale
        run = tmp_path / f"run{scale:g}"
        r = gaa("train", csv(tmp_path / f"x{scale:g}.csv", scaled), *TRAIN, "--out", run)
        assert r.code == 0, r.stderr
        stds.append(np.array(load_checkpoint(run / "best.safetensors").meta["normalization"]["std"]))
    np.testing.assert_allclose(stds[1], stds[0] * 1e20, rtol=1e-4)
