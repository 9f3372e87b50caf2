"""Reading data files and shaping them into padded sequences.

A file (`.csv`, `.csv.gz`, `.parquet`, or a folder of `.parquet` files) holds
samples in one of three layouts:

- wide: one row per sample, one numeric column per time step (C = 1).
- long: one row per time step; an id column names the sequence, an optional
  time column orders its steps, one numeric column per channel.
- list: one row per sample; each channel is a Parquet list column.

`load` turns any of them into `SequenceData`: an (N, T, C) float32 array,
left-aligned and zero-padded, with lengths, labels and ids. Every problem with
the file is a `DataError` (bad option values: `UsageError`) whose one-line
message names the file, the column and the row, and says what would fix it.
"""

from __future__ import annotations

import codecs
import csv
import decimal
import gzip
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gaa_cli.errors import DataError, UsageError

__all__ = ["LAYOUTS", "Schema", "SequenceData", "read_table", "load"]

LAYOUTS = ("wide", "long", "list")
SUPPORTED = ".csv, .csv.gz, .parquet or a folder of .parquet files"
# Looked up case-insensitively, in this order, when --id-col / --time-col are not given.
ID_NAMES = ("id", "series_id", "sample_id", "sequence_id", "seq_id", "series", "sequence")
TIME_NAMES = ("time", "t", "timestamp", "step", "time_step", "timestep", "time_idx", "frame")
# Number cells holding these strings (any case, blanks around ignored) count as missing.
NA_STRINGS = frozenset({"", "nan", "-nan", "na", "n/a", "#n/a", "#na", "<na>", "null", "none", "nil", "?"})
# Labels and ids are names: "NA" or "None" may be a class, so only these count as missing.
NAME_NA_STRINGS = frozenset({"", "nan"})
SNIFF_BYTES = 1 << 16
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Schema:
    """How a file's columns map onto sequences; saved in checkpoints as JSON."""

    layout: str  # "wide" | "long" | "list"
    label: str | None  # label column; None if the training data had none
    id_col: str | None  # sequence id (long: required; wide/list: optional)
    time_col: str | None  # long only: orders the steps; None means file order
    features: list[str]  # wide: columns in time order; long/list: channel columns in order

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "label": self.label,
            "id_col": self.id_col,
            "time_col": self.time_col,
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        """Rebuild a schema saved by `to_dict`; any other shape is a ValueError naming the problem."""
        if not isinstance(d, dict):
            raise ValueError(f"schema must be a JSON object, found {type(d).__name__}")
        fields = ("layout", "label", "id_col", "time_col", "features")
        unknown = sorted(str(k) for k in d if k not in fields)
        if unknown:
            raise ValueError(f"unknown schema keys: {', '.join(unknown)} (expected {', '.join(fields)})")
        missing = [k for k in fields if k not in d]
        if missing:
            raise ValueError(f"schema is missing keys: {', '.join(missing)}")
        if d["layout"] not in LAYOUTS:
            raise ValueError(f"schema key 'layout' must be one of {', '.join(LAYOUTS)}, found {d['layout']!r}")
        wrong = [k for k in ("label", "id_col", "time_col") if d[k] is not None and not isinstance(d[k], str)]
        feats = d["features"]
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            wrong.append("features")
        if wrong:
            raise ValueError(
                f"schema keys with wrong types: {', '.join(wrong)} "
                "(label, id_col, time_col: string or null; features: list of strings)"
            )
        return cls(d["layout"], d["label"], d["id_col"], d["time_col"], list(feats))


@dataclass
class SequenceData:
    """Sequences read from one file, padded to a common length."""

    x: np.ndarray  # (N, T, C) float32, left-aligned, zero-padded after each length
    lengths: np.ndarray  # (N,) int64, each >= 1
    labels: np.ndarray | None  # (N,) object array of original label values, or None
    ids: np.ndarray | None  # (N,) object array of id values, or None
    schema: Schema  # how the file was read
    notes: list[str] = field(default_factory=list)  # messages for the user's stderr
    missing: int = 0  # NaN values kept in x (only with allow_missing=True)


# ----------------------------------------------------------------------------
# Messages


def _q(value: object, limit: int = 40) -> str:
    """A value quoted for a one-line message, truncated."""
    s = value if isinstance(value, str) else str(value)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return repr(s)


