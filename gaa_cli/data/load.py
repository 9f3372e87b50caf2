"""The entry point: a data file, or a table in memory, -> `SequenceData`: whole (`load`) or chunk by chunk
(`SequenceStream`), through one code path.

Reading in chunks: the first chunk decides the layout and the columns exactly as a whole read would, and
every later chunk is read with that schema. Rows keep the file's row numbers in messages. In the long
layout a sequence is never cut: the rows of the last id of a chunk are carried into the next one. A file
that fits in one chunk is read exactly as `load` reads it; a long file of several chunks must keep each id's
rows together (sorted by id; a time column may order the rows within an id): an id whose rows come back
after another id's is an error that says to sort the file by id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, UsageError

from .cells import text_codes
from .keys import read_labels
from .layouts import build_wide, build_long, build_list
from .messages import quote, quoted_names, plural
from .read import Table, concat_tables, frame_table, read_chunks
from .roles import ID_NAMES, TIME_NAMES, find_by_name, check_options, detect, from_schema
from .schema import LAYOUTS, Schema, SequenceData

__all__ = ["load", "load_frame", "SequenceStream", "concat"]


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
    skip_empty: bool = False,
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
        skip_empty: a row with no values at all (a list layout's null or empty lists; a wide row whose every
            cell is empty) gets length 0 instead of failing the file; the caller leaves it out.

    Raises:
        DataError: the file cannot be read or does not fit the layout.
        UsageError: an option has a value that cannot be used.
    """
    return SequenceStream(
        path, schema=schema, layout=layout, label=label, id_col=id_col, time_col=time_col, features=features,
        need_labels=need_labels, allow_missing=allow_missing, min_classes=min_classes, min_length=min_length,
        skip_empty=skip_empty,
    ).read_all()


def load_frame(frame: object, *, name: str | None = None, **options) -> SequenceData:
    """`load` for a pandas DataFrame or pyarrow Table in memory (any of the three layouts): the same column rules,
    read the way a Parquet file is. `name` stands for the file in messages. Keyword arguments: as `load`."""
    return SequenceStream(frame, name=name, **options).read_all()


