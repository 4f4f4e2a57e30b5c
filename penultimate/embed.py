"""Embedding extraction: one small `Embedder` interface over a bare encoder pair or an exported
classifier, and the per-shard unit of work (Parquet shard in, Parquet embeddings shard out).
"""

from __future__ import annotations

import functools
import resource
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from penultimate.config import EmbeddingChoice, EmbedPooling, EmbedSource, LayerCombine
from penultimate.encoders.pair import EncoderPair
from penultimate.errors import InputError
from penultimate.features import (
    LoadedEncoder,
    encode_texts,
    encoder_choice_names,
    encoder_choices,
    length_sorted_batches,
    load_encoder,
    pool_tokens,
    token_counts,
    traced_features,
)
from penultimate.pooling import l2_normalize

SHARD_FILE = "embeddings.parquet"
PASSTHROUGH = ("label", "split")


class ShardError(InputError):
    """A shard that cannot be embedded; the message names the file."""


class Embedder(Protocol):
    """Texts in, one float32 vector per text out: `embed(texts) -> [len(texts), dim]`.

    `preprocessor` is the TF-Hub-format preprocessor the embedder tokenizes with, `seq_length`
    the most tokens it keeps of a text.
    `choice_blocks` names, for `source: all_choices`, the side-by-side blocks each vector is made
    of, in order, as `{"name": "layer_3_mean", "dim": 384}`; None for a single choice.
    """

    preprocessor: Any
    seq_length: int
    choice_blocks: list[dict[str, Any]] | None

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _pool(states: tf.Tensor, mask: tf.Tensor, pooling: str) -> tf.Tensor:
    if pooling == EmbedPooling.mean_max:
        return tf.concat([pool_tokens(states, mask, "mean"), pool_tokens(states, mask, "max")], -1)
    return pool_tokens(states, mask, pooling)


def concat_choices(choices: Mapping[str, tf.Tensor], normalize: bool) -> tf.Tensor:
    """Named [batch, dim] vectors side by side, each L2-normalised on its own if `normalize`, so a
    block equals the vector its single choice would give."""
    return tf.concat([l2_normalize(v) if normalize else v for v in choices.values()], axis=-1)