def _names(names: list, limit: int = 8) -> str:
    """Quoted names, abbreviated after `limit`."""
    shown = ", ".join(_q(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", … ({len(names)} in all)"
    return shown or "(none)"


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# ----------------------------------------------------------------------------
# Reading files


@dataclass
class _Table:
    """A file's contents plus what is needed to point the user at a row."""

    df: pd.DataFrame  # columns are str, index is 0..n-1
    arrow: pa.Table | None  # the same columns for Parquet input (list columns are read from here)
    name: str  # the path as the user gave it
    parts: list[tuple[str, int]]  # folder input: (file name, rows) in reading order
    notes: list[str]  # things done while reading (columns dropped, ...)

    def row(self, i: int) -> str:
        """The user-facing position of 0-based data row `i`."""
        if len(self.parts) > 1:
            for part, n in self.parts:
                if i < n:
                    return f"row {i + 1} of {part}"
                i -= n
        return f"row {i + 1}"

    def rows(self, idx: np.ndarray, limit: int = 5) -> str:
        shown = ", ".join(self.row(int(i)).removeprefix("row ") for i in idx[:limit])
        more = ", …" if len(idx) > limit else ""
        return ("row " if len(idx) == 1 else "rows ") + shown + more

    def is_list(self, col: str) -> bool:
        return self.arrow is not None and _is_list_type(self.arrow.schema.field(col).type)


def _is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, gzipped CSV, Parquet file or folder of Parquet files into a DataFrame.

    Column names become strings; Parquet list columns stay lists (numpy arrays).
    A CSV's saved pandas index (a first column with no name) and empty unnamed
    columns (trailing commas) are dropped.

    Args:
        path: a `.csv`, `.csv.gz` or `.parquet` file, or a folder of `.parquet`
            files read in sorted file-name order and concatenated.

    Raises:
        DataError: the file is missing, empty, unreadable or not what its name says.
    """
    return _read(path).df


def _read(path: str | Path) -> _Table:
    name = str(path)
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as e:
        raise DataError(f"{name}: cannot look up this path ({_first_line(e)}); check the path") from None
    if not exists:
        raise DataError(f"{name}: no such file or folder; check the path")
    if is_dir:
        return _read_parquet_folder(p, name)
    low = p.name.lower()
    if low.endswith(".csv.gz"):
        kind = "csv.gz"
    elif low.endswith(".csv"):
        kind = "csv"
    elif low.endswith(".parquet"):
        kind = "parquet"
    else:
        found = f"{p.suffix!r}" if p.suffix else "no extension"
        raise DataError(f"{name}: unsupported file type ({found}); use {SUPPORTED}")
    _check_not_empty(p, name)
    if kind == "parquet":
        return _table_from_arrow(_read_parquet_file(p, name), name, [])
    return _read_csv(p, name, gz=kind == "csv.gz")


def _check_not_empty(p: Path, name: str) -> None:
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({_first_line(e)}); check the file's permissions") from None
    if size == 0:
        raise DataError(f"{name}: the file is empty (0 bytes); check it was written completely")


def _open_bytes(p: Path, gz: bool):
    return gzip.open(p, "rb") if gz else open(p, "rb")


def _read_csv(p: Path, name: str, gz: bool) -> _Table:
    try:
        with _open_bytes(p, gz) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        what = "not a readable gzip file" if gz else "cannot be read"
        raise DataError(f"{name}: {what} ({_first_line(e)}); check the file is complete") from None
    except Exception as e:  # zlib.error and the like
        raise DataError(f"{name}: not a readable gzip file ({_first_line(e)}); check the file is complete") from None
    if not head.strip():
        raise DataError(f"{name}: holds no data (only blank lines); it needs a header row and data rows")
    if b"\x00" in head:
        raise DataError(f"{name}: not a text CSV file (it contains binary NUL bytes){_binary_hint(head)}")
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        raise DataError(f"{name}: not UTF-8 text ({_bad_utf8(p, gz)}){_binary_hint(head, '; save it as UTF-8')}") from None
    first = text.lstrip("\r\n").partition("\n")[0]
    if "," not in first and (";" in first or "\t" in first):  # checked before parsing: decimal commas would make the rows look ragged
        how = ("';' (decimal commas?)", " with '.' as the decimal mark") if ";" in first else ("tabs", "")
        raise DataError(f"{name}: looks separated by {how[0]}, not commas; save it as comma-separated CSV{how[1]}")
    try:
        header = [h for h in next(csv.reader(io.StringIO(text)), []) if h]  # pandas names blanks "Unnamed: N"
    except csv.Error:
        header = []
    dup = pd.Index(header)[pd.Index(header).duplicated()].unique().tolist()
    if dup:  # pandas would silently rename the second one to "a.1"
        raise DataError(f"{name}: column names repeat in the header ({_names(dup)}); give every column its own name")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = pd.read_csv(
                p,
                sep=",",
                encoding="utf-8",
                index_col=False,
                keep_default_na=False,  # only blank cells are empty: "NA" or "None" may be a class name
                na_values=[""],
                low_memory=False,
                compression="gzip" if gz else None,
            )
        except UnicodeDecodeError:
            raise DataError(f"{name}: not UTF-8 text ({_bad_utf8(p, gz)}); save the file as UTF-8") from None
        except pd.errors.EmptyDataError:
            raise DataError(f"{name}: holds no data (no header row); it needs a header row and data rows") from None
        except pd.errors.ParserError as e:
            raise _ragged(p, name, gz, e, nonempty_only=False) from None
        except (EOFError, OSError) as e:  # gzip data cut short, read errors
            raise DataError(f"{name}: cannot be read to the end ({_first_line(e)}); check the file is complete") from None
        except Exception as e:
            raise DataError(
                f"{name}: not a readable CSV file ({_first_line(e)}); check it is comma-separated UTF-8 text"
            ) from None
    if any("does not match length of data" in str(w.message) for w in caught):
        # pandas dropped fields beyond the header; fail if any of them held a value
        err = _ragged(p, name, gz, None, nonempty_only=True)
        if err is not None:
            raise err

    df.columns = [str(c) for c in df.columns]
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"{name}: has a header ({_plural(len(df.columns), 'column')}) but no data rows; add rows")
    df, notes = _drop_unnamed(df, name)
    _check_unique_names(list(df.columns), name)
    return _Table(df, None, name, [], notes)


def _binary_hint(head: bytes, otherwise: str = "; check it is a comma-separated text file") -> str:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "; it looks like UTF-16 text: save it as UTF-8"
    if head.startswith(b"PAR1"):
        return "; it looks like Parquet: name it .parquet"
    if head.startswith(b"\x1f\x8b"):
        return "; it looks gzip-compressed: name it .csv.gz"
    if head.startswith(b"PK"):
        return "; it looks like a ZIP or Excel file: export it as CSV"
    return otherwise


def _bad_utf8(p: Path, gz: bool) -> str:
    """Where the first undecodable byte is (error path only: a plain loop is fine)."""
    try:
        with _open_bytes(p, gz) as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    return f"byte 0x{line[e.start]:02x} on line {lineno} is not valid UTF-8"
    except Exception:
        pass
    return "it has bytes that are not valid UTF-8"


def _ragged(p: Path, name: str, gz: bool, exc: Exception | None, nonempty_only: bool) -> DataError | None:
    """The error for the first row with more fields than the header (error path: a plain loop)."""
    try:
        with _open_bytes(p, gz) as raw:
            text = (line.decode("utf-8", errors="replace") for line in raw)
            reader = csv.reader(text)
            header = next(reader, [])
            n = len(header)
            row = 0
            for rec in reader:
                if not rec:
                    continue  # pandas skips blank lines, so they do not count as rows
                row += 1
                extra = rec[n:]
                if len(rec) > n and (not nonempty_only or any(f.strip() for f in extra)):
                    return DataError(
                        f"{name}: row {row} has {len(rec)} fields but the header names {n} columns; "
                        "remove the extra fields (a trailing comma?) or add names to the header"
                    )
    except Exception:
        pass
    if exc is None:
        return None
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if m:
        return DataError(
            f"{name}: line {m.group(2)} has {m.group(3)} fields but the header names {m.group(1)} columns; "
            "make every row have as many fields as the header"
        )
    return DataError(f"{name}: not a readable CSV file ({_first_line(exc)}); check it is comma-separated UTF-8 text")


_UNNAMED = re.compile(r"^Unnamed: \d+(\.\d+)?$")


def _drop_unnamed(df: pd.DataFrame, name: str) -> tuple[pd.DataFrame, list[str]]:
    """Drop a saved pandas index and empty unnamed columns; other unnamed columns are an error."""
    notes, index, empty = [], [], []
    for pos, col in enumerate(df.columns):
        if not _UNNAMED.match(col):
            continue
        s = df[col]
        if pos == 0 and pd.api.types.is_integer_dtype(s.dtype) and s.is_unique and s.is_monotonic_increasing:
            index.append(col)
            notes.append(f"{name}: ignored the first column: it has no name and holds increasing integers (a saved row index)")
        elif _missing_mask(s).all():
            empty.append(col)
        else:
            i = int(np.flatnonzero(~_missing_mask(s))[0])
            raise DataError(
                f"{name}: column {pos + 1} has no name in the header but holds values "
                f"(row {i + 1}: {_q(s.iloc[i])}); give it a name in the header or remove it"
            )
    if empty:
        where = ", ".join(str(df.columns.get_loc(c) + 1) for c in empty)
        notes.append(
            f"{name}: ignored empty {'column' if len(empty) == 1 else 'columns'} {where} with no name in the header "
            "(a trailing comma?)"
        )
    drop = index + empty
    return (df.drop(columns=drop) if drop else df), notes


def _check_unique_names(cols: list[str], name: str) -> None:
    seen = pd.Index(cols)
    if not seen.is_unique:
        dup = seen[seen.duplicated()].unique().tolist()
        raise DataError(f"{name}: column names repeat ({_names(dup)}); give every column its own name")


def _read_parquet_file(p: Path, name: str) -> pa.Table:
    try:
        with open(p, "rb") as fh:
            return pq.ParquetFile(fh).read()
    except Exception as e:
        raise DataError(
            f"{name}: not a readable Parquet file ({_first_line(e)}); "
            f"check the file is complete and really Parquet{_text_hint(p)}"
        ) from None


def _text_hint(p: Path) -> str:
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
        head.decode("utf-8")
    except Exception:
        return ""
    return " (it looks like text: if it is CSV, name it .csv)" if b"," in head else ""


_INDEX_COL = re.compile(r"^__index_level_\d+__$")


def _clean_arrow(t: pa.Table) -> pa.Table:
    """Drop pandas index columns and metadata, so every file reads the same plain way."""
    keep = [i for i, n in enumerate(t.column_names) if not _INDEX_COL.match(str(n))]
    if len(keep) != t.num_columns:
        t = t.select(keep)
    return t.replace_schema_metadata(None)


def _table_from_arrow(t: pa.Table, name: str, parts: list[tuple[str, int]]) -> _Table:
    t = _clean_arrow(t)
    cols = [str(c) for c in t.column_names]
    if not cols:
        raise DataError(f"{name}: has no columns; check the file was written completely")
    _check_unique_names(cols, name)
    if t.num_rows == 0:
        raise DataError(f"{name}: has columns ({_names(cols)}) but no rows; add rows")
    try:
        df = t.to_pandas()
    except Exception as e:
        raise DataError(f"{name}: has column types this tool cannot read ({_first_line(e)}); store numbers and strings") from None
    df.columns = cols
    df = df.reset_index(drop=True)
    return _Table(df, t.rename_columns(cols), name, parts, [])


def _read_parquet_folder(p: Path, name: str) -> _Table:
    try:
        files = sorted(
            (f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(".parquet") and f.name[:1] not in "._"),
            key=lambda f: f.name,
        )
    except OSError as e:
        raise DataError(f"{name}: cannot list this folder ({_first_line(e)}); check its permissions") from None
    if not files:
        raise DataError(
            f"{name}: is a folder with no .parquet files in it (subfolders are not searched); use {SUPPORTED}"
        )
    tables, parts = [], []
    for f in files:
        shown = f"{name.rstrip('/')}/{f.name}"
        _check_not_empty(f, shown)
        t = _clean_arrow(_read_parquet_file(f, shown))
        if tables and not t.schema.equals(tables[0].schema):
            raise DataError(f"{shown}: {_schema_diff(tables[0].schema, t.schema, files[0].name)}; all files in the folder must share one schema")
        tables.append(t)
        parts.append((f.name, t.num_rows))
    try:
        table = pa.concat_tables(tables)
    except Exception as e:
        raise DataError(f"{name}: the files in this folder cannot be combined ({_first_line(e)}); give them one schema") from None
    return _table_from_arrow(table, name, parts)


def _schema_diff(first: pa.Schema, other: pa.Schema, first_name: str) -> str:
    a = {f.name: f.type for f in first}
    b = {f.name: f.type for f in other}
    bits = []
    missing = [n for n in a if n not in b]
    extra = [n for n in b if n not in a]
    if missing:
        bits.append(f"lacks {_names(missing, 4)}")
    if extra:
        bits.append(f"has extra {_names(extra, 4)}")
    for n in a:
        if n in b and a[n] != b[n]:
            bits.append(f"column {_q(n)} is {b[n]} here but {a[n]} in {first_name}")
            break
    if not bits:
        bits.append("has the same columns in a different order")
    return f"columns differ from {first_name} (" + "; ".join(bits) + ")"


# ----------------------------------------------------------------------------
# Cell values


def _missing_mask(s: pd.Series, na_strings: frozenset = NA_STRINGS) -> np.ndarray:
    """True where a cell is empty: null, NaN, or one of `na_strings` (blank, 'NA', ...)."""
    m = s.isna().to_numpy(dtype=bool, copy=True)
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype) or isinstance(s.dtype, pd.CategoricalDtype):
        rest = ~m
        if rest.any():
            txt = s[rest].astype(str).str.strip().str.lower()
            m[rest] = txt.isin(na_strings).to_numpy(dtype=bool)
    return m


def _is_plain_numeric(dtype) -> bool:
    return pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )


def _parse_numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN where empty or unparseable, mask of cells that are not empty but unparseable)."""
    missing = _missing_mask(s)
    if _is_plain_numeric(s.dtype):
        vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return vals, np.zeros(len(s), dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(s.dtype) or pd.api.types.is_timedelta64_dtype(s.dtype):
        return np.full(len(s), np.nan), ~missing
    obj = s.astype(object)
    try:
        vals = pd.to_numeric(obj, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    except (TypeError, ValueError, OverflowError):
        vals = np.array([_one_float(v) for v in obj], dtype=np.float64)
    # Dates, lists and the like sometimes convert to numbers; they are not numbers to us.
    odd = obj.map(lambda v: v is not None and not isinstance(v, _NUMBER_LIKE))
    odd = odd.to_numpy(dtype=bool) & ~missing
    vals[odd] = np.nan
    bad = np.isnan(vals) & ~missing
    return vals, bad


_NUMBER_LIKE = (str, bytes, int, float, bool, np.number, np.bool_, decimal.Decimal)


def _one_float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except Exception:
        return np.nan


def _to_float32(vals: np.ndarray, table: _Table, col: str, where: Callable[[int], str]) -> np.ndarray:
    """Cast one column's float64 values to float32; inf, or a value too large for float32, is an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        v32 = vals.astype(np.float32)
    inf = np.isinf(v32)
    if inf.any():
        k = int(np.flatnonzero(inf)[0])
        raise DataError(
            f"{table.name}: column {_q(col)} has an infinite or too large value at {where(k)} ({vals[k]:g}); "
            f"replace it with a finite number (|x| < {FLOAT32_MAX:.1e})"
        )
    return v32


def _missing_error(table: _Table, per_col: list[tuple[str, int, str]]) -> DataError:
    col, count, at = per_col[0]
    more = sum(c for _, c, _ in per_col[1:])
    tail = f", and {more} more in other columns" if more else ""
    return DataError(
        f"{table.name}: column {_q(col)} has {_plural(count, 'missing value')} (first at {at}{tail}); "
        "fill them in, or pass --allow-missing to fill them with the training mean"
    )


def _numeric_columns(
    table: _Table, cols: list[str], where: Callable[[int], str], allow_missing: bool, layout: str
) -> tuple[np.ndarray, int, list[str]]:
    """(rows, len(cols)) float32 for per-row numeric columns, the NaN count, and the columns with NaN."""
    out = np.empty((len(table.df), len(cols)), dtype=np.float32)
    missing: list[tuple[str, int, str]] = []
    for j, col in enumerate(cols):
        if table.is_list(col):
            raise DataError(
                f"{table.name}: column {_q(col)} holds lists, but the {layout} layout needs one number per cell; "
                "use --layout list, or leave it out with --features"
            )
        vals, bad = _parse_numbers(table.df[col])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{table.name}: column {_q(col)} should hold numbers but {where(k)} has "
                f"{_q(table.df[col].iloc[k])}; fix that value or leave the column out with --features"
            )
        out[:, j] = _to_float32(vals, table, col, where)
        nan = np.isnan(vals)
        if nan.any():
            missing.append((col, int(nan.sum()), where(int(np.flatnonzero(nan)[0]))))
    if missing and not allow_missing:
        raise _missing_error(table, missing)
    return out, sum(c for _, c, _ in missing), [c for c, _, _ in missing]


def _python_values(s: pd.Series) -> np.ndarray:
    """An object array of plain Python values (str, int, float, ...)."""
    out = np.empty(len(s), dtype=object)
    out[:] = s.tolist()
    return out


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# ----------------------------------------------------------------------------
# Labels and ids


def _row_labels(table: _Table, col: str) -> np.ndarray:
    """The label of every row as Python values; empty labels are an error."""
    name, s = table.name, table.df[col]
    if table.is_list(col):
        raise DataError(f"{name}: label column {_q(col)} holds lists; the label must be one class per row (check --label)")
    missing = _missing_mask(s, NAME_NA_STRINGS)
    if missing.all():
        raise DataError(f"{name}: label column {_q(col)} is empty in every row; check that --label names the right column")
    if missing.any():
        idx = np.flatnonzero(missing)
        raise DataError(
            f"{name}: label column {_q(col)} is empty in {_plural(len(idx), 'row')} ({table.rows(idx)}); "
            "fill in the labels or remove those rows"
        )
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64)
        if np.isfinite(v).all() and np.all(np.mod(v, 1) == 0) and np.all(np.abs(v) < 2**53):
            s = pd.Series(v.astype(np.int64))  # labels written as 1.0, 2.0 are the classes 1, 2
    return _python_values(s)


def _factorize(values: np.ndarray, table: _Table, what: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        codes, uniques = pd.factorize(values, sort=False)
    except TypeError:
        raise DataError(
            f"{table.name}: {what} column {_q(col)} holds values that cannot be compared "
            f"(e.g. {_q(values[0])}); use strings or numbers"
        ) from None
    return codes.astype(np.int64), uniques


def _row_ids(table: _Table, col: str) -> np.ndarray:
    name, s = table.name, table.df[col]
    if table.is_list(col):
        raise DataError(f"{name}: id column {_q(col)} holds lists; an id must be one value per row (check --id-col)")
    missing = _missing_mask(s, NAME_NA_STRINGS)
    if missing.any():
        idx = np.flatnonzero(missing)
        raise DataError(
            f"{name}: id column {_q(col)} is empty in {_plural(len(idx), 'row')} ({table.rows(idx)}); "
            "every row needs an id"
        )
    return _python_values(s)


def _time_key(table: _Table, col: str) -> np.ndarray:
    """A float64 sort key for the time column: numbers, dates or ISO 8601 strings."""
    name, s = table.name, table.df[col]
    missing = _missing_mask(s)
    if missing.any():
        idx = np.flatnonzero(missing)
        raise DataError(
            f"{name}: time column {_q(col)} is empty in {_plural(len(idx), 'row')} ({table.rows(idx)}); "
            "every row needs a time"
        )
    if (
        pd.api.types.is_datetime64_any_dtype(s.dtype)
        or pd.api.types.is_timedelta64_dtype(s.dtype)
        or pd.api.types.is_integer_dtype(s.dtype)
    ):
        return pd.factorize(s, sort=True)[0].astype(np.float64)  # ranks: exact even for int64 nanoseconds
    if table.is_list(col):
        raise DataError(f"{name}: time column {_q(col)} holds lists; it needs one number or date per row")
    vals, bad = _parse_numbers(s)
    if not bad.any():
        return vals
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dates = pd.to_datetime(s.astype(object), errors="coerce", format="ISO8601", utc=True)
        if not dates.isna().any():
            return pd.factorize(dates, sort=True)[0].astype(np.float64)
        not_date = dates.isna().to_numpy()
        if not (bad & not_date).any():  # every cell is a number or a date, but not all the same kind
            a, b = int(np.flatnonzero(~bad)[0]), int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{name}: time column {_q(col)} mixes numbers ({table.row(a)}: {_q(s.iloc[a])}) and dates "
                f"({table.row(b)}: {_q(s.iloc[b])}); use one kind throughout"
            )
        bad = bad & not_date  # the first cell that is neither
    except DataError:
        raise
    except Exception:
        pass
    k = int(np.flatnonzero(bad)[0])
    raise DataError(
        f"{name}: time column {_q(col)} should hold numbers or ISO dates but {table.row(k)} has {_q(s.iloc[k])}; "
        "fix the value or pick another column with --time-col"
    )


# ----------------------------------------------------------------------------
# Building sequences


def _labels_per_group(
    table: _Table, col: str, row_labels: np.ndarray, codes: np.ndarray, order: np.ndarray,
    starts: np.ndarray, first_row: np.ndarray, ids: np.ndarray,
) -> np.ndarray:
    """One label per long-layout sequence; a label that changes within a sequence is an error."""
    lc, _ = _factorize(row_labels, table, "label", col)
    sorted_lc = lc[order]
    lo = np.minimum.reduceat(sorted_lc, starts)
    hi = np.maximum.reduceat(sorted_lc, starts)
    bad = np.flatnonzero(lo != hi)
    if len(bad):
        g = int(bad[0])
        rows = np.flatnonzero(codes == g)
        other = rows[lc[rows] != lc[rows[0]]][0]
        raise DataError(
            f"{table.name}: the label changes within id {_q(ids[g])} ({_q(row_labels[rows[0]])} at "
            f"{table.row(int(rows[0]))}, {_q(row_labels[other])} at {table.row(int(other))}); "
            "each sequence needs a single label"
        )
    return row_labels[first_row]


def _build_wide(table: _Table, s: Schema, allow_missing: bool):
    ids = _row_ids(table, s.id_col) if s.id_col is not None and s.id_col in table.df.columns else None
    if ids is not None:
        where = lambda k: f"{table.row(k)} (id {_q(ids[k])})"  # noqa: E731
    else:
        where = table.row
    vals, nmissing, nan_cols = _numeric_columns(table, s.features, where, allow_missing, "wide")
    x = vals[:, :, None]  # (N, T, 1)
    lengths = np.full(len(vals), vals.shape[1], dtype=np.int64)
    return x, lengths, ids, nmissing, nan_cols


def _build_long(table: _Table, s: Schema, allow_missing: bool, row_labels: np.ndarray | None, label: str | None):
    name = table.name
    row_ids = _row_ids(table, s.id_col)
    codes, uniques = _factorize(row_ids, table, "id", s.id_col)  # codes in order of first appearance
    n_ids = len(uniques)
    n = len(codes)
    if s.time_col is not None:
        tkey = _time_key(table, s.time_col)
        order = np.lexsort((tkey, codes))  # by id, then time; stable
        sc, st = codes[order], tkey[order]
        dup = np.flatnonzero((sc[1:] == sc[:-1]) & (st[1:] == st[:-1]))
        if len(dup):
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise DataError(
                f"{name}: id {_q(row_ids[a])} has two rows for time {_q(table.df[s.time_col].iloc[a])} "
                f"({table.row(a)} and {table.row(b)}); each (id, time) pair must appear once"
            )
    else:
        run_starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1])
        if len(run_starts) != n_ids:
            again = pd.Series(codes[run_starts]).duplicated().to_numpy()
            k = int(run_starts[np.argmax(again)])
            prev = int(np.flatnonzero(codes[:k] == codes[k])[-1])
            raise DataError(
                f"{name}: no time column, and the rows of id {_q(row_ids[k])} are not together "
                f"({table.row(prev)}, then again at {table.row(k)}), so the order of its steps is unclear; "
                "pass --time-col NAME to order them"
            )
        order = np.arange(n)
    lengths = np.bincount(codes, minlength=n_ids).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    first_row = np.unique(codes, return_index=True)[1]
    ids = _objects(list(uniques))  # factorize of an object array keeps the Python values

    where = lambda k: f"{table.row(k)} (id {_q(row_ids[k])})"  # noqa: E731
    vals, nmissing, nan_cols = _numeric_columns(table, s.features, where, allow_missing, "long")
    sc = codes[order]
    pos = np.arange(n) - starts[sc]
    x = np.zeros((n_ids, int(lengths.max()), len(s.features)), dtype=np.float32)  # (N, T, C)
    x[sc, pos] = vals[order]
    labels = None
    if row_labels is not None:
        labels = _labels_per_group(table, label, row_labels, codes, order, starts, first_row, ids)
    return x, lengths, ids, nmissing, nan_cols, labels


def _csv_has_no_lists(name: str) -> DataError:
    return DataError(
        f"{name}: the list layout needs Parquet list columns (one list of numbers per row per channel), "
        "which a CSV file cannot hold; use --layout wide or --layout long"
    )


def _build_list(table: _Table, s: Schema, allow_missing: bool):
    name = table.name
    ids = _row_ids(table, s.id_col) if s.id_col is not None and s.id_col in table.df.columns else None

    def where(k: int) -> str:
        return f"{table.row(k)} (id {_q(ids[k])})" if ids is not None else table.row(k)

    if table.arrow is None:
        raise _csv_has_no_lists(name)
    n = len(table.df)
    lens = np.zeros((n, len(s.features)), dtype=np.int64)
    flat: list[np.ndarray] = []
    for j, col in enumerate(s.features):
        t = table.arrow.schema.field(col).type
        if not _is_list_type(t):
            ex = table.df[col].iloc[0]
            raise DataError(
                f"{name}: column {_q(col)} holds single values ({t}, row 1: {_q(ex)}), not lists; the list layout "
                "needs a list of numbers per row in each channel column (or use --layout wide / long)"
            )
        vt = t.value_type
        if not (pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt) or pa.types.is_decimal(vt)):
            raise DataError(f"{name}: column {_q(col)} holds lists of {vt}; channel lists must hold numbers")
        arr = table.arrow.column(col).combine_chunks()
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            k = int(np.flatnonzero(nulls)[0])
            raise DataError(
                f"{name}: column {_q(col)} has no list at {where(k)}; every row needs a list in each channel column"
            )
        lens[:, j] = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        try:
            v = pc.fill_null(pc.cast(arr.flatten(), pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        except Exception as e:
            raise DataError(f"{name}: column {_q(col)} has values that are not numbers ({_first_line(e)})") from None
        flat.append(v)
    uneven = np.flatnonzero((lens != lens[:, :1]).any(axis=1))
    if len(uneven):
        k = int(uneven[0])
        j = int(np.flatnonzero(lens[k] != lens[k, 0])[0])
        raise DataError(
            f"{name}: at {where(k)} the channels have different lengths ({_q(s.features[0])}: {lens[k, 0]}, "
            f"{_q(s.features[j])}: {lens[k, j]}); within a row every channel must have the same length"
        )
    lengths = lens[:, 0].copy()
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        k = int(empty[0])
        raise DataError(
            f"{name}: {where(k)} has empty lists (a sequence of length 0); every sequence needs at least one step, "
            "so remove that row"
        )
    rows = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    x = np.zeros((n, int(lengths.max()), len(s.features)), dtype=np.float32)  # (N, T, C)
    missing: list[tuple[str, int, str]] = []
    for j, col in enumerate(s.features):
        step_where = lambda k: f"{where(int(rows[k]))}, step {int(pos[k]) + 1}"  # noqa: E731
        x[rows, pos, j] = _to_float32(flat[j], table, col, step_where)
        nan = np.isnan(flat[j])
        if nan.any():
            missing.append((col, int(nan.sum()), step_where(int(np.flatnonzero(nan)[0]))))
    if missing and not allow_missing:
        raise _missing_error(table, missing)
    return x, lengths, ids, sum(c for _, c, _ in missing), [c for c, _, _ in missing]


# ----------------------------------------------------------------------------
# Choosing columns


def _find_by_name(cols: list[str], candidates: tuple[str, ...], exclude: set) -> str | None:
    lower = {}
    for c in cols:
        if c not in exclude:
            lower.setdefault(c.strip().lower(), c)
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _missing_label_error(table: _Table, label: str) -> DataError:
    cols = list(table.df.columns)
    guess = [c for c in cols if c.strip().lower() in {label.lower(), "label", "labels", "class", "target", "y", "category"}]
    hint = f" (perhaps --label {guess[0]}?)" if guess else ""
    return DataError(
        f"{table.name}: no label column {_q(label)}; the file has columns {_names(cols)}; "
        f"pass --label NAME to name the label column{hint}"
    )


def _check_options(label, id_col, time_col, features) -> None:
    for opt, v in (("label", label), ("id_col", id_col), ("time_col", time_col)):
        if v is not None and not isinstance(v, str):
            raise UsageError(f"{opt} must be a column name, found {type(v).__name__} {v!r}")
    if features is not None:
        if isinstance(features, str) or not all(isinstance(f, str) for f in features):
            raise UsageError(f"features must be a list of column names, found {features!r}")
        if not features:
            raise UsageError("features is empty; name at least one column, or leave it out to use all numeric columns")
        dup = pd.Index(features)[pd.Index(features).duplicated()].unique().tolist()
        if dup:
            raise UsageError(f"features names a column more than once: {_names(dup)}")
    roles = {"label": label, "id": id_col, "time": time_col}
    named = [(r, v) for r, v in roles.items() if v is not None]
    for i, (r1, v1) in enumerate(named):
        for r2, v2 in named[i + 1 :]:
            if v1 == v2:
                raise UsageError(f"column {_q(v1)} cannot be both the {r1} and the {r2} column")
        if features is not None and v1 in features:
            raise UsageError(f"column {_q(v1)} is the {r1} column, so it cannot also be a feature")


def _count_distinct(table: _Table, col: str) -> int:
    try:
        return int(table.df[col].nunique(dropna=False))
    except TypeError:
        raise DataError(
            f"{table.name}: id column {_q(col)} holds values that cannot be compared; use strings or numbers"
        ) from None


def _is_numberish(s: pd.Series) -> bool:
    """Whether a column is meant to hold numbers: numeric dtype, or at least one cell parses as a number."""
    if _is_plain_numeric(s.dtype):
        return True
    if pd.api.types.is_datetime64_any_dtype(s.dtype) or pd.api.types.is_timedelta64_dtype(s.dtype):
        return False
    vals, _ = _parse_numbers(s)
    return bool((~np.isnan(vals)).any())


def _detect(
    table: _Table, layout: str, label: str | None, id_col: str | None, time_col: str | None,
    features: list[str] | None, need_labels: bool,
) -> tuple[Schema, list[str], str]:
    """Work out the schema of a file read for training (no saved schema)."""
    name, df = table.name, table.df
    cols = list(df.columns)
    notes: list[str] = []
    for opt, v in (("--id-col", id_col), ("--time-col", time_col)):
        if v is not None and v not in cols:
            raise DataError(f"{name}: no column {_q(v)} (given by {opt}); the file has columns {_names(cols)}")
    if features is not None:
        absent = [f for f in features if f not in cols]
        if absent:
            raise DataError(
                f"{name}: --features names columns the file lacks: {_names(absent)}; "
                f"the file has columns {_names(cols)}"
            )
    has_label = label is not None and label in cols
    if need_labels and not has_label:
        if label is None:
            raise UsageError("no label column given; pass --label NAME")
        raise _missing_label_error(table, label)
    lists = {c for c in cols if table.is_list(c)}
    taken = {c for c in (label, id_col, time_col) if c is not None} | set(features or []) | lists
    candidates = features if features is not None else cols
    list_cols = [c for c in candidates if c in lists and c not in (label, id_col)]

    found_id = id_col if id_col is not None else _find_by_name(cols, ID_NAMES, taken)
    if layout == "auto":
        n_ids = _count_distinct(table, found_id) if found_id is not None else len(df)
        if list_cols:
            layout, why = "list", f"{_names(list_cols, 4)} hold lists"
        elif time_col is not None:
            layout, why = "long", "--time-col was given"
        elif n_ids < len(df):
            layout, why = "long", f"column {_q(found_id)} repeats its values, {_plural(n_ids, 'id')} over {len(df):,} rows"
        else:
            why = "one sample per row: no list columns and no id column with repeated values"
            layout = "wide"
        notes.append(f"{name}: read as {layout} layout ({why}); pass --layout to choose another")
    if time_col is not None and layout != "long":
        raise UsageError(f"--time-col applies to the long layout only, not {layout}")
    if layout == "list" and table.arrow is None:
        raise _csv_has_no_lists(name)
    if layout == "long" and found_id is None:
        raise DataError(
            f"{name}: the long layout needs an id column naming each sequence, and no column is named "
            f"{', '.join(ID_NAMES[:4])}, …; pass --id-col NAME (columns: {_names(cols)})"
        )

    found_time = None
    if layout == "long":
        found_time = time_col if time_col is not None else _find_by_name(cols, TIME_NAMES, taken | {found_id})
    by_name = []
    if found_id is not None and id_col is None:
        by_name.append(f"{_q(found_id)} as the {'sequence id' if layout == 'long' else 'row id'}")
    if found_time is not None and time_col is None:
        by_name.append(f"{_q(found_time)} to order the steps")
    if by_name:
        opts = " / ".join(o for o, used in (("--id-col", id_col is None and found_id), ("--time-col", time_col is None and found_time)) if used)
        notes.append(f"{name}: using column {' and '.join(by_name)} (found by name; pass {opts} to choose others)")
    if layout == "long" and found_time is None:
        notes.append(
            f"{name}: no time column (none named {', '.join(TIME_NAMES[:4])}, …); steps are taken in file order "
            "within each id (pass --time-col to order them by a column)"
        )

    used = {c for c in (label, found_id, found_time) if c is not None and c in cols}
    if features is None:
        rest = [c for c in cols if c not in used]
        if layout == "list":
            features = [c for c in rest if table.is_list(c)]
            why_unused = "that do not hold lists"
        else:
            features = [c for c in rest if not table.is_list(c) and _is_numberish(df[c])]
            why_unused = "that are not numeric"
        if not features:
            kind = "list" if layout == "list" else "numeric"
            raise DataError(
                f"{name}: no {kind} feature columns left after setting aside "
                f"{_names(sorted(used, key=cols.index)) if used else 'nothing'}; the file has columns "
                f"{_names(cols)}; pass --features or check --label / --id-col"
            )
    else:
        why_unused = "not named by --features"
    return Schema(layout, label if has_label else None, found_id, found_time, list(features)), notes, why_unused


def _from_schema(
    table: _Table, s: Schema, need_labels: bool
) -> Schema:
    """Check a file against a saved schema; missing columns are an error."""
    name, cols = table.name, list(table.df.columns)
    present = set(cols)
    if need_labels:
        if s.label is None:
            raise UsageError("the model's schema has no label column; pass --label NAME to read labels")
        if s.label not in present:
            raise _missing_label_error(table, s.label)
    absent = [f for f in s.features if f not in present]
    if absent and s.layout == "wide":
        have = len(s.features) - len(absent)
        raise DataError(
            f"{name}: has {have} of the {len(s.features)} time-step columns the model needs "
            f"(missing {_names(absent, 4)}); give the file the training data's columns "
            f"(the file has {_names(cols)}), or pass --features"
        )
    if absent:
        raise DataError(
            f"{name}: lacks columns the model needs: {_names(absent)}; the file has {_names(cols)}; "
            "rename the columns to match the training data, or pass --features"
        )
    for role, col in (("id", s.id_col), ("time", s.time_col)):
        if col is not None and col not in present and (s.layout == "long"):
            raise DataError(
                f"{name}: lacks the {role} column {_q(col)} the model's schema needs; the file has {_names(cols)}; "
                f"rename a column to {_q(col)} or pass --{role}-col"
            )
    time_col = s.time_col if s.layout == "long" else None
    return Schema(s.layout, s.label if s.label in present else None, s.id_col, time_col, list(s.features))


# ----------------------------------------------------------------------------
# Entry point


def load(
    path: str | Path,
    *,
    schema: Schema | None = None,
    layout: str = "auto",
    label: str | None = "label",
    id_col: str | None = None,
    time_col: str | None = None,
    features: list[str] | None = None,
    need_labels: bool = True,
    allow_missing: bool = False,
    min_classes: int = 1,
    min_length: int = 1,
) -> SequenceData:
    """Read a data file into padded sequences.

    Args:
        path: a `.csv`, `.csv.gz` or `.parquet` file, or a folder of `.parquet` files.
        schema: read the file as this saved schema says (evaluate / predict).
            The keyword arguments below still replace single fields when they
            differ from their defaults.
        layout: "auto", "wide", "long" or "list".
        label: the label column.
        id_col: the sequence id column; found by name (id, series_id, ...) when None.
        time_col: long layout: the column ordering the steps; found by name
            (time, t, ...) when None, else file order.
        features: the feature (wide) or channel (long/list) columns, in order;
            by default every numeric (list: every list) column that is not
            the label, id or time column.
        need_labels: read labels; when False a label column is ignored.
        allow_missing: keep empty cells as NaN (counted in `missing`) instead of failing.
        min_classes: fewest distinct labels accepted (training passes 2).
        min_length: fewest steps a sequence may have (the CLI passes what the model needs).

    Raises:
        DataError: the file cannot be read or does not fit the layout.
        UsageError: an option has a value that cannot be used.
    """
    if layout not in ("auto", *LAYOUTS):
        raise UsageError(f"unknown layout {layout!r}; use one of auto, {', '.join(LAYOUTS)}")
    find_time = False  # a model trained on another layout, read as long: find the time column as training would
    if schema is not None:
        if schema.layout not in LAYOUTS:
            raise UsageError(f"the schema's layout {schema.layout!r} is not one of {', '.join(LAYOUTS)}")
        find_time = layout == "long" and schema.layout != "long" and time_col is None
        if features is not None and len(features) != len(schema.features):
            raise DataError(
                f"{path}: --features names {len(features)} column(s) but the model was trained on "
                f"{len(schema.features)} ({_names(schema.features)}); name that many columns, in that order"
            )
        schema = Schema(
            layout if layout != "auto" else schema.layout,
            label if label != "label" else schema.label,
            id_col if id_col is not None else schema.id_col,
            time_col if time_col is not None else schema.time_col,
            list(features) if features is not None else list(schema.features),
        )
        _check_options(schema.label, schema.id_col, schema.time_col, schema.features)
    else:
        _check_options(label, id_col, time_col, features)

    table = _read(path)
    notes = list(table.notes)
    if schema is not None:
        if find_time:
            taken = {schema.label, schema.id_col, *schema.features}
            schema.time_col = _find_by_name(list(table.df.columns), TIME_NAMES, taken)
            if schema.time_col is not None:
                notes.append(f"{table.name}: using column {_q(schema.time_col)} to order the steps (found by name; pass --time-col to choose another)")
        s = _from_schema(table, schema, need_labels)
        why_unused = "not in the model's schema"
    else:
        s, more, why_unused = _detect(table, layout, label, id_col, time_col, features, need_labels)
        notes += more

    cols = list(table.df.columns)
    used = set(s.features) | {c for c in (s.id_col, s.time_col, s.label) if c is not None}
    unused = [c for c in cols if c not in used]
    if unused:
        notes.append(f"{table.name}: ignored {_plural(len(unused), 'column')} {why_unused}: {_names(unused)}")

    row_labels = _row_labels(table, s.label) if need_labels else None
    if s.layout == "long":
        x, lengths, ids, nmissing, nan_cols, labels = _build_long(table, s, allow_missing, row_labels, s.label)
    else:
        build = _build_wide if s.layout == "wide" else _build_list
        x, lengths, ids, nmissing, nan_cols = build(table, s, allow_missing)
        labels = row_labels  # one row per sample

    short = np.flatnonzero(lengths < min_length)
    if len(short):
        k = int(short[0])
        where = f"id {_q(ids[k])}" if ids is not None else table.row(k)
        fix = "give the file at least" if s.layout == "wide" else "remove them or give each at least"
        unit = "time-step columns" if s.layout == "wide" else "steps"
        raise DataError(
            f"{table.name}: {_plural(len(short), 'sequence')} {'has' if len(short) == 1 else 'have'} fewer than "
            f"{min_length} steps (first: {where}), but the model needs at least {min_length}; {fix} {min_length} {unit}"
        )
    if ids is not None and s.layout != "long" and len(_factorize(ids, table, "id", s.id_col)[1]) < len(ids):
        notes.append(f"{table.name}: id column {_q(s.id_col)} repeats values; ids are reported as they are")
    if labels is not None:
        _, classes = _factorize(labels, table, "label", s.label)
        if len(classes) < min_classes:
            raise DataError(
                f"{table.name}: label column {_q(s.label)} has only {_plural(len(classes), 'class')} "
                f"({_names(list(classes), 4)}); training needs at least {min_classes} classes"
            )
        if len(classes) > 20 and len(classes) > len(labels) // 2:
            notes.append(
                f"{table.name}: label column {_q(s.label)} has {len(classes):,} distinct values among "
                f"{len(labels):,} samples; check it is really a class label (--label)"
            )
    if nmissing:
        notes.append(
            f"{table.name}: kept {_plural(nmissing, 'missing value')} (in {_names(nan_cols, 4)}) as NaN "
            "because of --allow-missing; they are filled with the training mean"
        )
    return SequenceData(x, lengths, labels, ids, s, notes, int(nmissing))
