"""Score a folder of Parquet files in parallel with Dask, using a model trained by `gaa train`.

    python examples/dask_predict.py RUN_DIR FOLDER [OUTPUT.parquet]

Each Dask partition (a file, or a part of one) is scored by `Model.predict`, the same code as
`gaa predict`, on its own: the model is loaded once and shared by the worker threads. The result has
the same rows, in the same order, as `gaa predict RUN_DIR FOLDER` when every partition holds whole
sequences (the list and wide layouts always do; a long-layout folder needs each id's rows in one file)
and the rows have an id column (without one, `series_id` counts rows within each partition).
"""

from __future__ import annotations

import sys

import dask.dataframe as dd
import pandas as pd

from gaa_cli import Model


def score_folder(run_dir: str, folder: str, scheduler: str = "threads") -> pd.DataFrame:
    model = Model.load(run_dir)
    frame = dd.read_parquet(folder)  # the folder's files in name order, as gaa reads them
    meta = model.empty_predictions(list(frame.columns))  # the columns and types predict returns
    return frame.map_partitions(model.predict, meta=meta).compute(scheduler=scheduler).reset_index(drop=True)


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[2].strip())
    predictions = score_folder(argv[0], argv[1])
    if len(argv) == 3:
        predictions.to_parquet(argv[2], index=False)
    else:
        predictions.to_csv(sys.stdout, index=False)


if __name__ == "__main__":
    main(sys.argv[1:])
