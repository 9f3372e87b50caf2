"""A Python API for data engines: score pandas DataFrames and pyarrow Tables with a trained model, or train one
as a scikit-learn estimator.

- `Model.load(run_dir_or_checkpoint)` loads a checkpoint once; `model.predict(frame)` returns what `gaa predict`
  writes for the same rows (the id column, `prediction`, `prob_<label>`), as a DataFrame. Tables in memory go
  through the same column rules as files (layout, columns, labels and ids as text), and problems are the same
  `GaaError`s, with the same one-line messages.
- `GaaClassifier` trains with `gaa train`'s own code (train.fit) and drops into scikit-learn pipelines,
  `cross_val_score` and grid searches. It needs scikit-learn (`pip install "gaa[sklearn]"`), imported only
  when the class is first used.

See docs/api.md.
"""

from __future__ import annotations

import inspect
import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .config import ModelConfig, TrainConfig, merge, validate
from .data import ReadOptions, Schema, SequenceData, load_frame
from .data.roles import ID_NAMES, find_by_name
from .device import resolve_device
from .precision import resolve_precision
from .errors import UsageError
from .files import RunLock
from .inference import Loaded, evaluate, load_model, predict, prediction_frame
from .model import MIN_LENGTH
from .tensors import check_channels

__all__ = ["Model", "GaaClassifier", "SKLEARN_EXTRA"]

SKLEARN_EXTRA = 'pip install "gaa[sklearn]"'
FRAME = "DataFrame"  # what messages call a table in memory, unless told


class Model:
    """A trained classifier, loaded once, that scores tables in memory.

    `predict`'s frame may be in any of the three layouts (wide, long, list); it is read as the checkpoint's
    schema says, with the same overrides as `gaa predict` (`layout`, `id_col`, `time_col`, `features`). The
    notes `gaa predict` prints to stderr (the layout, ignored columns, ...) are in `notes` after each call.
    """

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.notes: list[str] = list(loaded.notes) + list(loaded.warnings)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Model:
        """Load a run directory (its best checkpoint) or a `.safetensors` checkpoint.

        Args:
            path: what `gaa predict` takes as CHECKPOINT.
            device: "cpu", "cuda", "cuda:N" or "auto".

        Raises:
            CheckpointError: the checkpoint is missing, corrupted or untrusted.
        """
        return cls(load_model(Path(path), device))

    @property
    def classes(self) -> list[str]:
        """The labels the model knows, in the order of the `prob_<label>` columns."""
        return list(self.loaded.meta["classes"])

    @property
    def schema(self) -> Schema:
        """How the training data's columns mapped onto sequences."""
        return self.loaded.schema

    def predict(
        self,
        frame: pd.DataFrame | pa.Table,
        *,
        layout: str | None = None,
        id_col: str | None = None,
        time_col: str | None = None,
        features: list[str] | None = None,
        allow_missing: bool = False,
        fill: str | None = None,
        skip_empty: bool = False,
        name: str = FRAME,
    ) -> pd.DataFrame:
        """The predictions `gaa predict` makes for these rows: one row per sequence, in input order, with the id
        column (ROW_ID, the 0-based position in `frame`, when there is none), `prediction` and `prob_<label>`.

        Args:
            frame: a pandas DataFrame or pyarrow Table holding whole sequences.
            layout, id_col, time_col, features: as `gaa predict`'s options of those names.
            allow_missing, fill, skip_empty: as `--allow-missing`, `--fill`, `--skip-empty-rows`.
            name: what error messages call the frame.

        Raises:
            DataError: the frame does not fit the model's schema (the message names the column and row).
        """
        opts = _read_options(layout, None, id_col, time_col, features, allow_missing, fill, skip_empty)
        out, notes = predict(self.loaded, frame, opts, name=name)
        self.notes = notes
        return out

    def evaluate(
        self,
        frame: pd.DataFrame | pa.Table,
        *,
        label: str | None = None,
        allow_unseen: bool = False,
        layout: str | None = None,
        id_col: str | None = None,
        time_col: str | None = None,
        features: list[str] | None = None,
        allow_missing: bool = False,
        fill: str | None = None,
        skip_empty: bool = False,
        name: str = FRAME,
    ) -> dict:
        """The report `gaa evaluate --json` prints for labelled rows (accuracy, log loss, confusion matrix, ...)."""
        opts = _read_options(layout, label, id_col, time_col, features, allow_missing, fill, skip_empty)
        report, notes = evaluate(self.loaded, frame, opts, allow_unseen=allow_unseen, name=name)
        self.notes = notes
        return report

    def empty_predictions(self, columns: list[str] | None = None, *, id_col: str | None = None) -> pd.DataFrame:
        """An empty frame with the columns and types `predict` returns for a frame with these `columns`: the
        `meta` that Dask's `map_partitions(model.predict, meta=...)` asks for."""
        s = self.schema
        found = id_col if id_col is not None else s.id_col
        if found is None and columns is not None:
            found = find_by_name([str(c) for c in columns], ID_NAMES, {s.label, s.time_col, *s.features})
        if found is not None and columns is not None and found not in map(str, columns) and s.layout != "long":
            found = None  # the wide and list layouts write ROW_ID when the frame has no id column
        channels = 1 if s.layout == "wide" else len(s.features)
        ids = None if found is None else np.array(["x"], dtype=object)
        one = SequenceData(np.zeros((1, 1, channels), np.float32), np.ones(1, np.int64), None, ids,
                           Schema(s.layout, s.label, found, s.time_col, list(s.features)))
        return prediction_frame(self.loaded, one, np.zeros((1, len(self.classes)), np.float32)).iloc[:0]

    def __repr__(self) -> str:
        return f"Model({str(self.loaded.path)!r}, classes={self.classes!r})"


