"""The clustering task: an embeddings artifact -> a cluster artifact (assignments, metrics, report,
maps, projector files), with the summary table and report published as Prefect artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from penultimate.artifacts import ArtifactRef, Manifest
from penultimate.cluster_summary import summary_table
from penultimate.config import ClusterConfig
from penultimate.stages import CLUSTERS_STAGE
from penultimate.ui import file_url, inline_pngs
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


def cluster_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    # The embeddings are an input by reference; where the config named them does not matter.
    config: ClusterConfig = params["config"]
    return config.model_dump(exclude={"embeddings"}), [params["embeddings"]]


def _show_clusters(ref: ArtifactRef, manifest: Manifest, params: Mapping[str, Any]) -> None:
    metrics = manifest.metrics
    get_run_logger().info(
        "%d points in %d clusters; %s",
        metrics["points"],
        metrics["clusters"],
        ", ".join(f"{n} {metrics[n]:.3f}" for n in ("silhouette", "ari", "nmi") if n in metrics),
    )
    create_table_artifact(
        key="cluster-summary",
        table=summary_table(json.loads((ref.path / "metrics.json").read_text())),
        description=f"Clusters of embeddings {params['embeddings'].key} ({ref.key})",
    )
    store_root = Path(params["store_root"])
    maps = inline_pngs(ref.path, ["map_by_label.png", "map_by_cluster.png"], store_root)
    links = (
        f"[interactive map]({file_url(store_root, ref.path / 'map.html')}) · "
        f"[projector files]({file_url(store_root, ref.path / 'projector')}) · "
        f"[all files]({file_url(store_root, ref.path)})"
    )
    # The maps right under the headline numbers, before the per-cluster sections.
    head, _, clusters = (ref.path / "report.md").read_text().partition("\n## ")
    create_markdown_artifact(
        key="cluster-report",
        markdown="\n\n".join([head, links, *maps, "## " + clusters]),
        description=f"Cluster report {ref.key}",
    )


@artifact_task(
    CLUSTERS_STAGE,
    identity=cluster_identity,
    report=_show_clusters,
    name="cluster-embeddings",
)
def cluster_embeddings(
    out: Path, config: ClusterConfig, embeddings: ArtifactRef, store_root: str
) -> dict[str, Any]:
    """Validate every shard first (errors name the file and row), then cluster and report."""
    from penultimate.cluster import EmbeddingShards, validate_cluster_inputs
    from penultimate.cluster_report import write_cluster_artifact

    shards = EmbeddingShards.open(embeddings)
    validate_cluster_inputs(shards, config)
    return write_cluster_artifact(shards, config, out)
