"""Using a trained checkpoint: rebuild the model, evaluate on labelled data, predict."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt_io
from .data import CHUNK_BYTES, ReadOptions, Schema, SequenceData, SequenceStream, chunk_rows_from_env
from .device import resolve_device
from .errors import CheckpointError, DataError, UsageError
from .files import holder
from .metrics import Scores
from .model import MIN_LENGTH, SequenceClassifier
from .explain import explain_batch
from .tensors import encode_labels, length_batches, predict_proba, to_tensors

__all__ = ["ROW_ID", "Loaded", "Explained", "load_model", "info", "evaluate", "prediction_frame", "predict_frames", "predict", "explain"]

ROW_ID = "series_id"  # the id column of outputs for data without one: each sample's 0-based position in the file


@dataclass
class Loaded:
    model: SequenceClassifier
    meta: dict
    schema: Schema
    path: Path
    device: torch.device
    notes: list[str] = field(default_factory=list)  # which checkpoint this is
    warnings: list[str] = field(default_factory=list)  # ... when it is not the best of a finished run


def _provenance(path: Path, meta: dict) -> tuple[list[str], list[str]]:
    """(notes, warnings) saying which checkpoint `path` is: the best of a finished run, or something less.
    Refuses one that holds no trained model (a run stopped before its first epoch ended)."""
    run_dir = path.parent
    last = ckpt_io.peek_meta(run_dir / ckpt_io.LAST) if path.name in (ckpt_io.BEST, ckpt_io.LAST) else None
    loop = ((last or {}).get("resume") or {}).get("loop") or {}
    epochs, done = meta.get("train_config", {}).get("epochs"), loop.get("epoch")
    busy = holder(run_dir)
    resume = f"it is still being trained{busy}" if busy is not None else f"continue it with: gaa train --resume {run_dir}"
    kind, epoch = meta.get("kind"), meta.get("epoch")
    if kind == "last" and epoch == 0:
        raise CheckpointError(f"{path}: holds no trained model yet: its run stopped before the first epoch ended; {resume}")
    if kind == "best" and epoch == 0:
        which = "the ridge half alone, saved before the network's first epoch"
    else:
        which = f"epoch {epoch} of {epochs}"
    if last is None or loop.get("finished"):  # a finished run, or a file on its own
        what = "best" if kind == "best" else "final"
        return [f"using {path}: the {what} model of {'its finished run' if last else 'its run'} ({which})"], []
    so_far = f"{done} of {epochs} epochs done" if isinstance(done, int) else "unfinished"
    what = f"the best model so far ({which})" if kind == "best" else f"the model as of epoch {epoch} (no best checkpoint yet)"
    return [], [f"using {path}: {what} of an unfinished run ({so_far}); {resume}"]


def load_model(path: Path, device: str = "auto") -> Loaded:
    """Rebuild the model from a checkpoint's own metadata and weights; validates both."""
    ck = ckpt_io.load(path)
    path = ckpt_io.resolve_path(path)
    cfg, schema = ckpt_io.check_checkpoint(ck, path)
    notes, warnings = _provenance(path, ck.meta)
    dev = resolve_device(device)
    model = ckpt_io.build_model(cfg, schema, len(ck.meta["classes"]))
    model.load_state_dict(ck.model, strict=True)
    return Loaded(model.to(dev).eval(), ck.meta, schema, path, dev, notes, warnings)


def info(path: Path) -> dict:
    """What a checkpoint holds, for `gaa info`: classes, input schema, configs, size, metrics, versions."""
    loaded = load_model(path, "cpu")
    meta, model = loaded.meta, loaded.model
    network = sum(p.numel() for p in model.parameters())
    ridge = model.ridge is not None and model.ridge.fitted
    metrics = {k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, (int, float))}
    return {
        "checkpoint": str(loaded.path),
        "kind": meta.get("kind"),
        "epoch": meta.get("epoch"),
        "status": (loaded.notes + loaded.warnings)[0],
        "classes": meta["classes"],
        "schema": loaded.schema.to_dict(),
        "lengths": meta["lengths"],
        "n_train_samples": meta.get("n_train_samples"),
        "model_config": meta["model_config"],
        "train_config": meta["train_config"],
        "parameters": {"network": network, "ridge_features": int(model.ridge.center.numel()) if ridge else 0},
        "network_weight": float(model.blend) if ridge else 1.0,
        "ridge": meta.get("ridge"),
        "metrics": metrics,
        "versions": meta.get("versions"),
        "size_bytes": loaded.path.stat().st_size,
    }


