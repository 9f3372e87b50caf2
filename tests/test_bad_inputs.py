"""A catalogue of bad inputs, each run through the `gaa` command line.

Every case builds real files (CSV text, Parquet via pyarrow, checkpoints written
by a real training run) and runs the CLI's own entry point, `gaa_cli.cli.main`,
the function behind both `gaa` and `python -m gaa_cli`. The catalogue runs it in
this process (a subprocess per case would spend minutes importing torch);
`test_subprocess_matches_in_process` reruns a sample of the cases as real
subprocesses and checks they end exactly the same way.

A failing case must exit with its documented code (2: bad usage or input, 1:
failure at run time), print exactly one line on stderr, `gaa: error: ...`,
that names the file and the column / row / value and says what would fix it,
print no traceback, and leave nothing behind: no run directory, no partial
output, nothing of the user's overwritten. A few cases are bad inputs the tool
continues past because the user asked it to (`--allow-missing`,
`--allow-unseen-labels`, extra columns): they exit 0 and say so on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gaa_cli.cli import main

from .conftest import TINY, run_gaa


# ----------------------------------------------------------------------------
# running the CLI


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def gaa(*args: object) -> Result:
    """Run `gaa ARGS` through the real entry point in this process; capture its streams and exit code."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["gaa", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


def error_line(r: Result, code: int) -> str:
    """The run failed with `code` and printed exactly one error line, `gaa: error: ...`, last, and no traceback;
    only notes (`gaa: note: ...`, what was decided on the way, such as the layout) may come before it."""
    assert r.code == code, f"exit {r.code}, expected {code}; stderr: {r.stderr!r}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("gaa: note: ")]
    assert len(lines) == 1, f"expected one line on stderr besides notes, got {len(lines)}: {r.stderr!r}"
    assert r.stderr.rstrip("\n").splitlines()[-1] == lines[0], "the error line comes last"
    assert lines[0].startswith("gaa: error: "), lines[0]
    assert r.stderr.endswith("\n") and r.stderr.count("\n") == len(r.stderr.splitlines()), repr(r.stderr)
    return lines[0]


# ----------------------------------------------------------------------------
# building files


def wide_frame(n: int = 24, steps: int = 16, seed: int = 0) -> pd.DataFrame:
    """n samples, one column per time step (t00, t01, ...), three balanced classes."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, steps)).round(3), columns=[f"t{i:02d}" for i in range(steps)])
    df["label"] = np.array(["a", "b", "c"])[np.arange(n) % 3]
    return df


def long_frame(n_ids: int = 12, seed: int = 0) -> pd.DataFrame:
    """Long layout: id, time, channels c1 and c2, label (two classes); sequences of 6 to 8 steps."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ids):
        for t in range(6 + i % 3):
            rows.append({"id": f"s{i}", "time": t, "c1": round(rng.normal(), 3), "c2": round(rng.normal(), 3), "label": "xy"[i % 2]})
    return pd.DataFrame(rows)