def _read_options(layout, label, id_col, time_col, features, allow_missing, fill, skip_empty) -> ReadOptions:
    if isinstance(features, str):
        features = [c.strip() for c in features.split(",") if c.strip()]
    if fill is not None and fill not in ("mean", "interpolate", "ffill"):
        raise UsageError(f"fill {fill!r}: use one of mean, interpolate, ffill")
    return ReadOptions(layout=layout or "auto", label=label, id_col=id_col, time_col=time_col, features=features,
                       allow_missing=allow_missing or fill is not None, fill=fill or "mean", skip_empty=skip_empty)


# --- the scikit-learn estimator ------------------------------------------------------------------

_DATA_OPTIONS = ("layout", "label", "id_col", "time_col", "features", "allow_missing", "fill", "skip_empty")


def _config_fields() -> list[tuple[str, Any, type]]:
    """(name, default, config class) of every config field `gaa train` has an option for: the estimator's
    hyperparameters, with the defaults of config.py."""
    return [(f.name, f.default, cls) for cls in (ModelConfig, TrainConfig) for f in fields(cls) if "help" in f.metadata]


def _init_signature() -> inspect.Signature:
    read = ReadOptions()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=getattr(read, n)) for n in _DATA_OPTIONS]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d, _ in _config_fields()]
    params += [inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, default=None),
               inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False)]
    return inspect.Signature(params)


def _frame_with_labels(X: Any, y: Any, label: str) -> pd.DataFrame | pa.Table:
    """X as a table (a 2-D array becomes a wide frame, one column per step), with `y` as its label column."""
    if isinstance(X, np.ndarray) or (isinstance(X, list) and X and not isinstance(X[0], dict)):
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise UsageError(f"X: an array must be 2-D (samples, steps), found shape {arr.shape}; "
                             "pass a DataFrame or pyarrow Table for the long and list layouts")
        X = pd.DataFrame(arr, columns=[f"t{j:04d}" for j in range(arr.shape[1])])
    if not isinstance(X, (pd.DataFrame, pa.Table)):
        raise UsageError(f"X: expected a pandas DataFrame, a pyarrow Table or a 2-D array, found {type(X).__name__}")
    if y is None:
        return X
    y = pd.Series(np.asarray(y, dtype=object)).to_numpy(dtype=object)
    if len(y) != len(X):
        raise UsageError(f"y has {len(y)} values but X has {len(X)} rows; give one label per row")
    if isinstance(X, pa.Table):
        values = pa.array([None if v is None else str(v) for v in y], pa.string())
        return X.set_column(X.column_names.index(label), label, values) if label in X.column_names else X.append_column(label, values)
    X = X.copy()
    X[label] = y
    return X


