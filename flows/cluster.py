"""The cluster flow: embeddings artifact -> cluster artifact (assignments, metrics, report, maps).

Run with `penultimate cluster --config FILE [--embeddings URI]` or as the `cluster` deployment.
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import ClusterConfig
from penultimate.stages import EMBEDDINGS_STAGE
from tasks.cluster import cluster_embeddings

DEFAULT_CLUSTER = ClusterConfig()


@flow(name="cluster", log_prints=True)
def cluster(
    config: ClusterConfig = DEFAULT_CLUSTER,
    embeddings: ArtifactRef | None = None,
    store_root: str | None = None,
) -> ArtifactRef:
    """Cluster an embeddings artifact; cached on the embeddings and the config.

    Args:
        config: How to cluster; `config.embeddings` may name the embeddings artifact folder.
        embeddings: The embeddings artifact (default: `config.embeddings`, else the newest
            embeddings artifact of the store).
        store_root: The artifact store (default: $PENULTIMATE_HOME, else ./artifacts).
    """
    store = ArtifactStore(store_root)
    if embeddings is None and config.embeddings is not None:
        embeddings = ArtifactRef.model_validate(config.embeddings)
    embeddings = store.input_artifact(embeddings, EMBEDDINGS_STAGE, made_by="embed")
    return cluster_embeddings(config=config, embeddings=embeddings, store_root=str(store.root))
