"""What the train stage shows people about a classifier: the Prefect `classifier-test-metrics`
table and `classifier-report` markdown, built from the artifact's metrics with every number
rounded (scores to 4 decimals, shares as percentages with 1).

Plain Python and numpy, no TensorFlow or scikit-learn: the task imports it at module level.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from penultimate.artifacts import ArtifactRef
from penultimate.ui import file_url, inline_png, inline_pngs, markdown_table
from penultimate.uncertainty import (
    RELIABILITY_PLOT,
    REPORT_FILE,
    RISK_COVERAGE_PLOT,
    UNCERTAINTY_DIR,
    uncertainty_markdown,
)

SCORES = ("accuracy", "precision", "recall", "f1", "macro_f1", "weighted_f1", "roc_auc")
# More classes than this make a markdown matrix too wide to read; the PNG and metrics.json
# hold it at any class count, and the top confusions say where the mistakes are.
MATRIX_TABLE_CLASSES = 12


def score_table(test: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the `classifier-test-metrics` table: each score rounded to 4 decimals (None where
    undefined, e.g. ROC-AUC of a test split without every class)."""
    return [
        {"metric": name, "value": None if test.get(name) is None else round(test[name], 4)}
        for name in SCORES
    ]


def _score_line(name: str, test: Mapping[str, Any]) -> str:
    if name == "roc_auc" and not test.get("positive_label"):
        return (
            f"- roc_auc: {test[name]:.4f} (one-vs-rest, macro over the "
            f"{test['roc_auc_labels']} of {len(test['labels'])} labels in the test split)"
        )
    if name in ("precision", "recall", "f1", "roc_auc") and test.get("positive_label"):
        return f"- {name}: {test[name]:.4f} (of `{test['positive_label']}`)"
    return f"- {name}: {test[name]:.4f}"


def uncertainty_section(folder: Path, store_root: Path) -> list[str]:
    """Calibration, temperature scaling and MC dropout against max-softmax, with the reliability
    diagram and risk-coverage curves inline (nothing for an artifact without the report)."""
    if not (folder / REPORT_FILE).is_file():
        return []
    report = json.loads((folder / REPORT_FILE).read_text())
    lines = ["", "## Calibration and MC dropout (test split)", "", *uncertainty_markdown(report)]
    return [*lines, "", *inline_pngs(folder, [RELIABILITY_PLOT, RISK_COVERAGE_PLOT], store_root)]


def classifier_report_markdown(
    ref: ArtifactRef, metrics: Mapping[str, Any], store_root: Path
) -> str:
    """The `classifier-report`: its files (served over HTTP), test scores, the top confusions,
    the confusion-matrix plot inline and (up to MATRIX_TABLE_CLASSES classes) its counts."""
    test = metrics["test"]
    lines = [f"# Classifier `{ref.key}`", "", f"- files: {file_url(store_root, ref.path)}"]
    lines.append(f"- epochs run: {metrics['epochs_run']}, test rows: {test['rows']}")
    if metrics.get("still_improving"):
        lines.append(f"- **warning:** {metrics['still_improving']}")
    if metrics.get("lexical_terms"):
        lines.append(f"- lexical branch: {metrics['lexical_terms']:,} terms (`lexical.json`)")
    if metrics.get("tensorboard_run"):
        lines.append(
            f"- TensorBoard run `{metrics['tensorboard_run']}`: "
            f"`tensorboard --logdir {ref.uri}/tensorboard`"
        )
    lines += [_score_line(name, test) for name in SCORES if test.get(name) is not None]
    if test.get("per_class"):
        lines += ["", "## Per class (test split)", ""]
        lines += markdown_table(
            ["label", "precision", "recall", "f1", "support"],
            [
                [c["label"], c["precision"], c["recall"], c["f1"], c["support"]]
                for c in test["per_class"]
            ],
        )
    lines += uncertainty_section(ref.path / UNCERTAINTY_DIR, store_root)
    lines += ["", "## Top confusions", ""]
    confusions = test.get("top_confusions", [])
    if confusions:
        lines += markdown_table(
            ["true", "predicted", "count", "share of true"],
            [
                [c["true"], c["predicted"], c["count"], f"{100 * c['share_of_true']:.1f}%"]
                for c in confusions
            ],
        )
    else:
        lines.append("None: every test row got its true class.")
    labels, matrix = test["labels"], test["confusion_matrix"]
    plot = ref.path / "confusion_matrix.png"
    if plot.exists():
        lines += ["", inline_png(plot, "confusion matrix of the test split", store_root)]
    lines += ["", "## Confusion matrix (test split, counts)", ""]
    if len(labels) <= MATRIX_TABLE_CLASSES:
        lines += markdown_table(
            ["true \\ predicted", *labels],
            [[name, *row] for name, row in zip(labels, matrix, strict=True)],
        )
    else:
        lines.append(
            f"{len(labels)} classes: the whole matrix is `test.confusion_matrix` in "
            "`metrics.json`, and row-normalised in `confusion_matrix.png`."
        )
    return "\n".join(lines) + "\n"
