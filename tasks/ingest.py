"""Ingest task: validate a raw corpus and publish it as a dataset artifact.

Also publishes the split and drop counts as a Prefect table artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import IngestConfig
from penultimate.ingest import prepare_dataset, source_fingerprint, write_dataset
from penultimate.stages import DATASET_STAGE
from tasks.caching import artifact_task


def dataset_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: IngestConfig = params["config"]
    return {"config": config, "source_files": source_fingerprint(config)}, []


@artifact_task(DATASET_STAGE, identity=dataset_identity, name="ingest-dataset")
def ingest_dataset(config: IngestConfig, store_root: str) -> ArtifactRef:
    """Read, validate and shard the corpus into a dataset artifact."""
    logger = get_run_logger()
    frame, counts = prepare_dataset(config)
    logger.info(
        "read %d usable rows from %s; dropped %s", frame.height, config.source, counts["dropped"]
    )
    store = ArtifactStore(store_root)
    key_config, _ = dataset_identity({"config": config})
    ref = store.publish(
        DATASET_STAGE, key_config, lambda out: write_dataset(frame, counts, out, config.shard_rows)
    )
    manifest = store.read_manifest(ref)
    assert manifest is not None
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
    return ref
