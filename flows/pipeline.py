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
from penultimate.artifacts import ArtifactStore
from penultimate.config import PipelineConfig
from penultimate.pipeline_summary import PipelineRun
from tasks.pipeline import PipelineProgress, publish_pipeline_summary


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig, store_root: str | None = None) -> PipelineRun:
    """Run every stage (each reuses its artifact when its inputs and config are unchanged)."""
    store = ArtifactStore(store_root)
    root = str(store.root)
    progress = PipelineProgress(["ingest", "train", "export", "embed", "cluster"], store)
    dataset = progress.run("ingest", ingest, config=config.ingest, store_root=root)
    classifier = progress.run("train", train, config=config.train, dataset=dataset, store_root=root)
    exported = progress.run(
        "export", export, classifier=classifier, dataset=dataset, config=config.export,
        store_root=root,
    )  # fmt: skip
    embed_config = config.embed_config(exported.uri)
    embeddings = progress.run("embed", embed, config=embed_config, dataset=dataset, store_root=root)
    progress.run("cluster", cluster, config=config.cluster, embeddings=embeddings, store_root=root)
    run = progress.result()
    publish_pipeline_summary(run=run, store_root=root)
    return run
