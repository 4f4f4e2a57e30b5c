"""The train flow: dataset artifact -> trained classifier artifact (weights, metrics, plots).

Run with `penultimate train [--config FILE] [--dataset URI]` or as the `train` deployment.
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import TrainConfig
from penultimate.ingest import dataset_shard_entries
from penultimate.stages import DATASET_STAGE
from tasks.encoder import build_encoder
from tasks.train import (
    check_training_inputs,
    encode_features,
    train_classifier,
    training_feature_names,
)

DEFAULT_TRAIN = TrainConfig()


@flow(name="train", log_prints=True)
def train(
    config: TrainConfig = DEFAULT_TRAIN,
    dataset: ArtifactRef | None = None,
    store_root: str | None = None,
) -> ArtifactRef:
    """Build or import the encoder (cached), check inputs, reuse or cache per-shard features if
    the encoder is frozen, train and evaluate.

    Args:
        config: The classifier and how it trains (default: every field's default).
        dataset: The dataset artifact folder (default: the store's newest dataset).
        store_root: The artifact store (default: $PENULTIMATE_HOME, else ./artifacts).
    """
    store = ArtifactStore(store_root)
    root = str(store.root)
    dataset = store.input_artifact(dataset, DATASET_STAGE, made_by="ingest")
    encoder = build_encoder(config=config.encoder, store_root=root)
    labels = check_training_inputs(config=config, dataset=dataset, encoder=encoder)
    params = {"config": config, "dataset": dataset, "encoder": encoder, "store_root": root}
    target = train_classifier.target(params)
    features = None
    # A complete classifier needs no features: a cached rerun runs no per-shard task.
    if config.uses_feature_cache and not target.complete:
        names = training_feature_names(config, encoder)
        features = [
            encode_features(
                encoder=encoder, shard=shard, shard_sha256=sha, names=names, store_root=root
            )
            for shard, sha in dataset_shard_entries(ArtifactStore(root), dataset)
        ]
    return train_classifier(target=target, **params, features=features, labels=labels)