class SequenceStream:
    """The sequences of a file (or a table in memory) in input order, as `SequenceData` chunks.

    Iterate it once. `notes` holds the messages for the user's stderr; it is complete once the iteration has
    ended (the layout and column notes are there after the first chunk). `schema` is the schema read with,
    once the first chunk is read. Each chunk's rows left out by `skip_empty` have length 0, in their place.

    Args:
        source: as `load`'s path, or a pandas DataFrame / pyarrow Table.
        chunk_rows: rows of the source read at a time; with `chunk_bytes` None too, the source is read whole.
        chunk_bytes: the size of a chunk in bytes of the file instead (CSV text, Parquet uncompressed).
        name: what messages call a table in memory (files are named by their path).
        Other arguments: as `load`.
    """

    def __init__(
        self,
        source: str | Path | object,
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
        skip_empty: bool = False,
        chunk_rows: int | None = None,
        chunk_bytes: int | None = None,
        name: str | None = None,
    ) -> None:
        if layout not in ("auto", *LAYOUTS):
            raise UsageError(f"unknown layout {layout!r}; use one of auto, {', '.join(LAYOUTS)}")
        self.is_file = isinstance(source, (str, Path))
        shown = str(source) if self.is_file else (name or type(source).__name__)
        self.find_time = False  # a model trained on another layout, read as long: find the time column as training would
        self.find_id = False  # a model trained without ids: pass through an id column the file has, found as training would
        if schema is not None:
            if schema.layout not in LAYOUTS:
                raise UsageError(f"the schema's layout {schema.layout!r} is not one of {', '.join(LAYOUTS)}")
            self.find_time = layout == "long" and schema.layout != "long" and time_col is None
            self.find_id = schema.id_col is None and id_col is None
            if features is not None and len(features) != len(schema.features):
                raise DataError(
                    f"{shown}: --features names {len(features)} column(s) but the model was trained on "
                    f"{len(schema.features)} ({quoted_names(schema.features)}); name that many columns, in that order"
                )
            schema = Schema(
                layout if layout != "auto" else schema.layout,
                label if label != "label" else schema.label,
                id_col if id_col is not None else schema.id_col,
                time_col if time_col is not None else schema.time_col,
                list(features) if features is not None else list(schema.features),
            )
            check_options(schema.label, schema.id_col, schema.time_col, schema.features)
        else:
            check_options(label, id_col, time_col, features)
        self.source, self.name = source, shown
        self.saved, self.layout, self.label, self.id_col, self.time_col, self.features = schema, layout, label, id_col, time_col, features
        self.need_labels, self.allow_missing, self.skip_empty = need_labels, allow_missing, skip_empty
        self.min_classes, self.min_length = min_classes, min_length
        self.chunk_rows, self.chunk_bytes = chunk_rows, chunk_bytes
        self.schema: Schema | None = None
        self.notes: list[str] = []
        self._tally = _Tally()
        self._used = False

    # --- the whole source

    def read_all(self) -> SequenceData:
        """Every chunk, concatenated (one chunk when the source is read whole); `notes` attached."""
        chunks = list(self)
        data = chunks[0] if len(chunks) == 1 else concat(chunks)
        data.notes = list(self.notes)
        return data

    def __iter__(self) -> Iterator[SequenceData]:
        assert not self._used, "a SequenceStream is read once"
        self._used = True
        tables = self._tables()
        whole = True  # the source is one table: read exactly as `load` always has
        pending: Table | None = None  # long layout: the rows of the last id so far, carried into the next chunk
        for i, (table, last) in enumerate(_with_last(tables)):
            if i == 0:
                whole = last
                self._settle(table)
            if self.schema.layout == "long" and not whole:
                table = table if pending is None else concat_tables(pending, table)
                start = self._check_grouped(table, last)
                table, pending = (table, None) if last else (_rows(table, 0, start), _rows(table, start, len(table.df)))
                if table is None:  # one sequence fills the chunk: read on
                    continue
            yield self._build(table, whole)
        self._finish()

    def _tables(self) -> Iterator[Table]:
        s = self.saved
        named = {c for c in (self.label, self.id_col) + ((s.label, s.id_col) if s else ()) if c is not None}
        is_text = lambda col: col in named or col.strip().lower() in ID_NAMES  # noqa: E731  labels and ids are text
        if self.is_file:
            return read_chunks(self.source, is_text, self.chunk_rows, self.chunk_bytes)
        return iter([frame_table(self.source, self.name, is_text)])

    # --- the first chunk decides

    def _settle(self, table: Table) -> None:
        notes = list(table.notes)
        schema, cols = self.saved, list(table.df.columns)
        if schema is not None:
            if self.find_id:
                schema.id_col = find_by_name(cols, ID_NAMES, {schema.label, schema.time_col, *schema.features})
                if schema.id_col is not None:
                    notes.append(f"{table.name}: using column {quote(schema.id_col)} as the {'sequence' if schema.layout == 'long' else 'row'} id (found by name; pass --id-col to choose another)")
            if self.find_time:
                taken = {schema.label, schema.id_col, *schema.features}
                schema.time_col = find_by_name(cols, TIME_NAMES, taken)
                if schema.time_col is not None:
                    notes.append(f"{table.name}: using column {quote(schema.time_col)} to order the steps (found by name; pass --time-col to choose another)")
            s = from_schema(table, schema, self.need_labels)
            why_unused = "not in the model's schema"
        else:
            s, more, why_unused = detect(table, self.layout, self.label, self.id_col, self.time_col, self.features, self.need_labels)
            notes += more
        used = set(s.features) | {c for c in (s.id_col, s.time_col, s.label) if c is not None}
        unused = [c for c in cols if c not in used]
        if unused:
            notes.append(f"{table.name}: ignored {plural(len(unused), 'column')} {why_unused}: {quoted_names(unused)}")
        self.schema, self.notes = s, notes

    # --- the long layout read in chunks

    def _check_grouped(self, table: Table, last: bool) -> int:
        """Refuse a table in which an id's rows are not together, or whose ids came before; returns the row where
        the table's last id starts (unless `last`, its rows are carried into the next chunk and checked there)."""
        ids = table.df[self.schema.id_col]
        change = (ids != ids.shift()).to_numpy(dtype=bool, na_value=True, copy=True)
        change[0] = True
        starts = np.flatnonzero(change)
        codes, names = text_codes(ids.iloc[starts])
        ends = np.append(starts[1:], len(ids)) - 1
        again = pd.Series(codes).duplicated().to_numpy() & (codes >= 0)
        if again.any():
            k = int(np.argmax(again))
            before = int(np.flatnonzero(codes[:k] == codes[k])[-1])
            raise self._not_grouped(table, names[codes[k]], table.first + int(ends[before]), table.first + int(starts[k]))
        done = len(starts) if last else len(starts) - 1
        if done:
            head = slice(0, done)
            h = _hashes(names[codes[head]]) if (codes[head] >= 0).all() else None
            if h is not None:
                seen = self._tally.sequences.find(h)
                if (seen >= 0).any():
                    k = int(np.argmax(seen >= 0))
                    raise self._not_grouped(table, names[codes[k]], int(seen[k]), table.first + int(starts[k]))
                self._tally.sequences.add(h, table.first + ends[head])
        return int(starts[-1])

    def _not_grouped(self, table: Table, sid: str, before: int, again: int) -> DataError:
        row = lambda r: table.row(r - table.first)  # noqa: E731  rows of the file, whichever chunk they are in
        return DataError(
            f"{table.name}: the rows of id {quote(sid)} are not together ({row(before)}, then again at {row(again)}); "
            "a file larger than one chunk is read chunk by chunk, so each sequence's rows must be together: "
            f"sort the file by {self.schema.id_col}"
        )

    # --- each chunk

    def _build(self, table: Table, whole: bool) -> SequenceData:
        try:
            return self._build_chunk(table, whole)
        except DataError as e:  # say what was decided (the layout, the columns) before the error
            e.notes = self.notes + self._tally.empty_note(table.name) + e.notes
            raise

    def _build_chunk(self, table: Table, whole: bool) -> SequenceData:
        s, tally = self.schema, self._tally
        row_labels = read_labels(table, s.label) if self.need_labels else None
        if s.layout == "long":
            x, lengths, ids, nmissing, nan_cols, labels = build_long(table, s, self.allow_missing, row_labels, s.label)
        else:
            build = build_wide if s.layout == "wide" else build_list
            x, lengths, ids, nmissing, nan_cols = build(table, s, self.allow_missing, self.skip_empty)
            labels = None if row_labels is None else row_labels.values()  # one row per sample

        empty = np.flatnonzero(lengths == 0)
        if len(empty) and tally.empty == 0:
            k = int(empty[0])
            tally.first_empty = f"id {quote(ids[k])}" if ids is not None else table.row(k)
        tally.empty += len(empty)
        short = np.flatnonzero((lengths < self.min_length) & (lengths > 0))
        if len(short):
            k = int(short[0])
            where = f"id {quote(ids[k])}" if ids is not None else table.row(k)
            fix = "give the file at least" if s.layout == "wide" else "remove them or give each at least"
            unit = "time-step columns" if s.layout == "wide" else "steps"
            hint = _looks_long(table, s) if s.layout == "wide" and x.shape[1] == 1 else ""
            n = self.min_length
            raise DataError(
                f"{table.name}: {plural(len(short), 'sequence')} {'has' if len(short) == 1 else 'have'} fewer than "
                f"{n} steps (first: {where}), but the model needs at least {n}; {fix} {n} {unit}{hint}"
            )
        if ids is not None and s.layout != "long":
            tally.add_ids(ids, whole)
        if labels is not None:
            tally.add_labels(labels, whole)
        tally.missing += nmissing
        tally.nan_cols += [c for c in nan_cols if c not in tally.nan_cols]
        return SequenceData(x, lengths, labels, ids, s, [], int(nmissing), table.name)

    def _finish(self) -> None:
        s, tally, name, notes = self.schema, self._tally, self.name, self.notes
        notes += tally.empty_note(name)
        if tally.repeated_ids:
            notes.append(f"{name}: id column {quote(s.id_col)} repeats values; ids are reported as they are")
        if tally.samples and self.need_labels:
            classes = tally.classes.size
            if classes < self.min_classes:
                raise DataError(
                    f"{name}: label column {quote(s.label)} has only {plural(classes, 'class')} "
                    f"({quoted_names(tally.class_names, 4)}); training needs at least {self.min_classes} classes",
                    notes=list(notes),
                )
            if classes > 20 and classes > tally.samples // 2:
                notes.append(
                    f"{name}: label column {quote(s.label)} has {classes:,} distinct values among "
                    f"{tally.samples:,} samples; check it is really a class label (--label)"
                )
        if tally.missing:
            notes.append(
                f"{name}: kept {plural(tally.missing, 'missing value')} (in {quoted_names(tally.nan_cols, 4)}) as NaN "
                "because of --allow-missing; they are filled with the training mean"
            )


