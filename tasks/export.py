"""Export task: a model artifact -> a verified SavedModel artifact serving raw strings.

The manifest records the signatures with their shapes and the verification diffs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import ExportConfig
from penultimate.ingest import read_dataset
from penultimate.stages import EXPORT_STAGE
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


@artifact_task(EXPORT_STAGE, name="export-classifier")
def export_model(
    config: ExportConfig, model: ArtifactRef, dataset: ArtifactRef, store_root: str
) -> ArtifactRef:
    """Save, reload in a fresh process, compare; publish only a SavedModel that passes."""
    from penultimate.export import export_classifier
    from penultimate.train import TrainedClassifier

    trained = TrainedClassifier.load(model.path)
    frame = read_dataset(dataset)
    probe = frame.filter(pl.col("split") != "train").head(config.verify_texts)["text"].to_list()
    logger = get_run_logger()

    def write(out: Path) -> dict[str, Any]:
        report = export_classifier(trained, out, probe)
        logger.info("export verified: %s", report["max_abs_diff"])
        return report

    return ArtifactStore(store_root).publish(EXPORT_STAGE, config, write, [model, dataset])
