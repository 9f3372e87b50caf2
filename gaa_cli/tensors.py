"""From `SequenceData` to model inputs, and a model's probabilities back out, batch by batch.

The model sees normalised (N, T, C) float32 tensors with a (N, T) validity
mask; labels become class indices. Everything here is shared by training and
inference, so that both read and batch data the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import SequenceData
from .device import to_device
from .errors import DataError, TrainingError
from .model import SequenceClassifier
from .precision import Precision

__all__ = ["FILLS", "CLIP", "Tensors", "plain", "class_list", "encode_labels", "check_channels", "fit_normalization", "fill_gaps", "to_tensors", "length_batches", "fingerprint", "predict_proba"]


@dataclass
class Tensors:
    x: torch.Tensor  # (N, T, C) float32, normalised, padded steps and missing values 0
    mask: torch.Tensor  # (N, T) bool, True = real step
    y: torch.Tensor | None  # (N,) int64 class index, -1 = a label the model never saw

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray | torch.Tensor) -> Tensors:
        idx = torch.as_tensor(idx)
        if len(idx) == len(self.x) and bool((idx == torch.arange(len(idx))).all()):
            return self  # every sample in order: no copy
        return Tensors(self.x[idx], self.mask[idx], None if self.y is None else self.y[idx])


def plain(v: Any) -> Any:
    """numpy scalars -> Python values, so labels survive JSON unchanged."""
    return v.item() if isinstance(v, np.generic) else v


def _all_text(labels: np.ndarray) -> bool:
    return pd.api.types.infer_dtype(labels, skipna=False) in ("string", "empty")


def class_list(labels: np.ndarray) -> list[str]:
    """The distinct labels (text) in the order of a checkpoint's classes: by number where every label reads as
    one (`2` before `10`, and `01` beside `1` but apart from it), else alphabetically."""
    distinct = pd.unique(labels) if _all_text(labels) else labels  # each distinct label once, not once a row
    classes = sorted({str(v) for v in distinct})
    try:
        numbers = {c: float(c) for c in classes}
    except ValueError:
        return classes
    return sorted(classes, key=lambda c: (numbers[c], c))


def encode_labels(labels: np.ndarray, classes: list) -> np.ndarray:
    """(N,) class indices into `classes`; -1 for a label not among them."""
    index = {repr(c): i for i, c in enumerate(classes)}
    if not _all_text(labels):  # mixed kinds: 1, 1.0 and True hash alike, so each is looked up by its own spelling
        return np.array([index.get(repr(plain(v)), -1) for v in labels], dtype=np.int64)
    codes, uniques = pd.factorize(labels)
    known = np.array([index.get(repr(u), -1) for u in uniques], dtype=np.int64)
    return known[codes] if len(known) else np.zeros(0, dtype=np.int64)


def check_channels(data: SequenceData) -> None:
    """Refuse, by name, a channel without a single value (every cell missing, kept by --allow-missing):
    nothing could be learned from it, and its statistics would be undefined."""
    valid = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]  # (N, T)
    empty = np.flatnonzero(np.isnan(data.x[valid]).all(axis=0))
    if len(empty):
        what = "every time-step column is" if data.schema.layout == "wide" else f"column {data.channel_names()[int(empty[0])]!r} has no values at all:"
        raise DataError(f"{data.source}: {what} empty in every row; fill it in or leave it out with --features")


def _blocks(n: int, per_row: int, values: int = 1 << 21) -> list[slice]:
    """Row blocks of about `values` values: float64 temporaries stay a few megabytes whatever the data's size."""
    step = max(1, values // max(1, per_row))
    return [slice(a, min(n, a + step)) for a in range(0, n, step)]


def fit_normalization(data: SequenceData) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation over the real (non-padded, non-missing) steps (see check_channels)."""
    n, t, c = data.x.shape
    count, total, squares = np.zeros(c), np.zeros(c), np.zeros(c)  # float64: the variance of large float32 values overflows
    blocks = _blocks(n, t * c)
    for pass_ in (0, 1):
        mean = total / np.maximum(count, 1)
        for b in blocks:
            valid = np.arange(t)[None, :] < data.lengths[b, None]  # (n, T)
            values = data.x[b][valid].astype(np.float64)  # (steps, C)
            nan = np.isnan(values)
            if pass_ == 0:
                count += (~nan).sum(axis=0)
                total += np.where(nan, 0.0, values).sum(axis=0)
            else:
                squares += np.where(nan, 0.0, values - mean).__pow__(2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        std = np.sqrt(squares / count)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return {"mean": np.nan_to_num(mean).tolist(), "std": std.tolist()}


FILLS = ("mean", "interpolate", "ffill")
CLIP = 1e4  # normalised inputs are clipped to +-CLIP training standard deviations: far beyond any real signal,
# and small enough that no layer can overflow float32, so a wild value (1e36) or a degenerate stored
# normalisation never turns into NaN or infinite probabilities


def fill_gaps(x: np.ndarray, lengths: np.ndarray, method: str) -> np.ndarray:
    """Missing values (NaN) of (N, T, C) sequences filled along time, per sequence and channel.

    `mean` leaves them for `to_tensors` (the training mean); `interpolate` draws a straight line between the
    nearest values on either side and `ffill` repeats the last value before the gap: neither puts a spike
    into a series. Gaps at a sequence's start take its first value (its last value at the end, for
    `interpolate`); a channel with no value at all in a sequence keeps the training mean.
    """
    assert method in FILLS, method
    if method == "mean" or not np.isnan(x).any():
        return x
    x = x.copy()
    for i in np.flatnonzero(np.isnan(x).any(axis=(1, 2))):  # only the sequences with gaps
        n = int(lengths[i])
        for c in range(x.shape[2]):
            v = x[i, :n, c]  # a view: filled in place
            known = np.flatnonzero(~np.isnan(v))
            if len(known) in (0, n):
                continue
            if method == "interpolate":
                v[:] = np.interp(np.arange(n), known, v[known])
            else:
                last = np.maximum.accumulate(np.where(np.isnan(v), -1, np.arange(n)))  # index of the last value so far
                v[:] = v[np.where(last < 0, known[0], last)]
    return x


def to_tensors(data: SequenceData, norm: dict[str, list[float]], classes: list | None, fill: str = "mean",
               rows: np.ndarray | None = None) -> Tensors:
    """Normalised float32 tensors of the sequences (of those at `rows`, in that order, when given), computed a
    block of rows at a time so that only the result is the data's size."""
    mean = np.asarray(norm["mean"], dtype=np.float64)
    std = np.asarray(norm["std"], dtype=np.float64)
    pick = (lambda b: b) if rows is None else (lambda b: rows[b])  # noqa: E731
    n = len(data.x) if rows is None else len(rows)
    steps = data.x.shape[1]
    x = np.empty((n, steps, data.x.shape[2]), dtype=np.float32)  # (N, T, C)
    mask = np.empty((n, steps), dtype=bool)  # (N, T)
    for b in _blocks(n, x[0].size if n else 1):
        lengths = data.lengths[pick(b)]
        xb = fill_gaps(data.x[pick(b)], lengths, fill).astype(np.float64)  # float64, so that large values do not overflow
        with np.errstate(over="ignore", invalid="ignore"):
            xb -= mean
            xb /= std
            np.clip(xb, -CLIP, CLIP, out=xb)
        mb = np.arange(steps)[None, :] < lengths[:, None]
        if not mb.all():
            xb[~mb] = 0.0  # padded steps
        if np.isnan(xb).any():
            xb[np.isnan(xb)] = 0.0  # missing -> the training mean
        mask[b] = mb
        x[b] = xb
    y = None
    if classes is not None and data.labels is not None:
        y = torch.from_numpy(encode_labels(data.labels if rows is None else data.labels[rows], classes))
    return Tensors(torch.from_numpy(x), torch.from_numpy(mask), y)


