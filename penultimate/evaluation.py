"""Classification metrics on a test split (accuracy, precision, recall, F1, ROC-AUC, confusion
matrix) and the confusion-matrix plot; plain numpy/scikit-learn, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """Metrics for class ids `y_true` [n] and class probabilities [n, C].

    Binary problems report precision/recall/F1 of the second class (`names[1]`, e.g. `spam` of
    sorted `ham, spam`); more classes report macro averages.
    """
    y_pred = probabilities.argmax(axis=1)
    binary = len(names) == 2
    average = "binary" if binary else "macro"
    result: dict[str, Any] = {
        "rows": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, average=average, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, average=average, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, average=average, zero_division=0)),
        "positive_label": names[1] if binary else None,
        "labels": list(names),
        "confusion_matrix": skm.confusion_matrix(
            y_true, y_pred, labels=list(range(len(names)))
        ).tolist(),
    }
    present = np.unique(y_true)
    if len(present) == len(names):
        result["roc_auc"] = float(
            skm.roc_auc_score(y_true, probabilities[:, 1])
            if binary
            else skm.roc_auc_score(y_true, probabilities, multi_class="ovr")
        )
    else:
        result["roc_auc"] = None  # undefined when the test split lacks a class
    return result


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(1.6 + 1.1 * len(names), 1.2 + 1.1 * len(names)))
    axes.imshow(values, cmap="Blues")
    for (row, col), count in np.ndenumerate(values):
        dark = count > values.max() / 2
        axes.text(
            col, row, str(count), ha="center", va="center", color="white" if dark else "black"
        )
    axes.set_xticks(range(len(names)), names)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("test split")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