def _stream(loaded: Loaded, source: Path | object, need_labels: bool, opts: ReadOptions, name: str | None = None) -> SequenceStream:
    """The sequences of `source` (a file, read in chunks of about CHUNK_BYTES or $GAA_CHUNK_ROWS rows; or a table in
    memory, read whole) as the checkpoint's schema says."""
    rows = chunk_rows_from_env()
    # the schema refuses a wide file without every time-step column of the model, so T always matches
    return SequenceStream(source, schema=loaded.schema, **opts.roles(), need_labels=need_labels, allow_missing=opts.allow_missing,
                          min_length=MIN_LENGTH, skip_empty=opts.skip_empty, chunk_rows=rows,
                          chunk_bytes=CHUNK_BYTES if rows is None else None, name=name)


def _probs(loaded: Loaded, data: SequenceData, opts: ReadOptions) -> np.ndarray:
    """(N, K) probabilities; rows left out by --skip-empty-rows (length 0) get NaN, which outputs write as empty."""
    kept = data.lengths > 0
    probs = np.full((len(kept), len(loaded.meta["classes"])), np.nan, dtype=np.float32)
    if kept.any():
        data = data if kept.all() else data.subset(kept)
        probs[kept] = predict_proba(loaded.model, to_tensors(data, loaded.meta["normalization"], None, opts.fill), loaded.device)
    return probs


def evaluate(loaded: Loaded, data_path: Path | object, opts: ReadOptions | None = None, *, allow_unseen: bool = False,
             name: str | None = None) -> tuple[dict, list[str]]:
    """Metrics of the checkpoint on labelled data (a file, read chunk by chunk, or a table in memory); returns
    (report, notes for stderr). The scores are summed over the chunks: the report is the whole file's."""
    opts = opts or ReadOptions()
    stream = _stream(loaded, data_path, True, opts, name)
    classes = loaded.meta["classes"]
    scores = Scores(len(classes))
    unseen, unseen_values = 0, set()
    for data in stream:
        data = data if data.lengths.all() else data.subset(data.lengths > 0)  # rows skipped by --skip-empty-rows have nothing to score
        y = encode_labels(data.labels, classes)
        new = np.flatnonzero(y < 0)
        if len(new):
            unseen += len(new)
            unseen_values |= {repr(v) for v in pd.unique(data.labels[new])}
            unseen_values = set(sorted(unseen_values)[:6])  # the message shows five, and whether there are more
        if unseen and not allow_unseen:
            continue  # the file is refused: read on only to count what the message says
        scores.add(y, _probs(loaded, data, opts))
    notes = list(stream.notes)
    if unseen:
        values = sorted(unseen_values)
        what = f"{unseen} sample(s) have label(s) the model never saw ({', '.join(values[:5])}{', ...' if len(values) > 5 else ''})"
        if not allow_unseen:
            raise DataError(f"{data_path if stream.is_file else stream.name}: {what}; the model knows {', '.join(map(repr, classes[:10]))}. "
                            "Pass --allow-unseen-labels to count them as wrong", notes=notes)
        notes.append(f"{data_path if stream.is_file else stream.name}: {what}; counted as wrong and left out of the log loss and confusion matrix")
    report = scores.report(classes)
    report["checkpoint"] = str(loaded.path)
    report["data"] = str(data_path) if stream.is_file else stream.name
    return report, notes


def prediction_frame(loaded: Loaded, data: SequenceData, probs: np.ndarray, first: int = 0) -> pd.DataFrame:
    """One row per sample of a chunk: the id (or ROW_ID: the sample's 0-based position in the whole input, which
    starts at `first` for this chunk), prediction, prob_<label> per class. A row left out by --skip-empty-rows
    keeps its place and id, with empty prediction fields."""
    classes = loaded.meta["classes"]
    cols: dict[str, object] = {}
    if data.ids is not None:
        cols[data.schema.id_col] = data.ids
    else:  # no id column: the row's 0-based position, so that every prediction can be joined back
        cols[ROW_ID] = np.arange(first, first + len(probs))
    kept = data.lengths > 0
    names = np.empty(len(classes) + 1, dtype=object)
    names[:-1], names[-1] = classes, None
    cols["prediction"] = names[np.where(kept, probs.argmax(1) if len(probs) else 0, len(classes))]
    for i, c in enumerate(classes):
        cols[f"prob_{c}"] = probs[:, i]
    return pd.DataFrame(cols)


def predict_frames(loaded: Loaded, data_path: Path | object, opts: ReadOptions | None = None, *,
                   name: str | None = None) -> tuple[Iterator[pd.DataFrame], list[str]]:
    """Predictions chunk by chunk, in input order (see `prediction_frame`), and the notes for stderr, which are
    complete once the frames have all been taken. Reading options are checked at once; the data as it is read."""
    opts = opts or ReadOptions()
    stream = _stream(loaded, data_path, False, opts, name)
    notes: list[str] = []

    def frames() -> Iterator[pd.DataFrame]:
        first = 0
        for data in stream:
            probs = _probs(loaded, data, opts)
            yield prediction_frame(loaded, data, probs, first)
            first += len(probs)
        notes.extend(stream.notes)

    return frames(), notes


