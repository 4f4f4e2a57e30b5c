"""The probe task: an all-choices embeddings artifact -> a probe artifact (scores per layer x
pooling, heatmap, line plot, recommendation), published as Prefect table and markdown artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from penultimate.artifacts import ArtifactRef, ArtifactStore, Manifest
from penultimate.config import ProbeConfig
from penultimate.stages import PROBE_STAGE
from penultimate.ui import inline_pngs, rounded
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


def probe_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    # The corpus, encoder and runner reach the scores only through the embeddings.
    config: ProbeConfig = params["config"]
    return config.scoring(), [params["embeddings"]]


def _show_probe(ref: ArtifactRef, manifest: Manifest, params: Mapping[str, Any]) -> None:
    metrics = manifest.metrics
    get_run_logger().info(
        "best: %s (accuracy %.3f); default %s is %.3f below; probe artifact %s",
        metrics["best"],
        metrics["best_accuracy"],
        metrics["default"],
        metrics["default_gap"],
        ref.uri,
    )
    create_table_artifact(
        key="probe-scores",
        table=rounded(json.loads((ref.path / "scores.json").read_text())),
        description=f"Probe scores per layer x pooling ({ref.key})",
    )
    store_root = Path(params["store_root"])
    plots = inline_pngs(ref.path, ["heatmap.png", "by_layer.png"], store_root)
    create_markdown_artifact(
        key="probe-report",
        markdown="\n\n".join([(ref.path / "report.md").read_text(), *plots]),
        description=f"Which embedding to take (probe {ref.key})",
    )


@artifact_task(PROBE_STAGE, identity=probe_identity, report=_show_probe, name="probe-embeddings")
def probe_embeddings(
    out: Path, config: ProbeConfig, embeddings: ArtifactRef, store_root: str
) -> dict[str, Any]:
    """Fit and score a linear probe, its control and k-means on every choice; report the best."""
    from penultimate.cluster import EmbeddingShards
    from penultimate.probe import ProbeInputError
    from penultimate.probe_report import write_probe_artifact

    shards = EmbeddingShards.open(embeddings)
    blocks = ArtifactStore(store_root).read_manifest(embeddings).metrics.get("choice_blocks")  # type: ignore[union-attr]
    if not blocks:
        raise ProbeInputError(
            f"{embeddings.uri}: not an all_choices embeddings artifact (no choice_blocks)"
        )
    return write_probe_artifact(shards, blocks, config, out, get_run_logger().info)
