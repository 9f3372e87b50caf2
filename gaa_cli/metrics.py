"""Classification metrics computed from predicted probabilities (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_report", "Scores"]


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: list) -> dict:
    """Accuracy, balanced accuracy, macro F1, log loss, per-class scores and the confusion matrix.

    Args:
        y_true: (N,) int class indices; -1 marks a label the model has never seen
            (it counts as wrong and is left out of the log loss and the matrix).
        probs: (N, K) predicted probabilities.
        classes: the K original label values, in index order.
    """
    scores = Scores(len(classes))
    scores.add(y_true, probs)
    return scores.report(classes)


class Scores:
    """The sums behind `classification_report`, added up chunk by chunk: the report of the chunks together is the
    report of their concatenation (the log loss up to float64 rounding)."""

    def __init__(self, k: int) -> None:
        self.cm = np.zeros((k, k), dtype=np.int64)  # rows: true class, columns: predicted class
        self.n = 0
        self.correct = 0
        self.unseen = 0
        self.log_sum = 0.0  # of -log p(true class), over the samples with a known label

    def add(self, y_true: np.ndarray, probs: np.ndarray) -> None:
        """Count (N,) class indices (-1: unseen) against (N, K) probabilities."""
        if not len(y_true):
            return
        pred = probs.argmax(axis=1)
        known = y_true >= 0
        self.n += len(y_true)
        self.correct += int(((pred == y_true) & known).sum())
        self.unseen += int((~known).sum())
        np.add.at(self.cm, (y_true[known], pred[known]), 1)
        p_true = probs[np.flatnonzero(known), y_true[known]]
        self.log_sum += float(-np.log(np.clip(p_true, 1e-15, 1.0)).astype(np.float64).sum())

    def report(self, classes: list) -> dict:
        cm, n, k = self.cm, self.n, len(classes)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        tp = np.diag(cm)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
            recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = support > 0  # balanced accuracy: classes that occur in y_true
        seen = present | (predicted > 0)  # macro F1: classes in y_true or in the predictions
        known = n - self.unseen
        return {
            "n_samples": int(n),
            "accuracy": self.correct / n if n else float("nan"),
            "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
            "macro_f1": float(f1[seen].mean()) if seen.any() else float("nan"),
            "log_loss": self.log_sum / known if known else float("nan"),
            "n_unseen_labels": int(self.unseen),
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
