"""Figures as PNG files: training curves, the confusion matrix, and what the model looks at.

matplotlib is optional (`pip install "gaa[plot]"`): `require()` raises a one-line error naming the extra, and
callers that also write tables catch it, say so in a note and carry on. Every figure is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .files import atomic_write

__all__ = ["MISSING", "require", "curves", "confusion", "importance_by_class", "examples"]

MISSING = 'figures need matplotlib, which is not installed: pip install "gaa[plot]"'


def require() -> Any:
    """matplotlib.pyplot with a file-only backend, or a UsageError saying what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(MISSING) from None
    return plt


def _save(fig: Any, path: Path) -> None:
    plt = require()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def curves(history: list[dict], ridge: dict | None, path: Path) -> None:
    """Training loss and validation metrics per epoch; the ridge's held-out estimates as flat lines."""
    plt = require()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [m["epoch"] for m in history]
    left.plot(epochs, [m["train_loss"] for m in history], label="training loss (label-smoothed)")
    val = [(m["epoch"], m) for m in history if "val_loss" in m]
    if val:
        left.plot([e for e, _ in val], [m["val_loss"] for _, m in val], "o-", label="validation log loss")
        right.plot([e for e, _ in val], [m["val_acc"] for _, m in val], "o-", label="validation accuracy (the blend)")
        if "val_acc_network" in val[0][1]:
            right.plot([e for e, _ in val], [m["val_acc_network"] for _, m in val], "s--", label="the network alone")
    if ridge:
        right.axhline(ridge["loo_accuracy"], color="grey", linestyle=":", label=f"ridge, leave-one-out ({ridge['loo_accuracy']:.3f})")
    left.set(title="Loss", xlabel="epoch", ylabel="loss")
    right.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)


def confusion(report: dict, path: Path) -> None:
    """The confusion matrix normalised by true class (with counts), and the F1 of each class."""
    plt = require()
    labels, cm = report["labels"], np.asarray(report["confusion_matrix"], dtype=float)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(labels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 0.9 * k, 0.6 * k + 2.5), gridspec_kw={"width_ratios": [3, 1.4]})
    im = left.imshow(share, cmap="Blues", vmin=0, vmax=1)
    left.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
             title=f"Confusion, normalised by true class (accuracy {report['accuracy']:.3f})")
    left.set_xticklabels(labels, rotation=45, ha="right")
    left.set_yticklabels(labels)
    for i in range(k):
        for j in range(k):
            left.text(j, i, f"{share[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                      color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=left, fraction=0.046, label="share of the true class")
    f1 = [row["f1"] for row in report["per_class"]]
    right.barh(range(k), f1, color="tab:blue")
    right.set(yticks=range(k), xlim=(0, 1), xlabel="F1", title="F1 per class")
    right.set_yticklabels(labels)
    right.invert_yaxis()
    _save(fig, path)


def _resample(values: np.ndarray, bins: int) -> np.ndarray:
    """A sequence's importance (summing to 1) on `bins` equal parts of its length, relative to an even spread
    (1 = the part's fair share), so that sequences of different lengths can be averaged."""
    edges = np.linspace(0, len(values), bins + 1)
    cum = np.concatenate([[0.0], np.cumsum(values)])
    at = np.interp(edges, np.arange(len(cum)), cum)
    return np.diff(at) * bins


def class_profiles(steps: list[np.ndarray], predicted: list[str], classes: list[str], bins: int) -> dict[str, np.ndarray]:
    """Per class (as predicted), the mean importance over the sequence's length, in `bins` parts."""
    out = {}
    for c in classes:
        rows = [_resample(s, bins) for s, p in zip(steps, predicted) if p == c]
        if rows:
            out[c] = np.mean(rows, axis=0)
    return out


def importance_by_class(profiles: dict[str, np.ndarray], channel_names: list[str] | None,
                        channels: dict[str, np.ndarray] | None, path: Path) -> None:
    """Where in time, and (for several channels) in which channels, the model looks, per predicted class."""
    plt = require()
    with_channels = channels is not None
    fig, axes = plt.subplots(1, 2 if with_channels else 1, figsize=(12 if with_channels else 7, 3.8), squeeze=False)
    left = axes[0, 0]
    for c, prof in profiles.items():
        left.plot(np.linspace(0, 100, len(prof)), prof, label=str(c))
    left.set(title="Mean importance over time, per predicted class", xlabel="position in the sequence (% of its length)",
             ylabel="importance (relative to uniform = 1)")
    left.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    left.legend(title="class", fontsize=8)
    left.grid(alpha=0.3)
    if with_channels:
        right = axes[0, 1]
        names = list(channels)
        mat = np.array([channels[c] for c in names])  # (classes, channels)
        im = right.imshow(mat, cmap="viridis", aspect="auto", vmin=0)
        right.set(title="Mean importance of each channel, per predicted class", xticks=range(len(channel_names)),
                  yticks=range(len(names)), xlabel="channel", ylabel="class")
        right.set_xticklabels(channel_names, rotation=45, ha="right")
        right.set_yticklabels(names)
        fig.colorbar(im, ax=right, label="importance (each row sums to 1)")
    _save(fig, path)


def examples(items: list[dict], channel_names: list[str], path: Path) -> None:
    """A few sequences per predicted class, each drawn with its importance shaded along the time axis.

    items: dicts with `title`, `values` (T, C) in the input's units, `importance` (T,)."""
    plt = require()
    classes = list(dict.fromkeys(i["class"] for i in items))
    per = max(sum(1 for i in items if i["class"] == c) for c in classes)
    fig, axes = plt.subplots(len(classes), per, figsize=(4.2 * per, 2.9 * len(classes)), squeeze=False, layout="constrained")
    top = max(float(i["importance"].max()) for i in items) or 1.0
    cmap = plt.get_cmap("Reds")
    image = None
    for r, c in enumerate(classes):
        mine = [i for i in items if i["class"] == c]
        for j in range(per):
            ax = axes[r, j]
            if j >= len(mine):
                ax.axis("off")
                continue
            it = mine[j]
            values, imp = np.asarray(it["values"]), np.asarray(it["importance"])
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            pad = 0.05 * (hi - lo or 1.0)
            image = ax.imshow(imp[None, :], aspect="auto", cmap=cmap, vmin=0, vmax=top, alpha=0.6,
                              extent=(-0.5, len(imp) - 0.5, lo - pad, hi + pad))
            for ch in range(values.shape[1]):
                ax.plot(values[:, ch], linewidth=1, label=channel_names[ch] if values.shape[1] > 1 else None)
            ax.set_xlim(-0.5, len(imp) - 0.5)
            ax.set_title(it["title"], fontsize=9)
            ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel(f"predicted {c}")
            if values.shape[1] > 1 and r == 0 and j == 0:
                ax.legend(fontsize=7, loc="upper right")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="importance of the step (shaded)")
    fig.suptitle("Example sequences, shaded by what the prediction depends on")
    _save(fig, path)