def choice_blocks(choices: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`{"name", "dim"}` per named vector (tensor or TensorSpec), in order."""
    return [{"name": name, "dim": int(v.shape[-1])} for name, v in choices.items()]


def combine_layers(vectors: Sequence[tf.Tensor], combine: str) -> tf.Tensor:
    """Several [batch, dim] vectors -> one: their mean, or their concatenation (in order)."""
    if len(vectors) == 1:
        return vectors[0]
    if combine == LayerCombine.mean:
        return tf.add_n(list(vectors)) / float(len(vectors))
    return tf.concat(list(vectors), axis=-1)


class EncoderEmbedder:
    """Embeddings from a TF-Hub-format encoder pair: chosen layers, pooled, combined.

    Args:
        loaded: the preprocessor and encoder, loaded once.
        choice: layers, combine, pooling and normalisation (source `encoder`), or every layer
            and pooling side by side (source `all_choices`; see `choice_blocks`).
        batch_size: texts per encoder call (batches are length-sorted and padded per batch).

    Example:
        >>> embedder = EncoderEmbedder(load_encoder(EncoderPair(uri)), EmbeddingChoice())
        >>> embedder.embed(["a text", "another"]).shape  # (2, 384)
    """

    def __init__(self, loaded: LoadedEncoder, choice: EmbeddingChoice, batch_size: int = 64):
        if choice.source == EmbedSource.penultimate:
            raise ValueError("a bare encoder has no penultimate features; use source: encoder")
        choice.check_layers(loaded.info.num_layers)
        self.loaded, self.choice, self.batch_size = loaded, choice, batch_size
        self.preprocessor = loaded.preprocessor
        self.seq_length = loaded.info.seq_length
        self.choice_blocks = None
        if choice.source == EmbedSource.all_choices:
            inputs = loaded.tokenize([""])
            outputs = loaded.inference(choice.precision)(inputs)
            self.choice_blocks = choice_blocks(encoder_choices(outputs, inputs["input_mask"]))
        self._run = traced_features(loaded, self._vectors, choice.precision)
        self.embed([""])  # traces and optimises the graph now: a shard's rate is embedding only

    def _vectors(self, outputs: Mapping[str, Any], mask: tf.Tensor) -> tf.Tensor:
        choice = self.choice
        if choice.source == EmbedSource.all_choices:
            return concat_choices(encoder_choices(outputs, mask), choice.normalize)
        if choice.pooling == EmbedPooling.pooled:
            vector = outputs["pooled_output"]
        else:
            layers = outputs["encoder_outputs"]
            vector = combine_layers(
                [_pool(layers[i], mask, choice.pooling) for i in choice.layers], choice.combine
            )
        return l2_normalize(vector) if choice.normalize else vector

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self.loaded, texts, self._run, self.batch_size)


class ExportedEmbedder:
    """Embeddings from an exported classifier SavedModel (`embed` and `encode` signatures)."""

    def __init__(self, saved_model: str | Path, choice: EmbeddingChoice, batch_size: int = 64):
        import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

        self.model = tf.saved_model.load(str(saved_model))
        self.preprocessor = self.model.preprocessor
        self.seq_length = int(self.model.seq_length.numpy())
        self.choice, self.batch_size = choice, batch_size
        encode_outputs = self.model.signatures["encode"].structured_outputs
        self.num_layers = sum(1 for k in encode_outputs if k.endswith("_cls"))
        choice.check_layers(self.num_layers)
        self.choice_blocks = None
        if choice.source == EmbedSource.all_choices:
            names = [*encoder_choice_names(self.num_layers), "penultimate"]
            self.choice_blocks = choice_blocks({name: encode_outputs[name] for name in names})
        self.embed([""])  # optimises the signature's graph now: a shard's rate is embedding only

    def _vectors(self, texts: tf.Tensor) -> tf.Tensor:
        choice = self.choice
        if choice.source == EmbedSource.all_choices:
            # One encoder pass serves every layer, pooling and the penultimate features.
            choices = self.model.signatures["encode"](text=texts)
            names = [*encoder_choice_names(self.num_layers), "penultimate"]
            return concat_choices({name: choices[name] for name in names}, choice.normalize)
        if choice.source == EmbedSource.penultimate:
            vector = self.model.signatures["embed"](text=texts)["embedding"]
        else:
            encoded = self.model.signatures["encode"](text=texts)
            if choice.pooling == EmbedPooling.pooled:
                vector = encoded["pooled"]
            else:
                poolings = (
                    ("mean", "max")
                    if choice.pooling == EmbedPooling.mean_max
                    else (str(choice.pooling),)
                )
                per_layer = [
                    tf.concat([encoded[f"layer_{i % self.num_layers}_{p}"] for p in poolings], -1)
                    for i in choice.layers  # checked in range; % turns -1 into the last layer
                ]
                vector = combine_layers(per_layer, choice.combine)
        return l2_normalize(vector) if choice.normalize else vector

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        result: np.ndarray | None = None
        for index in length_sorted_batches([len(t) for t in texts], self.batch_size):
            vectors = self._vectors(tf.constant([texts[i] for i in index])).numpy()
            if result is None:
                result = np.empty((len(texts), vectors.shape[1]), np.float32)
            result[index] = vectors
        if result is None:
            raise ValueError("no texts to embed")
        return result


def read_shard(shard: Path, splits: Sequence[str] | None) -> pl.DataFrame:
    """A dataset shard's rows to embed, checked; errors name the file."""
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


def embeddings_table(frame: pl.DataFrame, vectors: np.ndarray, dtype: str) -> pa.Table:
    """`id`, `embedding` (Arrow fixed-size list) and any passthrough columns, in shard order."""
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise ValueError(f"non-finite embedding for id {frame['id'][bad]!r}")
    values = pa.array(vectors.astype(dtype).ravel())
    columns = {
        "id": frame["id"].to_arrow(),
        "embedding": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1]),
    }
    columns.update({c: frame[c].to_arrow() for c in PASSTHROUGH if c in frame.columns})
    return pa.table(columns)


