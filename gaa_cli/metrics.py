"""Classification metrics computed from predicted probabilities (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_report"]


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: list) -> dict:
    """Accuracy, balanced accuracy, macro F1, log loss, per-class scores and the confusion matrix.

    Args:
        y_true: (N,) int class indices; -1 marks a label the model has never seen
            (it counts as wrong and is left out of the log loss and the matrix).
        probs: (N, K) predicted probabilities.
        classes: the K original label values, in index order.
    """
    n, k = probs.shape
    pred = probs.argmax(axis=1)
    known = y_true >= 0
    correct = (pred == y_true) & known
    cm = np.zeros((k, k), dtype=np.int64)  # rows: true class, columns: predicted class
    np.add.at(cm, (y_true[known], pred[known]), 1)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0  # balanced accuracy: classes that occur in y_true
    seen = present | (predicted > 0)  # macro F1: classes in y_true or in the predictions
    p_true = probs[np.flatnonzero(known), y_true[known]]
    log_loss = float(-np.mean(np.log(np.clip(p_true, 1e-15, 1.0)))) if known.any() else float("nan")
    return {
        "n_samples": int(n),
        "accuracy": float(correct.mean()) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[seen].mean()) if seen.any() else float("nan"),
        "log_loss": log_loss,
        "n_unseen_labels": int((~known).sum()),
        "per_class": [
            {
                "label": classes[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
        "labels": list(classes),
        "confusion_matrix": cm.tolist(),
    }
