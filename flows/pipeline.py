"""The pipeline flow: ingest -> train -> export -> embed -> cluster from one `PipelineConfig`, each
stage a cached subflow, closing with a summary artifact. `penultimate pipeline --config FILE`.
"""

from __future__ import annotations

from prefect import flow

from flows.cluster import cluster
from flows.embed import embed
from flows.export import export
from flows.ingest import ingest
from flows.train import train
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import PipelineConfig
from tasks.pipeline import publish_pipeline_summary


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig, store_root: str | None = None) -> dict[str, ArtifactRef]:
    """Run every stage (each reuses its artifact when its inputs and config are unchanged)."""
    root = str(ArtifactStore(store_root).root)
    dataset = ingest(config=config.ingest, store_root=root)
    classifier = train(config=config.train, dataset=dataset, store_root=root)
    exported = export(classifier=classifier, dataset=dataset, config=config.export, store_root=root)
    embeddings = embed(config=config.embed_config(exported.uri), dataset=dataset, store_root=root)
    clusters = cluster(config=config.cluster, embeddings=embeddings, store_root=root)
    refs = {
        "ingest": dataset,
        "train": classifier,
        "export": exported,
        "embed": embeddings,
        "cluster": clusters,
    }
    publish_pipeline_summary(refs=refs, store_root=root)
    return refs
