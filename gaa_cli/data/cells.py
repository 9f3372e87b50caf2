"""Cell values: what counts as missing, parsing numbers, and numeric columns as float32."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError


from .messages import quote, plural

if TYPE_CHECKING:
    from .read import Table

__all__ = ["NA_STRINGS", "NAME_NA_STRINGS", "FLOAT32_MAX", "missing_mask", "is_plain_numeric", "parse_numbers", "to_float32", "missing_error", "numeric_columns", "text_values", "text_codes", "na_names", "object_array"]


# Number cells holding these strings (any case, blanks around ignored) count as missing.
NA_STRINGS = frozenset({"", "nan", "-nan", "na", "n/a", "#n/a", "#na", "<na>", "null", "none", "nil", "?"})
# Labels and ids are names: "NA" or "None" may be a class, so only these count as missing.
NAME_NA_STRINGS = frozenset({"", "nan"})


FLOAT32_MAX = float(np.finfo(np.float32).max)


def missing_mask(s: pd.Series, na_strings: frozenset = NA_STRINGS) -> np.ndarray:
    """True where a cell is empty: null, NaN, or one of `na_strings` (blank, 'NA', ...)."""
    m = s.isna().to_numpy(dtype=bool, copy=True)
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype) or isinstance(s.dtype, pd.CategoricalDtype):
        rest = ~m
        if rest.any():
            m[rest] = _na_like(s[rest], na_strings)
    return m


def _na_like(s: pd.Series, na_strings: frozenset) -> np.ndarray:
    """Which (non-null) cells read as one of `na_strings`: each distinct value is looked at once."""
    try:
        codes, uniques = pd.factorize(s)
    except TypeError:  # unhashable cells (lists in an object column): one by one
        return s.astype(str).str.strip().str.lower().isin(na_strings).to_numpy(dtype=bool)
    na = np.array([str(u).strip().lower() in na_strings for u in uniques], dtype=bool)
    return na[codes] if len(na) else np.zeros(len(s), dtype=bool)


def is_plain_numeric(dtype) -> bool:
    return pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )


def parse_numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN where empty or unparseable, mask of cells that are not empty but unparseable)."""
    missing = missing_mask(s)
    if is_plain_numeric(s.dtype):
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
    if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object or pd.api.types.infer_dtype(obj, skipna=True) in _PLAIN_KINDS:
        odd = np.zeros(len(s), dtype=bool)  # text and numbers only: nothing odd (and no need to look at each cell)
    else:
        odd = obj.map(lambda v: v is not None and not isinstance(v, _NUMBER_LIKE)).to_numpy(dtype=bool, copy=True)
    odd &= ~missing
    vals[odd] = np.nan
    bad = np.isnan(vals) & ~missing
    return vals, bad


_NUMBER_LIKE = (str, bytes, int, float, bool, np.number, np.bool_, decimal.Decimal)
_PLAIN_KINDS = {"string", "bytes", "floating", "integer", "mixed-integer-float", "boolean", "decimal", "empty"}


def _one_float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except Exception:
        return np.nan


def to_float32(vals: np.ndarray, table: Table, col: str, where: Callable[[int], str]) -> np.ndarray:
    """Cast one column's float64 values to float32; inf, or a value too large for float32, is an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        v32 = vals.astype(np.float32, copy=False)
    inf = np.isinf(v32)
    if inf.any():
        k = int(np.flatnonzero(inf)[0])
        raise DataError(
            f"{table.name}: column {quote(col)} has an infinite or too large value at {where(k)} ({vals[k]:g}); "
            f"replace it with a finite number (|x| < {FLOAT32_MAX:.1e})"
        )
    return v32


def missing_error(table: Table, per_col: list[tuple[str, int, str]]) -> DataError:
    col, count, at = per_col[0]
    more = sum(c for _, c, _ in per_col[1:])
    tail = f", and {more} more in other columns" if more else ""
    return DataError(
        f"{table.name}: column {quote(col)} has {plural(count, 'missing value')} (first at {at}{tail}); "
        "fill them in, or pass --allow-missing to fill them with the training mean"
    )


def numeric_columns(
    table: Table, cols: list[str], where: Callable[[int], str], allow_missing: bool, layout: str, skip_empty: bool = False
) -> tuple[np.ndarray, int, list[str], np.ndarray]:
    """(rows, len(cols)) float32 for per-row numeric columns, the NaN count, the columns with NaN, and the rows
    with no value at all (skipped, not counted as missing, when `skip_empty`; else none)."""
    out = np.empty((len(table.df), len(cols)), dtype=np.float32)
    nans = np.zeros((len(table.df), len(cols)), dtype=bool)
    for j, col in enumerate(cols):
        if table.is_list(col):
            raise DataError(
                f"{table.name}: column {quote(col)} holds lists, but the {layout} layout needs one number per cell; "
                "use --layout list, or leave it out with --features"
            )
        vals, bad = parse_numbers(table.df[col])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{table.name}: column {quote(col)} should hold numbers but {where(k)} has "
                f"{quote(table.df[col].iloc[k])}; fix that value or leave the column out with --features"
            )
        out[:, j] = to_float32(vals, table, col, where)
        nans[:, j] = np.isnan(vals)
    empty = nans.all(axis=1) if skip_empty else np.zeros(len(out), dtype=bool)
    missing = [
        (col, int(nan.sum()), where(int(np.flatnonzero(nan)[0])))
        for col, nan in zip(cols, (nans & ~empty[:, None]).T) if nan.any()
    ]
    if missing and not allow_missing:
        raise missing_error(table, missing)
    return out, sum(c for _, c, _ in missing), [c for c, _, _ in missing], empty


def text_values(s: pd.Series) -> np.ndarray:
    """An object array of the cells as text (labels and ids are names, kept as written); see `text_codes`."""
    codes, names = text_codes(s)
    out = names[codes] if len(names) else np.empty(len(codes), dtype=object)
    out[codes < 0] = None
    return out


def text_codes(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, names): the distinct cells as text (an object array of str, in order of first appearance) and
    each cell's index into them; -1 for a null cell.

    Columns read as text stay exactly as they are; anything else (a column the reader did not know to read
    as text) is cast with pyarrow, the same one way the reader casts Parquet columns: 1.0 -> '1', True -> 'true'.
    Each distinct name is one Python string, however many rows hold it.
    """
    if not (pd.api.types.is_string_dtype(s.dtype) and (s.dtype != object or pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"))):
        s = pd.Series(pc.cast(pa.array(s.tolist(), from_pandas=True), pa.string()).to_pylist(), dtype=object)
    codes, uniques = pd.factorize(s)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, dtype=object)


def na_names(names: np.ndarray, na_strings: frozenset = NAME_NA_STRINGS) -> np.ndarray:
    """Which of these names (str) read as missing: blank, or one of `na_strings` in any case."""
    if not len(names):
        return np.zeros(0, dtype=bool)
    text = pc.utf8_lower(pc.utf8_trim_whitespace(pa.array(names, pa.string())))
    return pc.is_in(text, value_set=pa.array(sorted(na_strings), pa.string())).to_numpy(zero_copy_only=False)


def object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
