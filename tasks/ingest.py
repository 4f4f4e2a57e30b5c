"""Ingest task: validate a raw corpus and publish it as a dataset artifact.

Also publishes the split and drop counts as a Prefect table artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from penultimate.artifacts import ArtifactRef, Manifest
from penultimate.config import IngestConfig
from penultimate.ingest import (
    MIN_STRATIFIED_ROWS,
    prepare_dataset,
    source_fingerprint,
    write_dataset,
)
from penultimate.stages import DATASET_STAGE
from penultimate.ui import file_url, markdown_table
from tasks.caching import artifact_task


def dataset_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: IngestConfig = params["config"]
    return {"config": config, "source_files": source_fingerprint(config)}, []


def dropped_text(dropped: Mapping[str, int]) -> str:
    return ", ".join(f"{n} ({reason})" for reason, n in dropped.items()) or "none"


def small_classes_text(small: Mapping[str, int]) -> str:
    if not small:
        return f"every class is in train, val and test (each has >= {MIN_STRATIFIED_ROWS} rows)"
    named = ", ".join(f"{label} ({rows})" for label, rows in small.items())
    return f"{len(small)} classes under {MIN_STRATIFIED_ROWS} rows are in train only: {named}"


def _show_dataset(ref: ArtifactRef, manifest: Manifest, params: Mapping[str, Any]) -> None:
    metrics = manifest.metrics
    splits = metrics["rows_per_split"]
    lines = [
        f"# Dataset `{ref.key}`",
        "",
        f"- rows: {metrics['rows']} in {len(metrics['shards'])} shards "
        f"([files]({file_url(Path(params['store_root']), ref.path)}))",
        f"- dropped: {dropped_text(metrics['dropped'])}",
        f"- split: stratified by label; {small_classes_text(metrics.get('small_classes', {}))}"
        if "label_counts_per_split" in metrics
        else "- split: by id (unlabelled)",
        "",
    ]
    counts = metrics.get("label_counts_per_split")
    if counts:
        labels = sorted({label for per_split in counts.values() for label in per_split})
        rows = [[label, *(counts[split].get(label, 0) for split in counts)] for label in labels]
        all_rows = ["**all**", *(splits.get(split, 0) for split in counts)]
        lines += markdown_table(["label", *counts], [*rows, all_rows])
    else:
        lines += markdown_table(["split", "rows"], list(splits.items()))
    create_markdown_artifact(
        key="dataset-summary",
        markdown="\n".join(lines),
        description="Rows per split and label, drops by reason",
    )


@artifact_task(
    DATASET_STAGE, identity=dataset_identity, report=_show_dataset, name="ingest-dataset"
)
def ingest_dataset(out: Path, config: IngestConfig, store_root: str) -> dict[str, Any]:
    """Read, validate and shard the corpus into a dataset artifact."""
    frame, counts = prepare_dataset(config)
    get_run_logger().info(
        "read %d usable rows from %s; dropped: %s",
        frame.height,
        config.source,
        dropped_text(counts["dropped"]),
    )
    if counts.get("small_classes"):
        get_run_logger().warning("split: %s", small_classes_text(counts["small_classes"]))
    return write_dataset(frame, counts, out, config.shard_rows)