def count_truncated(
    preprocessor: Any, texts: Sequence[str], seq_length: int, batch_size: int = 256
) -> int:
    """How many texts are longer than `seq_length` tokens with [CLS] and [SEP] (and so get cut)."""
    total = 0
    for start in range(0, len(texts), batch_size):
        tokens = preprocessor.tokenize(tf.constant(list(texts[start : start + batch_size])))
        lengths = token_counts(tokens) + 2  # plus [CLS] and [SEP]
        total += int(tf.reduce_sum(tf.cast(lengths > seq_length, tf.int32)))
    return total


def extract_shard_embeddings(
    embedder: Embedder,
    shard: Path,
    out: Path,
    choice: EmbeddingChoice,
    splits: Sequence[str] | None,
) -> dict[str, Any]:
    """Embed one dataset shard into `out` (written atomically); returns rows, dim, truncated
    texts, throughput and, for `all_choices`, the blocks of each vector."""
    frame = read_shard(shard, splits)
    started = time.perf_counter()
    if frame.height == 0:
        vectors = np.zeros((0, 0), np.float32)
        table = pa.table({"id": pa.array([], pa.string())})
        truncated = 0
    else:
        texts = frame["text"].to_list()
        vectors = embedder.embed(texts)
        table = embeddings_table(frame, vectors, str(choice.dtype))
        truncated = count_truncated(embedder.preprocessor, texts, embedder.seq_length)
    seconds = time.perf_counter() - started
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return {
        "rows": frame.height,
        "dim": int(vectors.shape[1]),
        "truncated": truncated,
        "texts_per_s": round(frame.height / seconds, 1) if seconds > 0 else 0.0,
        "choice_blocks": embedder.choice_blocks,
    }


def read_embeddings(files: Sequence[Path]) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows (id and passthrough columns) and the [n, dim] matrix, without copying the vectors."""
    table = pa.concat_tables([pq.read_table(f) for f in files]).combine_chunks()
    column = table.column("embedding").chunk(0)
    matrix = column.values.to_numpy(zero_copy_only=True).reshape(len(column), column.type.list_size)
    return pl.from_arrow(table.drop(["embedding"])), matrix  # type: ignore[return-value]


def peak_memory_mb() -> int:
    """This process's peak resident memory in MB (model, TF runtime, and whatever hosts it).

    Linux: VmHWM, not ru_maxrss, because a Dask worker is spawned by fork + exec from a large
    parent and ru_maxrss carries the parent's peak across exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return round(peak / 2**20) if sys.platform == "darwin" else round(peak / 1024)


def limit_tensorflow_threads(threads: int) -> None:
    """Cap this process's TF thread pools; only possible before TF runs its first op."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TF already initialised in this process: it keeps the pools it has


@functools.lru_cache(maxsize=2)
def load_embedder(
    model_stage: str, model_uri: str, choice_json: str, batch_size: int, tf_threads: int
) -> Embedder:
    """The embedder for a model artifact, loaded once per process (per Dask worker) and reused."""
    limit_tensorflow_threads(tf_threads)
    choice = EmbeddingChoice.model_validate_json(choice_json)
    if model_stage == "export":
        return ExportedEmbedder(Path(model_uri) / "saved_model", choice, batch_size)
    return EncoderEmbedder(load_encoder(EncoderPair(Path(model_uri))), choice, batch_size)


def embedding_shard_files(shard_uris: Sequence[str]) -> list[Path]:
    """The Parquet files of an embeddings artifact's shards (its manifest lists their URIs)."""
    return [Path(uri) / SHARD_FILE for uri in shard_uris]
