"""Reading files: CSV, gzipped CSV, Parquet and folders of Parquet files, into a `Table`.

Everything about the file as bytes lives here: extensions, encodings, separators, ragged rows,
unnamed and duplicate columns, folders whose files disagree.

`read_chunks` reads a file whole (`chunk_rows=None`) or in chunks of at most `chunk_rows` rows (CSV through
pandas' chunked reader, Parquet by record batch, a folder of Parquet files as one dataset): each chunk is a
`Table` whose `first` says where it starts, so that messages name the file's own row numbers. `frame_table`
reads a DataFrame or a pyarrow Table the way a Parquet file is read.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import warnings
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError, UsageError

from .cells import missing_mask
from .messages import quote, quoted_names, first_line, plural

__all__ = ["SUPPORTED", "SNIFF_BYTES", "CHUNK_BYTES", "Table", "is_list_type", "read_table", "read_file", "read_chunks", "frame_table",
           "chunk_rows_from_env", "concat_tables"]


SUPPORTED = ".csv, .csv.gz, .parquet or a folder of .parquet files"
SNIFF_BYTES = 1 << 16
CHUNK_BYTES = 32 << 20  # a file read in chunks is read about this many bytes (CSV text, Parquet uncompressed) at a time
CHUNK_ROWS_ENV = "GAA_CHUNK_ROWS"  # rows per chunk, for tests and tuning: the chunk size in rows, whatever the bytes


@dataclass
class Table:
    """A file's contents plus what is needed to point the user at a row."""

    df: pd.DataFrame  # columns are str, index is 0..n-1
    arrow: pa.Table | None  # the same columns for Parquet input (list columns are read from here)
    name: str  # the path as the user gave it
    parts: list[tuple[str, int]]  # folder input: (file name, rows) in reading order
    notes: list[str]  # things done while reading (columns dropped, ...)
    first: int = 0  # 0-based row of the whole file (or folder) where this table starts: a later chunk's offset

    def row(self, i: int) -> str:
        """The user-facing position of 0-based data row `i`."""
        i += self.first
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
        return self.arrow is not None and is_list_type(self.arrow.schema.field(col).type)


def is_list_type(t: pa.DataType) -> bool:
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
    return read_file(path).df


def read_file(path: str | Path, is_text: Callable[[str], bool] = lambda col: False) -> Table:
    """Read `path` whole into a `Table`; the columns for which `is_text(name)` is true are read as text, exactly as
    written (a CSV's `01` stays `01`; a numeric or boolean Parquet column is cast with pyarrow: 1.0 -> `1`,
    True -> `true`)."""
    return next(read_chunks(path, is_text))


def read_chunks(
    path: str | Path, is_text: Callable[[str], bool] = lambda col: False, chunk_rows: int | None = None, chunk_bytes: int | None = None,
) -> Iterator[Table]:
    """The tables of `path` in file order: the whole file at once when `chunk_rows` and `chunk_bytes` are None,
    else chunks of at most `chunk_rows` rows, or of about `chunk_bytes` bytes (CSV text, Parquet uncompressed)
    each (a folder's small files may share a chunk). Every chunk has the first one's columns; its
    `first` and `parts` name rows as the whole file would. Problems of the file as a whole (missing, empty, not
    what its name says, folder files that disagree) are raised before the first chunk."""
    assert chunk_rows is None or chunk_rows >= 1, chunk_rows
    name = str(path)
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as e:
        raise DataError(f"{name}: cannot look up this path ({first_line(e)}); check the path") from None
    if not exists:
        raise DataError(f"{name}: no such file or folder; check the path")
    if is_dir:
        return _parquet_chunks(_folder_files(p, name), name, True, is_text, chunk_rows, chunk_bytes)
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
        return _parquet_chunks([(p, name)], name, False, is_text, chunk_rows, chunk_bytes)
    return _csv_chunks(p, name, kind == "csv.gz", is_text, chunk_rows, chunk_bytes)


