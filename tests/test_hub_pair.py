"""A genuine TF-Hub-format BERT pair (TensorFlow Model Garden's exporter, tests/fixtures/hub_pair)
through every stage the built-in encoder goes through, against a real Prefect server and Dask:
import, train, export, embed, probe and cluster; TF-Hub handles resolved from TFHUB_CACHE_DIR;
new weights at the same path; the original folder moved away; bad handles and layers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import HUB_PAIR, run_cli, task_run_states
from flows.build_encoder import build_encoder_flow
from flows.cluster import cluster
from flows.embed import embed
from flows.export import export
from flows.ingest import ingest
from flows.probe import probe
from flows.train import train
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import (
    ClusterConfig,
    EmbedConfig,
    EmbeddingChoice,
    EncoderConfig,
    IngestConfig,
    ProbeConfig,
    TrainConfig,
)
from penultimate.embeddings import embedding_shard_files, read_embeddings
from penultimate.encoders.pair import EncoderPair
from penultimate.encoders.sources import HubPairError, resolve_handle
from penultimate.errors import InputError
from penultimate.features import ChoiceEncoder, LoadedEncoder, encoder_choice_names
from penultimate.shard_features import EncoderPass, check_choice_for_model
from tasks.encoder import build_encoder

pytestmark = pytest.mark.usefixtures("prefect_api")

SEQ_LENGTH = 64
FINE_TUNED = {
    "freeze": "top:1",
    "pooling": "mean",
    "hidden": [{"units": 16}],
    "dropout": [{"at": "sequence", "rate": 0.1, "mask": "feature"}],
}
TRAIN_RUNS = {
    "frozen-pooled": {"freeze": "all", "pooling": "pooled"},
    "frozen-cls": {"freeze": "all", "pooling": "cls"},
    # Mean and max side by side: 128 features, so a dropout column past the encoder's 64 exists.
    "frozen-mean_max": {
        "freeze": "all",
        "pooling": "mean_max",
        "dropout": [{"at": "pooled", "rate": 0.2, "columns": [100]}],
    },
    "fine-tuned-mean": FINE_TUNED,
}


def hub_encoder(folder: Path) -> dict[str, Any]:
    return {
        "hub_preprocessor": str(folder / "preprocessor"),
        "hub_encoder": str(folder / "encoder"),
        "seq_length": SEQ_LENGTH,
    }


def train_config(folder: Path, **overrides: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        {"encoder": hub_encoder(folder), "epochs": 1, "learning_rate": 1e-2, **overrides}
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("hub-store"))


@pytest.fixture(scope="module")
def dataset(corpus_slice: Path, store: str, prefect_api: str) -> ArtifactRef:
    config = IngestConfig(
        source=str(corpus_slice),
        text_format="email",
        text_column="raw",
        passthrough_columns=["group"],
        shard_rows=100,
    )
    return ingest(config=config, store_root=store)


@pytest.fixture(scope="module")
def trained(dataset: ArtifactRef, store: str) -> dict[str, tuple[ArtifactRef, dict[str, str]]]:
    """One classifier per freeze x pooling setting, trained on the committed pair, with the
    states of its train run's tasks."""
    runs = {}
    for name, overrides in TRAIN_RUNS.items():
        state = train(
            config=train_config(HUB_PAIR, **overrides),
            dataset=dataset,
            store_root=store,
            return_state=True,
        )
        assert state.is_completed(), f"{name}: {state.message}"
        runs[name] = (state.result(), task_run_states(state))
    return runs


@pytest.fixture(scope="module")
def models(trained: dict[str, tuple[ArtifactRef, dict[str, str]]]) -> dict[str, ArtifactRef]:
    return {name: ref for name, (ref, _) in trained.items()}


def embedded(ref: ArtifactRef, store: str) -> np.ndarray:
    manifest = ArtifactStore(store).validate(ref)
    assert manifest is not None
    return read_embeddings(embedding_shard_files(ref, manifest))[1]


def test_import_records_the_pair_and_keys_it_by_content(store: str, tmp_path: Path) -> None:
    ref = build_encoder_flow(config=EncoderConfig(**hub_encoder(HUB_PAIR)), store_root=store)
    metrics = ArtifactStore(store).validate(ref).metrics
    assert {k: metrics[k] for k in ("num_layers", "hidden_size", "seq_length", "vocab_size")} == {
        "num_layers": 2,
        "hidden_size": 64,
        "seq_length": SEQ_LENGTH,
        "vocab_size": 3000,
    }
    assert metrics["origin"]["hub_encoder"] == str(HUB_PAIR / "encoder")
    assert (ref.path / "encoder" / "saved_model.pb").is_file()  # copied, not pointed at
    # The same bytes in another folder are the same encoder: the key follows content, not path.
    shutil.copytree(HUB_PAIR, tmp_path / "elsewhere")
    same = build_encoder.target(
        {"config": EncoderConfig(**hub_encoder(tmp_path / "elsewhere")), "store_root": store}
    )
    assert same.ref == ref and same.complete


