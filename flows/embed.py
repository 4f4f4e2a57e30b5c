"""The embed flow: dataset artifact -> embeddings artifact, one cached task per shard on Dask
(a local cluster by default, an existing cluster by `runner.dask_address`).
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from penultimate.artifacts import STORE_FULL_OR_LOCKED, ArtifactRef, ArtifactStore, open_artifact
from penultimate.config import EmbedConfig
from penultimate.console import progress_bar
from penultimate.ingest import check_splits, dataset_shard_entries
from penultimate.shard_features import check_choice_for_model, check_runtime_installed
from penultimate.stages import DATASET_STAGE
from tasks.embed import collect_embeddings, embed_shard
from tasks.encoder import build_encoder
from tasks.subflow import run_subflow


class ShardsFailed(RuntimeError):
    """Some shards could not be embedded; the others are cached and a rerun does only these."""


@flow(name="embed-shards", log_prints=True)
def embed_shards(
    config: EmbedConfig, dataset: ArtifactRef, model: ArtifactRef, store_root: str | None = None
) -> ArtifactRef:
    """Embed every shard with `model` (an encoder or export artifact; cached per shard), then
    publish the embeddings artifact."""
    store = ArtifactStore(store_root)
    root = str(store.root)
    futures = {
        shard: embed_shard.submit(
            config=config, model=model, shard=shard, shard_sha256=sha, store_root=root
        )
        for shard, sha in dataset_shard_entries(store, dataset)
    }
    progress = create_progress_artifact(
        progress=0.0, key="embed-progress", description="Shards embedded (%)"
    )
    with progress_bar(len(futures), "embedding shards", "shard") as bar:
        for done, future in enumerate(as_completed(list(futures.values())), start=1):
            # wait() pins the future's final state; without it `state` may be read from the API
            # before the worker's last state update has landed.
            future.wait()
            bar.update()
            update_progress_artifact(progress, progress=100.0 * done / len(futures))
    failed = {
        shard: future.state.message
        for shard, future in futures.items()
        if not future.state.is_completed()
    }
    if failed:
        errors = [futures[shard].result(raise_on_failure=False) for shard in failed]
        if all(isinstance(e, OSError) and e.errno in STORE_FULL_OR_LOCKED for e in errors):
            raise errors[0]  # the store is full or locked: the CLI's one line says so
        summary = "; ".join(f"{shard}: {message}" for shard, message in failed.items())
        raise ShardsFailed(f"{len(failed)} of {len(futures)} shards failed: {summary}")
    shards = [future.result() for future in futures.values()]
    return collect_embeddings(
        config=config, dataset=dataset, model=model, shards=shards, store_root=root
    )


DEFAULT_EMBED = EmbedConfig()


@flow(name="embed", log_prints=True)
def embed(
    config: EmbedConfig = DEFAULT_EMBED,
    dataset: ArtifactRef | None = None,
    store_root: str | None = None,
) -> ArtifactRef:
    """Embed a dataset on the Dask cluster `config.runner` names (a subflow on that runner),
    after checking the embedding choice against the model; no cluster starts when every shard's
    artifact is already complete.

    Args:
        config: Which model, layer and pooling, and the Dask cluster (default: the built-in
            encoder's mean-pooled last layer on a local cluster).
        dataset: The dataset artifact folder (default: the store's newest dataset).
        store_root: The artifact store (default: $PENULTIMATE_HOME, else ./artifacts).
    """
    store = ArtifactStore(store_root)
    dataset = store.input_artifact(dataset, DATASET_STAGE, made_by="ingest")
    check_splits(store.read_manifest(dataset), config.splits, dataset.uri)  # type: ignore[arg-type]
    model = (
        open_artifact(config.export, "export", intact=True)
        if config.export
        else build_encoder(config=config.encoder, store_root=str(store.root))
    )
    check_choice_for_model(store, model, config.embedding)
    check_runtime_installed(config.embedding, local_workers=not config.runner.dask_address)
    done = [
        embed_shard.complete_artifact(
            config=config, model=model, shard=shard, shard_sha256=sha, store_root=str(store.root)
        )
        for shard, sha in dataset_shard_entries(store, dataset)
    ]
    if all(done):
        # Every shard is embedded already: collect them without starting a cluster.
        return collect_embeddings(
            config=config, dataset=dataset, model=model, shards=done, store_root=str(store.root)
        )
    # Dask is imported only when a cluster is needed (about a second of a cached rerun).
    from tasks.dask_cluster import dask_task_runner

    runner = dask_task_runner(config.runner)
    return run_subflow(
        embed_shards.with_options(task_runner=runner),
        config=config, dataset=dataset, model=model, store_root=str(store.root),
    )  # fmt: skip
