"""Using a trained checkpoint: rebuild the model, evaluate on labelled data, predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt_io
from .config import ModelConfig, TrainConfig, from_dict, validate
from .data import Schema, SequenceData, load
from .errors import CheckpointError, DataError, GaaError
from .metrics import classification_report
from .model import MIN_LENGTH, SequenceClassifier
from .train import encode_labels, predict_proba, resolve_device, to_tensors

__all__ = ["Loaded", "build_model", "check_checkpoint", "load_model", "evaluate", "predict", "SAVED", "reason"]

SAVED = {"model": "model_config", "train": "train_config"}  # where a checkpoint keeps its configs


def reason(e: Exception) -> str:
    """One line saying why a checkpoint field was refused."""
    if isinstance(e, KeyError):
        return f"missing key {e.args[0]!r}"
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


@dataclass
class Loaded:
    model: SequenceClassifier
    meta: dict
    schema: Schema
    path: Path
    device: torch.device


def _channels(schema: Schema) -> int:
    """Input channels of the model: one per feature column, except wide files (one series)."""
    return 1 if schema.layout == "wide" else len(schema.features)


def build_model(cfg: ModelConfig, schema: Schema, n_classes: int) -> SequenceClassifier:
    """The untrained model a checkpoint's metadata describes (under torch.device("meta"): shapes only)."""
    return SequenceClassifier(cfg, _channels(schema), n_classes)


def _numbers(value: object, n: int, what: str, positive: bool = False) -> None:
    ok = isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    if not ok or (positive and min(value) <= 0):
        raise ValueError(f"{what} must be {n} finite{' positive' if positive else ''} number(s), found {str(value)[:60]}")


def _check_meta(ck: ckpt_io.Checkpoint, path: Path) -> tuple[ModelConfig, Schema]:
    """The model config and schema, after checking every field the model and the data reading use."""
    meta = ck.meta
    cfg = from_dict(ModelConfig, meta["model_config"], "model_config")
    if cfg.width is None:
        raise ValueError("model_config has no width")
    validate(cfg, TrainConfig(), where=SAVED)
    schema = Schema.from_dict(meta["schema"])
    channels = _channels(schema)
    if channels < 1:
        raise ValueError("schema names no feature columns")
    norm = meta["normalization"]
    if not isinstance(norm, dict):
        raise ValueError("normalization must be a JSON object")
    _numbers(norm.get("mean"), channels, "normalization mean")
    _numbers(norm.get("std"), channels, "normalization std", positive=True)
    lengths = meta["lengths"]
    if not isinstance(lengths, dict) or not all(isinstance(lengths.get(k), int) and lengths[k] >= 1 for k in ("min", "max")):
        raise ValueError(f"lengths must hold whole numbers min and max of at least 1, found {str(lengths)[:60]}")
    if schema.layout == "wide" and lengths["max"] != len(schema.features):
        raise ValueError(f"a wide-layout model of {len(schema.features)} time-step columns records sequences of {lengths['max']} steps")
    return cfg, schema


def _check_weights(ck: ckpt_io.Checkpoint, cfg: ModelConfig, schema: Schema, n_classes: int) -> None:
    """The weights are exactly the tensors the model built from the metadata has: names, shapes, dtypes, finite."""
    with torch.device("meta"):  # shapes only: nothing is allocated, whatever the metadata says
        expected = build_model(cfg, schema, n_classes).state_dict()
    head = ck.model.get("head.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != n_classes:
        raise ValueError(f"the metadata lists {n_classes} classes but the classification head has {head.shape[0]} outputs")
    missing = sorted(set(expected) - set(ck.model))
    extra = sorted(set(ck.model) - set(expected))
    if missing or extra:
        bits = ([f"missing {', '.join(missing[:3])}"] if missing else []) + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise ValueError(f"weights do not match model_config: {'; '.join(bits)}")
    for name, want in expected.items():
        got = ck.model[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise ValueError(f"weight {name} is {got.dtype} {tuple(got.shape)}, the model needs {want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"weight {name} holds NaN or infinite values")


def check_checkpoint(ck: ckpt_io.Checkpoint, path: Path) -> tuple[ModelConfig, Schema]:
    """Validate a checkpoint's metadata and weights against each other before they are used."""
    try:
        cfg, schema = _check_meta(ck, path)
        _check_weights(ck, cfg, schema, len(ck.meta["classes"]))
    except (GaaError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is invalid or does not match its weights ({reason(e)}); the file is corrupted or was edited") from None
    return cfg, schema


def load_model(path: Path, device: str = "auto") -> Loaded:
    """Rebuild the model from a checkpoint's own metadata and weights; validates both."""
    ck = ckpt_io.load(path)
    path = ckpt_io.resolve_path(path)
    cfg, schema = check_checkpoint(ck, path)
    dev = resolve_device(device)
    model = build_model(cfg, schema, len(ck.meta["classes"]))
    model.load_state_dict(ck.model, strict=True)
    return Loaded(model.to(dev).eval(), ck.meta, schema, path, dev)


def _read(loaded: Loaded, data_path: Path, need_labels: bool, allow_missing: bool, overrides: dict) -> SequenceData:
    schema = loaded.schema
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    # load() refuses a wide file without every time-step column of the schema, so T always matches
    return load(data_path, schema=schema, need_labels=need_labels, allow_missing=allow_missing, min_length=MIN_LENGTH, **kwargs)


def _probs(loaded: Loaded, data: SequenceData) -> np.ndarray:
    t = to_tensors(data, loaded.meta["normalization"], None)
    return predict_proba(loaded.model, t, loaded.device)


def evaluate(loaded: Loaded, data_path: Path, *, allow_unseen: bool = False, allow_missing: bool = False, overrides: dict | None = None) -> tuple[dict, list[str]]:
    """Metrics of the checkpoint on a labelled file; returns (report, notes for stderr)."""
    data = _read(loaded, data_path, True, allow_missing, overrides or {})
    classes = loaded.meta["classes"]
    y = encode_labels(data.labels, classes)
    notes = list(data.notes)
    unseen = np.flatnonzero(y < 0)
    if len(unseen):
        values = sorted({repr(v) for v in data.labels[unseen]})
        what = f"{len(unseen)} sample(s) have label(s) the model never saw ({', '.join(values[:5])}{', ...' if len(values) > 5 else ''})"
        if not allow_unseen:
            raise DataError(f"{data_path}: {what}; the model knows {', '.join(map(repr, classes[:10]))}. Pass --allow-unseen-labels to count them as wrong")
        notes.append(f"{data_path}: {what}; counted as wrong and left out of the log loss and confusion matrix")
    report = classification_report(y, _probs(loaded, data), classes)
    report["checkpoint"] = str(loaded.path)
    report["data"] = str(data_path)
    return report, notes


def predict(loaded: Loaded, data_path: Path, *, allow_missing: bool = False, overrides: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per sample, in input order: id (if any), prediction, prob_<label> per class."""
    data = _read(loaded, data_path, False, allow_missing, overrides or {})
    probs = _probs(loaded, data)
    classes = loaded.meta["classes"]
    cols: dict[str, object] = {}
    if data.ids is not None:
        cols[loaded.schema.id_col or "id"] = data.ids
    cols["prediction"] = np.array([classes[i] for i in probs.argmax(1)], dtype=object)
    for i, c in enumerate(classes):
        cols[f"prob_{c}"] = probs[:, i]
    return pd.DataFrame(cols), list(data.notes)
