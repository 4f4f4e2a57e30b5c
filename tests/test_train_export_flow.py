"""Train and export flows against a real Prefect server, the real encoder and a corpus slice:
artifacts, caching (incl. the shared feature cache), fine-tuning, and the exported SavedModel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import prefect_artifact_keys, run_cli, task_run_states
from flows.export import export
from flows.ingest import ingest
from flows.train import train
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import ExportConfig, IngestConfig, TrainConfig
from penultimate.dropout_report import explained_artifacts
from penultimate.explain_dropout import explain_classifier_artifact
from penultimate.features import encoder_choice_names
from penultimate.train import TrainedClassifier

pytestmark = pytest.mark.usefixtures("prefect_api")

NO_DROPOUT = TrainConfig.model_validate({"epochs": 2, "dropout": [{"at": "head", "rate": 0.0}]})
WITH_DROPOUT = TrainConfig.model_validate(
    {
        "epochs": 2,
        "hidden": [{"units": 32}],
        "dropout": [
            {"at": "pooled", "rate": 0.2, "mask": "batch_shared"},
            {"at": "head", "rate": 0.5, "columns": [0, 1, 2, 3]},
        ],
    }
)


@pytest.fixture(scope="module")
def store(encoder_store: str, minilm_pair: Path) -> str:
    return encoder_store  # the session's store, where the built-in encoder already is


@pytest.fixture(scope="module")
def dataset(corpus_slice: Path, store: str, prefect_api: str) -> ArtifactRef:
    config = IngestConfig(source=str(corpus_slice), text_format="email", text_column="raw")
    return ingest(config=config, store_root=store)


def run_train(config: TrainConfig, dataset: ArtifactRef, store: str) -> tuple[ArtifactRef, dict]:
    state = train(config=config, dataset=dataset, store_root=store, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), task_run_states(state)


@pytest.fixture(scope="module")
def plain_model(dataset: ArtifactRef, store: str) -> ArtifactRef:
    return run_train(NO_DROPOUT, dataset, store)[0]


def test_model_artifact_holds_weights_metrics_plots_and_logs(
    plain_model: ArtifactRef, prefect_api: str
) -> None:
    files = {
        f.path for f in ArtifactStore(plain_model.path.parent.parent).validate(plain_model).files
    }
    assert {"classifier.json", "history.json", "metrics.json", "confusion_matrix.png"} <= files
    assert any(f.startswith("weights/") for f in files)
    metrics = json.loads((plain_model.path / "metrics.json").read_text())
    run = metrics["tensorboard_run"]
    assert run.startswith("freeze-all_pool-mean_drop-head0_")
    assert any(f.startswith(f"tensorboard/{run}/validation/") for f in files)
    test = metrics["test"]
    assert 0.5 <= test["accuracy"] <= 1 and 0 <= test["f1"] <= 1 and 0.5 <= test["roc_auc"] <= 1
    assert sum(map(sum, test["confusion_matrix"])) == test["rows"]
    wrong = test["rows"] - sum(test["confusion_matrix"][i][i] for i in range(2))
    assert sum(c["count"] for c in test["top_confusions"]) == wrong  # both off-diagonal cells
    assert {"classifier-test-metrics", "classifier-report", "dropout-report"} <= (
        prefect_artifact_keys(prefect_api)
    )


def test_every_classifier_holds_its_dropout_and_uncertainty_reports(
    plain_model: ArtifactRef,
) -> None:
    files = {
        f.path for f in ArtifactStore(plain_model.path.parent.parent).validate(plain_model).files
    }
    expected = {"dropout_report/report.json", "dropout_report/mask_dropout_0_head.png"}
    expected |= {
        f"uncertainty/{n}" for n in ("report.json", "reliability.png", "risk_coverage.png")
    }
    assert expected <= files
    metrics = json.loads((plain_model.path / "metrics.json").read_text())
    # NO_DROPOUT keeps one head dropout at rate 0: nothing dropped, MC is the plain prediction.
    assert metrics["dropout"]["masks"]["dropout_0_head"]["observed_drop_fraction"] == 0.0
    uncertainty = json.loads((plain_model.path / "uncertainty" / "report.json").read_text())
    assert uncertainty["mc_dropout_layers"] == ["dropout_0_head"]
    assert set(uncertainty["mc"]) == {"10", "30", "100"}
    assert uncertainty["mc"]["100"]["accuracy"] == uncertainty["max_softmax"]["accuracy"]
    assert metrics["uncertainty"]["ece"] == uncertainty["max_softmax"]["ece"]
    assert {"encoder_block_0", "encoder_embeddings"} <= set(metrics["dropout"]["unchanged_layers"])
    assert "logits" in metrics["dropout"]["changed_layers"]


def test_rerun_is_cached_and_other_head_reuses_the_feature_cache(
    plain_model: ArtifactRef, dataset: ArtifactRef, store: str
) -> None:
    again, states = run_train(NO_DROPOUT, dataset, store)
    assert again == plain_model
    # The classifier is complete: no features task runs at all.
    assert states["train-classifier"] == "Cached" and "encode-features" not in states
    other, states = run_train(WITH_DROPOUT, dataset, store)
    assert other.key != plain_model.key
    assert states["encode-features"] == "Cached"  # same dataset, encoder, layer and pooling
    assert states["train-classifier"] == "Completed"


@pytest.fixture(scope="module")
def exported(dataset: ArtifactRef, store: str) -> tuple[ArtifactRef, ArtifactRef]:
    """The dropout model (hidden layer, pooled and head dropout) and its export."""
    model, _ = run_train(WITH_DROPOUT, dataset, store)  # trained by the feature-cache test
    check = ExportConfig(verify_texts=8)  # the export check's fewest texts, its every check
    return model, export(classifier=model, dataset=dataset, config=check, store_root=store)


def test_explain_dropout_reads_the_classifier_behind_an_export(
    exported: tuple[ArtifactRef, ArtifactRef], tmp_path: Path
) -> None:
    _, export_ref = exported
    out = tmp_path / "report"
    result = run_cli("explain-dropout", "--classifier", export_ref.uri, "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pooled = next(line for line in lines if line.startswith("dropout_0_pooled (batch_shared"))
    assert "within" in pooled and pooled.endswith("one draw shared along samples")
    assert any(line.startswith("bit-identical after it: encoder_embeddings") for line in lines)
    assert lines[-1].startswith(f"report: {out / 'report.md'}")
    report = json.loads((out / "report.json").read_text())
    assert [m["layer"] for m in report["masks"]] == ["dropout_0_pooled", "dropout_1_head"]
    assert (out / "mask_dropout_1_head.png").stat().st_size > 5_000
    assert "data:image/png;base64," in (out / "report.md").read_text()
    # A rerun (the library function the command calls, in this process) replaces the report
    # whole and leaves no staging folder beside it.
    (out / "stale.png").write_bytes(b"from an earlier run")
    assert explain_classifier_artifact(*explained_artifacts(export_ref.uri), out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert not (out / "stale.png").exists()
    rewritten = json.loads((out / "report.json").read_text())
    assert [m["layer"] for m in rewritten["masks"]] == ["dropout_0_pooled", "dropout_1_head"]
    wrong = run_cli("explain-dropout", "--classifier", str(export_ref.path.parent))
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: ")


def test_exported_model_serves_predictions_embeddings_layers_and_mc(
    exported: tuple[ArtifactRef, ArtifactRef], store: str
) -> None:
    model, export_ref = exported
    masks = json.loads((model.path / "metrics.json").read_text())["dropout"]["masks"]
    assert set(masks) == {"dropout_0_pooled", "dropout_1_head"}
    assert all(m["within_bound"] for m in masks.values())
    assert masks["dropout_0_pooled"]["shared_along"] == ["samples"]  # batch_shared
    manifest = ArtifactStore(store).validate(export_ref)
    assert max(manifest.metrics["max_abs_diff"].values()) <= 1e-5  # checked in a fresh process
    assert set(manifest.metrics["signatures"]) == {
        "serving_default",
        "embed",
        "encode",
        "predict_mc",
    }

    saved = tf.saved_model.load(str(export_ref.path / "saved_model"))
    texts = tf.constant(["Cheap meds, click now!!!", "Minutes of Tuesday's meeting attached."])
    serve = saved.signatures["serving_default"]
    served = serve(text=texts)["probabilities"].numpy()
    np.testing.assert_array_equal(served, serve(text=texts)["probabilities"].numpy())
    mc = saved.signatures["predict_mc"](text=texts, samples=tf.constant(16))
    assert mc["std"].numpy().max() > 0  # the dropout layers sample; serving stays deterministic
    assert np.abs(mc["mean"].numpy() - served).max() < 0.5
    # Per text: predictive entropy of the mean, and the share of it the draws disagree on.
    mean = mc["mean"].numpy()
    np.testing.assert_allclose(
        mc["entropy"].numpy(), -(mean * np.log(np.maximum(mean, 1e-30))).sum(1), atol=1e-5
    )
    information = mc["mutual_information"].numpy()
    assert information.shape == (2,) and (information >= 0).all() and information.max() > 0
    assert (information <= mc["entropy"].numpy() + 1e-6).all()
    encoded = saved.signatures["encode"](text=texts)
    assert sorted(encoded) == sorted([*encoder_choice_names(6), "penultimate"])
    np.testing.assert_allclose(
        encoded["penultimate"].numpy(),
        saved.signatures["embed"](text=texts)["embedding"].numpy(),
        atol=1e-6,
    )
    trained = TrainedClassifier.load(model.path)
    np.testing.assert_allclose(
        saved.signatures["embed"](text=texts)["embedding"].numpy(),
        trained.model.embed(trained.loaded.tokenize(texts.numpy().astype(str).tolist())).numpy(),
        atol=1e-5,
    )


def test_exported_embedder_matches_the_bare_encoder_and_embed_signature(
    exported: tuple[ArtifactRef, ArtifactRef], minilm_pair: Path
) -> None:
    from penultimate.config import EmbeddingChoice
    from penultimate.embed import EncoderEmbedder, ExportedEmbedder
    from penultimate.encoders.pair import EncoderPair
    from penultimate.features import LoadedEncoder

    saved = exported[1].path / "saved_model"
    texts = ["short", "", "a much longer text about a meeting on Tuesday at noon, bring notes"]
    pair = EncoderPair(minilm_pair)
    bare = EncoderEmbedder(LoadedEncoder.load(pair), EmbeddingChoice())
    # freeze: all, so the exported encoder is the built-in one, bit for bit.
    np.testing.assert_allclose(
        ExportedEmbedder(saved, EmbeddingChoice()).embed(texts), bare.embed(texts), atol=1e-5
    )
    layered = EmbeddingChoice(
        layers=[-3, -1], combine="concat", pooling="mean_max", normalize=False
    )
    assert ExportedEmbedder(saved, layered).embed(texts).shape == (3, 4 * 384)
    penultimate = EmbeddingChoice(source="penultimate", normalize=False)
    model = tf.saved_model.load(str(saved))
    np.testing.assert_allclose(
        ExportedEmbedder(saved, penultimate).embed(texts),
        model.signatures["embed"](text=tf.constant(texts))["embedding"].numpy(),
        atol=1e-6,
    )
    grid = ExportedEmbedder(saved, EmbeddingChoice(source="all_choices", normalize=False))
    blocks = grid.choice_blocks
    assert [b["name"] for b in blocks] == [*encoder_choice_names(6), "penultimate"]
    vectors = grid.embed(texts)
    assert vectors.shape == (3, sum(b["dim"] for b in blocks))
    np.testing.assert_allclose(
        vectors[:, -blocks[-1]["dim"] :],
        ExportedEmbedder(saved, penultimate).embed(texts),
        atol=1e-6,
    )


@pytest.mark.parametrize("source", ["penultimate", "all_choices", "encoder"])
def test_a_frozen_classifier_embeds_from_cached_features_as_its_export_does(
    exported: tuple[ArtifactRef, ArtifactRef], dataset: ArtifactRef, store: str, source: str
) -> None:
    from penultimate.config import EmbeddingChoice
    from penultimate.embed import ExportedEmbedder, FeatureEmbedder, load_embedder
    from penultimate.ingest import dataset_shard_entries
    from penultimate.shard_features import read_shard

    _, export_ref = exported
    choice = EmbeddingChoice(source=source, normalize=source != "penultimate")
    embedder = load_embedder("export", export_ref.uri, choice.model_dump_json(), 64, 1)
    # freeze: all and the encoder artifact in the store: no pass through the exported model.
    assert isinstance(embedder, FeatureEmbedder)
    exported_pass = ExportedEmbedder(export_ref.path / "saved_model", choice)
    assert embedder.choice_blocks == exported_pass.choice_blocks
    shard, sha = dataset_shard_entries(ArtifactStore(store), dataset)[0]
    frame = read_shard(Path(shard), ["test", "val"])
    from_features = embedder.embed_shard(frame, Path(shard), sha)
    from_export = exported_pass.embed_shard(frame, Path(shard), sha)
    # Made from a features artifact of the classifier's encoder (training's, for `encoder`).
    assert from_features.features is not None and from_export.features is None
    np.testing.assert_allclose(from_features.vectors, from_export.vectors, atol=2e-5)
    np.testing.assert_array_equal(from_features.tokens, from_export.tokens)
