"""Test-split metrics and what people see of them: the confusion-matrix PNG (row-normalised,
bounded in size at any class count), the top confusions, and the rounded classifier report."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from penultimate.artifacts import ArtifactRef
from penultimate.classifier_report import classifier_report_markdown, score_table
from penultimate.evaluation import (
    Confusion,
    classification_metrics,
    plot_confusion_matrix,
    top_confusions,
)
from penultimate.ui import files_url

CLASSIFIER = ArtifactRef(stage="classifier", key="k", uri="/store/classifier/k")
STORE = Path("/store")


def mostly_right(classes: int, rows_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True class ids and probabilities that put ~90% of rows on their class, the rest on a
    neighbouring one."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), rows_per_class)
    predicted = np.where(rng.random(len(y)) < 0.9, y, (y + 1) % classes)
    probabilities = np.full((len(y), classes), 0.1 / (classes - 1))
    probabilities[np.arange(len(y)), predicted] = 0.9
    return y, probabilities


@pytest.mark.parametrize("classes", [2, 5, 43, 120])
def test_confusion_matrix_png_is_bounded_at_any_class_count(tmp_path: Path, classes: int) -> None:
    names = [f"class {i} with a name too long for a tick label" for i in range(classes)]
    y, probabilities = mostly_right(classes, 30)
    matrix = classification_metrics(y, probabilities, names)["confusion_matrix"]
    matrix[1] = [0] * classes  # a class without test rows: a grey row, no division by zero
    path = tmp_path / "confusion_matrix.png"
    plot_confusion_matrix(matrix, names, path)
    width, height = Image.open(path).size
    assert width == height and 500 <= width <= 1600, (width, height)


def test_top_confusions_are_the_largest_mistakes_with_their_share_of_the_true_class() -> None:
    matrix = [[50, 3, 1], [6, 40, 0], [0, 3, 12]]
    assert top_confusions(matrix, ["a", "b", "c"], k=3) == [
        Confusion("b", "a", 6, 6 / 46),
        Confusion("c", "b", 3, 3 / 15),  # as many as a -> b, a larger share of its class
        Confusion("a", "b", 3, 3 / 54),
    ]
    assert top_confusions([[5, 0], [0, 7]], ["a", "b"]) == []


def test_report_rounds_every_number_and_lists_the_top_confusions() -> None:
    # 201 spam rows, 4 of them called ham: shares and scores with long decimal expansions.
    y = np.array([0] * 400 + [1] * 201)
    probabilities = np.zeros((len(y), 2))
    probabilities[np.arange(len(y)), y] = 1.0
    probabilities[[0, 1], :] = [0.2, 0.8]  # 2 ham rows called spam
    probabilities[400:404, :] = [0.7, 0.3]  # 4 spam rows called ham
    test = classification_metrics(y, probabilities, ["ham", "spam"])
    assert test["top_confusions"] == [
        {"true": "spam", "predicted": "ham", "count": 4, "share_of_true": 0.0199},
        {"true": "ham", "predicted": "spam", "count": 2, "share_of_true": 0.005},
    ]
    metrics = {
        "epochs_run": 3,
        "test": test,
        "tensorboard_run": "freeze-all_pool-mean_1234abcd",
        "lexical_terms": 49207,
    }
    report = classifier_report_markdown(CLASSIFIER, metrics, STORE)
    assert "- lexical branch: 49,207 terms (`lexical.json`)\n" in report
    assert "- recall: 0.9801 (of `spam`)\n" in report and "- accuracy: 0.9900\n" in report
    assert "| spam | 0.9899 | 0.9801 | 0.985 | 201 |" in report  # the per-class table
    assert "- roc_auc: 0.9999 (of `spam`)" in report
    assert "| spam | ham | 4 | 2.0% |" in report and "| ham | spam | 2 | 0.5% |" in report
    assert "| true \\ predicted | ham | spam |\n| --- | --- | --- |\n| ham | 398 | 2 |" in report
    assert "tensorboard --logdir /store/classifier/k/tensorboard" in report
    assert f"- files: {files_url()}/classifier/k\n" in report  # served, not file://
    # No number in the report has more than 4 decimals.
    assert not re.search(r"\d\.\d{5}", report), report
    assert score_table(test)[2] == {"metric": "recall", "value": 0.9801}


def test_metrics_cover_every_label_and_say_what_roc_auc_averages() -> None:
    names = [f"class-{i}" for i in range(6)]
    y, probabilities = mostly_right(5, 40)  # class-5 has no test rows; nothing predicts it
    probabilities = np.hstack([probabilities * 0.99, np.full((len(y), 1), 0.01)])
    test = classification_metrics(y, probabilities, names)
    assert [c["label"] for c in test["per_class"]] == names
    assert test["per_class"][5] == {
        "label": "class-5",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    present = np.mean([c["f1"] for c in test["per_class"][:5]])
    # Macro F1 averages every label of the dataset, the absent one included.
    assert test["macro_f1"] == pytest.approx(present * 5 / 6)
    assert test["weighted_f1"] == pytest.approx(present, abs=0.02)
    assert test["roc_auc_labels"] == 5 and 0.9 < test["roc_auc"] <= 1.0
    report = classifier_report_markdown(CLASSIFIER, {"epochs_run": 1, "test": test}, STORE)
    assert "(one-vs-rest, macro over the 5 of 6 labels in the test split)" in report
    single = classification_metrics(np.zeros(4, int), np.eye(6)[[0, 0, 0, 1]], names)
    assert single["roc_auc"] is None and single["roc_auc_labels"] == 1


def test_report_of_many_classes_points_at_the_matrix_instead_of_printing_it() -> None:
    names = [f"topic|{i}" for i in range(43)]
    y, probabilities = mostly_right(43, 10)
    test = classification_metrics(y, probabilities, names)
    report = classifier_report_markdown(CLASSIFIER, {"epochs_run": 1, "test": test}, STORE)
    assert "43 classes: the whole matrix is `test.confusion_matrix` in `metrics.json`" in report
    confusions = report.split("## Top confusions")[1].split("##")[0]
    rows = [line for line in confusions.splitlines() if line.startswith("| topic")]
    assert len(rows) == 10 and all(line.count(" | ") == 3 for line in rows)  # `|` escaped
    per_class = report.split("## Per class (test split)")[1].split("##")[0]
    assert len([line for line in per_class.splitlines() if line.startswith("| topic")]) == 43
    assert "None: every test row" in classifier_report_markdown(
        CLASSIFIER,
        {"epochs_run": 1, "test": classification_metrics(y, np.eye(43)[y], names)},
        STORE,
    )
