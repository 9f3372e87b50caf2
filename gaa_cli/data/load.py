"""The entry point: a data file -> `SequenceData`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError

from .keys import factorize, read_labels
from .layouts import build_wide, build_long, build_list
from .messages import quote, quoted_names, plural
from .read import Table, read_file
from .roles import ID_NAMES, TIME_NAMES, find_by_name, check_options, detect, from_schema
from .schema import LAYOUTS, Schema, SequenceData

__all__ = ["load"]


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
    if layout not in ("auto", *LAYOUTS):
        raise UsageError(f"unknown layout {layout!r}; use one of auto, {', '.join(LAYOUTS)}")
    find_time = False  # a model trained on another layout, read as long: find the time column as training would
    find_id = False  # a model trained without ids: pass through an id column the file has, found as training would
    if schema is not None:
        if schema.layout not in LAYOUTS:
            raise UsageError(f"the schema's layout {schema.layout!r} is not one of {', '.join(LAYOUTS)}")
        find_time = layout == "long" and schema.layout != "long" and time_col is None
        find_id = schema.id_col is None and id_col is None
        if features is not None and len(features) != len(schema.features):
            raise DataError(
                f"{path}: --features names {len(features)} column(s) but the model was trained on "
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

    named = {c for c in (label, id_col) + ((schema.label, schema.id_col) if schema else ()) if c is not None}
    table = read_file(path, is_text=lambda col: col in named or col.strip().lower() in ID_NAMES)  # labels and ids are text
    notes = list(table.notes)
    if schema is not None:
        if find_id:
            schema.id_col = find_by_name(list(table.df.columns), ID_NAMES, {schema.label, schema.time_col, *schema.features})
            if schema.id_col is not None:
                notes.append(f"{table.name}: using column {quote(schema.id_col)} as the {'sequence' if schema.layout == 'long' else 'row'} id (found by name; pass --id-col to choose another)")
        if find_time:
            taken = {schema.label, schema.id_col, *schema.features}
            schema.time_col = find_by_name(list(table.df.columns), TIME_NAMES, taken)
            if schema.time_col is not None:
                notes.append(f"{table.name}: using column {quote(schema.time_col)} to order the steps (found by name; pass --time-col to choose another)")
        s = from_schema(table, schema, need_labels)
        why_unused = "not in the model's schema"
    else:
        s, more, why_unused = detect(table, layout, label, id_col, time_col, features, need_labels)
        notes += more

    try:
        return _build(table, s, notes, why_unused, need_labels, allow_missing, min_classes, min_length, skip_empty)
    except DataError as e:  # say what was decided (the layout, the columns) before the error
        e.notes = notes + e.notes
        raise


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


def _build(
    table: Table, s: Schema, notes: list[str], why_unused: str, need_labels: bool, allow_missing: bool,
    min_classes: int, min_length: int, skip_empty: bool,
) -> SequenceData:
    """The sequences of a table whose schema is settled."""
    cols = list(table.df.columns)
    used = set(s.features) | {c for c in (s.id_col, s.time_col, s.label) if c is not None}
    unused = [c for c in cols if c not in used]
    if unused:
        notes.append(f"{table.name}: ignored {plural(len(unused), 'column')} {why_unused}: {quoted_names(unused)}")

    row_labels = read_labels(table, s.label) if need_labels else None
    if s.layout == "long":
        x, lengths, ids, nmissing, nan_cols, labels = build_long(table, s, allow_missing, row_labels, s.label)
    else:
        build = build_wide if s.layout == "wide" else build_list
        x, lengths, ids, nmissing, nan_cols = build(table, s, allow_missing, skip_empty)
        labels = row_labels  # one row per sample

    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        k = int(empty[0])
        first = f"id {quote(ids[k])}" if ids is not None else table.row(k)
        notes.append(f"{table.name}: skipped {plural(len(empty), 'row')} with no values at all (first: {first}) because of --skip-empty-rows")
    short = np.flatnonzero((lengths < min_length) & (lengths > 0))
    if len(short):
        k = int(short[0])
        where = f"id {quote(ids[k])}" if ids is not None else table.row(k)
        fix = "give the file at least" if s.layout == "wide" else "remove them or give each at least"
        unit = "time-step columns" if s.layout == "wide" else "steps"
        hint = _looks_long(table, s) if s.layout == "wide" and x.shape[1] == 1 else ""
        raise DataError(
            f"{table.name}: {plural(len(short), 'sequence')} {'has' if len(short) == 1 else 'have'} fewer than "
            f"{min_length} steps (first: {where}), but the model needs at least {min_length}; {fix} {min_length} {unit}{hint}"
        )
    if ids is not None and s.layout != "long" and len(factorize(ids, table, "id", s.id_col)[1]) < len(ids):
        notes.append(f"{table.name}: id column {quote(s.id_col)} repeats values; ids are reported as they are")
    if labels is not None:
        _, classes = factorize(labels, table, "label", s.label)
        if len(classes) < min_classes:
            raise DataError(
                f"{table.name}: label column {quote(s.label)} has only {plural(len(classes), 'class')} "
                f"({quoted_names(list(classes), 4)}); training needs at least {min_classes} classes"
            )
        if len(classes) > 20 and len(classes) > len(labels) // 2:
            notes.append(
                f"{table.name}: label column {quote(s.label)} has {len(classes):,} distinct values among "
                f"{len(labels):,} samples; check it is really a class label (--label)"
            )
    if nmissing:
        notes.append(
            f"{table.name}: kept {plural(nmissing, 'missing value')} (in {quoted_names(nan_cols, 4)}) as NaN "
            "because of --allow-missing; they are filled with the training mean"
        )
    return SequenceData(x, lengths, labels, ids, s, notes, int(nmissing), table.name)
