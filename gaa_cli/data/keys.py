"""The columns that name things: labels, sequence ids, and the time column that orders steps."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import DataError


from .cells import missing_mask, na_names, parse_numbers, text_codes
from .messages import quote, plural

if TYPE_CHECKING:
    from .read import Table

__all__ = ["Names", "read_labels", "factorize", "read_ids", "time_key", "labels_per_group"]


@dataclass
class Names:
    """A column of names (labels, ids) as text: the distinct names, and each row's index into them."""

    codes: np.ndarray  # (rows,) int64, in order of first appearance
    names: np.ndarray  # (distinct,) object array of str

    def values(self) -> np.ndarray:
        """Each row's name: an object array sharing one str per distinct name."""
        return self.names[self.codes] if len(self.names) else np.empty(0, dtype=object)


def _names(table: Table, col: str, what: str) -> tuple[Names, np.ndarray]:
    """The column's names and the mask of its empty cells (only blank or 'nan' count: 'NA' may be a name)."""
    try:
        codes, names = text_codes(table.df[col])
    except (pa.ArrowException, TypeError, ValueError):
        s = table.df[col]
        raise DataError(
            f"{table.name}: {what} column {quote(col)} holds values that cannot be compared "
            f"(e.g. {quote(s.iloc[0])}); use strings or numbers"
        ) from None
    na = na_names(names)
    missing = codes < 0
    if na.any():
        missing |= na[np.maximum(codes, 0)] & ~missing
    return Names(codes, names), missing


def read_labels(table: Table, col: str) -> Names:
    """The label of every row as text, exactly as written; empty labels are an error."""
    name = table.name
    if table.is_list(col):
        raise DataError(f"{name}: label column {quote(col)} holds lists; the label must be one class per row (check --label)")
    labels, missing = _names(table, col, "label")
    if missing.all():
        raise DataError(f"{name}: label column {quote(col)} is empty in every row; check that --label names the right column")
    if missing.any():
        idx = np.flatnonzero(missing)
        raise DataError(
            f"{name}: label column {quote(col)} is empty in {plural(len(idx), 'row')} ({table.rows(idx)}); "
            "fill in the labels or remove those rows"
        )
    return labels


def factorize(values: np.ndarray, table: Table, what: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        codes, uniques = pd.factorize(values, sort=False)
    except TypeError:
        raise DataError(
            f"{table.name}: {what} column {quote(col)} holds values that cannot be compared "
            f"(e.g. {quote(values[0])}); use strings or numbers"
        ) from None
    return codes.astype(np.int64), uniques


def read_ids(table: Table, col: str) -> Names:
    """Every row's id as text, exactly as written; empty ids are an error."""
    name = table.name
    if table.is_list(col):
        raise DataError(f"{name}: id column {quote(col)} holds lists; an id must be one value per row (check --id-col)")
    ids, missing = _names(table, col, "id")
    if missing.any():
        idx = np.flatnonzero(missing)
        raise DataError(
            f"{name}: id column {quote(col)} is empty in {plural(len(idx), 'row')} ({table.rows(idx)}); "
            "every row needs an id"
        )
    return ids


def time_key(table: Table, col: str) -> np.ndarray:
    """A float64 sort key for the time column: numbers, dates or ISO 8601 strings."""
    name, s = table.name, table.df[col]
    missing = missing_mask(s)
    if missing.any():
        idx = np.flatnonzero(missing)
        raise DataError(
            f"{name}: time column {quote(col)} is empty in {plural(len(idx), 'row')} ({table.rows(idx)}); "
            "every row needs a time"
        )
    if (
        pd.api.types.is_datetime64_any_dtype(s.dtype)
        or pd.api.types.is_timedelta64_dtype(s.dtype)
        or pd.api.types.is_integer_dtype(s.dtype)
    ):
        return pd.factorize(s, sort=True)[0].astype(np.float64)  # ranks: exact even for int64 nanoseconds
    if table.is_list(col):
        raise DataError(f"{name}: time column {quote(col)} holds lists; it needs one number or date per row")
    vals, bad = parse_numbers(s)
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
                f"{name}: time column {quote(col)} mixes numbers ({table.row(a)}: {quote(s.iloc[a])}) and dates "
                f"({table.row(b)}: {quote(s.iloc[b])}); use one kind throughout"
            )
        bad = bad & not_date  # the first cell that is neither
    except DataError:
        raise
    except Exception:
        pass
    k = int(np.flatnonzero(bad)[0])
    raise DataError(
        f"{name}: time column {quote(col)} should hold numbers or ISO dates but {table.row(k)} has {quote(s.iloc[k])}; "
        "fix the value or pick another column with --time-col"
    )


def labels_per_group(
    table: Table, col: str, labels: Names, codes: np.ndarray, order: np.ndarray,
    starts: np.ndarray, first_row: np.ndarray, ids: np.ndarray,
) -> np.ndarray:
    """One label per long-layout sequence; a label that changes within a sequence is an error."""
    lc = labels.codes
    sorted_lc = lc[order]
    lo = np.minimum.reduceat(sorted_lc, starts)
    hi = np.maximum.reduceat(sorted_lc, starts)
    bad = np.flatnonzero(lo != hi)
    if len(bad):
        g = int(bad[0])
        rows = np.flatnonzero(codes == g)
        other = rows[lc[rows] != lc[rows[0]]][0]
        row_label = lambda k: labels.names[lc[k]]  # noqa: E731
        raise DataError(
            f"{table.name}: the label changes within id {quote(ids[g])} ({quote(row_label(rows[0]))} at "
            f"{table.row(int(rows[0]))}, {quote(row_label(other))} at {table.row(int(other))}); "
            "each sequence needs a single label"
        )
    return labels.names[lc[first_row]]