def chunk_rows_from_env() -> int | None:
    """$GAA_CHUNK_ROWS as a row count, if set (tests use tiny chunks); None lets each reader size its chunks."""
    raw = os.environ.get(CHUNK_ROWS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise DataError(f"${CHUNK_ROWS_ENV} is {raw!r}; set it to a whole number of rows (at least 1), or unset it")
    return int(raw)


def _rows_for(bytes_per_row: float, chunk_bytes: int) -> int:
    return int(min(1 << 18, max(64, chunk_bytes / max(bytes_per_row, 1.0))))


def _check_not_empty(p: Path, name: str) -> None:
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({first_line(e)}); check the file's permissions") from None
    if size == 0:
        raise DataError(f"{name}: the file is empty (0 bytes); check it was written completely")


def _open_bytes(p: Path, gz: bool):
    return gzip.open(p, "rb") if gz else open(p, "rb")


def _csv_chunks(p: Path, name: str, gz: bool, is_text: Callable[[str], bool], chunk_rows: int | None, chunk_bytes: int | None) -> Iterator[Table]:
    """Checks on the first bytes happen at once; the rows are parsed as the chunks are asked for."""
    try:
        with _open_bytes(p, gz) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        what = "not a readable gzip file" if gz else "cannot be read"
        raise DataError(f"{name}: {what} ({first_line(e)}); check the file is complete") from None
    except Exception as e:  # zlib.error and the like
        raise DataError(f"{name}: not a readable gzip file ({first_line(e)}); check the file is complete") from None
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
        raise DataError(f"{name}: column names repeat in the header ({quoted_names(dup)}); give every column its own name")
    if chunk_rows is None and chunk_bytes is not None:
        chunk_rows = _rows_for(len(head) / max(1, head.count(b"\n")), chunk_bytes)
    return _csv_tables(p, name, gz, header, is_text, chunk_rows)


def _csv_tables(p: Path, name: str, gz: bool, header: list[str], is_text: Callable[[str], bool], chunk_rows: int | None) -> Iterator[Table]:
    options = dict(
        sep=",",
        encoding="utf-8",
        index_col=False,
        keep_default_na=False,  # only blank cells are empty: "NA" or "None" may be a class name
        na_values=[""],
        low_memory=False,
        compression="gzip" if gz else None,
        dtype={h: object for h in header if is_text(h)},  # text as written, one Python str a cell (no Arrow copy)
    )
    with _csv_errors(p, name, gz):
        frames = pd.read_csv(p, chunksize=chunk_rows, **options) if chunk_rows is not None else None
    try:
        yield from _csv_frames(p, name, gz, frames, options)
    finally:
        if frames is not None:
            frames.close()


def _csv_frames(p: Path, name: str, gz: bool, frames, options: dict) -> Iterator[Table]:
    unnamed = _Unnamed()
    ragged_checked = False
    first = 0
    while True:
        with warnings.catch_warnings(record=True) as caught, _csv_errors(p, name, gz):
            warnings.simplefilter("always")
            if frames is None:  # the whole file
                df = pd.read_csv(p, **options) if first == 0 else None
            else:
                df = next(frames, None)
        if df is None:
            break
        if not ragged_checked and any("does not match length of data" in str(w.message) for w in caught):
            # pandas dropped fields beyond the header; fail if any of them held a value (checked once: it reads the file)
            err = _ragged(p, name, gz, None, nonempty_only=True)
            if err is not None:
                raise err
            ragged_checked = True
        df.columns = [str(c) for c in df.columns]
        df = df.reset_index(drop=True)
        if first == 0:
            if len(df) == 0:
                raise DataError(f"{name}: has a header ({plural(len(df.columns), 'column')}) but no data rows; add rows")
            df, notes = unnamed.decide(df, name)
            _check_unique_names(list(df.columns), name)
        else:
            df, notes = unnamed.apply(df, name, first), []
        n = len(df)
        yield Table(df, None, name, [], notes, first)
        first += n


class _csv_errors:
    """pandas' exceptions while parsing as our one-line messages."""

    def __init__(self, p: Path, name: str, gz: bool) -> None:
        self.p, self.name, self.gz = p, name, gz

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, e, tb) -> bool:
        if e is None or isinstance(e, (DataError, GeneratorExit, KeyboardInterrupt)) or not isinstance(e, Exception):
            return False
        name, p, gz = self.name, self.p, self.gz
        if isinstance(e, UnicodeDecodeError):
            raise DataError(f"{name}: not UTF-8 text ({_bad_utf8(p, gz)}); save the file as UTF-8") from None
        if isinstance(e, pd.errors.EmptyDataError):
            raise DataError(f"{name}: holds no data (no header row); it needs a header row and data rows") from None
        if isinstance(e, pd.errors.ParserError):
            raise _ragged(p, name, gz, e, nonempty_only=False) from None
        if isinstance(e, (EOFError, OSError)):  # gzip data cut short, read errors
            raise DataError(f"{name}: cannot be read to the end ({first_line(e)}); check the file is complete") from None
        raise DataError(f"{name}: not a readable CSV file ({first_line(e)}); check it is comma-separated UTF-8 text") from None


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
    return DataError(f"{name}: not a readable CSV file ({first_line(exc)}); check it is comma-separated UTF-8 text")


