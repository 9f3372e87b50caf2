"""From `SequenceData` to model inputs, and a model's probabilities back out, batch by batch.

The model sees normalised (N, T, C) float32 tensors with a (N, T) validity
mask; labels become class indices. Everything here is shared by training and
inference, so that both read and batch data the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import SequenceData
from .model import SequenceClassifier

__all__ = ["Tensors", "plain", "class_list", "encode_labels", "fit_normalization", "to_tensors", "fingerprint", "predict_proba"]


@dataclass
class Tensors:
    x: torch.Tensor  # (N, T, C) float32, normalised, padded steps and missing values 0
    mask: torch.Tensor  # (N, T) bool, True = real step
    y: torch.Tensor | None  # (N,) int64 class index, -1 = a label the model never saw

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray | torch.Tensor) -> Tensors:
        idx = torch.as_tensor(idx)
        return Tensors(self.x[idx], self.mask[idx], None if self.y is None else self.y[idx])


def plain(v: Any) -> Any:
    """numpy scalars -> Python values, so labels survive JSON unchanged."""
    return v.item() if isinstance(v, np.generic) else v


def class_list(labels: np.ndarray) -> list:
    """The distinct labels in a stable order: the order of a checkpoint's classes."""
    return sorted({plain(v) for v in labels}, key=lambda v: (str(type(v)), v))


def encode_labels(labels: np.ndarray, classes: list) -> np.ndarray:
    """(N,) class indices into `classes`; -1 for a label not among them."""
    index = {repr(c): i for i, c in enumerate(classes)}
    return np.array([index.get(repr(plain(v)), -1) for v in labels], dtype=np.int64)


def fit_normalization(data: SequenceData) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation over the real (non-padded, non-missing) steps."""
    valid = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]  # (N, T)
    values = data.x[valid].astype(np.float64)  # (steps, C); float64: the variance of large float32 values overflows
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return {"mean": np.nan_to_num(mean).tolist(), "std": std.tolist()}


def to_tensors(data: SequenceData, norm: dict[str, list[float]], classes: list | None) -> Tensors:
    mean = np.asarray(norm["mean"], dtype=np.float64)
    std = np.asarray(norm["std"], dtype=np.float64)
    x = (data.x - mean) / std  # (N, T, C), in float64 so that large values do not overflow
    mask = np.arange(x.shape[1])[None, :] < data.lengths[:, None]  # (N, T)
    x = np.where(mask[:, :, None] & np.isfinite(x), x, 0.0).astype(np.float32)  # missing -> the training mean
    y = None
    if classes is not None and data.labels is not None:
        y = torch.from_numpy(encode_labels(data.labels, classes))
    return Tensors(torch.from_numpy(x), torch.from_numpy(mask), y)


def fingerprint(data: SequenceData) -> str:
    """A short hash of the values, lengths and labels: a resumed run must see the same data."""
    h = hashlib.sha256(data.x.tobytes())
    h.update(data.lengths.tobytes())
    h.update(repr(list(map(plain, data.labels))).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def predict_proba(model: SequenceClassifier, t: Tensors, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, K), in input order."""
    model.eval()
    out = []
    for i in range(0, len(t.x), batch_size):
        x = t.x[i : i + batch_size].to(device)
        m = t.mask[i : i + batch_size].to(device)
        out.append(model.probabilities(x, m).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
