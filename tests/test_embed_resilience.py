"""The embed flow survives what large jobs meet, against real processes: a rerun that computes and
loads nothing, config and shard changes, a SIGKILLed flow process, and a Dask worker killed mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import REPO, dask_cluster_processes, task_state_counts
from flows.embed import embed
from flows.ingest import ingest
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EmbedConfig, IngestConfig
from penultimate.email_text import email_to_text
from penultimate.embeddings import embedding_shard_files, read_embeddings
from penultimate.stages import EMBEDDING_SHARD_STAGE

pytestmark = pytest.mark.usefixtures("prefect_api")

SHARD_ROWS = 25


def ingest_slice(source: Path, store: str) -> ArtifactRef:
    config = IngestConfig(source=str(source), shard_rows=SHARD_ROWS)
    return ingest(config=config, store_root=store)


@pytest.fixture
def store(store_with_encoder: str) -> str:
    return store_with_encoder


@pytest.fixture
def mails(corpus_slice: Path, tmp_path: Path) -> Path:
    """150 real mails as plain text (subject + body) cut to 600 characters, so shards are quick."""
    frame = pl.read_parquet(corpus_slice).head(150)
    texts = [email_to_text(raw).text[:600] for raw in frame["raw"].to_list()]
    path = tmp_path / "mails.parquet"
    frame.select("id", "label").with_columns(pl.Series("text", texts)).write_parquet(path)
    return path


def shard_manifests(store: str) -> dict[str, float]:
    """Complete embedding-shard artifacts: folder name -> manifest mtime."""
    folder = Path(store) / EMBEDDING_SHARD_STAGE.name
    return {m.parent.name: m.stat().st_mtime for m in folder.glob("*/manifest.json")}


def embedded_rows(ref: ArtifactRef, store: str) -> pl.DataFrame:
    manifest = ArtifactStore(store).validate(ref)
    assert manifest is not None
    files = embedding_shard_files(ref, manifest)
    return read_embeddings(files)[0]


def run_shards(config: EmbedConfig, dataset: ArtifactRef, store: str) -> object:
    state = embed(config=config, dataset=dataset, store_root=store, return_state=True)
    assert state.is_completed(), state.message
    return state


def test_rerun_computes_and_loads_nothing_new_config_recomputes_changed_shard_only(
    mails: Path, store: str, tmp_path: Path, dask_cluster: str
) -> None:
    dataset = ingest_slice(mails, store)
    # The session's shared cluster; this test's store is new, so its workers load the model anew.
    config = EmbedConfig.model_validate({"runner": {"dask_address": dask_cluster}})
    first = run_shards(config, dataset, store)
    assert task_state_counts(first, subflows=True)[("embed-shard", "Completed")] == 6
    metrics = [
        ArtifactStore(store).read_manifest(ref).metrics  # type: ignore[union-attr]
        for ref in ArtifactStore(store).artifacts(EMBEDDING_SHARD_STAGE)
    ]
    # The model is loaded once per worker process, not once per shard.
    loads = [m["worker_pid"] for m in metrics if m["model_loaded_here"]]
    assert len(loads) == len(set(loads)) == len({m["worker_pid"] for m in metrics}) <= 2

    before = shard_manifests(store)
    again = task_state_counts(run_shards(config, dataset, store), subflows=True)
    # Every shard artifact is complete: no cluster starts, no shard task runs.
    assert again == {("build-encoder", "Cached"): 1, ("collect-embeddings", "Cached"): 1}
    assert shard_manifests(store) == before  # no task body ran: nothing written or loaded

    # A shard's vectors deleted behind the store's back: the rerun rebuilds that shard only.
    damaged = next(iter(ArtifactStore(store).artifacts(EMBEDDING_SHARD_STAGE)))
    next(damaged.path.glob("*.parquet")).unlink()
    repaired = run_shards(config, dataset, store)
    counts = task_state_counts(repaired, subflows=True)
    assert counts[("embed-shard", "Cached")] == 5 and counts[("embed-shard", "Completed")] == 1
    assert ArtifactStore(store).validate(damaged) is not None

    cls = config.model_copy(update={"embedding": config.embedding.model_copy(
        update={"pooling": "cls"})})  # fmt: skip
    counts = task_state_counts(run_shards(cls, dataset, store), subflows=True)
    assert counts[("embed-shard", "Completed")] == 6 and ("embed-shard", "Cached") not in counts

    # One mail edited: re-ingesting changes exactly one dataset shard; only it is embedded.
    frame = pl.read_parquet(mails)
    edited = tmp_path / "edited.parquet"
    frame.with_columns(
        pl.when(pl.col("id") == frame["id"][40])
        .then(pl.col("text") + " P.S. one more line")
        .otherwise(pl.col("text"))
        .alias("text")
    ).write_parquet(edited)
    changed = ingest_slice(edited, store)
    counts = task_state_counts(run_shards(config, changed, store), subflows=True)
    assert counts[("embed-shard", "Cached")] == 5
    assert counts[("embed-shard", "Completed")] == 1


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_sigkilled_flow_resumes_with_only_the_missing_shards(
    mails: Path, store: str, tmp_path: Path, dask_cluster: str
) -> None:
    dataset = ingest_slice(mails, store)
    config_file = tmp_path / "embed.yaml"
    # One worker and small batches, so the run is still going when the first shards are done.
    config_file.write_text(yaml.safe_dump({"batch_size": 4, "runner": {"n_workers": 1}}))
    flow_process = subprocess.Popen(
        [sys.executable, "-m", "penultimate.cli", "--store", store, "embed",
         "--config", str(config_file), "--dataset", dataset.uri],
        cwd=REPO, env={**os.environ}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: len(shard_manifests(store)) >= 2, 300, "two shard artifacts")
    finally:
        # The whole process group: the CLI, its Dask scheduler and its worker.
        os.killpg(flow_process.pid, signal.SIGKILL)
        flow_process.wait(timeout=30)
    done_before = shard_manifests(store)
    assert 2 <= len(done_before) < 6, "the kill must land mid-run"

    # The rerun on the session's cluster: the runner is not part of any key, so the killed local
    # cluster's finished shards count there too.
    config = EmbedConfig.model_validate(
        yaml.safe_load(config_file.read_text()) | {"runner": {"dask_address": dask_cluster}}
    )
    ref = embed(config, dataset, store_root=store)
    after = shard_manifests(store)
    assert {k: after[k] for k in done_before} == done_before  # finished shards were not redone
    assert len(after) == 6
    rows = embedded_rows(ref, store)
    source_ids = pl.read_parquet(sorted((dataset.path / "data").glob("*.parquet")))["id"]
    assert rows.height == source_ids.len() == 150
    assert rows["id"].n_unique() == rows.height
    assert rows["id"].to_list() == source_ids.to_list()


def test_a_killed_dask_worker_does_not_lose_rows(mails: Path, store: str) -> None:
    dataset = ingest_slice(mails, store)
    with dask_cluster_processes(2) as (address, workers):
        config = EmbedConfig.model_validate({"batch_size": 4, "runner": {"dask_address": address}})
        killed: list[int] = []

        def kill_a_busy_worker() -> None:
            from distributed import Client

            wait_for(lambda: len(shard_manifests(store)) >= 1, 300, "the first shard artifact")
            with Client(address, timeout=30) as client:
                busy: list[str] = []
                wait_for(
                    lambda: busy.extend(w for w, k in client.processing().items() if k) or busy,
                    60,
                    "a busy worker",
                )
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        ref = embed(config, dataset, store_root=store)
        killer.join(timeout=60)
        assert killed and any(w.pid == killed[0] and w.wait(10) == -9 for w in workers)
        assert len(shard_manifests(store)) == 6
        rows = embedded_rows(ref, store)
        assert rows.height == 150 and rows["id"].n_unique() == 150