_UNNAMED = re.compile(r"^Unnamed: \d+(\.\d+)?$")


class _Unnamed:
    """Columns without a name: a saved pandas index and empty unnamed columns (trailing commas) are dropped; other
    unnamed columns are an error. The first chunk decides; later chunks must agree, or fail as the whole file would."""

    def __init__(self) -> None:
        self.index: list[str] = []  # a saved row index
        self.empty: list[tuple[int, str]] = []  # (position, name) of empty unnamed columns
        self.last_index: int | None = None  # the saved index's last value so far

    def decide(self, df: pd.DataFrame, name: str) -> tuple[pd.DataFrame, list[str]]:
        notes = []
        for pos, col in enumerate(df.columns):
            if not _UNNAMED.match(col):
                continue
            s = df[col]
            if pos == 0 and pd.api.types.is_integer_dtype(s.dtype) and s.is_unique and s.is_monotonic_increasing:
                self.index.append(col)
                self.first_index = s.iloc[0]
                self.last_index = int(s.iloc[-1])
                notes.append(f"{name}: ignored the first column: it has no name and holds increasing integers (a saved row index)")
            elif missing_mask(s).all():
                self.empty.append((pos, col))
            else:
                raise _unnamed_error(name, pos, s, 0)
        if self.empty:
            where = ", ".join(str(pos + 1) for pos, _ in self.empty)
            notes.append(
                f"{name}: ignored empty {'column' if len(self.empty) == 1 else 'columns'} {where} with no name in the header "
                "(a trailing comma?)"
            )
        drop = self.index + [c for _, c in self.empty]
        return (df.drop(columns=drop) if drop else df), notes

    def apply(self, df: pd.DataFrame, name: str, first: int) -> pd.DataFrame:
        """A later chunk, whose rows start at file row `first` (0-based)."""
        for col in self.index:
            s = df[col]
            if not (pd.api.types.is_integer_dtype(s.dtype) and s.is_unique and s.is_monotonic_increasing and int(s.iloc[0]) > self.last_index):
                # not an index after all: the whole file's message, which names its first value
                raise DataError(
                    f"{name}: column 1 has no name in the header but holds values "
                    f"(row 1: {quote(self.first_index)}); give it a name in the header or remove it"
                )
            self.last_index = int(s.iloc[-1])
        for pos, col in self.empty:
            if not missing_mask(df[col]).all():
                raise _unnamed_error(name, pos, df[col], first)
        drop = self.index + [c for _, c in self.empty]
        return df.drop(columns=drop) if drop else df


def _unnamed_error(name: str, pos: int, s: pd.Series, first: int) -> DataError:
    i = int(np.flatnonzero(~missing_mask(s))[0])
    return DataError(
        f"{name}: column {pos + 1} has no name in the header but holds values "
        f"(row {first + i + 1}: {quote(s.iloc[i])}); give it a name in the header or remove it"
    )


def _check_unique_names(cols: list[str], name: str) -> None:
    seen = pd.Index(cols)
    if not seen.is_unique:
        dup = seen[seen.duplicated()].unique().tolist()
        raise DataError(f"{name}: column names repeat ({quoted_names(dup)}); give every column its own name")


def _parquet_error(p: Path, name: str, e: Exception) -> DataError:
    return DataError(
        f"{name}: not a readable Parquet file ({first_line(e)}); "
        f"check the file is complete and really Parquet{_text_hint(p)}"
    )


