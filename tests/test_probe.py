"""The probe flow on a slice of the real corpus with the built-in encoder, a real Prefect server and
Dask cluster: every layer x pooling scored, control near chance, reproducible, cached; and the
probe functions on a representation that carries nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import prefect_artifact_keys, task_state_counts
from flows.probe import probe
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.cluster import EmbeddingShards
from penultimate.config import ProbeConfig
from penultimate.probe import (
    ProbeRows,
    chance_accuracy,
    fit_probe,
    parse_choices,
    probe_table,
    read_probe_rows,
    score_choice,
    stratified_sample,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

# A subflow also shows up as a task run of its parent, Completed; the work is in these tasks.
SUBFLOWS = {"ingest", "embed", "embed-shards"}
WORK_TASKS = {
    "ingest-dataset",
    "build-encoder",
    "embed-shard",
    "collect-embeddings",
    "probe-embeddings",
}
EVERY_CHOICE = {f"layer {i} {p}" for i in range(6) for p in ("cls", "mean", "max")} | {
    "layer 5 pooled"
}


@pytest.fixture(scope="module")
def config(corpus_slice: Path, dask_cluster: str) -> ProbeConfig:
    # Half train, half test: 150 test rows make the scores steady enough to assert on.
    return ProbeConfig.model_validate(
        {
            "ingest": {
                "source": str(corpus_slice),
                "text_format": "email",
                "text_column": "raw",
                "split": {"train": 0.5, "val": 0.0, "test": 0.5},
            },
            "runner": {"dask_address": dask_cluster},
            "cluster_rows": 300,
        }
    )


@pytest.fixture(scope="module")
def probed(config: ProbeConfig, encoder_store: str) -> tuple[ArtifactRef, object]:
    state = probe(config=config, store_root=encoder_store, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state


def test_probe_scores_every_layer_and_pooling_and_reports_the_best(
    probed: tuple[ArtifactRef, object], prefect_api: str
) -> None:
    ref, _ = probed
    table = pl.read_csv(ref.path / "scores.csv")
    assert set(table["choice"]) == EVERY_CHOICE and table.height == 19
    assert set(table["dim"]) == {384}
    for column in ("accuracy", "macro_f1", "control_accuracy", "nmi"):
        assert table[column].is_between(0, 1).all(), column
    assert table["ari"].is_between(-0.5, 1).all()
    np.testing.assert_allclose(
        table["selectivity"], table["accuracy"] - table["control_accuracy"], atol=2e-4
    )
    metrics = json.loads((ref.path / "manifest.json").read_text())["metrics"]
    chance = metrics["chance_accuracy"]
    # A linear probe reads spam from MiniLM features; on shuffled labels it can only guess.
    assert metrics["best_accuracy"] >= 0.85 > chance + 0.15
    # Guessing by the class shares scores the sum of their squares (two labels here); always
    # answering the majority scores `chance`: a probe of shuffled labels lands between the two.
    guess = chance**2 + (1 - chance) ** 2
    assert guess - 0.1 <= table["control_accuracy"].mean() <= chance + 0.05
    assert (table["control_accuracy"] <= chance + 0.1).all()
    assert metrics["best"] in EVERY_CHOICE and metrics["default"] == "layer 5 cls"
    assert metrics["default_gap"] >= 0
    for name in ("heatmap.png", "by_layer.png"):
        assert (ref.path / name).read_bytes()[:4] == b"\x89PNG"
    report = (ref.path / "report.md").read_text()
    assert f"Best for a linear classifier: {metrics['best']}" in report
    assert {"probe-scores", "probe-report"} <= prefect_artifact_keys(prefect_api)


@pytest.fixture(scope="module")
def probe_inputs(
    probed: tuple[ArtifactRef, object], config: ProbeConfig, encoder_store: str
) -> tuple[ProbeRows, list[dict]]:
    """The probe's rows and the `choice_blocks` of the embeddings it read."""
    store = ArtifactStore(encoder_store)
    stored = next(i for i in store.read_manifest(probed[0]).inputs if i.stage == "embeddings")
    embeddings = store.resolve(stored)
    blocks = store.read_manifest(embeddings).metrics["choice_blocks"]
    return read_probe_rows(EmbeddingShards.open(embeddings), 20000, 20000, config.seed), blocks


