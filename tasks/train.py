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
from penultimate.encoders.pair import EncoderPair
from penultimate.errors import InputError
from penultimate.ingest import read_dataset
from penultimate.stages import FEATURES_STAGE, MODEL_STAGE
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


# A pure function of its inputs (artifact keys are content hashes), so its answer is cached too.
@task(name="check-training-inputs", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def check_training_inputs(
    config: TrainConfig, dataset: ArtifactRef, encoder: ArtifactRef
) -> list[str]:
    """Validate the config against the dataset and the encoder before any compute; the labels."""
    from penultimate.train import validate_training_inputs

    info = EncoderPair(encoder.path).read_info()
    manifest = ArtifactStore(dataset.path.parent.parent).read_manifest(dataset)
    if manifest is None:
        raise InputError(f"dataset {dataset.uri} is not a complete artifact")
    label_counts = manifest.metrics.get("label_counts_per_split")
    labels = validate_training_inputs(config, dataset, label_counts, info)
    get_run_logger().info(
        "labels %s; encoder: %d layers, hidden size %d",
        labels.names,
        info.num_layers,
        info.hidden_size,
    )
    return labels.names


def features_identity(params: dict[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: TrainConfig = params["config"]
    return {"layer": config.layer, "pooling": str(config.pooling)}, [
        params["dataset"],
        params["encoder"],
    ]


@artifact_task(FEATURES_STAGE, identity=features_identity, name="encode-features")
def encode_features(
    config: TrainConfig, dataset: ArtifactRef, encoder: ArtifactRef, store_root: str
) -> ArtifactRef:
    """Pooled encoder features of every split, computed once per dataset, encoder and pooling."""
    from penultimate.features import load_encoder
    from penultimate.train import compute_features

    loaded = load_encoder(EncoderPair(encoder.path))
    frame = read_dataset(dataset)
    get_run_logger().info("encoding %d texts once for head-only training", frame.height)
    key, inputs = features_identity({"config": config, "dataset": dataset, "encoder": encoder})
    return ArtifactStore(store_root).publish(
        FEATURES_STAGE, key, lambda out: compute_features(loaded, frame, config, out), inputs
    )


def model_identity(params: dict[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: TrainConfig = params["config"]
    # The encoder section only says where the encoder came from (a path, a handle); the encoder
    # artifact's key, an input, says what it is.
    key = config.model_dump(mode="json", exclude={"encoder"})
    inputs = [r for r in (params["dataset"], params["encoder"], params["features"]) if r]
    return key, inputs


@artifact_task(MODEL_STAGE, identity=model_identity, name="train-classifier")
def train_model(
    config: TrainConfig,
    dataset: ArtifactRef,
    encoder: ArtifactRef,
    features: ArtifactRef | None,
    labels: list[str],
    store_root: str,
) -> ArtifactRef:
    """Train and evaluate; the model artifact holds weights, history, metrics and plots."""
    from penultimate.features import load_encoder
    from penultimate.train import LabelSpace, train_classifier, write_classifier_info

    logger = get_run_logger()
    pair = EncoderPair(encoder.path)
    loaded = load_encoder(pair)
    frame = read_dataset(dataset)
    label_space = LabelSpace(labels)

    def write(out: Path) -> dict[str, Any]:
        metrics = train_classifier(
            config,
            frame,
            label_space,
            pair,
            loaded,
            out,
            features.path if features else None,
            logger.info,
        )
        write_classifier_info(out, config, label_space, encoder)
        return metrics

    key, inputs = model_identity(
        {"config": config, "dataset": dataset, "encoder": encoder, "features": features}
    )
    ref = ArtifactStore(store_root).publish(MODEL_STAGE, key, write, inputs)
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
