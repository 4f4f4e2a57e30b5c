"""The pipeline flow end to end on real mail, a real Prefect server and a local Dask cluster: the
penultimate embeddings separate spam from ham, and a rerun redoes exactly what its change touches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

from conftest import prefect_api_call, prefect_artifact_keys, task_state_counts
from flows.cluster import cluster
from flows.embed import embed
from flows.export import export
from flows.pipeline import pipeline
from flows.train import train
from penultimate.artifacts import ArtifactStore
from penultimate.config import EmbedConfig, ExportConfig, PipelineConfig
from penultimate.stages import CLASSIFIER_STAGE, DATASET_STAGE, EMBEDDINGS_STAGE, EXPORT_STAGE
from tasks.subflow import run_subflow

pytestmark = pytest.mark.usefixtures("prefect_api")

STAGE_TASKS = {
    "ingest-dataset",
    "build-encoder",
    "check-training-inputs",
    "encode-features",
    "train-classifier",
    "export-classifier",
    "embed-shard",
    "collect-embeddings",
    "cluster-embeddings",
}


def states_by_task(state: object) -> dict[str, set[str]]:
    """Task name -> the states its runs ended in, over the pipeline and all its subflows."""
    result: dict[str, set[str]] = {}
    for (name, state_name), _ in task_state_counts(state, subflows=True).items():
        result.setdefault(name, set()).add(state_name)
    return result


def run(config: PipelineConfig, store: str) -> tuple[object, dict[str, set[str]]]:
    state = pipeline(config=config, store_root=store, return_state=True)
    assert state.is_completed(), state.message
    return state, states_by_task(state)


def test_pipeline_reruns_only_what_changed(
    corpus_slice: Path, store_with_encoder: str, prefect_api: str, dask_cluster: str
) -> None:
    # An existing cluster for the four runs, so Dask and TensorFlow start once, not per run.
    check_reruns(corpus_slice, store_with_encoder, prefect_api, dask_cluster)
    check_stage_flows_take_the_newest_inputs(store_with_encoder, dask_cluster)


def check_reruns(corpus_slice: Path, store: str, prefect_api: str, address: str) -> None:
    config = PipelineConfig.model_validate(
        {
            "ingest": {"source": str(corpus_slice), "text_format": "email",
                       "text_column": "raw", "shard_rows": 100},
            # A hidden layer makes the penultimate features learned (with a linear head they
            # would be the encoder's pooled output, which clusters by topic, not by spam/ham).
            "train": {"hidden": [{"units": 64}], "dropout": [{"at": "hidden:0", "rate": 0.2}],
                      "learning_rate": 3e-3, "epochs": 10},
            "embed": {"embedding": {"source": "penultimate"}, "runner": {"dask_address": address}},
            # The export check's fewest texts: its checks, on a cheaper sample.
            "export": {"verify_texts": 8},
            "cluster": {"k": 2},
        }
    )  # fmt: skip
    state, first = run(config, store)
    rows = ArtifactStore(store).read_manifest(state.result().artifact("ingest")).metrics["rows"]  # type: ignore[attr-defined,union-attr]
    # One encoder pass per text: training's features; the penultimate embeddings are the
    # trained head applied to those features, with no pass through the exported model.
    assert encoder_passes(store) == {"features": rows, "embedding-shard": 0}
    # Besides these, each subflow shows up as a task run of its parent (ingest, train, ...).
    assert STAGE_TASKS | {"publish-pipeline-summary"} <= set(first)
    result = state.result()  # type: ignore[attr-defined]
    metrics = json.loads((result.artifact("cluster").path / "metrics.json").read_text())
    # The classifier's penultimate features separate spam from ham (issue 5's quality bar).
    assert metrics["ari"] >= 0.8, metrics
    assert {"pipeline-summary", "pipeline-progress"} <= prefect_artifact_keys(prefect_api)
    assert {"cluster-summary", "cluster-report"} <= prefect_artifact_keys(prefect_api)
    reports_before = artifact_versions(prefect_api, "cluster-report")
    # The summary links each stage's report as this run made it, not the key's list of versions.
    summary = newest_artifact(prefect_api, "pipeline-summary")["data"]
    assert f"/artifacts/artifact/{newest_artifact(prefect_api, 'cluster-report')['id']})" in summary
    assert summary.count("/artifacts/artifact/") == 4 and "/artifacts/key/" not in summary

    # Every embedding shard is complete on a rerun, so the embed stage starts no cluster and
    # runs no shard task, and the classifier is complete, so no features task runs; every other
    # stage task is Cached.
    cached = STAGE_TASKS - {"embed-shard", "encode-features"}
    _, again = run(config, store)
    assert "embed-shard" not in again and "encode-features" not in again
    assert {name: again[name] for name in cached} == {name: {"Cached"} for name in cached}
    # A cached stage still shows its results: the rerun published the cluster report again.
    assert artifact_versions(prefect_api, "cluster-report") == reports_before + 1

    new_k = config.model_copy(update={"cluster": config.cluster.model_copy(update={"k": 3})})
    _, cluster_only = run(new_k, store)
    assert cluster_only.pop("cluster-embeddings") == {"Completed"}
    assert "embed-shard" not in cluster_only and "encode-features" not in cluster_only
    assert all(cluster_only[name] == {"Cached"} for name in cached - {"cluster-embeddings"})

    head_dropout = {"dropout": [{"at": "head", "rate": 0.3}]}
    dropout = PipelineConfig.model_validate(
        config.model_dump() | {"train": config.train.model_dump() | head_dropout}
    )
    _, retrained = run(dropout, store)
    for name in ("train-classifier", "export-classifier", "embed-shard", "collect-embeddings",
                 "cluster-embeddings"):  # fmt: skip
        assert retrained[name] == {"Completed"}, name
    # Head dropout does not change the frozen encoder's features, so those stay cached too.
    for name in ("ingest-dataset", "build-encoder", "encode-features"):
        assert retrained[name] == {"Cached"}, name
    assert encoder_passes(store) == {"features": rows, "embedding-shard": 0}


def check_stage_flows_take_the_newest_inputs(store: str, address: str) -> None:
    """What a deployment's Quick run does: a stage flow given no input takes the store's newest
    artifact of that stage (export: the classifier's own dataset)."""
    artifacts = ArtifactStore(store)
    passes = encoder_passes(store)
    # The pipeline's export settings: the newest classifier and its dataset give the cached export.
    assert export(config=ExportConfig(verify_texts=8), store_root=store) == artifacts.latest(
        EXPORT_STAGE
    )
    classifier = train(store_root=store)  # every TrainConfig default
    assert artifacts.latest(CLASSIFIER_STAGE) == classifier
    assert artifacts.input_of(classifier, DATASET_STAGE) == artifacts.latest(DATASET_STAGE)
    embeddings = embed(config=EmbedConfig(runner={"dask_address": address}), store_root=store)
    assert artifacts.input_of(embeddings, DATASET_STAGE) == artifacts.latest(DATASET_STAGE)
    clusters = cluster(store_root=store)
    assert artifacts.input_of(clusters, EMBEDDINGS_STAGE) == embeddings
    # The default classifier and the encoder embeddings both read the cached features.
    assert encoder_passes(store) == passes


def encoder_passes(store: str) -> dict[str, int]:
    """Texts that went through an encoder, summed over every artifact of the stages that run one."""
    artifacts = ArtifactStore(store)
    return {
        stage: sum(
            artifacts.read_manifest(ref).metrics["encoded_texts"]  # type: ignore[union-attr]
            for ref in artifacts.artifacts(stage)
        )
        for stage in ("features", "embedding-shard")
    }


def artifact_versions(api_url: str, key: str) -> int:
    """How many times the server holds an artifact of `key` (one per publication)."""
    body = {"artifacts": {"key": {"any_": [key]}}, "limit": 200}
    return len(prefect_api_call(api_url, "POST", "/artifacts/filter", body))


def newest_artifact(api_url: str, key: str) -> dict[str, Any]:
    """The server's newest artifact of `key`."""
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    (artifact,) = prefect_api_call(api_url, "POST", "/artifacts/filter", body)
    return artifact


@flow(name="heartbeat-child")
def heartbeat_child() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


@flow(name="heartbeat-parent")
def heartbeat_parent() -> dict[str, int | None]:
    child = run_subflow(heartbeat_child)
    return {"parent": get_current_settings().flows.heartbeat_frequency, "subflow": child}


def test_a_subflow_sends_no_heartbeat_of_its_own_and_its_parent_keeps_its_own() -> None:
    # The session turns heartbeats off for flows run in the test process; a user's are on.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        assert heartbeat_parent() == {"parent": 60, "subflow": None}