def test_probe_is_reproducible_and_a_rerun_is_cached(
    probed: tuple[ArtifactRef, object],
    probe_inputs: tuple[ProbeRows, list[dict]],
    config: ProbeConfig,
    encoder_store: str,
) -> None:
    ref, _ = probed
    rows, blocks = probe_inputs
    again = probe_table(rows, parse_choices(blocks), 1.0, config.cluster_rows, config.seed)
    assert again.equals(pl.read_csv(ref.path / "scores.csv", schema=again.schema))

    rerun = probe(config=config, store_root=encoder_store, return_state=True)
    assert rerun.result() == ref
    states = task_state_counts(rerun, subflows=True)
    work = {(task, state) for (task, state) in states if task not in SUBFLOWS}
    # Every embedding shard is complete: no cluster starts and no shard task runs.
    assert work == {(task, "Cached") for task in WORK_TASKS - {"embed-shard"}}, states


def encoded_texts(store: ArtifactStore, stage: str, dataset: ArtifactRef) -> dict[str, int]:
    """Key -> texts that went through an encoder, of every artifact of `stage` made from the
    shards of `dataset` (the session's store holds other tests' artifacts too)."""
    shards = store.relative(dataset.path)
    manifests = {ref.key: store.read_manifest(ref) for ref in store.artifacts(stage)}
    return {
        key: m.metrics["encoded_texts"]
        for key, m in manifests.items()
        if m is not None and m.metrics["source_shard"].startswith(shards)
    }


def test_the_probes_encoder_pass_serves_later_embeddings_and_training(
    probed: tuple[ArtifactRef, object],
    config: ProbeConfig,
    encoder_store: str,
    dask_cluster: str,
    tmp_path: Path,
) -> None:
    from flows.embed import embed
    from flows.ingest import ingest
    from penultimate.config import EmbedConfig

    store = ArtifactStore(encoder_store)
    dataset = ingest(config=config.ingest, store_root=encoder_store)
    features_before = encoded_texts(store, "features", dataset)
    # The probe encoded each of its shards' rows once (every row, so val rows would be served too).
    assert sum(features_before.values()) == dataset_rows(store, dataset)
    # A single choice later: its vectors are columns of the probe's features, no encoder pass.
    single = EmbedConfig.model_validate(
        {"embedding": {"layers": [2], "pooling": "max"}, "runner": {"dask_address": dask_cluster}}
    )
    ref = embed(config=single, dataset=dataset, store_root=encoder_store)
    assert store.read_manifest(ref).metrics["encoded_texts"] == 0  # type: ignore[union-attr]
    assert encoded_texts(store, "features", dataset) == features_before
    # Training's per-shard features (a frozen encoder) are copied out of the probe's columns.
    from penultimate.features import fill_shard_features
    from penultimate.ingest import dataset_shard_entries
    from penultimate.shard_features import DEFAULT_PASS, every_choice_features, read_features

    # The probe's own encoder (the session's store may hold others).
    embeddings = store.resolve(store.read_manifest(probed[0]).inputs[0])  # type: ignore[union-attr]
    encoder = next(
        store.resolve(r)
        for r in store.read_manifest(embeddings).inputs  # type: ignore[union-attr]
        if r.stage == "encoder"
    )
    shard, sha = dataset_shard_entries(store, dataset)[0]
    out = tmp_path / "features"
    out.mkdir()
    metrics = fill_shard_features(out, store, encoder, Path(shard), sha, ["layer_5_mean"])
    every = every_choice_features(store, encoder, sha, DEFAULT_PASS)
    assert every is not None and metrics["copied_from"] == every.key
    assert metrics["encoded_texts"] == 0 and metrics["rows"] > 0
    copied = pl.read_parquet(out / "features.parquet")["layer_5_mean"].to_numpy()
    np.testing.assert_array_equal(
        copied, read_features(every, ["layer_5_mean"]).vectors["layer_5_mean"]
    )