def test_train_every_freeze_and_pooling_on_the_pair(
    trained: dict[str, tuple[ArtifactRef, dict[str, str]]],
) -> None:
    for name, (ref, states) in trained.items():
        metrics = json.loads((ref.path / "metrics.json").read_text())
        assert metrics["epochs_run"] == 1, name
        assert sum(map(sum, metrics["test"]["confusion_matrix"])) == metrics["test"]["rows"]
        assert json.loads((ref.path / "classifier.json").read_text())["encoder_key"]
        # A frozen encoder trains on cached features; fine-tuning runs end to end without them.
        assert ("encode-features" in states) == name.startswith("frozen"), name


def test_export_of_the_fine_tuned_pair_verifies_and_serves(
    models: dict[str, ArtifactRef], dataset: ArtifactRef, store: str
) -> None:
    exported = export(classifier=models["fine-tuned-mean"], dataset=dataset, store_root=store)
    manifest = ArtifactStore(store).validate(exported)
    assert max(manifest.metrics["max_abs_diff"].values()) <= 1e-5  # checked in a fresh process
    assert manifest.metrics["encoder"]["num_layers"] == 2
    saved = tf.saved_model.load(str(exported.path / "saved_model"))
    assert int(saved.seq_length.numpy()) == SEQ_LENGTH
    long_text = tf.constant(["word " * 500])
    assert saved.signatures["encode"](text=long_text)["layer_1_mean"].shape == (1, 64)
    assert saved.signatures["embed"](text=long_text)["embedding"].shape == (1, 16)
    # Its encoder trained: chunking would need the export to window texts, so it is refused.
    chunk = EmbeddingChoice(long_text="chunk")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="long_text: chunk runs an encoder artifact window"):
        check_choice_for_model(ArtifactStore(store), exported, chunk)


def test_embed_any_layer_and_pooling_of_the_bare_pair(
    dataset: ArtifactRef, store: str, dask_cluster: str
) -> None:
    runner = {"dask_address": dask_cluster}
    single = EmbedConfig.model_validate(
        {
            "encoder": hub_encoder(HUB_PAIR),
            "embedding": {"layers": [0], "pooling": "cls"},
            "runner": runner,
        }
    )
    grid = EmbedConfig.model_validate(
        {
            "encoder": hub_encoder(HUB_PAIR),
            "embedding": {"source": "all_choices"},
            "runner": runner,
        }
    )
    single_vectors = embedded(embed(single, dataset, store_root=store), store)
    grid_ref = embed(grid, dataset, store_root=store)
    blocks = ArtifactStore(store).validate(grid_ref).metrics["choice_blocks"]
    assert [b["name"] for b in blocks] == encoder_choice_names(2)
    assert {b["dim"] for b in blocks} == {64}
    names = [b["name"] for b in blocks]
    start = names.index("layer_0_cls") * 64
    np.testing.assert_allclose(
        embedded(grid_ref, store)[:, start : start + 64], single_vectors, atol=1e-5
    )


def test_probe_and_cluster_on_the_pair(
    corpus_slice: Path, models: dict[str, ArtifactRef], dataset: ArtifactRef, store: str,
    dask_cluster: str,
) -> None:  # fmt: skip
    config = ProbeConfig.model_validate(
        {
            "ingest": {
                "source": str(corpus_slice),
                "text_format": "email",
                "text_column": "raw",
                "shard_rows": 100,
            },
            "encoder": hub_encoder(HUB_PAIR),
            "runner": {"dask_address": dask_cluster},
        }
    )
    scores = json.loads((probe(config=config, store_root=store).path / "scores.json").read_text())
    # 2 layers x (cls, mean, max) and the pooler (placed at the last layer).
    assert len(scores) == len(encoder_choice_names(2)) == 7
    assert {row["layer"] for row in scores} == {0, 1}
    embed_config = EmbedConfig.model_validate(
        {"encoder": hub_encoder(HUB_PAIR), "runner": {"dask_address": dask_cluster}}
    )
    embeddings = embed(embed_config, dataset, store_root=store)
    clusters = cluster(config=ClusterConfig(k=2), embeddings=embeddings, store_root=store)
    assert ArtifactStore(store).validate(clusters).metrics["clusters"] == 2


