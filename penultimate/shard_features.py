"""Encoder features per dataset shard, the one cache of encoder passes: a `features` artifact holds,
for every row of one shard, named (layer, pooling) vectors of one encoder and each text's tokens.

Training a frozen-encoder classifier, embedding and probing all read these instead of running the
encoder again (the reuse rules are in docs/DESIGN.md). TensorFlow-free: lookups never load a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import (
    EmbeddingChoice,
    EmbedSource,
    LayerCombine,
    LongText,
    Pooling,
    Precision,
    Runtime,
)
from penultimate.encoders.pair import encoder_layers
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


class EncoderPass(NamedTuple):
    """How texts go through the encoder for a features artifact: the matmul precision, whether
    texts longer than the encoder's seq_length are cut or embedded window by window
    (`chunk_stride` tokens apart; None = back to back), and what executes the encoder."""

    precision: Precision = Precision.float32
    long_text: LongText = LongText.truncate
    chunk_stride: int | None = None
    runtime: Runtime = Runtime.tensorflow

    @classmethod
    def of(cls, choice: EmbeddingChoice) -> EncoderPass:
        return cls(choice.precision, choice.long_text, choice.chunk_stride, choice.runtime)

    @property
    def chunks(self) -> bool:
        return self.long_text == LongText.chunk

    def stride(self, seq_length: int) -> int:
        """Tokens between window starts for an encoder of `seq_length` (window = seq_length - 2,
        room for [CLS] and [SEP])."""
        window = seq_length - 2
        if self.chunk_stride is not None and self.chunk_stride > window:
            raise InputError(
                f"embedding.chunk_stride: {self.chunk_stride} is more than a window "
                f"({window} tokens at seq_length {seq_length}): tokens between windows would "
                "be skipped"
            )
        return window if self.chunk_stride is None else self.chunk_stride

    def key(self) -> dict[str, str]:
        """The part of a features artifact's key this pass fixes (truncation and TensorFlow add
        nothing, so keys made before chunking and OpenVINO existed stay valid)."""
        key = {"precision": str(self.precision)}
        if self.runtime != Runtime.tensorflow:
            key["runtime"] = str(self.runtime)
        if self.chunks:
            key["long_text"] = f"chunk, stride {self.chunk_stride or 'one window'}"
        return key


# Float32, long texts cut: what every pass is unless its embedding choice says otherwise.
DEFAULT_PASS = EncoderPass()


def window_counts(tokens: np.ndarray, seq_length: int, stride: int) -> np.ndarray:
    """Windows `long_text: chunk` embeds per text, from its tokens with [CLS] and [SEP]
    (int [n]): one up to `seq_length`, then one more per `stride` tokens beyond."""
    beyond = np.maximum(np.asarray(tokens) - seq_length, 0)
    return 1 + (beyond + stride - 1) // stride


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


def long_text_counts(
    tokens: np.ndarray, seq_length: int, encoder_pass: EncoderPass
) -> dict[str, int]:
    """How many texts were longer than `seq_length` and so cut (`truncated`) or embedded window
    by window (`chunked`, in `windows` windows in all)."""
    longer = int((np.asarray(tokens) > seq_length).sum())
    if not encoder_pass.chunks:
        return {"truncated": longer}
    windows = window_counts(tokens, seq_length, encoder_pass.stride(seq_length))
    return {"truncated": 0, "chunked": longer, "windows": int(windows.sum())}


def long_text_summary(metrics: Mapping[str, Any]) -> str:
    """`long_text_counts` in words, e.g. "12 texts cut at the encoder's sequence length"."""
    if "chunked" in metrics:
        return f"{metrics['chunked']} long texts chunked, {metrics['windows']} windows in all"
    return f"{metrics['truncated']} texts cut at the encoder's sequence length"


def features_key(
    names: Sequence[str] | None, shard_sha256: str, encoder_pass: EncoderPass, num_layers: int
) -> dict[str, str]:
    """The key config of a features artifact: which vectors (None or all of them = every choice
    of an encoder with `num_layers` layers), of which shard's content, from which encoder pass
    (the encoder is an input)."""
    every = names is None or set(names) >= set(encoder_choice_names(num_layers))
    chosen = ALL_CHOICES if every else ",".join(sorted(set(names or ())))
    return {"choices": chosen, "shard": shard_sha256, **encoder_pass.key()}


def covering_features(
    store: ArtifactStore,
    encoder: ArtifactRef,
    shard_sha256: str,
    names: Sequence[str],
    encoder_pass: EncoderPass,
    num_layers: int,
) -> ArtifactRef | None:
    """A complete features artifact of this encoder and shard that holds every vector in `names`:
    the one for exactly these names, else the every-choice one (a probe's), else None."""
    key = features_key(names, shard_sha256, encoder_pass, num_layers)
    ref = store.ref_for(FEATURES_STAGE, key, [encoder])
    if store.validate(ref) is not None:
        return ref
    return every_choice_features(store, encoder, shard_sha256, encoder_pass)


def every_choice_features(
    store: ArtifactStore, encoder: ArtifactRef, shard_sha256: str, encoder_pass: EncoderPass
) -> ArtifactRef | None:
    """The complete every-choice features artifact of this encoder, shard and pass, if any."""
    key = features_key(None, shard_sha256, encoder_pass, 0)
    ref = store.ref_for(FEATURES_STAGE, key, [encoder])
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


def chunking_through_export(export: object) -> InputError:
    """The error for `long_text: chunk` on an export that embeds through its own pass."""
    return InputError(
        "embedding.long_text: chunk runs an encoder artifact window by window, but "
        f"{export} embeds through its own encoder (fine-tuned, or its encoder artifact is not "
        "in the store), one window per text: use long_text: truncate"
    )


def check_choice_for_model(
    store: ArtifactStore, model: ArtifactRef, choice: EmbeddingChoice
) -> None:
    """Fail before any compute on a choice `model` (an encoder or export artifact) cannot give:
    layers outside its encoder, a chunk stride over its window, or chunking an export that
    embeds through its own pass."""
    manifest = store.read_manifest(model)
    choice.check_layers(encoder_layers(manifest))
    if choice.long_text != LongText.chunk:
        return
    assert manifest is not None  # encoder_layers rejects a missing one
    info = manifest.metrics["encoder"] if manifest.stage == "export" else manifest.metrics
    EncoderPass.of(choice).stride(int(info["seq_length"]))
    if manifest.stage == "export" and frozen_classifier_parts(store, model) is None:
        raise chunking_through_export(model.uri)


def check_runtime_installed(choice: EmbeddingChoice, local_workers: bool) -> None:
    """Fail before a local cluster starts when `runtime: openvino` is not installed. Workers of an
    existing cluster may have packages this process lacks: they report a missing one themselves."""
    if local_workers and choice.runtime == Runtime.openvino:
        from penultimate.encoders.openvino_runtime import import_openvino

        import_openvino()


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
