"""The cluster flow: embeddings artifact -> cluster artifact (assignments, metrics, report, maps).

Run with `penultimate cluster --config FILE [--embeddings URI]` or as the `cluster` deployment.
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore, open_artifact
from penultimate.config import ClusterConfig
from penultimate.errors import InputError
from tasks.cluster import cluster_embeddings


@flow(name="cluster", log_prints=True)
def cluster(
    config: ClusterConfig, embeddings: ArtifactRef | None = None, store_root: str | None = None
) -> ArtifactRef:
    """Cluster `embeddings` (or the artifact folder `config.embeddings` names); cached on both."""
    if embeddings is None:
        if config.embeddings is None:
            raise InputError("cluster: no embeddings; set `embeddings` in the config")
        embeddings = open_artifact(config.embeddings, "embeddings")
    root = str(ArtifactStore(store_root).root)
    return cluster_embeddings(config=config, embeddings=embeddings, store_root=root)