def _classifier_class() -> type:
    try:
        from sklearn.base import BaseEstimator, ClassifierMixin
    except ImportError:
        raise ImportError(f"GaaClassifier needs scikit-learn, which is not installed: {SKLEARN_EXTRA}") from None

    class GaaClassifier(ClassifierMixin, BaseEstimator):
        """A Gaussian Adaptive Attention sequence classifier as a scikit-learn estimator.

        `X` is a pandas DataFrame or pyarrow Table in one of gaa's layouts (wide, long, list), read as
        `gaa train` reads a file, or a 2-D array (samples, steps) read as the wide layout. Labels come from `y`
        or from X's label column. `fit` runs `gaa train`'s recipe (train.fit) into `run_dir` (by default a
        temporary folder, removed afterwards) and keeps the trained `Model` in `model_`.

        The keyword arguments are gaa's data options (`layout`, `label`, `id_col`, `time_col`, `features`,
        `allow_missing`, `fill`, `skip_empty`), every `gaa train` option of the model and the recipe (`width`,
        `epochs`, `lr`, `seed`, ... with config.py's defaults; None = chosen from the data's shape, as
        `gaa train` does), `run_dir` and `verbose` (a progress bar on stderr).

        Scikit-learn splits X by rows, so cross-validation is meant for the wide and list layouts (a row is a
        sample); long-layout frames train and predict, one prediction per sequence.
        """

        def __init__(self, **params: Any) -> None:
            names = [p for p in _init_signature().parameters if p != "self"]
            unknown = sorted(set(params) - set(names))
            if unknown:
                raise TypeError(f"GaaClassifier got unknown parameters {', '.join(unknown)}; known: {', '.join(names)}")
            defaults = {p.name: p.default for p in _init_signature().parameters.values() if p.name != "self"}
            for n in names:
                setattr(self, n, params.get(n, defaults[n]))

        __init__.__signature__ = _init_signature()  # what get_params and clone read

        # --- training

        def fit(self, X: Any, y: Any = None) -> GaaClassifier:
            label = self.label or "label"
            frame = _frame_with_labels(X, y, label)
            where = {"model": "GaaClassifier", "train": "GaaClassifier"}
            model_cfg = merge(ModelConfig, {}, {n: getattr(self, n) for n, _, c in _config_fields() if c is ModelConfig}, where["model"])
            train_cfg = merge(TrainConfig, {}, {n: getattr(self, n) for n, _, c in _config_fields() if c is TrainConfig}, where["train"])
            validate(model_cfg, train_cfg, where)
            resolve_precision(train_cfg.precision, resolve_device(train_cfg.device))
            opts = _read_options(self.layout if self.layout != "auto" else None, label, self.id_col, self.time_col,
                                 self.features, self.allow_missing, self.fill if self.fill != "mean" else None, self.skip_empty)
            data = load_frame(frame, name="X", **{"label": "label", **opts.roles()}, need_labels=True, allow_missing=opts.allow_missing,
                              min_classes=2, min_length=MIN_LENGTH, skip_empty=opts.skip_empty)
            data = data if data.lengths.all() else data.subset(data.lengths > 0)
            check_channels(data)
            self.notes_ = list(data.notes)
            temporary = self.run_dir is None
            run_dir = Path(tempfile.mkdtemp(prefix="gaa-fit-")) if temporary else Path(self.run_dir)
            try:
                result = _train(data, model_cfg, train_cfg, run_dir, opts, self.verbose)
                self.model_ = Model.load(result.best_path, train_cfg.device)
            finally:
                if temporary:
                    shutil.rmtree(run_dir, ignore_errors=True)
            self.run_dir_ = None if temporary else run_dir
            self.classes_ = np.array(self.model_.classes, dtype=object)
            self.n_classes_ = len(self.classes_)
            return self

        # --- using it

        def _scored(self, X: Any) -> pd.DataFrame:
            from sklearn.utils.validation import check_is_fitted

            check_is_fitted(self, "model_")
            frame = _frame_with_labels(X, None, self.label or "label")
            opts = _read_options(self.layout if self.layout != "auto" else None, None, self.id_col, self.time_col, self.features,
                                 self.allow_missing, self.fill if self.fill != "mean" else None, self.skip_empty)
            out, notes = predict(self.model_.loaded, frame, opts, name="X")
            self.model_.notes = notes
            return out

        def predict_proba(self, X: Any) -> np.ndarray:
            """(samples, classes) probabilities, columns in the order of `classes_`; NaN for a row left out by
            `skip_empty`."""
            out = self._scored(X)
            return out[[f"prob_{c}" for c in self.classes_]].to_numpy(dtype=np.float64)

        def predict(self, X: Any) -> np.ndarray:
            """The predicted label of each sample, as text (None for a row left out by `skip_empty`)."""
            return self._scored(X)["prediction"].to_numpy(dtype=object)

        def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
            """Accuracy against `y`, or against X's label column when `y` is None."""
            if y is None:
                label = self.label or "label"
                columns = X.column_names if isinstance(X, pa.Table) else list(getattr(X, "columns", []))
                if label not in columns:
                    raise UsageError(f"score: no y given and X has no label column {label!r}; pass y")
                y = X.column(label).to_pylist() if isinstance(X, pa.Table) else X[label].to_numpy(dtype=object)
                y = _sample_labels(self, X, np.asarray(y, dtype=object))
            truth = np.array([None if v is None else str(v) for v in np.asarray(y, dtype=object)], dtype=object)
            pred = self.predict(X)
            if len(pred) != len(truth):
                raise UsageError(f"score: {len(truth)} labels for {len(pred)} samples; give one label per sample")
            hits = (pred == truth).astype(np.float64)
            return float(np.average(hits, weights=sample_weight))

    GaaClassifier.__module__ = __name__
    return GaaClassifier


