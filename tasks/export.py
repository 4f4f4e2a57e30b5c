"""Export task: a classifier artifact -> a verified SavedModel artifact serving raw strings.

The manifest records the signatures with their shapes and the verification diffs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger

from penultimate.artifacts import ArtifactRef
from penultimate.config import ExportConfig
from penultimate.ingest import held_out_texts
from penultimate.stages import EXPORT_STAGE
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


@artifact_task(EXPORT_STAGE, name="export-classifier")
def export_classifier(
    out: Path, config: ExportConfig, classifier: ArtifactRef, dataset: ArtifactRef, store_root: str
) -> dict[str, Any]:
    """Save, reload in a fresh process, compare; publish only a SavedModel that passes."""
    from penultimate.export import write_export
    from penultimate.train import TrainedClassifier

    trained = TrainedClassifier.load(classifier.path)
    texts = held_out_texts(dataset, config.verify_texts)
    report = write_export(trained, out, texts)
    diffs = report["max_abs_diff"]
    get_run_logger().info(
        "export verified on %d texts: %d comparisons after reload, largest difference %.1e",
        len(texts),
        len(diffs),
        max(diffs.values()),
    )
    return report
