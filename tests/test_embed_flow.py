"""The embed flow on real Dask clusters (the local default and an existing scheduler with two
workers on 127.0.0.1) and a real Prefect server: parity, order, caching, and a failing shard."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from conftest import (
    FIXTURES,
    prefect_artifact_keys,
    task_run_states,
    task_state_counts,
)
from flows.embed import embed
from flows.ingest import ingest
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EmbedConfig, IngestConfig
from penultimate.embeddings import embedding_shard_files, read_embeddings

pytestmark = pytest.mark.usefixtures("prefect_api")

REFERENCE = json.loads((FIXTURES / "minilm_reference.json").read_text())
EXPECTED = np.load(FIXTURES / "minilm_reference.npz")["embeddings"]


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory, encoder_store: str) -> ArtifactRef:
    """The 64 reference sentences as a dataset of 4 shards (empty/blank ones dropped by ingest)."""
    source = tmp_path_factory.mktemp("sentences") / "sentences.parquet"
    ids = [f"s{i:02d}" for i in range(len(REFERENCE["sentences"]))]
    pl.DataFrame({"id": ids, "text": REFERENCE["sentences"]}).write_parquet(source)
    config = IngestConfig(source=str(source), label_column=None, shard_rows=20)
    return ingest(config=config, store_root=encoder_store)


def embedded(ref: ArtifactRef, store: str) -> tuple[pl.DataFrame, np.ndarray]:
    manifest = ArtifactStore(store).validate(ref)
    assert manifest is not None
    return read_embeddings(embedding_shard_files(ref, manifest))


@pytest.fixture(scope="module")
def local_run(sentences: ArtifactRef, encoder_store: str, prefect_api: str) -> object:
    """The default config's run on the default runner: a local Dask cluster of 2 processes."""
    config = EmbedConfig()
    state = embed(config=config, dataset=sentences, store_root=encoder_store, return_state=True)
    assert state.is_completed(), state.message
    return state


def test_local_cluster_reproduces_sentence_transformers_in_order(
    local_run: object,
    sentences: ArtifactRef,
    encoder_store: str,
    prefect_api: str,
    dask_cluster: str,
) -> None:
    ref = local_run.result()  # type: ignore[attr-defined]
    rows, matrix = embedded(ref, encoder_store)
    source = pl.read_parquet(sorted((sentences.path / "data").glob("*.parquet")))
    assert rows["id"].to_list() == source["id"].to_list()  # shard order, row order
    reference = EXPECTED[[int(i[1:]) for i in rows["id"]]]
    assert (np.sum(matrix * reference, axis=1) >= 0.9999).all()
    metrics = ArtifactStore(encoder_store).validate(ref).metrics
    assert metrics["rows"] == rows.height and metrics["dim"] == 384
    assert metrics["truncated"] == sum(n > 128 for n in REFERENCE["untruncated_token_counts"])
    assert "embed-progress" in prefect_artifact_keys(prefect_api)

    # The runner is not part of the cache key: the same work on another cluster finds every
    # shard artifact complete, so no cluster starts (no shards subflow) and no shard task runs.
    elsewhere = EmbedConfig.model_validate({"runner": {"dask_address": dask_cluster}})
    again = embed(config=elsewhere, dataset=sentences, store_root=encoder_store, return_state=True)
    assert again.result() == ref
    states = task_run_states(again, subflows=True)
    assert "embed-shards" not in states and "embed-shard" not in states
    assert states["collect-embeddings"] == "Cached"


def test_existing_cluster_by_address_gives_the_same_embeddings(
    local_run: object, sentences: ArtifactRef, encoder_store: str, dask_cluster: str
) -> None:
    local_ref = local_run.result()  # type: ignore[attr-defined]
    # Naming every split selects the same rows under a new key, so the remote run computes.
    config = EmbedConfig.model_validate(
        {
            "runner": {"dask_address": dask_cluster},
            "batch_size": 7,
            "splits": ["train", "val", "test"],
        }
    )
    remote_ref = embed(config, sentences, store_root=encoder_store)
    assert remote_ref.key != local_ref.key
    local_rows, local = embedded(local_ref, encoder_store)
    remote_rows, remote = embedded(remote_ref, encoder_store)
    assert remote_rows["id"].to_list() == local_rows["id"].to_list()
    assert np.abs(remote - local).max() <= 1e-5


def test_a_corrupt_shard_fails_alone_and_a_rerun_after_the_fix_does_only_it(
    sentences: ArtifactRef, encoder_store: str, dask_cluster: str
) -> None:
    store = encoder_store
    config = EmbedConfig.model_validate(
        {"embedding": {"layers": [-2]}, "runner": {"dask_address": dask_cluster}}
    )
    shard = sentences.path / "data" / "part-00001.parquet"
    original = shard.read_bytes()
    try:
        shard.write_bytes(b"PAR1 broken")
        state = embed(config=config, dataset=sentences, store_root=store, return_state=True)
        assert state.is_failed()
        assert "1 of 4 shards failed" in state.message and "part-00001.parquet" in state.message
        assert task_state_counts(state, subflows=True)[("embed-shard", "Completed")] == 3
    finally:
        shard.write_bytes(original)
    fixed = embed(config=config, dataset=sentences, store_root=store, return_state=True)
    assert fixed.is_completed()
    counts = task_state_counts(fixed, subflows=True)
    assert counts[("embed-shard", "Cached")] == 3 and counts[("embed-shard", "Completed")] == 1