def dataset_rows(store: ArtifactStore, dataset: ArtifactRef) -> int:
    return store.read_manifest(dataset).metrics["rows"]  # type: ignore[union-attr]


def test_choices_scored_in_parallel_match_one_by_one_and_each_logs_a_line(
    probe_inputs: tuple[ProbeRows, list[dict]], config: ProbeConfig
) -> None:
    rows, blocks = probe_inputs
    choices = parse_choices(blocks)[:3]
    lines: list[str] = []
    table = probe_table(rows, choices, 1.0, 300, config.seed, lines.append)
    assert sorted(line.split(":")[0] for line in lines) == [f"probe {n}/3" for n in (1, 2, 3)]
    assert {line.split(": ")[1].split(" accuracy")[0] for line in lines} == {
        c.label for c in choices
    }
    for choice, row in zip(choices, table.iter_rows(named=True), strict=True):
        one = score_choice(
            rows, slice(choice.start, choice.start + choice.dim), 1.0, 300, config.seed
        )
        assert row["choice"] == choice.label
        assert row["accuracy"] == round(one["accuracy"], 4)
        assert row["control_accuracy"] == round(one["control_accuracy"], 4)


def test_a_representation_that_carries_nothing_scores_at_chance(
    probe_inputs: tuple[ProbeRows, list[dict]], config: ProbeConfig
) -> None:
    real, _ = probe_inputs
    zeros = ProbeRows(
        real.label_names,
        real.train_labels,
        np.zeros((len(real.train_labels), 384), np.float32),
        real.test_labels,
        np.zeros((len(real.test_labels), 384), np.float32),
    )
    chance = chance_accuracy(real.train_labels, real.test_labels)
    scores, _ = fit_probe(
        zeros.train_vectors, zeros.train_labels, zeros.test_vectors, zeros.test_labels, 1.0
    )
    assert scores["accuracy"] == pytest.approx(chance)
    with pytest.warns(Warning):  # k-means finds one distinct point where it wants two clusters
        full = score_choice(zeros, slice(0, 384), 1.0, 300, config.seed)
    assert full["ari"] == pytest.approx(0) and full["nmi"] == pytest.approx(0)


def test_row_caps_keep_every_label_at_its_share() -> None:
    labels = np.array(["big"] * 9000 + ["mid"] * 900 + ["tiny"] * 3)
    rows = np.arange(len(labels))
    sample = stratified_sample(rows, labels, 1000, np.random.default_rng(0))
    kept = dict(zip(*np.unique(labels[sample], return_counts=True), strict=True))
    assert len(sample) == 1000 and kept["tiny"] >= 1
    assert abs(kept["big"] - 9000 * 1000 / 9903) <= 1 and abs(kept["mid"] - 900 * 1000 / 9903) <= 1
    assert np.array_equal(sample, np.sort(sample)) and len(set(sample)) == len(sample)
    assert stratified_sample(rows[:10], labels, 1000, np.random.default_rng(0)).tolist() == list(
        range(10)
    )


def test_bad_probe_configs_name_the_field(corpus_slice: Path) -> None:
    with pytest.raises(ValueError, match="precision: bfloat16 runs a bare encoder"):
        ProbeConfig.model_validate(
            {"ingest": {"source": str(corpus_slice)}, "export": "x", "precision": "bfloat16"}
        )
    with pytest.raises(ValueError, match="regularization"):
        ProbeConfig.model_validate({"ingest": {"source": str(corpus_slice)}, "regularization": 0})
