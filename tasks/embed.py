"""Embedding tasks: one cached task per dataset shard (mapped onto Dask workers, each loading the
model once), and the collecting task that publishes the embeddings artifact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EmbedConfig, LongText
from penultimate.shard_features import long_text_summary
from penultimate.stages import EMBEDDING_SHARD_STAGE, EMBEDDINGS_STAGE
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


def shard_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: EmbedConfig = params["config"]
    # Batch size and runner do not change the vectors, so they stay out of the key.
    key = {"embedding": config.embedding, "splits": config.splits, "shard": params["shard_sha256"]}
    return key, [params["model"]]


@artifact_task(EMBEDDING_SHARD_STAGE, identity=shard_identity, name="embed-shard")
def embed_shard(
    out: Path,
    config: EmbedConfig,
    model: ArtifactRef,
    shard: str,
    shard_sha256: str,
    store_root: str,
) -> dict[str, Any]:
    """Embed one dataset shard into its own artifact; the model is loaded once per worker."""
    from penultimate.embed import extract_shard_embeddings, load_embedder, peak_memory_mb
    from penultimate.embeddings import SHARD_FILE

    loads_before = load_embedder.cache_info().misses
    embedder = load_embedder(
        model.stage,
        model.uri,
        config.embedding.model_dump_json(),
        config.batch_size,
        config.runner.tf_threads,
    )
    # Each worker process loads the model for its first shard and reuses it for the rest.
    model_loaded_here = load_embedder.cache_info().misses > loads_before
    stats = extract_shard_embeddings(
        embedder, Path(shard), shard_sha256, out / SHARD_FILE, config.embedding, config.splits
    )
    peak_mb = peak_memory_mb()
    get_run_logger().info(
        "%s: %d rows at %.1f texts/s (%d through the encoder), dim %d, %s, "
        "worker peak memory %d MB",
        Path(shard).name,
        stats["rows"],
        stats["texts_per_s"],
        stats["encoded_texts"],
        stats["dim"],
        long_text_summary(stats),
        peak_mb,
    )
    return {
        **stats,
        "worker_peak_rss_mb": peak_mb,
        "worker_pid": os.getpid(),
        "model_loaded_here": model_loaded_here,
        "source_shard": ArtifactStore(store_root).relative(Path(shard)),
    }


def collect_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: EmbedConfig = params["config"]
    key = {"embedding": config.embedding, "splits": config.splits}
    return key, [params["dataset"], params["model"], *params["shards"]]


@artifact_task(EMBEDDINGS_STAGE, identity=collect_identity, name="collect-embeddings")
def collect_embeddings(
    out: Path,
    config: EmbedConfig,
    dataset: ArtifactRef,
    model: ArtifactRef,
    shards: list[ArtifactRef],
    store_root: str,
) -> dict[str, Any]:
    """The embeddings artifact: the shard artifacts in dataset order (by key, within the store),
    with rows, dim and the texts that went through an encoder."""
    store = ArtifactStore(store_root)
    stats = [store.read_manifest(ref).metrics for ref in shards]  # type: ignore[union-attr]
    dims = {s["dim"] for s in stats if s["rows"]}
    return {
        "rows": sum(s["rows"] for s in stats),
        "truncated": sum(s["truncated"] for s in stats),
        **{
            name: sum(s[name] for s in stats)
            for name in ("chunked", "windows")
            if config.embedding.long_text == LongText.chunk
        },
        "encoded_texts": sum(s["encoded_texts"] for s in stats),
        "dim": dims.pop() if len(dims) == 1 else None,
        "choice_blocks": next((s["choice_blocks"] for s in stats if s["rows"]), None),
        "shards": [{"key": r.key, "rows": s["rows"]} for r, s in zip(shards, stats, strict=True)],
    }
