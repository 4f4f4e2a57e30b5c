"""Training tasks: check the config against data and encoder, cache pooled encoder features when the
encoder is frozen, train and evaluate the classifier, and publish its metrics to Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import TrainConfig
from penultimate.encoders.bert_convert import EncoderPair
from penultimate.features import LoadedEncoder
from penultimate.ingest import read_dataset
from penultimate.train import (
    FEATURES_STAGE,
    MODEL_STAGE,
    EncoderPaths,
    EncoderShape,
    LabelSpace,
    compute_features,
    train_classifier,
    validate_training_inputs,
    write_classifier_info,
)
from tasks.caching import artifact_task


def encoder_paths(config: TrainConfig, encoder: ArtifactRef | None) -> EncoderPaths:
    if encoder is None:
        assert config.hub_preprocessor and config.hub_encoder
        return EncoderPaths(config.hub_preprocessor, config.hub_encoder)
    pair = EncoderPair(encoder.path)
    return EncoderPaths(str(pair.preprocessor), str(pair.encoder))


# A pure function of its inputs (artifact keys are content hashes), so its answer is cached too.
@task(name="check-training-inputs", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def check_training_inputs(
    config: TrainConfig, dataset: ArtifactRef, encoder: ArtifactRef | None
) -> list[str]:
    """Validate the config against the dataset and the encoder before any compute; the labels."""
    paths = encoder_paths(config, encoder)
    shape = EncoderShape.probe(LoadedEncoder.load(paths.preprocessor, paths.encoder))
    labels = validate_training_inputs(config, dataset, read_dataset(dataset), shape)
    logger = get_run_logger()
    logger.info("labels %s; encoder %s", labels.names, shape)
    if config.hub_encoder:
        logger.warning(
            "third-party encoder %s: its baked-in dropout rate applies when fine-tuning; "
            "encoder.hidden_dropout/attention_dropout are ignored",
            config.hub_encoder,
        )
    return labels.names


def features_identity(params: dict[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: TrainConfig = params["config"]
    inputs = [r for r in (params["dataset"], params["encoder"]) if r is not None]
    key = {
        "layer": config.layer,
        "pooling": str(config.pooling),
        "hub": [config.hub_preprocessor, config.hub_encoder],
    }
    return key, inputs


@artifact_task(FEATURES_STAGE, identity=features_identity, name="encode-features")
def encode_features(
    config: TrainConfig, dataset: ArtifactRef, encoder: ArtifactRef | None, store_root: str
) -> ArtifactRef:
    """Pooled encoder features of every split, computed once per dataset, encoder and pooling."""
    paths = encoder_paths(config, encoder)
    loaded = LoadedEncoder.load(paths.preprocessor, paths.encoder)
    frame = read_dataset(dataset)
    get_run_logger().info("encoding %d texts once for head-only training", frame.height)
    key, inputs = features_identity({"config": config, "dataset": dataset, "encoder": encoder})
    return ArtifactStore(store_root).publish(
        FEATURES_STAGE, key, lambda out: compute_features(loaded, frame, config, out), inputs
    )


@artifact_task(MODEL_STAGE, name="train-classifier")
def train_model(
    config: TrainConfig,
    dataset: ArtifactRef,
    encoder: ArtifactRef | None,
    features: ArtifactRef | None,
    labels: list[str],
    store_root: str,
) -> ArtifactRef:
    """Train and evaluate; the model artifact holds weights, history, metrics and plots."""
    logger = get_run_logger()
    paths = encoder_paths(config, encoder)
    loaded = LoadedEncoder.load(paths.preprocessor, paths.encoder)
    shape = EncoderShape.probe(loaded)
    frame = read_dataset(dataset)
    label_space = LabelSpace(labels)

    def write(out: Path) -> dict[str, Any]:
        metrics = train_classifier(
            config,
            frame,
            label_space,
            paths,
            loaded,
            shape,
            out,
            features.path if features else None,
            logger.info,
        )
        write_classifier_info(out, config, label_space, paths, shape)
        return metrics

    inputs = [r for r in (dataset, encoder, features) if r is not None]
    ref = ArtifactStore(store_root).publish(MODEL_STAGE, config, write, inputs)
    _publish_metrics(ref, ArtifactStore(store_root).read_manifest(ref).metrics)  # type: ignore[union-attr]
    return ref


def _publish_metrics(ref: ArtifactRef, metrics: dict[str, Any]) -> None:
    test = metrics.get("test")
    if not test:
        return
    names = ("accuracy", "precision", "recall", "f1", "roc_auc")
    create_table_artifact(
        key="classifier-test-metrics",
        table=[{"metric": n, "value": test[n]} for n in names],
        description=f"Test-split metrics of model {ref.key}",
    )
    matrix = "\n".join(
        f"| {name} | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(test["labels"], test["confusion_matrix"], strict=True)
    )
    create_markdown_artifact(
        key="classifier-report",
        markdown=(
            f"# Classifier `{ref.key}`\n\n- location: `{ref.uri}`\n- epochs run: "
            f"{metrics['epochs_run']}\n"
            + "".join(f"- {n}: {test[n]:.4f}\n" for n in names if test[n] is not None)
            + "\n| true \\ predicted | "
            + " | ".join(test["labels"])
            + " |\n|---|"
            + "---|" * len(test["labels"])
            + "\n"
            + matrix
            + "\n"
        ),
        description="Test metrics and confusion matrix",
    )
