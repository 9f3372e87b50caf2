"""Column roles: which columns are the label, the id, the time and the features, and which layout a file is in."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError, UsageError

from .cells import is_plain_numeric, parse_numbers
from .layouts import csv_has_no_lists
from .messages import quote, quoted_names, plural
from .read import Table
from .schema import Schema

__all__ = ["ID_NAMES", "TIME_NAMES", "find_by_name", "check_options", "detect", "from_schema"]


# Looked up case-insensitively, in this order, when --id-col / --time-col are not given.
ID_NAMES = ("id", "series_id", "sample_id", "sequence_id", "seq_id", "series", "sequence")
TIME_NAMES = ("time", "t", "timestamp", "step", "time_step", "timestep", "time_idx", "frame")


def find_by_name(cols: list[str], candidates: tuple[str, ...], exclude: set) -> str | None:
    lower = {}
    for c in cols:
        if c not in exclude:
            lower.setdefault(c.strip().lower(), c)
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _missing_label_error(table: Table, label: str) -> DataError:
    cols = list(table.df.columns)
    guess = [c for c in cols if c.strip().lower() in {label.lower(), "label", "labels", "class", "target", "y", "category"}]
    if not guess:  # the lone column of text, if there is one, is most likely the label
        ids = {c for c in cols if c.strip().lower() in ID_NAMES + TIME_NAMES}
        guess = [c for c in cols if c not in ids and not table.is_list(c) and not _is_numberish(table.df[c])]
        guess = guess if len(guess) == 1 else []
    hint = f" (perhaps --label {guess[0]}?)" if guess else ""
    return DataError(
        f"{table.name}: no label column {quote(label)}; the file has columns {quoted_names(cols)}; "
        f"pass --label NAME to name the label column{hint}"
    )


def check_options(label, id_col, time_col, features) -> None:
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
            raise UsageError(f"features names a column more than once: {quoted_names(dup)}")
    roles = {"label": label, "id": id_col, "time": time_col}
    named = [(r, v) for r, v in roles.items() if v is not None]
    for i, (r1, v1) in enumerate(named):
        for r2, v2 in named[i + 1 :]:
            if v1 == v2:
                raise UsageError(f"column {quote(v1)} cannot be both the {r1} and the {r2} column")
        if features is not None and v1 in features:
            raise UsageError(f"column {quote(v1)} is the {r1} column, so it cannot also be a feature")


def _count_distinct(table: Table, col: str) -> int:
    try:
        return int(table.df[col].nunique(dropna=False))
    except TypeError:
        raise DataError(
            f"{table.name}: id column {quote(col)} holds values that cannot be compared; use strings or numbers"
        ) from None


def _is_numberish(s: pd.Series) -> bool:
    """Whether a column is meant to hold numbers: numeric dtype, or at least one cell parses as a number."""
    if is_plain_numeric(s.dtype):
        return True
    if pd.api.types.is_datetime64_any_dtype(s.dtype) or pd.api.types.is_timedelta64_dtype(s.dtype):
        return False
    vals, _ = parse_numbers(s)
    return bool((~np.isnan(vals)).any())


def detect(
    table: Table, layout: str, label: str | None, id_col: str | None, time_col: str | None,
    features: list[str] | None, need_labels: bool,
) -> tuple[Schema, list[str], str]:
    """Work out the schema of a file read for training (no saved schema)."""
    name, df = table.name, table.df
    cols = list(df.columns)
    notes: list[str] = []
    for opt, v in (("--id-col", id_col), ("--time-col", time_col)):
        if v is not None and v not in cols:
            raise DataError(f"{name}: no column {quote(v)} (given by {opt}); the file has columns {quoted_names(cols)}")
    if features is not None:
        absent = [f for f in features if f not in cols]
        if absent:
            raise DataError(
                f"{name}: --features names columns the file lacks: {quoted_names(absent)}; "
                f"the file has columns {quoted_names(cols)}"
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

    found_id = id_col if id_col is not None else find_by_name(cols, ID_NAMES, taken)
    if layout == "auto":
        n_ids = _count_distinct(table, found_id) if found_id is not None else len(df)
        if list_cols:
            layout, why = "list", f"{quoted_names(list_cols, 4)} hold lists"
        elif time_col is not None:
            layout, why = "long", "--time-col was given"
        elif n_ids < len(df):
            layout, why = "long", f"column {quote(found_id)} repeats its values, {plural(n_ids, 'id')} over {len(df):,} rows"
        else:
            why = "one sample per row: no list columns and no id column with repeated values"
            layout = "wide"
        notes.append(f"{name}: read as {layout} layout ({why}); pass --layout to choose another")
    if time_col is not None and layout != "long":
        raise UsageError(f"--time-col applies to the long layout only, not {layout}")
    if layout == "list" and table.arrow is None:
        raise csv_has_no_lists(name)
    if layout == "long" and found_id is None:
        raise DataError(
            f"{name}: the long layout needs an id column naming each sequence, and no column is named "
            f"{', '.join(ID_NAMES[:4])}, …; pass --id-col NAME (columns: {quoted_names(cols)})"
        )

    found_time = None
    if layout == "long":
        found_time = time_col if time_col is not None else find_by_name(cols, TIME_NAMES, taken | {found_id})
    by_name = []
    if found_id is not None and id_col is None:
        by_name.append(f"{quote(found_id)} as the {'sequence id' if layout == 'long' else 'row id'}")
    if found_time is not None and time_col is None:
        by_name.append(f"{quote(found_time)} to order the steps")
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
                f"{quoted_names(sorted(used, key=cols.index)) if used else 'nothing'}; the file has columns "
                f"{quoted_names(cols)}; pass --features or check --label / --id-col"
            )
    else:
        why_unused = "not named by --features"
    return Schema(layout, label if has_label else None, found_id, found_time, list(features)), notes, why_unused


def from_schema(
    table: Table, s: Schema, need_labels: bool
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
            f"(missing {quoted_names(absent, 4)}); give the file the training data's columns "
            f"(the file has {quoted_names(cols)}), or pass --features"
        )
    if absent:
        raise DataError(
            f"{name}: lacks columns the model needs: {quoted_names(absent)}; the file has {quoted_names(cols)}; "
            "rename the columns to match the training data, or pass --features"
        )
    for role, col in (("id", s.id_col), ("time", s.time_col)):
        if col is not None and col not in present and (s.layout == "long"):
            raise DataError(
                f"{name}: lacks the {role} column {quote(col)} the model's schema needs; the file has {quoted_names(cols)}; "
                f"rename a column to {quote(col)} or pass --{role}-col"
            )
    time_col = s.time_col if s.layout == "long" else None
    return Schema(s.layout, s.label if s.label in present else None, s.id_col, time_col, list(s.features))