def test_handles_resolve_through_the_tfhub_cache(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `hub.KerasLayer(handle)` finds in TFHUB_CACHE_DIR, the config's handles find too;
    nothing is downloaded."""
    cache = tmp_path / "tfhub-cache"
    handles = {
        "hub_preprocessor": "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3",
        "hub_encoder": "https://www.kaggle.com/models/tensorflow/bert/TensorFlow2/tiny/1",
    }
    for part, handle in zip(("preprocessor", "encoder"), handles.values(), strict=True):
        shutil.copytree(HUB_PAIR / part, cache / hashlib.sha1(handle.encode()).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    by_handle = EncoderConfig(**handles, seq_length=SEQ_LENGTH)
    by_folder = EncoderConfig(**hub_encoder(HUB_PAIR))
    assert (
        build_encoder.target({"config": by_handle, "store_root": store}).ref
        == build_encoder.target({"config": by_folder, "store_root": store}).ref
    )
    # Not in the cache, and its server (a closed port on this machine) does not answer.
    with pytest.raises(HubPairError, match=r"encoder\.hub_encoder: handle .* does not resolve"):
        resolve_handle("https://127.0.0.1:9/models/bert/1", "hub_encoder")


def rescale_weights(encoder: Path, factor: float) -> None:
    """Rewrite a SavedModel's variables in place, every float scaled by `factor` (new weights,
    same files, same path)."""
    prefix = str(encoder / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_dtype_map())
    values = [reader.get_tensor(name) for name in names]
    values = [v * factor if np.issubdtype(np.asarray(v).dtype, np.floating) else v for v in values]
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(v) for v in values],
    )


def test_new_weights_at_the_same_path_give_new_keys_and_a_moved_folder_breaks_nothing(
    dataset: ArtifactRef, store: str, tmp_path: Path
) -> None:
    folder = tmp_path / "my-bert"
    shutil.copytree(HUB_PAIR, folder)
    config = train_config(folder)
    first = train(config=config, dataset=dataset, store_root=store, return_state=True)
    rescale_weights(folder / "encoder", 1.5)
    second = train(config=config, dataset=dataset, store_root=store, return_state=True)
    states = task_run_states(second)
    assert states["build-encoder"] == "Completed" and states["encode-features"] == "Completed"
    assert second.result().key != first.result().key

    # Move the user's folder away: the model artifact needs nothing from it, and the same
    # bytes at the new place are the same encoder, so nothing is recomputed (only the config
    # check runs again: its config names the new path).
    moved = tmp_path / "moved-bert"
    folder.rename(moved)
    exported = export(classifier=second.result(), dataset=dataset, store_root=store)
    assert ArtifactStore(store).validate(exported) is not None
    again = train(config=train_config(moved), dataset=dataset, store_root=store, return_state=True)
    assert again.result() == second.result()
    states = task_run_states(again)
    assert {states[t] for t in ("build-encoder", "train-classifier")} == {"Cached"}
    assert "encode-features" not in states  # the classifier is complete: no features needed


BAD_INPUTS = {
    "missing": (
        "train",
        {"encoder": hub_encoder(HUB_PAIR) | {"hub_encoder": "/no/such/bert"}},
        ["encoder.hub_encoder", "not an existing folder"],
    ),
    "swapped": (
        "train",
        {"encoder": hub_encoder(HUB_PAIR) | {"hub_preprocessor": str(HUB_PAIR / "encoder")}},
        ["encoder.hub_preprocessor", "not a TF-Hub BERT preprocessor"],
    ),
    "layer": (
        "embed",
        {"encoder": hub_encoder(HUB_PAIR), "embedding": {"layers": [5]}},
        ["embedding.layers: [5] outside the encoder's 2 layers"],
    ),
    "stride": (
        "embed",
        {"encoder": hub_encoder(HUB_PAIR), "embedding": {"long_text": "chunk", "chunk_stride": 99}},
        ["embedding.chunk_stride: 99 is more than a window (62 tokens at seq_length 64)"],
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_handles_interfaces_and_layers_are_one_error_line(
    case: str, dataset: ArtifactRef, store: str, tmp_path: Path
) -> None:
    command, content, expected = BAD_INPUTS[case]
    config = tmp_path / f"{case}.yaml"
    config.write_text(yaml.safe_dump(content))
    result = run_cli("--store", store, command, "--config", str(config), "--dataset", dataset.uri)
    assert result.returncode == 2, result.stderr[-2000:]
    # Prefect's own log lines may follow it (an events worker flushing at exit).
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for text in expected:
        assert text in errors[0]


def test_long_texts_chunk_through_the_pairs_own_packer(store: str) -> None:
    ref = build_encoder_flow(config=EncoderConfig(**hub_encoder(HUB_PAIR)), store_root=store)
    loaded = LoadedEncoder.load(EncoderPair(ref.path))
    chunk = EncoderPass(long_text="chunk")  # type: ignore[arg-type]
    window = SEQ_LENGTH - 2
    # "the" is one wordpiece of the pair's vocabulary: two full windows and one of 10 tokens.
    texts = ["the " * (2 * window + 10), "the cat"]
    names = ("layer_1_mean",)
    vectors, tokens = ChoiceEncoder(loaded, names, chunk).encode(texts)
    cut, _ = ChoiceEncoder(loaded, names).encode(["the " * window, "the " * 10, "the cat"])
    assert tokens[0] == 2 * window + 12
    full, tail = SEQ_LENGTH, 12
    expected = (2 * full * cut[names[0]][0] + tail * cut[names[0]][1]) / (2 * full + tail)
    np.testing.assert_allclose(vectors[names[0]][0], expected, atol=1e-5)
    np.testing.assert_allclose(vectors[names[0]][1], cut[names[0]][2], atol=1e-5)