def _with_last(items: Iterator[Table]) -> Iterator[tuple[Table, bool]]:
    """Each item with whether it is the last: one item of lookahead."""
    it = iter(items)
    try:
        cur = next(it)
    except StopIteration:
        return
    for nxt in it:
        yield cur, False
        cur = nxt
    yield cur, True


def _rows(table: Table, a: int, b: int) -> Table | None:
    """Rows [a, b) of a table, as a table of their own; None when empty."""
    if b <= a:
        return None
    if a == 0 and b == len(table.df):
        return table
    df = table.df.iloc[a:b].reset_index(drop=True)
    arrow = table.arrow.slice(a, b - a) if table.arrow is not None else None
    return Table(df, arrow, table.name, table.parts, [], table.first + a)


def _hashes(names: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(np.asarray(names, dtype=object)).astype(np.uint64)


class _Seen:
    """Hashes of names met in earlier chunks, each with a row: 16 bytes a name, in sorted runs merged as they
    grow (so a lookup costs a binary search per run, and there are O(log n) runs)."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.size = 0

    def find(self, h: np.ndarray) -> np.ndarray:
        """The row stored with each hash, or -1."""
        out = np.full(len(h), -1, dtype=np.int64)
        for keys, rows in self.runs:
            i = np.minimum(np.searchsorted(keys, h), len(keys) - 1)
            hit = keys[i] == h
            out[hit] = rows[i[hit]]
        return out

    def add(self, h: np.ndarray, rows: np.ndarray) -> None:
        """Store new hashes (ones already stored are left as they are)."""
        h, first = np.unique(h, return_index=True)
        new = self.find(h) < 0
        h, rows = h[new], np.asarray(rows, dtype=np.int64)[first][new]
        if not len(h):
            return
        self.size += len(h)
        self.runs.append((h, rows))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (k1, r1), (k2, r2) = self.runs.pop(), self.runs.pop()
            keys = np.concatenate([k2, k1])
            order = np.argsort(keys, kind="stable")
            self.runs.append((keys[order], np.concatenate([r2, r1])[order]))


class _Tally:
    """What the notes at the end count over every chunk."""

    def __init__(self) -> None:
        self.empty = 0  # rows left out by skip_empty
        self.first_empty = ""
        self.missing = 0
        self.nan_cols: list[str] = []
        self.repeated_ids = False
        self.ids = _Seen()  # wide / list: the ids so far, when read in chunks
        self.sequences = _Seen()  # long, read in chunks: the ids of the sequences so far
        self.samples = 0
        self.classes = _Seen()
        self.class_names: list[str] = []  # the first few, in order of first appearance

    def empty_note(self, name: str) -> list[str]:
        if not self.empty:
            return []
        return [f"{name}: skipped {plural(self.empty, 'row')} with no values at all (first: {self.first_empty}) because of --skip-empty-rows"]

    def add_ids(self, ids: np.ndarray, whole: bool) -> None:
        _, uniques = pd.factorize(ids)
        if len(uniques) < len(ids):
            self.repeated_ids = True
        if not whole and not self.repeated_ids:
            h = _hashes(np.asarray(uniques, dtype=object))
            if (self.ids.find(h) >= 0).any():
                self.repeated_ids = True
            else:
                self.ids.add(h, np.zeros(len(h), dtype=np.int64))

    def add_labels(self, labels: np.ndarray, whole: bool) -> None:
        self.samples += len(labels)
        uniques = pd.unique(labels)
        h = _hashes(uniques)
        new = self.classes.find(h) < 0
        if len(self.class_names) < 8:
            self.class_names += [str(u) for u in uniques[new][: 8 - len(self.class_names)]]
        self.classes.add(h, np.zeros(len(h), dtype=np.int64))


def concat(chunks: list[SequenceData]) -> SequenceData:
    """Chunks of one source as one `SequenceData`, padded to the longest sequence."""
    assert chunks
    steps = max(c.x.shape[1] for c in chunks)
    x = np.zeros((sum(len(c.x) for c in chunks), steps, chunks[0].x.shape[2]), dtype=np.float32)
    at = 0
    for c in chunks:
        x[at : at + len(c.x), : c.x.shape[1]] = c.x
        at += len(c.x)
    cat = lambda field: None if getattr(chunks[0], field) is None else np.concatenate([getattr(c, field) for c in chunks])  # noqa: E731
    first = chunks[0]
    return SequenceData(x, np.concatenate([c.lengths for c in chunks]), cat("labels"), cat("ids"), first.schema, [],
                        sum(c.missing for c in chunks), first.source)


def _looks_long(table: Table, s: Schema) -> str:
    """A hint for a wide read that gives one step per row: a column whose values repeat names the sequences."""
    n = len(table.df)
    for col in table.df.columns:
        if col in (s.label, s.id_col) or table.is_list(col):
            continue
        try:
            distinct = table.df[col].nunique()
        except TypeError:
            continue
        if 1 < distinct < n:
            return f"; this looks like long layout: pass --layout long --id-col {col}"
    return ""