def _sample_labels(est: Any, X: Any, row_labels: np.ndarray) -> np.ndarray:
    """One label per sample: the rows' labels, or in the long layout the first row's label of each sequence."""
    if (est.model_.schema.layout if est.layout == "auto" else est.layout) != "long":
        return row_labels
    id_col = est.id_col or est.model_.schema.id_col
    ids = X.column(id_col).to_pylist() if isinstance(X, pa.Table) else X[id_col].tolist()
    first = pd.Series(range(len(ids))).groupby(pd.Series([str(i) for i in ids]), sort=False).first().to_numpy()
    return row_labels[first]


def _train(data: SequenceData, model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: Path, opts: ReadOptions, verbose: bool):
    from rich.console import Console

    from .runs import _prepare_run_dir
    from .train import fit

    replaced = _prepare_run_dir(run_dir, force=True)
    sources = {"data": "(in memory)", "val": "", "allow_missing": str(opts.allow_missing), "fill": opts.fill, "skip_empty": str(opts.skip_empty)}
    with RunLock(run_dir):
        return fit(data, None, model_cfg, train_cfg, run_dir, console=Console(file=sys.stderr, quiet=not verbose),
                   show_progress=verbose, sources=sources, fill=opts.fill, replaces=replaced)


def __getattr__(name: str) -> Any:
    # scikit-learn is an optional extra: the estimator class is made (and sklearn imported) on first use
    if name == "GaaClassifier":
        cls = _classifier_class()
        globals()["GaaClassifier"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
