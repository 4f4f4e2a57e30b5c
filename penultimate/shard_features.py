"""Encoder features per dataset shard, the one cache of encoder passes: a `features` artifact holds,
for every row of one shard, named (layer, pooling) vectors of one encoder and each text's tokens.

Training a frozen-encoder classifier, embedding and probing all read these instead of running the
encoder again (the reuse rules are in docs/DESIGN.md). TensorFlow-free: lookups never load a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EmbeddingChoice, EmbedSource, LayerCombine, Pooling
from penultimate.errors import InputError
from penultimate.stages import CLASSIFIER_STAGE, ENCODER_STAGE, FEATURES_STAGE

FEATURES_FILE = "features.parquet"
# Tokens per text with [CLS] and [SEP], before truncation to the encoder's seq_length.
TOKENS_COLUMN = "tokens"
ALL_CHOICES = "all"
TOKEN_POOLINGS = ("cls", "mean", "max")
PENULTIMATE_BLOCK = "penultimate"


class ShardError(InputError):
    """A shard that cannot be read or embedded; the message names the file."""


def encoder_choice_names(num_layers: int) -> list[str]:
    """Every (layer, pooling) choice of an encoder with `num_layers` layers, named as the exported
    `encode` signature names its outputs: `layer_<i>_<pooling>` per layer and token pooling, then
    `pooled` (the pooler output)."""
    return [f"layer_{i}_{p}" for i in range(num_layers) for p in TOKEN_POOLINGS] + ["pooled"]


def choice_name(layer: int, pooling: str, num_layers: int) -> str:
    """The name of one (layer, pooling) vector; negative layers count from the top."""
    if pooling == "pooled":
        return "pooled"
    return f"layer_{layer % num_layers}_{pooling}"


def pooling_names(layer: int, pooling: str, num_layers: int) -> list[str]:
    """The vectors one (layer, pooling) is made of, side by side: two for `mean_max`."""
    poolings = ("mean", "max") if pooling == Pooling.mean_max else (pooling,)
    return [choice_name(layer, str(p), num_layers) for p in poolings]


def choices_needed(choice: EmbeddingChoice, num_layers: int) -> list[str]:
    """The (layer, pooling) vectors an encoder embedding choice is made from, in block order."""
    if choice.source == EmbedSource.all_choices:
        return encoder_choice_names(num_layers)
    if choice.source == EmbedSource.penultimate:
        return []
    return [n for layer in choice.layers for n in pooling_names(layer, choice.pooling, num_layers)]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation with TensorFlow's epsilon (`tf.math.l2_normalize`)."""
    squared = np.maximum(np.sum(vectors * vectors, axis=-1, keepdims=True), 1e-12)
    return (vectors / np.sqrt(squared)).astype(np.float32)


def embedding_from_choices(
    choice: EmbeddingChoice, vectors: Mapping[str, np.ndarray], num_layers: int
) -> np.ndarray:
    """The embedding `choice` names, from its named vectors (see `choices_needed`; for
    `all_choices`, every vector given, in order, each normalised on its own)."""
    if choice.source == EmbedSource.all_choices:
        blocks = [l2_normalize(v) if choice.normalize else v for v in vectors.values()]
        return np.concatenate(blocks, axis=1).astype(np.float32)
    if choice.pooling == Pooling.pooled:
        vector = vectors["pooled"]
    else:
        per_layer = [
            side_by_side(vectors, pooling_names(i, choice.pooling, num_layers))
            for i in choice.layers
        ]
        if len(per_layer) == 1:
            vector = per_layer[0]
        elif choice.combine == LayerCombine.mean:
            vector = np.sum(per_layer, axis=0) / np.float32(len(per_layer))
        else:
            vector = np.concatenate(per_layer, axis=1)
    vector = vector.astype(np.float32)
    return l2_normalize(vector) if choice.normalize else vector


