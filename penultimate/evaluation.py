"""Classification metrics on a test split (accuracy, precision, recall, F1, ROC-AUC, confusion
matrix, its largest off-diagonal cells) and the confusion-matrix plot, readable at any class count;
plain numpy/scikit-learn, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn import metrics as skm


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """Metrics for class ids `y_true` [n] and class probabilities [n, C], over every label.

    `precision`, `recall` and `f1` are those of the second class (`names[1]`, e.g. `spam` of
    sorted `ham, spam`) for two classes, macro averages for more; `macro_f1`, `weighted_f1` and
    the `per_class` table always cover every label of `names`, a label absent from the split
    included (support 0). ROC-AUC is one-vs-rest, macro-averaged over the labels the split holds
    (`roc_auc_labels` of them), since a class without rows has no curve.
    """
    y_pred = probabilities.argmax(axis=1)
    every = list(range(len(names)))
    matrix = skm.confusion_matrix(y_true, y_pred, labels=every)
    binary = len(names) == 2
    average = "binary" if binary else "macro"
    scores = {"labels": every, "zero_division": 0}
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, average=None, **scores
    )
    result: dict[str, Any] = {
        "rows": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, average=average, **scores)),
        "recall": float(skm.recall_score(y_true, y_pred, average=average, **scores)),
        "f1": float(skm.f1_score(y_true, y_pred, average=average, **scores)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", **scores)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, average="weighted", **scores)),
        "positive_label": names[1] if binary else None,
        "labels": list(names),
        "per_class": [
            {
                "label": name,
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        ],
        "confusion_matrix": matrix.tolist(),
        # Shares to 4 decimals: the exact counts are beside them and in the matrix.
        "top_confusions": [
            {**confusion._asdict(), "share_of_true": round(confusion.share_of_true, 4)}
            for confusion in top_confusions(matrix, names)
        ],
    }
    present = [int(c) for c in np.unique(y_true)]
    result["roc_auc_labels"] = len(present)
    if len(present) < 2:
        result["roc_auc"] = None  # no negatives (or no positives): no curve to draw
    elif binary:
        result["roc_auc"] = float(skm.roc_auc_score(y_true, probabilities[:, 1]))
    else:
        result["roc_auc"] = float(
            np.mean([skm.roc_auc_score(y_true == c, probabilities[:, c]) for c in present])
        )
    return result


class Confusion(NamedTuple):
    """One off-diagonal cell of a confusion matrix."""

    true: str
    predicted: str
    count: int
    share_of_true: float
    """`count` over the true class's rows in the split."""


def row_shares(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """Each row over its sum: the share of a true class predicted as each class (NaN for a class
    with no rows in the split)."""
    counts = np.asarray(matrix, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def top_confusions(
    matrix: Sequence[Sequence[int]], names: Sequence[str], k: int = 10
) -> list[Confusion]:
    """The `k` largest off-diagonal cells, largest count first (ties: larger share of the true
    class, then matrix order); cells with no rows are left out."""
    counts = np.asarray(matrix, np.int64)
    shares = row_shares(counts)
    cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(counts), strict=True) if r != c]
    cells.sort(key=lambda cell: (-counts[cell], -shares[cell], cell))
    return [
        Confusion(names[r], names[c], int(counts[r, c]), float(shares[r, c])) for r, c in cells[:k]
    ]


# The plot is square and at most _MAX_SIDE_INCHES * _DPI (1596) pixels a side at any class count;
# _MARGIN_INCHES hold the tick labels, the axis labels, the title and the colour bar.
_DPI = 120
_MAX_SIDE_INCHES = 13.3
_MARGIN_INCHES = 3.2
_MAX_CELL_INCHES = 0.9
# Up to this many classes a cell shows its share with one decimal and its count; up to
# _ANNOTATED_CLASSES whole percents; beyond, cells are too small for text.
_DETAILED_CLASSES = 12
_ANNOTATED_CLASSES = 30
_LABEL_CHARS = 20


def _short(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path
) -> None:
    """The confusion matrix as a PNG, row-normalised: each cell is the share of its true class
    (the counts are in metrics.json), on a fixed 0-100% colour scale, so runs compare; a square
    root scale, so that a few percent of mistakes still show. Empty cells carry no text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import PercentFormatter

    counts = np.asarray(matrix, np.int64)
    shares = row_shares(counts)
    classes = len(names)
    cell = min(_MAX_CELL_INCHES, (_MAX_SIDE_INCHES - _MARGIN_INCHES) / classes)
    side = _MARGIN_INCHES + cell * classes
    cell_points = cell * 72
    tick_size = float(np.clip(cell_points * 0.45, 5, 10))
    figure, axes = plt.subplots(figsize=(side, side), dpi=_DPI)
    colours = plt.get_cmap("Blues").with_extremes(bad="#e6e6e6")  # grey: no rows of that class
    image = axes.imshow(shares, cmap=colours, norm=PowerNorm(0.5, vmin=0, vmax=1))
    if classes <= _ANNOTATED_CLASSES:
        detailed = classes <= _DETAILED_CLASSES
        # Two lines of up to six characters, or one of up to three, fill about half a cell.
        text_size = float(np.clip(cell_points * (0.2 if detailed else 0.28), 5, 11))
        for (row, col), share in np.ndenumerate(shares):
            if not counts[row, col]:
                continue
            text = f"{share:.1%}\n{counts[row, col]}" if detailed else f"{100 * share:.0f}"
            colour = "white" if share > 0.4 else "black"  # on the darker blues
            axes.text(col, row, text, ha="center", va="center", fontsize=text_size, color=colour)
    labels = [_short(name) for name in names]
    x_label_style: dict[str, Any] = {}  # horizontal: a few short names
    if classes > _DETAILED_CLASSES:
        x_label_style = {"rotation": 90}
    elif classes > 3 or max(map(len, labels)) > 10:
        x_label_style = {"rotation": 45, "ha": "right", "rotation_mode": "anchor"}
    axes.set_xticks(range(classes), labels, fontsize=tick_size, **x_label_style)
    axes.set_yticks(range(classes), labels, fontsize=tick_size)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (each row sums to 100%)")
    axes.set_title(f"test split, {counts.sum()} rows: share of each true class")
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03, format=PercentFormatter(1.0))
    bar.set_ticks([0, 0.02, 0.1, 0.25, 0.5, 0.75, 1])
    bar.ax.tick_params(labelsize=tick_size)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
