"""Reading data files and shaping them into padded sequences.

A file (`.csv`, `.csv.gz`, `.parquet`, or a folder of `.parquet` files) holds
samples in one of three layouts (see `layouts.py`): wide, long or list.
`load` turns any of them into `SequenceData` (`load_frame` does the same for a DataFrame or pyarrow Table in
memory, and `SequenceStream` reads a file chunk by chunk, in bounded memory, for evaluate and predict): an (N, T, C) float32 array,
left-aligned and zero-padded, with lengths, labels and ids. Every problem with
the file is a `DataError` (bad option values: `UsageError`) whose one-line
message names the file, the column and the row, and says what would fix it.

Modules, from the bottom up: `schema` (the data model), `messages` (wording),
`cells` (values and missing cells), `read` (files to tables), `keys` (labels,
ids, time), `layouts` (tables to arrays), `roles` (which column is what),
`load` (the entry point).
"""

from .load import SequenceStream, load, load_frame
from .read import CHUNK_BYTES, chunk_rows_from_env, read_table
from .schema import LAYOUTS, ReadOptions, Schema, SequenceData

__all__ = ["LAYOUTS", "CHUNK_BYTES", "ReadOptions", "Schema", "SequenceData", "SequenceStream", "chunk_rows_from_env", "read_table", "load",
           "load_frame"]