def csv(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def text(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def raw(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def parquet(path: Path, table: pa.Table | pd.DataFrame) -> Path:
    pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False), path)
    return path


def with_cell(df: pd.DataFrame, row: int, col: str, value: object) -> pd.DataFrame:
    df = df.astype({col: object}).copy()
    df.loc[row, col] = value
    return df


def digest(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, files with a hash of their bytes: to show nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder" for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------
# trained checkpoints the evaluate / predict cases run against


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny wide-layout and a tiny long-layout run, trained through the CLI."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, frame in (("wide", wide_frame()), ("long", long_frame())):
        data = csv(d / f"{name}_train.csv", frame)
        r = gaa("train", data, *TINY, "--out", d / name, "--device", "cpu")
        assert r.code == 0, r.stderr
        out[name] = d / name
    return out


# ----------------------------------------------------------------------------
# the catalogue


@dataclass
class Case:
    id: str
    build: Callable[[Path, dict], list]  # (tmp folder, trained runs) -> the command line after `gaa`
    code: int  # expected exit code
    words: tuple[str, ...]  # must all appear in the stderr line (for code 0: in one note)


def train(data: Path, d: Path, *extra: object) -> list:
    return ["train", data, *TINY, "--out", d / "run", *extra]


def evaluate(m: dict, kind: str, data: Path, *extra: object) -> list:
    return ["evaluate", m[kind], data, *extra]


def predict(m: dict, kind: str, data: Path, *extra: object) -> list:
    return ["predict", m[kind], data, *extra]


def _elf() -> bytes:
    return b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


def _interleaved_long(d: Path) -> Path:
    df = long_frame().drop(columns="time")
    # the rows of s0 come back after s1's: without a time column their order is unclear
    moved = df[df["id"] == "s0"].iloc[-2:]
    df = pd.concat([df.drop(moved.index).iloc[:10], moved, df.drop(moved.index).iloc[10:]])
    return csv(d / "no_time.csv", df)


def _short_long(d: Path) -> Path:
    df = long_frame()
    return csv(d / "short.csv", df[~((df["id"] == "s3") & (df["time"] > 0))])


def _config(d: Path, body: str) -> Path:
    return text(d / "cfg.toml", body)


def _nonempty_run(d: Path) -> Path:
    (d / "run").mkdir()
    text(d / "run" / "notes.txt", "my notes")
    return csv(d / "w.csv", wide_frame())


def _file_as_parent(d: Path) -> Path:
    text(d / "blocker", "a file, not a folder")
    return d / "blocker" / "run"


def _read_only(d: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root can write into a read-only folder")
    (d / "locked").mkdir(mode=0o500)
    return d / "locked"


def _ckpt_with_version(d: Path, m: dict, version: str) -> Path:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    src = m["wide"] / "best.safetensors"
    with safe_open(str(src), "pt") as f:
        header = dict(f.metadata())
    header["format_version"] = version
    save_file(load_file(str(src)), str(d / "future.safetensors"), metadata=header)
    return d / "future.safetensors"


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


W = wide_frame
L = long_frame

CASES: list[Case] = [
    # --- the file itself ------------------------------------------------------------------
    Case("missing-file", lambda d, m: train(d / "nope.csv", d), 2, ("nope.csv", "no such file", "check the path")),
    Case("directory-as-data", lambda d, m: train((csv((d / "folder").mkdir() or d / "folder" / "x.csv", W())).parent, d), 2,
         ("folder", "no .parquet files")),
    Case("unsupported-extension", lambda d, m: train(text(d / "data.xlsx", "a,b\n1,2\n"), d), 2, ("data.xlsx", "unsupported file type", "'.xlsx'", ".csv")),
    Case("no-extension", lambda d, m: train(text(d / "data", "a,b\n1,2\n"), d), 2, ("data", "no extension", ".parquet")),
    Case("empty-csv", lambda d, m: train(raw(d / "empty.csv", b""), d), 2, ("empty.csv", "empty (0 bytes)")),
    Case("empty-parquet", lambda d, m: train(raw(d / "empty.parquet", b""), d), 2, ("empty.parquet", "empty (0 bytes)")),
    Case("blank-lines-csv", lambda d, m: train(text(d / "blank.csv", "\n  \n\n"), d), 2, ("blank.csv", "no data", "header row")),
    Case("header-only-csv", lambda d, m: train(text(d / "header.csv", "t00,t01,label\n"), d), 2, ("header.csv", "no data rows", "3 columns")),
    Case("header-only-parquet", lambda d, m: train(parquet(d / "header.parquet", W().iloc[:0]), d), 2, ("header.parquet", "no rows")),
    Case("random-bytes-as-parquet", lambda d, m: train(raw(d / "random.parquet", np.random.default_rng(0).bytes(3000)), d), 2,
         ("random.parquet", "not a readable Parquet file", "really Parquet")),
    Case("binary-as-csv", lambda d, m: train(raw(d / "program.csv", _elf()), d), 2, ("program.csv", "not a text CSV", "NUL")),
    Case("parquet-named-csv", lambda d, m: train(raw(d / "really.csv", _parquet_bytes(W())), d), 2, ("really.csv", "looks like Parquet", "name it .parquet")),
    Case("csv-named-parquet", lambda d, m: train(csv(d / "text.parquet", W()), d), 2, ("text.parquet", "not a readable Parquet", "name it .csv")),
    Case("truncated-parquet", lambda d, m: train(raw(d / "cut.parquet", _parquet_bytes(W())[:-100]), d), 2, ("cut.parquet", "not a readable Parquet", "complete")),
    Case("latin1-csv", lambda d, m: train(raw(d / "latin.csv", "t00,label\n1,caf\xe9\n2,b\n".encode("latin-1")), d), 2, ("latin.csv", "not UTF-8", "line 2", "0xe9")),
    Case("semicolon-csv", lambda d, m: train(text(d / "semi.csv", "t00;t01;label\n1;2;a\n3;4;b\n"), d), 2, ("semi.csv", "separated by ';'", "comma-separated")),
    Case("duplicate-column-names", lambda d, m: train(text(d / "dup.csv", "t0,t0,label\n1,2,a\n3,4,b\n"), d), 2, ("dup.csv", "repeat", "'t0'")),
    # --- labels ------------------------------------------------------------------------------
    Case("missing-label-column", lambda d, m: train(csv(d / "nolabel.csv", W().rename(columns={"label": "target"})), d), 2,
         ("nolabel.csv", "no label column 'label'", "perhaps --label target")),
    Case("label-option-names-absent-column", lambda d, m: train(csv(d / "w.csv", W()), d, "--label", "klass"), 2, ("w.csv", "'klass'", "--label")),
    Case("label-column-all-empty", lambda d, m: train(csv(d / "nolabels.csv", W().assign(label="")), d), 2, ("nolabels.csv", "'label'", "empty in every row")),
    Case("label-empty-in-some-rows", lambda d, m: train(csv(d / "gaps.csv", with_cell(W(), 4, "label", "")), d), 2, ("gaps.csv", "'label'", "row 5", "fill in the labels")),
    Case("one-class-only", lambda d, m: train(csv(d / "one.csv", W().assign(label="a")), d), 2, ("one.csv", "only 1 class", "'a'", "at least 2")),
    Case("label-changes-within-a-sequence", lambda d, m: train(csv(d / "mixed.csv", with_cell(L(), 3, "label", "y")), d), 2,
         ("mixed.csv", "label changes within id 's0'", "row 4")),
    # --- values ------------------------------------------------------------------------------
    Case("non-numeric-value", lambda d, m: train(csv(d / "word.csv", with_cell(W(), 6, "t03", "abc")), d), 2, ("word.csv", "column 't03'", "row 7", "'abc'", "should hold numbers")),
    Case("nan-value", lambda d, m: train(csv(d / "nan.csv", with_cell(W(), 2, "t05", np.nan)), d), 2, ("nan.csv", "column 't05'", "missing value", "row 3", "--allow-missing")),
    Case("nan-value-allowed", lambda d, m: train(csv(d / "nan.csv", with_cell(W(), 2, "t05", np.nan)), d, "--allow-missing"), 0, ("nan.csv", "--allow-missing", "'t05'", "training mean")),
    Case("inf-value", lambda d, m: train(csv(d / "inf.csv", with_cell(W(), 3, "t01", "inf")), d), 2, ("inf.csv", "column 't01'", "infinite", "row 4", "finite number")),
    Case("value-too-large-for-float32", lambda d, m: train(csv(d / "huge.csv", with_cell(W(), 0, "t00", "1e39")), d), 2, ("huge.csv", "'t00'", "too large", "row 1", "1e+39")),
    Case("ragged-wide-csv", lambda d, m: train(text(d / "ragged.csv", "t00,t01,label\n1,2,a\n3,4,b\n5,6,7,a\n8,9,b\n"), d), 2,
         ("ragged.csv", "row 3 has 4 fields", "header names 3 columns")),
    Case("no-numeric-features", lambda d, m: train(text(d / "words.csv", "name,label\nann,a\nbob,b\n"), d), 2, ("words.csv", "no numeric feature columns", "--features")),
    Case("features-option-names-absent-column", lambda d, m: train(csv(d / "w.csv", W()), d, "--features", "t00,t99"), 2, ("w.csv", "'t99'", "--features")),
    Case("validation-file-with-unseen-labels", lambda d, m: train(csv(d / "w.csv", W()), d, "--val", csv(d / "val.csv", with_cell(W(), 0, "label", "q"))), 2,
         ("val.csv", "'q'", "w.csv does not have")),
    Case("validation-file-lacks-a-column", lambda d, m: train(csv(d / "w.csv", W()), d, "--val", csv(d / "val.csv", W().drop(columns="t03"))), 2,
         ("val.csv", "missing 't03'")),
    # --- long and list layouts -------------------------------------------------------------
    Case("long-duplicate-id-time", lambda d, m: train(csv(d / "dups.csv", pd.concat([L(), L().iloc[[4]]])), d), 2,
         ("dups.csv", "id 's0' has two rows for time '4'", "row 5", "once")),
    Case("long-no-time-ambiguous-order", lambda d, m: train(_interleaved_long(d), d), 2, ("no_time.csv", "no time column", "'s0'", "--time-col")),
    Case("long-time-column-not-a-time", lambda d, m: train(csv(d / "when.csv", with_cell(L(), 2, "time", "soon")), d), 2, ("when.csv", "time column 'time'", "row 3", "'soon'")),
    Case("long-time-mixes-numbers-and-dates", lambda d, m: train(csv(d / "mixed_time.csv", with_cell(L(), 1, "time", "2024-01-02")), d), 2,
         ("mixed_time.csv", "time column 'time' mixes numbers", "row 1", "'2024-01-02'", "one kind")),
    Case("long-id-given-absent", lambda d, m: train(csv(d / "l.csv", L()), d, "--id-col", "series"), 2, ("l.csv", "'series'", "--id-col")),
    Case("sequence-too-short", lambda d, m: train(_short_long(d), d), 2, ("short.csv", "fewer than 2 steps", "id 's3'")),
    Case("wide-one-step-too-short", lambda d, m: train(csv(d / "onestep.csv", W(steps=1)), d), 2, ("onestep.csv", "fewer than 2 steps", "row 1", "at least 2 time-step columns")),
    Case("list-empty-sequence", lambda d, m: train(parquet(d / "lists.parquet", pa.table({"c": [[1.0, 2.0], [], [3.0, 4.0]], "label": ["a", "b", "a"]})), d), 2,
         ("lists.parquet", "row 2", "empty lists")),
    Case("list-channels-differ-in-length", lambda d, m: train(parquet(d / "uneven.parquet", pa.table({"c": [[1.0, 2.0], [3.0, 4.0]], "e": [[1.0, 2.0], [3.0]], "label": ["a", "b"]})), d), 2,
         ("uneven.parquet", "row 2", "different lengths", "'e'")),
    # --- options -----------------------------------------------------------------------------
    Case("epochs-zero", lambda d, m: train(csv(d / "w.csv", W()), d, "--epochs", "0"), 2, ("--epochs 0", "from 1 to 100000")),
    Case("epochs-negative", lambda d, m: train(csv(d / "w.csv", W()), d, "--epochs", "-3"), 2, ("--epochs -3", "from 1 to 100000")),
    Case("epochs-absurd", lambda d, m: train(csv(d / "w.csv", W()), d, "--epochs", "1000000000"), 2, ("--epochs 1000000000", "from 1 to 100000")),
    Case("epochs-not-a-number", lambda d, m: train(csv(d / "w.csv", W()), d, "--epochs", "ten"), 2, ("--epochs", "'ten'", "gaa train --help")),
    Case("batch-size-zero", lambda d, m: train(csv(d / "w.csv", W()), d, "--batch-size", "0"), 2, ("--batch-size 0", "from 1 to")),
    Case("batch-size-negative", lambda d, m: train(csv(d / "w.csv", W()), d, "--batch-size", "-8"), 2, ("--batch-size -8", "from 1 to")),
    Case("batch-size-absurd", lambda d, m: train(csv(d / "w.csv", W()), d, "--batch-size", "99999999999"), 2, ("--batch-size 99999999999", "from 1 to 1000000")),
    Case("lr-zero", lambda d, m: train(csv(d / "w.csv", W()), d, "--lr", "0"), 2, ("--lr 0", "above 0")),
    Case("lr-negative", lambda d, m: train(csv(d / "w.csv", W()), d, "--lr", "-0.01"), 2, ("--lr -0.01", "above 0")),
    Case("lr-absurd", lambda d, m: train(csv(d / "w.csv", W()), d, "--lr", "1e6"), 2, ("--lr 1000000.0", "at most 10")),
    Case("lr-nan", lambda d, m: train(csv(d / "w.csv", W()), d, "--lr", "nan"), 2, ("--lr nan", "above 0")),
    Case("unknown-option", lambda d, m: train(csv(d / "w.csv", W()), d, "--epoch", "3"), 2, ("No such option: --epoch", "--epochs")),
    Case("no-data-argument", lambda d, m: ["train", *TINY], 2, ("missing DATA", "--resume")),
    Case("seed-out-of-range", lambda d, m: train(csv(d / "w.csv", W()), d, "--seed", "-1"), 2, ("--seed -1", "from 0 to")),
    Case("unknown-device", lambda d, m: train(csv(d / "w.csv", W()), d, "--device", "tpu"), 2, ("--device tpu", "auto, cpu, cuda or cuda:N")),
    Case("evaluate-unknown-device", lambda d, m: evaluate(m, "wide", csv(d / "w.csv", W()), "--device", "gpu0"), 2, ("--device 'gpu0'", "unknown device", "auto, cpu, cuda")),
    Case("cuda-without-cuda", lambda d, m: train(csv(d / "w.csv", W()), d, "--device", "cuda"), 2, ("--device cuda", "CUDA is not available", "--device cpu")),
    Case("cuda-index-without-cuda", lambda d, m: evaluate(m, "wide", csv(d / "w.csv", W()), "--device", "cuda:3"), 2, ("--device cuda:3", "CUDA is not available")),
    # --- run directory and output -----------------------------------------------------------
    Case("unwritable-output-directory", lambda d, m: ["train", csv(d / "w.csv", W()), *TINY, "--out", _file_as_parent(d)], 2,
         ("blocker", "cannot write the run directory", "choose another --out")),
    Case("read-only-output-directory", lambda d, m: ["train", csv(d / "w.csv", W()), *TINY, "--out", _read_only(d) / "run"], 2,
         ("locked", "cannot write the run directory", "Permission denied")),
    Case("output-is-a-file", lambda d, m: ["train", csv(d / "w.csv", W()), *TINY, "--out", text(d / "taken", "x")], 2, ("taken", "not a directory", "--out")),
    Case("non-empty-run-directory", lambda d, m: train(_nonempty_run(d), d), 2, ("run", "not empty", "--force", "--resume")),
    Case("predict-output-exists", lambda d, m: predict(m, "wide", csv(d / "w.csv", W()), "--output", text(d / "mine.csv", "keep me")), 2,
         ("mine.csv", "already exists", "--force")),
    Case("predict-output-folder-missing", lambda d, m: predict(m, "wide", csv(d / "w.csv", W()), "--output", d / "nowhere" / "p.csv"), 2,
         ("nowhere", "does not exist")),
    Case("predict-output-under-a-file", lambda d, m: predict(m, "wide", csv(d / "w.csv", W()), "--output", _file_as_parent(d)), 2,
         ("blocker", "not a folder")),
    Case("predict-output-is-a-folder", lambda d, m: predict(m, "wide", csv(d / "w.csv", W()), "--output", (d / "outdir").mkdir() or d / "outdir", "--force"), 2,
         ("outdir", "is a folder", "file name")),
    Case("predict-parquet-to-stdout", lambda d, m: predict(m, "wide", csv(d / "w.csv", W()), "--format", "parquet"), 2, ("--format parquet", "--output")),
    # --- config files ------------------------------------------------------------------------
    Case("config-unknown-key", lambda d, m: train(csv(d / "w.csv", W()), d, "--config", _config(d, "[model]\nwidht = 8\n")), 2,
         ("cfg.toml", "[model]", "unknown key(s) widht", "known keys", "width")),
    Case("config-wrong-type", lambda d, m: train(csv(d / "w.csv", W()), d, "--config", _config(d, "[train]\nepochs = \"ten\"\n")), 2,
         ("cfg.toml", "[train]", "'epochs' must be int", "'ten'")),
    Case("config-value-out-of-range", lambda d, m: ["train", csv(d / "w.csv", W()), "--out", d / "run", "-q", "--config", _config(d, "[train]\nlr = -1.0\n")], 2,
         ("cfg.toml", "[train]", "'lr'", "-1.0", "above 0")),
    Case("config-unknown-device", lambda d, m: train(csv(d / "w.csv", W()), d, "--config", _config(d, "[train]\ndevice = \"tpu\"\n")), 2,
         ("cfg.toml", "[train]", "'device' = 'tpu'", "auto, cpu, cuda")),
    Case("config-unknown-table", lambda d, m: train(csv(d / "w.csv", W()), d, "--config", _config(d, "[optimizer]\nlr = 0.1\n")), 2, ("cfg.toml", "unknown table(s) optimizer")),
    Case("config-not-toml", lambda d, m: train(csv(d / "w.csv", W()), d, "--config", _config(d, "[model\nwidth = \n")), 2, ("cfg.toml", "not valid TOML", "line 1")),
    Case("config-missing", lambda d, m: train(csv(d / "w.csv", W()), d, "--config", d / "absent.toml"), 2, ("absent.toml", "not found", "--config")),
    # --- checkpoints -------------------------------------------------------------------------
    Case("checkpoint-missing", lambda d, m: ["evaluate", d / "gone.safetensors", csv(d / "w.csv", W())], 2, ("gone.safetensors", "checkpoint not found")),
    Case("checkpoint-dir-without-checkpoint", lambda d, m: ["predict", (d / "empty_run").mkdir() or d / "empty_run", csv(d / "w.csv", W())], 2,
         ("empty_run", "has no best.safetensors or last.safetensors")),
    Case("checkpoint-newer-format", lambda d, m: ["evaluate", _ckpt_with_version(d, m, "2"), csv(d / "w.csv", W())], 2,
         ("future.safetensors", "format version 2 is newer", "upgrade gaa")),
    Case("checkpoint-truncated", lambda d, m: ["predict", raw(d / "cut.safetensors", (m["wide"] / "best.safetensors").read_bytes()[:-500]), csv(d / "w.csv", W())], 2,
         ("cut.safetensors", "truncated or corrupted")),
    Case("checkpoint-corrupted-header", lambda d, m: ["predict", raw(d / "bad.safetensors", _flip((m["wide"] / "best.safetensors").read_bytes(), 12)), csv(d / "w.csv", W())], 2,
         ("bad.safetensors", "truncated or corrupted")),
    Case("checkpoint-is-a-csv", lambda d, m: ["evaluate", csv(d / "model.safetensors", W()), csv(d / "w.csv", W())], 2, ("model.safetensors", "not a readable gaa checkpoint")),
    Case("checkpoint-is-a-pickle", lambda d, m: ["evaluate", raw(d / "model.pt", pickle.dumps({"weights": [1.0]})), csv(d / "w.csv", W())], 2,
         ("model.pt", "Python pickle", "never unpickles")),
    Case("checkpoint-is-torch-save", lambda d, m: ["evaluate", (torch.save({"w": torch.zeros(2)}, d / "model.pth"), d / "model.pth")[1], csv(d / "w.csv", W())], 2,
         ("model.pth", "zip archive", "not a gaa checkpoint")),
    # --- evaluate / predict against a checkpoint ---------------------------------------------
    Case("unseen-labels", lambda d, m: evaluate(m, "wide", csv(d / "test.csv", with_cell(W(), 1, "label", "zzz"))), 2,
         ("test.csv", "never saw", "'zzz'", "--allow-unseen-labels")),
    Case("unseen-labels-allowed", lambda d, m: evaluate(m, "wide", csv(d / "test.csv", with_cell(W(), 1, "label", "zzz")), "--allow-unseen-labels"), 0,
         ("test.csv", "'zzz'", "counted as wrong")),
    Case("evaluate-without-label-column", lambda d, m: evaluate(m, "wide", csv(d / "test.csv", W().drop(columns="label"))), 2, ("test.csv", "no label column 'label'")),
    Case("predict-missing-column", lambda d, m: predict(m, "long", csv(d / "new.csv", L().drop(columns="c2"))), 2, ("new.csv", "lacks columns the model needs: 'c2'", "rename")),
    Case("predict-renamed-column", lambda d, m: predict(m, "long", csv(d / "new.csv", L().rename(columns={"c1": "C1"}))), 2, ("new.csv", "'c1'", "'C1'", "rename the columns")),
    Case("predict-column-of-other-dtype", lambda d, m: predict(m, "long", csv(d / "new.csv", L().assign(c2=lambda f: "v" + f["c2"].astype(str)))), 2,
         ("new.csv", "column 'c2' should hold numbers", "row 1")),
    Case("predict-list-column-for-long-model", lambda d, m: predict(m, "long", parquet(d / "new.parquet", pa.table({"id": ["s0"], "time": [0], "c1": [[1.0, 2.0]], "c2": [0.5]}))), 2,
         ("new.parquet", "'c1'", "holds lists")),
    Case("predict-extra-column", lambda d, m: predict(m, "long", csv(d / "new.csv", L().assign(humidity=1.0))), 0, ("new.csv", "ignored 1 column", "'humidity'")),
    Case("predict-fewer-time-steps", lambda d, m: predict(m, "wide", csv(d / "new.csv", W().drop(columns=["t14", "t15"]))), 2,
         ("new.csv", "14 of the 16 time-step columns", "'t14'")),
    Case("predict-sequence-too-short", lambda d, m: predict(m, "long", _short_long(d)), 2, ("short.csv", "fewer than 2 steps", "id 's3'")),
    Case("predict-nan-value", lambda d, m: predict(m, "long", csv(d / "new.csv", with_cell(L(), 5, "c1", np.nan))), 2, ("new.csv", "'c1'", "row 6", "--allow-missing")),
    Case("predict-nan-value-allowed", lambda d, m: predict(m, "long", csv(d / "new.csv", with_cell(L(), 5, "c1", np.nan)), "--allow-missing"), 0,
         ("new.csv", "--allow-missing", "'c1'")),
    # --- resume ------------------------------------------------------------------------------
    Case("resume-without-checkpoint", lambda d, m: ["train", "--resume", (d / "run").mkdir() or d / "run", "-q"], 2, ("run", "no last.safetensors", "gaa train")),
    Case("resume-with-new-settings", lambda d, m: ["train", "--resume", m["wide"], "--epochs", "5", "-q"], 2, ("--resume", "drop --epochs")),
]

assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run without --out would land in ./runs: keep it here
    if case.id.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = case.build(tmp_path, models)
    before = digest(tmp_path)
    trained_before = {k: digest(v) for k, v in models.items()}
    r = gaa(*args)
    if case.code == 0:  # continued past the problem because the user asked to: says so
        assert r.code == 0, r.stderr
        assert "gaa: error" not in r.stderr and "Traceback" not in r.stderr
        notes = [line for line in r.stderr.splitlines() if line.startswith("gaa: note: ")]
        assert any(all(w in n for w in case.words) for n in notes), f"no note with {case.words}: {r.stderr}"
        return
    line = error_line(r, case.code)
    for w in case.words:
        assert w in line, f"{w!r} not in: {line}"
    # no damage: nothing written, created or changed, here or in the trained runs
    assert digest(tmp_path) == before
    assert not (tmp_path / "runs").exists()
    assert {k: digest(v) for k, v in models.items()} == trained_before


def test_catalogue_is_big_enough():
    assert len(CASES) >= 40


def test_bad_input_leaves_existing_outputs_alone(models, tmp_path):
    """--force on a run directory or an output file does not destroy it when the input is refused."""
    out = text(tmp_path / "predictions.csv", "the user's old predictions\n")
    r = gaa("predict", models["wide"], csv(tmp_path / "bad.csv", with_cell(wide_frame(), 0, "t00", "x")), "--output", out, "--force")
    error_line(r, 2)
    assert out.read_text() == "the user's old predictions\n"
    run = tmp_path / "old_run"
    r = gaa("train", csv(tmp_path / "w.csv", wide_frame()), *TINY, "--out", run, "-q")
    assert r.code == 0, r.stderr
    saved = digest(run)
    for bad in (["--device", "tpu"], ["--lr", "0"]):
        error_line(gaa("train", tmp_path / "w.csv", *TINY, "--out", run, "--force", *bad), 2)
        assert digest(run) == saved, bad
    error_line(gaa("train", _short_long(tmp_path), *TINY, "--out", run, "--force"), 2)
    assert digest(run) == saved


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    r = run_gaa("--debug", "train", tmp_path / "nope.csv", *TINY)
    assert r.returncode == 2, r.stderr
    assert "Traceback" in r.stderr and "DataError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(f"{tmp_path / 'nope.csv'}: no such file or folder; check the path")
    line = error_line(gaa("train", tmp_path / "nope.csv", *TINY), 2)  # the same, without --debug
    assert line == f"gaa: error: {tmp_path / 'nope.csv'}: no such file or folder; check the path"


def test_evaluate_json_stays_strict_json_when_a_metric_is_undefined(models, tmp_path):
    """Every label unseen (allowed): balanced accuracy and log loss are undefined, and printed as null, not NaN."""
    r = gaa("evaluate", models["wide"], csv(tmp_path / "new.csv", wide_frame().assign(label="zzz")), "--allow-unseen-labels", "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert report["accuracy"] == 0.0 and report["log_loss"] is None and report["n_unseen_labels"] == 24


SUBPROCESS_SAMPLE = ["epochs-not-a-number", "checkpoint-newer-format", "unseen-labels-allowed"]


def test_subprocess_matches_in_process(models, tmp_path):
    """The real `python -m gaa_cli` process ends every sampled case exactly as the in-process run does."""
    by_id = {c.id: c for c in CASES}
    for name in SUBPROCESS_SAMPLE:
        if name.startswith("cuda") and torch.cuda.is_available():
            continue
        d = tmp_path / name
        d.mkdir()
        args = by_id[name].build(d, models)
        inproc = gaa(*args)
        real = run_gaa(*args, cwd=d)
        assert real.returncode == inproc.code == by_id[name].code, (name, real.stderr)
        if inproc.code:
            assert real.stderr == inproc.stderr, name
        else:
            assert real.stdout == inproc.stdout and "gaa: error" not in real.stderr, name