def _read_parquet_file(p: Path, name: str) -> pa.Table:
    try:
        with open(p, "rb") as fh:
            return pq.ParquetFile(fh).read()
    except Exception as e:
        raise _parquet_error(p, name, e) from None


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


def _clean_schema(schema: pa.Schema) -> pa.Schema:
    """The schema `_clean_arrow` leaves."""
    return pa.schema([f for f in schema if not _INDEX_COL.match(str(f.name))])


def _as_text(t: pa.Table, is_text: Callable[[str], bool]) -> pa.Table:
    """The text columns of `t` cast to strings, pyarrow's way (the one documented way: 1.0 -> '1', True -> 'true')."""
    for i, f in enumerate(t.schema):
        plain = not (is_list_type(f.type) or pa.types.is_struct(f.type) or pa.types.is_map(f.type))
        if is_text(str(f.name)) and plain and not pa.types.is_string(f.type):
            try:
                t = t.set_column(i, f.name, pc.cast(t.column(i), pa.string()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # left as it is; the column's own checks say what is wrong with it
    return t


def _to_pandas_type(t: pa.DataType):
    # list columns stay Arrow-backed: the list layout reads them from the Arrow table, so a numpy array per cell
    # would be built for nothing
    return pd.ArrowDtype(t) if is_list_type(t) else None


def _table_from_arrow(t: pa.Table, name: str, parts: list[tuple[str, int]], is_text: Callable[[str], bool], first: int = 0) -> Table:
    t = _as_text(_clean_arrow(t), is_text)
    cols = [str(c) for c in t.column_names]
    if not cols:
        raise DataError(f"{name}: has no columns; check the file was written completely")
    _check_unique_names(cols, name)
    if t.num_rows == 0:
        raise DataError(f"{name}: has columns ({quoted_names(cols)}) but no rows; add rows")
    try:
        df = t.to_pandas(types_mapper=_to_pandas_type)
    except Exception as e:
        raise DataError(f"{name}: has column types this tool cannot read ({first_line(e)}); store numbers and strings") from None
    df.columns = cols
    df = df.reset_index(drop=True)
    return Table(df, t.rename_columns(cols), name, parts, [], first)


def _folder_files(p: Path, name: str) -> list[tuple[Path, str]]:
    """A folder's .parquet files in file-name order, each with the name messages use."""
    try:
        files = sorted(
            (f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(".parquet") and f.name[:1] not in "._"),
            key=lambda f: f.name,
        )
    except OSError as e:
        raise DataError(f"{name}: cannot list this folder ({first_line(e)}); check its permissions") from None
    if not files:
        raise DataError(
            f"{name}: is a folder with no .parquet files in it (subfolders are not searched); use {SUPPORTED}"
        )
    return [(f, f"{name.rstrip('/')}/{f.name}") for f in files]


def _parquet_chunks(
    files: list[tuple[Path, str]], name: str, folder: bool, is_text: Callable[[str], bool], chunk_rows: int | None, chunk_bytes: int | None,
) -> Iterator[Table]:
    if chunk_rows is None and chunk_bytes is None:
        yield _parquet_whole(files, name, folder, is_text)
        return
    # every file's footer first: the schemas must agree and the row counts name rows, before any chunk is read
    schema, parts, size = None, [], 0
    for f, shown in files:
        _check_not_empty(f, shown)
        try:
            with open(f, "rb") as fh:
                pf = pq.ParquetFile(fh)
                meta, this = pf.metadata, _clean_schema(pf.schema_arrow)
        except Exception as e:
            raise _parquet_error(f, shown, e) from None
        if schema is not None and not this.equals(schema):
            raise DataError(f"{shown}: {_schema_diff(schema, this, files[0][0].name)}; all files in the folder must share one schema")
        schema = schema or this
        parts.append((f.name, meta.num_rows))
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    total = sum(n for _, n in parts)
    cols = [str(c) for c in schema.names]
    if cols and total == 0:
        raise DataError(f"{name}: has columns ({quoted_names(cols)}) but no rows; add rows")
    if chunk_rows is None:
        chunk_rows = _rows_for(size / max(total, 1), chunk_bytes)
    parts = parts if folder else []
    first, held, n_held = 0, [], 0
    for f, shown in files:
        try:
            with open(f, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=chunk_rows):
                    held.append(_clean_arrow(pa.Table.from_batches([batch])))
                    n_held += batch.num_rows
                    if n_held >= chunk_rows:
                        yield _table_from_arrow(pa.concat_tables(held), name, parts, is_text, first)
                        first, held, n_held = first + n_held, [], 0
        except DataError:
            raise
        except Exception as e:
            raise _parquet_error(f, shown, e) from None
    if held or first == 0:
        yield _table_from_arrow(pa.concat_tables(held) if held else schema.empty_table(), name, parts, is_text, first)


def _parquet_whole(files: list[tuple[Path, str]], name: str, folder: bool, is_text: Callable[[str], bool]) -> Table:
    if not folder:
        (f, shown), = files
        return _table_from_arrow(_read_parquet_file(f, shown), name, [], is_text)
    tables, parts = [], []
    for f, shown in files:
        _check_not_empty(f, shown)
        t = _clean_arrow(_read_parquet_file(f, shown))
        if tables and not t.schema.equals(tables[0].schema):
            raise DataError(f"{shown}: {_schema_diff(tables[0].schema, t.schema, files[0][0].name)}; all files in the folder must share one schema")
        tables.append(t)
        parts.append((f.name, t.num_rows))
    try:
        table = pa.concat_tables(tables)
    except Exception as e:
        raise DataError(f"{name}: the files in this folder cannot be combined ({first_line(e)}); give them one schema") from None
    return _table_from_arrow(table, name, parts, is_text)


def frame_table(frame: object, name: str, is_text: Callable[[str], bool] = lambda col: False) -> Table:
    """A pandas DataFrame or pyarrow Table (or RecordBatch) in memory, read the way a Parquet file is: through
    Arrow, so that the same column rules apply. `name` stands for the file in messages."""
    if isinstance(frame, pa.RecordBatch):
        frame = pa.Table.from_batches([frame])
    if isinstance(frame, pd.DataFrame):
        frame = _arrow_of_frame(frame, name)
    if not isinstance(frame, pa.Table):
        raise UsageError(f"{name}: expected a pandas DataFrame or a pyarrow Table, found {type(frame).__name__}")
    return _table_from_arrow(frame, name, [], is_text)


def _arrow_of_frame(df: pd.DataFrame, name: str) -> pa.Table:
    cols = [str(c) for c in df.columns]
    _check_unique_names(cols, name)
    arrays = []
    for j in range(len(cols)):
        s = df.iloc[:, j]
        try:
            arrays.append(pa.Array.from_pandas(s))
        except (pa.ArrowException, TypeError, ValueError):
            # a column mixing kinds (numbers and text): its cells as text, so that the column checks can name the odd one
            arrays.append(pa.array([None if _is_missing(v) else str(v) for v in s.tolist()], pa.string()))
    return pa.Table.from_arrays(arrays, names=cols)


def _is_missing(v: object) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def concat_tables(a: Table, b: Table) -> Table:
    """`b`'s rows after `a`'s, when `b` starts where `a` ends in the file (a chunk after the rows carried over)."""
    assert a.first + len(a.df) == b.first, (a.first, len(a.df), b.first)
    df = pd.concat([a.df, b.df], ignore_index=True)
    arrow = pa.concat_tables([a.arrow, b.arrow]) if a.arrow is not None and b.arrow is not None else None
    return Table(df, arrow, a.name, a.parts, [], a.first)


def _schema_diff(first: pa.Schema, other: pa.Schema, first_name: str) -> str:
    a = {f.name: f.type for f in first}
    b = {f.name: f.type for f in other}
    bits = []
    missing = [n for n in a if n not in b]
    extra = [n for n in b if n not in a]
    if missing:
        bits.append(f"lacks {quoted_names(missing, 4)}")
    if extra:
        bits.append(f"has extra {quoted_names(extra, 4)}")
    for n in a:
        if n in b and a[n] != b[n]:
            bits.append(f"column {quote(n)} is {b[n]} here but {a[n]} in {first_name}")
            break
    if not bits:
        bits.append("has the same columns in a different order")
    return f"columns differ from {first_name} (" + "; ".join(bits) + ")"