def side_by_side(vectors: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """The named [n, dim] vectors concatenated, in order."""
    if len(names) == 1:
        return vectors[names[0]]
    return np.concatenate([vectors[n] for n in names], axis=1)


def features_key(
    names: Sequence[str] | None, shard_sha256: str, precision: str, num_layers: int
) -> dict[str, str]:
    """The key config of a features artifact: which vectors (None or all of them = every choice
    of an encoder with `num_layers` layers), of which shard's content, at which encoder precision
    (the encoder is an input)."""
    every = names is None or set(names) >= set(encoder_choice_names(num_layers))
    chosen = ALL_CHOICES if every else ",".join(sorted(set(names or ())))
    return {"choices": chosen, "shard": shard_sha256, "precision": precision}


def covering_features(
    store: ArtifactStore,
    encoder: ArtifactRef,
    shard_sha256: str,
    names: Sequence[str],
    precision: str,
    num_layers: int,
) -> ArtifactRef | None:
    """A complete features artifact of this encoder and shard that holds every vector in `names`:
    the one for exactly these names, else the every-choice one (a probe's), else None."""
    key = features_key(names, shard_sha256, precision, num_layers)
    ref = store.ref_for(FEATURES_STAGE, key, [encoder])
    if store.validate(ref) is not None:
        return ref
    return every_choice_features(store, encoder, shard_sha256, precision)


def every_choice_features(
    store: ArtifactStore, encoder: ArtifactRef, shard_sha256: str, precision: str
) -> ArtifactRef | None:
    """The complete every-choice features artifact of this encoder and shard, if any."""
    ref = store.ref_for(FEATURES_STAGE, features_key(None, shard_sha256, precision, 0), [encoder])
    return ref if store.validate(ref) is not None else None


def read_shard(shard: Path, splits: Sequence[str] | None = None) -> pl.DataFrame:
    """A dataset shard's rows (those of `splits`, if given), checked; errors name the file."""
    try:
        frame = pl.read_parquet(shard)
    except Exception as error:
        raise ShardError(f"{shard}: cannot read as Parquet: {error}") from None
    missing = [c for c in ("id", "text") if c not in frame.columns]
    if missing:
        raise ShardError(f"{shard}: column(s) {missing} missing; it has {frame.columns}")
    if splits is not None and "split" in frame.columns:
        frame = frame.filter(pl.col("split").is_in(list(splits)))
    return frame.with_columns(pl.col("text").fill_null(""))


def write_features(
    path: Path, ids: pl.Series, tokens: np.ndarray, vectors: Mapping[str, np.ndarray]
) -> None:
    """`id`, `tokens` and one fixed-size float32 list column per named vector."""
    columns: dict[str, pa.Array] = {
        "id": ids.to_arrow(),
        TOKENS_COLUMN: pa.array(tokens.astype(np.int32)),
    }
    for name, matrix in vectors.items():
        values = pa.array(np.ascontiguousarray(matrix, np.float32).ravel())
        columns[name] = pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])
    pq.write_table(pa.table(columns), path, compression="zstd")


class ShardFeatures(NamedTuple):
    """Rows of a features artifact: their ids, token counts [n] and named vectors [n, dim]."""

    ids: list[str]
    tokens: np.ndarray
    vectors: dict[str, np.ndarray]


def read_features(
    ref: ArtifactRef, names: Sequence[str], ids: pl.Series | None = None
) -> ShardFeatures:
    """The named vectors of a features artifact, for the rows `ids` (in that order; every row,
    in shard order, if None)."""
    table = pq.read_table(ref.path / FEATURES_FILE, columns=["id", TOKENS_COLUMN, *names])
    stored = table.column("id").to_pylist()
    rows = None
    if ids is not None:
        position = {row_id: i for i, row_id in enumerate(stored)}
        rows = np.fromiter((position[i] for i in ids.to_list()), np.int64, len(ids))
    tokens = table.column(TOKENS_COLUMN).to_numpy()
    vectors = {}
    for name in names:
        column = table.column(name).combine_chunks()
        matrix = column.values.to_numpy().reshape(len(column), column.type.list_size)
        vectors[name] = matrix if rows is None else matrix[rows]
    if rows is None:
        return ShardFeatures(stored, tokens, vectors)
    return ShardFeatures(ids.to_list(), tokens[rows], vectors)  # type: ignore[union-attr]


def frozen_classifier_parts(
    store: ArtifactStore, export: ArtifactRef
) -> tuple[ArtifactRef, ArtifactRef, list[str]] | None:
    """(classifier, encoder, the head's input vectors) of an exported classifier whose encoder did
    not train and whose encoder artifact is in `store`, else None: its embeddings can then come
    from that encoder's cached features and the head, with no pass through the export."""
    manifest = store.read_manifest(export)
    if manifest is None:
        return None
    model_input = next((i for i in manifest.inputs if i.stage == CLASSIFIER_STAGE.name), None)
    if model_input is None:
        return None
    model = store.resolve(model_input)
    try:
        info = json.loads((model.path / "classifier.json").read_text())
    except OSError:
        return None
    train = info["train_config"]
    encoder = store.ref(ENCODER_STAGE, info["encoder_key"])
    encoder_manifest = store.read_manifest(encoder)
    if train.get("freeze") != "all" or encoder_manifest is None:
        return None
    num_layers = int(encoder_manifest.metrics["num_layers"])
    return model, encoder, pooling_names(train["layer"], train["pooling"], num_layers)
