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
from penultimate.ingest import prepare_dataset, source_fingerprint, write_dataset
from penultimate.stages import DATASET_STAGE
from tasks.caching import artifact_task


def dataset_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: IngestConfig = params["config"]
    return {"config": config, "source_files": source_fingerprint(config)}, []


def _show_dataset(ref: ArtifactRef, manifest: Manifest, params: Mapping[str, Any]) -> None:
    metrics = manifest.metrics
    split_rows = " | ".join(f"{s}: {n}" for s, n in metrics["rows_per_split"].items())
    create_markdown_artifact(
        key="dataset-summary",
        markdown=(
            f"# Dataset `{ref.key}`\n\n- location: `{ref.uri}`\n- rows: {metrics['rows']} "
            f"({split_rows})\n- shards: {len(metrics['shards'])}\n"
            f"- dropped: {metrics['dropped'] or 'none'}\n"
            f"- label counts per split: {metrics.get('label_counts_per_split', 'unlabelled')}\n"
        ),
        description="Rows per split, drops by reason, label counts",
    )


@artifact_task(
    DATASET_STAGE, identity=dataset_identity, after_publish=_show_dataset, name="ingest-dataset"
)
def ingest_dataset(out: Path, config: IngestConfig, store_root: str) -> dict[str, Any]:
    """Read, validate and shard the corpus into a dataset artifact."""
    frame, counts = prepare_dataset(config)
    get_run_logger().info(
        "read %d usable rows from %s; dropped %s", frame.height, config.source, counts["dropped"]
    )
    return write_dataset(frame, counts, out, config.shard_rows)
