"""Training tasks: check the config against data and encoder, cache pooled encoder features when the
encoder is frozen, train and evaluate the classifier, and publish its metrics to Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from penultimate.artifacts import ArtifactRef, ArtifactStore, Manifest
from penultimate.classifier_report import classifier_report_markdown, score_table
from penultimate.config import TrainConfig
from penultimate.dropout_report import DROPOUT_REPORT_DIR, dropout_report_markdown
from penultimate.encoders.pair import EncoderPair
from penultimate.errors import InputError
from penultimate.ingest import read_dataset
from penultimate.shard_features import DEFAULT_PASS, features_key, pooling_names
from penultimate.stages import CLASSIFIER_STAGE, FEATURES_STAGE
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
        "%s; encoder: %d layers, hidden size %d",
        named_labels(labels.names),
        info.num_layers,
        info.hidden_size,
    )
    return labels.names


def named_labels(names: list[str], shown: int = 8) -> str:
    """`2 labels: ham, spam`; past `shown` names, the first ones, `...` and the last."""
    if len(names) <= shown:
        return f"{len(names)} labels: {', '.join(names)}"
    return f"{len(names)} labels: {', '.join(names[: shown - 1])}, ..., {names[-1]}"


def features_identity(params: Mapping[str, Any]) -> tuple[dict[str, str], list[ArtifactRef]]:
    info = EncoderPair(params["encoder"].path).read_info()
    key = features_key(params["names"], params["shard_sha256"], DEFAULT_PASS, info.num_layers)
    return key, [params["encoder"]]


@artifact_task(FEATURES_STAGE, identity=features_identity, name="encode-features")
def encode_features(
    out: Path,
    encoder: ArtifactRef,
    shard: str,
    shard_sha256: str,
    names: list[str],
    store_root: str,
) -> dict[str, Any]:
    """One dataset shard's encoder features (the pooled vectors the head trains on): copied from
    the shard's every-choice features when a probe made them, else one encoder pass."""
    from penultimate.features import fill_shard_features

    metrics = fill_shard_features(
        out, ArtifactStore(store_root), encoder, Path(shard), shard_sha256, names
    )
    get_run_logger().info(
        "%s: %d rows, %d through the encoder",
        Path(shard).name,
        metrics["rows"],
        metrics["encoded_texts"],
    )
    return metrics


def training_feature_names(config: TrainConfig, encoder: ArtifactRef) -> list[str]:
    """The (layer, pooling) vectors a frozen-encoder classifier trains on, e.g. `["layer_5_mean"]`
    (two, side by side, for `mean_max`)."""
    layers = EncoderPair(encoder.path).read_info().num_layers
    return pooling_names(config.layer, str(config.pooling), layers)


def classifier_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: TrainConfig = params["config"]
    # The encoder section only says where the encoder came from (a path, a handle); the encoder
    # artifact's key, an input, says what it is. The features are a function of the dataset,
    # the encoder and the config, so they are not inputs of the key.
    key = config.model_dump(mode="json", exclude={"encoder"})
    return key, [params["dataset"], params["encoder"]]


def _show_reports(ref: ArtifactRef, manifest: Manifest, params: Mapping[str, Any]) -> None:
    store_root = Path(params["store_root"])
    create_markdown_artifact(
        key="dropout-report",
        markdown=dropout_report_markdown(
            ref.path / DROPOUT_REPORT_DIR, store_root, f"classifier `{ref.key}`"
        ),
        description="What each dropout mask drops, which layers dropout moves, and the served "
        "embedding against dropout's",
    )
    test = manifest.metrics.get("test")
    if not test:
        return
    create_table_artifact(
        key="classifier-test-metrics",
        table=score_table(test),
        description=f"Test-split metrics of classifier {ref.key}",
    )
    create_markdown_artifact(
        key="classifier-report",
        markdown=classifier_report_markdown(ref, manifest.metrics, store_root),
        description="Test metrics, calibration and MC dropout, top confusions, confusion matrix",
    )


@artifact_task(
    CLASSIFIER_STAGE,
    identity=classifier_identity,
    report=_show_reports,
    name="train-classifier",
)
def train_classifier(
    out: Path,
    config: TrainConfig,
    dataset: ArtifactRef,
    encoder: ArtifactRef,
    features: list[ArtifactRef] | None,
    labels: list[str],
    store_root: str,
) -> dict[str, Any]:
    """Train and evaluate; the classifier artifact holds weights, history, metrics and plots."""
    from penultimate.features import load_encoder
    from penultimate.train import (
        LabelSpace,
        fit_classifier,
        split_features,
        write_classifier_info,
    )

    pair = EncoderPair(encoder.path)
    loaded = load_encoder(pair)
    frame = read_dataset(dataset)
    label_space = LabelSpace(labels)
    names = training_feature_names(config, encoder)
    x = split_features(frame, features, names) if features else None
    metrics = fit_classifier(
        config, frame, label_space, pair, loaded, out, x, get_run_logger().info
    )
    write_classifier_info(out, config, label_space, encoder)
    return {**metrics, "features": [ref.key for ref in features or []]}