def length_batches(lengths: torch.Tensor, batch_size: int, max_steps: int = 1 << 20) -> list[torch.Tensor]:
    """Indices of sequences in batches of similar length: at most `batch_size` sequences, and at most about
    `max_steps` padded steps, so that the cost of a batch follows its own sequences' lengths."""
    order = torch.argsort(lengths, stable=True)
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        # the batch's padded size is (its count) x (its longest, the last one in length order)
        while end < len(order) and end - start < batch_size and (end - start + 1) * int(lengths[order[end]]) <= max_steps:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def fingerprint(data: SequenceData) -> str:
    """A short hash of the values, lengths and labels: a resumed run must see the same data."""
    h = hashlib.sha256(data.x.tobytes())
    h.update(data.lengths.tobytes())
    h.update(repr(list(map(plain, data.labels))).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def predict_proba(model: SequenceClassifier, t: Tensors, device: torch.device, batch_size: int = 256, part: str = "both",
                  precision: Precision | None = None) -> np.ndarray:
    """Class probabilities (N, K), in input order (`part`: see SequenceClassifier.probabilities). Sequences are
    batched by length, each batch cut to its longest: a prediction depends on its own sequence only, and costs
    what its length costs. `precision`: the autocast the network runs under (None: float32); the softmax and
    the ridge half stay float32."""
    model.eval()
    lengths = t.mask.sum(1)
    probs: torch.Tensor | None = None
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    for idx in length_batches(lengths, batch_size):
        steps = max(1, int(lengths[idx].max()))
        with autocast():
            p = model.probabilities(to_device(t.x[idx, :steps], device), to_device(t.mask[idx, :steps], device), part)
        p = p.float().cpu()
        if probs is None:
            probs = torch.empty(len(t.x), p.shape[1])
        probs[idx] = p
    if probs is None:
        return np.zeros((0, 0), dtype=np.float32)
    if not bool(torch.isfinite(probs).all()):
        raise TrainingError("the model produced NaN or infinite probabilities; the checkpoint's weights or normalisation "
                            "are broken: retrain the model, or report this with --debug")
    return probs.numpy()
