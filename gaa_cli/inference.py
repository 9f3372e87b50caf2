"""Using a trained checkpoint: rebuild the model, evaluate on labelled data, predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt_io
from .data import Schema, SequenceData, load
from .device import resolve_device
from .errors import DataError
from .metrics import classification_report
from .model import MIN_LENGTH, SequenceClassifier
from .tensors import encode_labels, predict_proba, to_tensors

__all__ = ["Loaded", "load_model", "evaluate", "predict"]


@dataclass
class Loaded:
    model: SequenceClassifier
    meta: dict
    schema: Schema
    path: Path
    device: torch.device


def load_model(path: Path, device: str = "auto") -> Loaded:
    """Rebuild the model from a checkpoint's own metadata and weights; validates both."""
    ck = ckpt_io.load(path)
    path = ckpt_io.resolve_path(path)
    cfg, schema = ckpt_io.check_checkpoint(ck, path)
    dev = resolve_device(device)
    model = ckpt_io.build_model(cfg, schema, len(ck.meta["classes"]))
    model.load_state_dict(ck.model, strict=True)
    return Loaded(model.to(dev).eval(), ck.meta, schema, path, dev)


def _read(loaded: Loaded, data_path: Path, need_labels: bool, allow_missing: bool, overrides: dict) -> SequenceData:
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    # load() refuses a wide file without every time-step column of the schema, so T always matches
    return load(data_path, schema=loaded.schema, need_labels=need_labels, allow_missing=allow_missing, min_length=MIN_LENGTH, **kwargs)


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
