"""Layout builders: a `Table` and its `Schema` -> a padded (N, T, C) float32 array, lengths and ids.

- wide: one row per sample, one numeric column per time step (C = 1).
- long: one row per time step; an id column names the sequence, an optional
  time column orders its steps, one numeric column per channel.
- list: one row per sample; each channel is a Parquet list column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError

from .cells import to_float32, missing_error, numeric_columns
from .keys import Names, read_ids, time_key, labels_per_group
from .messages import quote, first_line
from .read import Table, is_list_type
from .schema import Schema

__all__ = ["build_wide", "build_long", "csv_has_no_lists", "build_list"]


def build_wide(table: Table, s: Schema, allow_missing: bool, skip_empty: bool = False):
    """A row with no value at all has length 0 when `skip_empty` (the caller skips it), else it is missing data."""
    ids = read_ids(table, s.id_col).values() if s.id_col is not None and s.id_col in table.df.columns else None
    if ids is not None:
        where = lambda k: f"{table.row(k)} (id {quote(ids[k])})"  # noqa: E731
    else:
        where = table.row
    vals, nmissing, nan_cols, empty = numeric_columns(table, s.features, where, allow_missing, "wide", skip_empty)
    x = vals[:, :, None]  # (N, T, 1)
    lengths = np.where(empty, 0, vals.shape[1]).astype(np.int64)
    return x, lengths, ids, nmissing, nan_cols


def build_long(table: Table, s: Schema, allow_missing: bool, row_labels: Names | None, label: str | None):
    name = table.name
    id_names = read_ids(table, s.id_col)
    codes, ids = id_names.codes, id_names.names  # codes in order of first appearance
    n_ids = len(ids)
    n = len(codes)
    if s.time_col is not None:
        tkey = time_key(table, s.time_col)
        step = np.diff(codes)
        if ((step > 0) | ((step == 0) & (np.diff(tkey) > 0))).all():  # already by id, then time (a sorted file)
            order, dup = np.arange(n), []
        else:
            order = np.lexsort((tkey, codes))  # by id, then time; stable
            sc, st = codes[order], tkey[order]
            dup = np.flatnonzero((sc[1:] == sc[:-1]) & (st[1:] == st[:-1]))
        if len(dup):
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise DataError(
                f"{name}: id {quote(ids[codes[a]])} has two rows for time {quote(table.df[s.time_col].iloc[a])} "
                f"({table.row(a)} and {table.row(b)}); each (id, time) pair must appear once"
            )
    else:
        run_starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1])
        if len(run_starts) != n_ids:
            again = pd.Series(codes[run_starts]).duplicated().to_numpy()
            k = int(run_starts[np.argmax(again)])
            prev = int(np.flatnonzero(codes[:k] == codes[k])[-1])
            raise DataError(
                f"{name}: no time column, and the rows of id {quote(ids[codes[k]])} are not together "
                f"({table.row(prev)}, then again at {table.row(k)}), so the order of its steps is unclear; "
                "pass --time-col NAME to order them"
            )
        order = np.arange(n)
    lengths = np.bincount(codes, minlength=n_ids).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    first_row = np.flatnonzero(np.diff(np.maximum.accumulate(codes), prepend=-1) > 0)  # where each id appears first

    where = lambda k: f"{table.row(k)} (id {quote(ids[codes[k]])})"  # noqa: E731
    vals, nmissing, nan_cols, _ = numeric_columns(table, s.features, where, allow_missing, "long")
    x = np.zeros((n_ids, int(lengths.max()), len(s.features)), dtype=np.float32)  # (N, T, C)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (N, T)
    x[valid] = vals if order is None or _is_identity(order) else vals[order]  # rows by id then time fill the cells in order
    labels = None
    if row_labels is not None:
        labels = labels_per_group(table, label, row_labels, codes, order, starts, first_row, ids)
    return x, lengths, ids, nmissing, nan_cols, labels


def _is_identity(order: np.ndarray) -> bool:
    return bool((order == np.arange(len(order))).all())


def csv_has_no_lists(name: str) -> DataError:
    return DataError(
        f"{name}: the list layout needs Parquet list columns (one list of numbers per row per channel), "
        "which a CSV file cannot hold; use --layout wide or --layout long"
    )


def build_list(table: Table, s: Schema, allow_missing: bool, skip_empty: bool = False):
    """A row with no list (a null cell) or empty lists has length 0 when `skip_empty` (the caller skips it)."""
    name = table.name
    ids = read_ids(table, s.id_col).values() if s.id_col is not None and s.id_col in table.df.columns else None

    def where(k: int) -> str:
        return f"{table.row(k)} (id {quote(ids[k])})" if ids is not None else table.row(k)

    if table.arrow is None:
        raise csv_has_no_lists(name)
    n = len(table.df)
    lens = np.zeros((n, len(s.features)), dtype=np.int64)
    no_list = np.zeros(n, dtype=bool)
    flat: list[np.ndarray] = []
    for j, col in enumerate(s.features):
        t = table.arrow.schema.field(col).type
        if not is_list_type(t):
            ex = table.df[col].iloc[0]
            raise DataError(
                f"{name}: column {quote(col)} holds single values ({t}, row 1: {quote(ex)}), not lists; the list layout "
                "needs a list of numbers per row in each channel column (or use --layout wide / long)"
            )
        vt = t.value_type
        if not (pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt) or pa.types.is_decimal(vt)):
            raise DataError(f"{name}: column {quote(col)} holds lists of {vt}; channel lists must hold numbers")
        arr = table.arrow.column(col).combine_chunks()
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        no_list |= nulls
        if nulls.any() and not skip_empty:
            k = int(np.flatnonzero(nulls)[0])
            raise DataError(
                f"{name}: column {quote(col)} has no list at {where(k)}; every row needs a list in each channel column, "
                "or pass --skip-empty-rows to leave such rows out"
            )
        lens[:, j] = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        as_type = pa.float32() if pa.types.is_float32(vt) else pa.float64()  # float32 lists need no float64 copy
        try:
            v = pc.fill_null(pc.cast(arr.flatten(), as_type), np.nan).to_numpy(zero_copy_only=False)
        except Exception as e:
            raise DataError(f"{name}: column {quote(col)} has values that are not numbers ({first_line(e)})") from None
        flat.append(v)
    values_per_row = lens.copy()  # how the flat values split into rows
    if skip_empty:  # a row without a list in some channel is empty as a whole
        lens[no_list | (lens == 0).any(axis=1)] = 0
    uneven = np.flatnonzero((lens != lens[:, :1]).any(axis=1))
    if len(uneven):
        k = int(uneven[0])
        j = int(np.flatnonzero(lens[k] != lens[k, 0])[0])
        raise DataError(
            f"{name}: at {where(k)} the channels have different lengths ({quote(s.features[0])}: {lens[k, 0]}, "
            f"{quote(s.features[j])}: {lens[k, j]}); within a row every channel must have the same length"
        )
    lengths = lens[:, 0].copy()
    empty = np.flatnonzero(lengths == 0)
    if len(empty) and not skip_empty:
        k = int(empty[0])
        raise DataError(
            f"{name}: {where(k)} has empty lists (a sequence of length 0); every sequence needs at least one step, "
            "so remove that row or pass --skip-empty-rows"
        )
    ends = np.cumsum(lengths)

    def step_where(k: int) -> str:  # flat value k of the rows kept (error path only)
        row = int(np.searchsorted(ends, k, side="right"))
        return f"{where(row)}, step {k - int(ends[row] - lengths[row]) + 1}"

    steps = max(1, int(lengths.max()))
    valid = np.arange(steps)[None, :] < lengths[:, None]  # (N, T): the flat values fill these cells in row order
    x = np.zeros((n, steps, len(s.features)), dtype=np.float32)  # (N, T, C)
    missing: list[tuple[str, int, str]] = []
    for j, col in enumerate(s.features):
        if not (values_per_row[:, j] == lengths).all():
            flat[j] = flat[j][np.repeat(lengths > 0, values_per_row[:, j])]  # the values of the rows kept
        x[:, :, j][valid] = to_float32(flat[j], table, col, step_where)
        nan = np.isnan(flat[j])
        if nan.any():
            missing.append((col, int(nan.sum()), step_where(int(np.flatnonzero(nan)[0]))))
    if missing and not allow_missing:
        raise missing_error(table, missing)
    return x, lengths, ids, sum(c for _, c, _ in missing), [c for c, _, _ in missing]