def predict(loaded: Loaded, data_path: Path | object, opts: ReadOptions | None = None, *, name: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """`predict_frames`, gathered into one frame."""
    frames, notes = predict_frames(loaded, data_path, opts, name=name)
    chunks = list(frames)
    return (chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)), notes


@dataclass
class Explained:
    """What `explain` found, one entry per sequence (rows skipped by --skip-empty-rows left out), in input order."""

    id_col: str  # the data's id column, or ROW_ID
    ids: np.ndarray  # (N,)
    predicted: list[str]
    probability: np.ndarray  # (N,) of the predicted class
    steps: list[np.ndarray]  # importance of each input step, ordered by the time column; each sums to 1
    channels: np.ndarray | None  # (N, C) importance of each input column, rows summing to 1; None for one channel
    channel_names: list[str]
    values: list[np.ndarray]  # the input values (L_i, C), in the file's units, for figures
    network_weight: float  # the network's share of each prediction (the ridge has no map)


def explain(loaded: Loaded, data_path: Path | object, opts: ReadOptions | None = None, batch_size: int = 64,
            progress: Callable[[int], None] = lambda n: None, *, name: str | None = None) -> tuple[Explained, list[str]]:
    """Importance of every input step (and column) of every sequence in a file (see explain.py); (result, notes).

    The file is read chunk by chunk like `predict`; within a chunk, batches are formed by length and explained
    one at a time, so that working memory follows a batch (the result itself holds every step's importance),
    and `progress(n)` is told of every n sequences done."""
    opts = opts or ReadOptions()
    model = loaded.model
    ridge = model.ridge is not None and model.ridge.fitted
    weight = float(model.blend) if ridge else 1.0
    if weight == 0.0:
        raise UsageError(f"{loaded.path}: this model is its ridge half alone (the network never validated better), and the ridge "
                         f"has no attention to explain; explain {loaded.path.parent / 'last.safetensors'} to see the network, "
                         "or train with --ridge-features 0")
    stream = _stream(loaded, data_path, False, opts, name)
    classes = loaded.meta["classes"]
    ids: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    channels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    values: list[np.ndarray] = []
    id_col, names, first = ROW_ID, ["value"], 0
    for data in stream:
        kept = data.lengths > 0
        ids.append((data.ids if data.ids is not None else np.arange(first, first + len(kept)))[kept])  # no ids: the 0-based row
        first += len(kept)
        data = data.subset(kept)
        id_col = data.schema.id_col or ROW_ID
        names = data.channel_names() if data.schema.layout != "wide" else ["value"]
        t = to_tensors(data, loaded.meta["normalization"], None, opts.fill)
        lengths = t.mask.sum(1)
        n = len(lengths)
        chunk_steps: list[np.ndarray] = [np.zeros(0)] * n
        chunk_channels = np.zeros((n, t.x.shape[2]), dtype=np.float32)
        chunk_probs = np.zeros((n, len(classes)), dtype=np.float32)
        for idx in length_batches(lengths, batch_size):
            width = int(lengths[idx].max())
            e = explain_batch(model, t.x[idx, :width].to(loaded.device), t.mask[idx, :width].to(loaded.device))
            chunk_probs[idx.numpy()] = e.probs.cpu().numpy()
            for row, i in enumerate(idx.tolist()):
                chunk_steps[i] = e.steps[row, : int(lengths[i])].cpu().numpy()
            if e.channels is not None:  # None for one channel
                chunk_channels[idx.numpy()] = e.channels.cpu().numpy()
            progress(len(idx))
        steps += chunk_steps
        channels.append(chunk_channels)
        probs.append(chunk_probs)
        values += [data.x[i, : int(data.lengths[i])] for i in range(n)]
    prob = np.concatenate(probs) if probs else np.zeros((0, len(classes)), dtype=np.float32)
    channel = np.concatenate(channels) if channels else np.zeros((0, len(names)), dtype=np.float32)
    result = Explained(id_col, np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64), [classes[k] for k in prob.argmax(1)],
                       prob.max(1) if len(prob) else np.zeros(0, dtype=np.float32), steps,
                       channel if channel.shape[1] > 1 else None, names, values, weight)
    notes = list(stream.notes)
    if weight < 1.0:
        notes.append(f"the maps explain the network, which carries {weight:.0%} of each prediction; the ridge half, "
                     f"{1 - weight:.0%}, has no attention to map")
    return result, notes
