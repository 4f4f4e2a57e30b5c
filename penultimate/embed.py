"""Embedding extraction: one small `Embedder` interface, served from an encoder's cached per-shard
features (a bare encoder, or a frozen-encoder classifier's head) or an exported classifier's pass.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EmbeddingChoice, EmbedSource, LongText, Precision
from penultimate.embeddings import embeddings_table
from penultimate.features import (
    ChoiceEncoder,
    LoadedEncoder,
    batched_inference,
    count_tokens,
    ensure_shard_features,
)
from penultimate.shard_features import (
    PENULTIMATE_BLOCK,
    EncoderPass,
    ShardError,
    choices_needed,
    chunking_through_export,
    embedding_from_choices,
    encoder_choice_names,
    frozen_classifier_parts,
    l2_normalize,
    long_text_counts,
    read_features,
    read_shard,
    side_by_side,
)
from penultimate.stages import SAVED_MODEL_DIR


@dataclass
class ShardVectors:
    """One shard's embeddings: `vectors` float32 [rows, dim] and `tokens` int32 [rows] (with [CLS]
    and [SEP], before truncation), how many texts went through an encoder for them, and the key of
    the features artifact they were made from (None: the exported model's own pass)."""

    vectors: np.ndarray
    tokens: np.ndarray
    encoded_texts: int
    features: str | None


class Embedder(Protocol):
    """A dataset shard's rows in, one float32 vector per row out: `embed_shard(frame, shard,
    shard_sha256)` with `frame` the rows to embed (`id`, `text`) of the shard file `shard`.

    `seq_length` is the most tokens it keeps of a text. `choice_blocks` names, for `source:
    all_choices`, the side-by-side blocks each vector is made of, in order, as
    `{"name": "layer_3_mean", "dim": 384}`; None for a single choice.
    """

    seq_length: int
    choice_blocks: list[dict[str, Any]] | None

    def embed_shard(self, frame: pl.DataFrame, shard: Path, shard_sha256: str) -> ShardVectors: ...


def _in_chunks(
    run: Callable[[np.ndarray], Any], matrix: np.ndarray, rows: int = 4096
) -> np.ndarray:
    return np.concatenate(
        [np.asarray(run(matrix[i : i + rows])) for i in range(0, len(matrix), rows)]
    )


class ClassifierHead:
    """A frozen-encoder classifier after its pooling: pooled encoder features [n, hidden] ->
    penultimate features [n, dim] (hidden layers, every dropout off), as its export computes them.

    Args:
        classifier: the classifier artifact.
        input_names: the (layer, pooling) vectors the classifier pools, e.g. `["layer_5_mean"]`
            (two, side by side, for `mean_max`).
    """

    def __init__(self, classifier: ArtifactRef, input_names: list[str]) -> None:
        from penultimate.train import TrainedClassifier

        model = TrainedClassifier.load(classifier.path).model
        self.input_names = input_names
        hidden = model.train_config.hidden
        self.dim = hidden[-1].units if hidden else None

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
        def run(features: tf.Tensor) -> tf.Tensor:
            return model.penultimate(features, False)

        self._run = run

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """The penultimate features from the named pooled vectors (a features artifact's)."""
        pooled = side_by_side(features, self.input_names)
        return _in_chunks(self._run, pooled).astype(np.float32)


class EncoderEmbedder:
    """Embeddings from a bare encoder pair, texts in, vectors out, with no store: the library's
    text-level embedder (`FeatureEmbedder` is the one that caches per shard).

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
        self.choice, self.batch_size = choice, batch_size
        self.num_layers = loaded.info.num_layers
        self.seq_length = loaded.info.seq_length
        self.names = choices_needed(choice, self.num_layers)
        self.choice_blocks = None
        if choice.source == EmbedSource.all_choices:
            dim = loaded.info.hidden_size
            self.choice_blocks = [{"name": n, "dim": dim} for n in self.names]
        self.encoder = ChoiceEncoder(loaded, self.names, EncoderPass.of(choice))
        self._run = self.encoder.run
        self.embed([""])  # traces and optimises the graph now: a shard's rate is embedding only

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings [n, dim] and token counts [n] of `texts`."""
        vectors, tokens = self.encoder.encode(texts, self.batch_size)
        return embedding_from_choices(self.choice, vectors, self.num_layers), tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_with_tokens(texts)[0]

    def embed_shard(self, frame: pl.DataFrame, shard: Path, shard_sha256: str) -> ShardVectors:
        vectors, tokens = self.embed_with_tokens(frame["text"].to_list())
        return ShardVectors(vectors, tokens, frame.height, None)


class FeatureEmbedder:
    """Embeddings made from an encoder's per-shard features artifacts: each shard's features are
    read from the store, or computed once and published there (see `ensure_shard_features`).

    Args:
        store: the store holding `encoder` (and where new features artifacts go).
        encoder: the encoder artifact.
        choice: the embedding; `penultimate` (and the penultimate block of `all_choices`) needs
            `head`.
        batch_size: texts per encoder call when features have to be computed.
        head: a frozen-encoder classifier's head, for its penultimate features.

    Example:
        >>> embedder = FeatureEmbedder(store, encoder_ref, EmbeddingChoice(layers=[-2]))
        >>> embedder.embed_shard(frame, shard, sha256).vectors.shape  # (rows, 384)
    """

    def __init__(
        self,
        store: ArtifactStore,
        encoder: ArtifactRef,
        choice: EmbeddingChoice,
        batch_size: int = 64,
        head: ClassifierHead | None = None,
    ) -> None:
        manifest = store.read_manifest(encoder)
        if manifest is None:
            raise ShardError(f"{encoder.uri}: not a complete encoder artifact")
        self.num_layers = int(manifest.metrics["num_layers"])
        self.seq_length = int(manifest.metrics["seq_length"])
        hidden_size = int(manifest.metrics["hidden_size"])
        choice.check_layers(self.num_layers)
        wants_head = choice.source in (EmbedSource.penultimate, EmbedSource.all_choices)
        if choice.source == EmbedSource.penultimate and head is None:
            raise ValueError("a bare encoder has no penultimate features; use source: encoder")
        self.store, self.encoder, self.choice, self.batch_size = store, encoder, choice, batch_size
        self.head = head if wants_head else None
        self.names = choices_needed(choice, self.num_layers)
        self.feature_names = sorted(
            set(self.names) | set(self.head.input_names if self.head else ())
        )
        self.choice_blocks = None
        if choice.source == EmbedSource.all_choices:
            self.choice_blocks = [{"name": n, "dim": hidden_size} for n in self.names]
            if self.head is not None:
                dim = self.head.dim or hidden_size
                self.choice_blocks.append({"name": PENULTIMATE_BLOCK, "dim": dim})

    def embed_shard(self, frame: pl.DataFrame, shard: Path, shard_sha256: str) -> ShardVectors:
        ref, encoded = ensure_shard_features(
            self.store,
            self.encoder,
            shard,
            shard_sha256,
            self.feature_names,
            EncoderPass.of(self.choice),
            self.batch_size,
        )
        _, tokens, features = read_features(ref, self.feature_names, frame["id"])
        if self.choice.source == EmbedSource.penultimate:
            assert self.head is not None
            vectors = self.head(features)
            vectors = l2_normalize(vectors) if self.choice.normalize else vectors
        else:
            named = {name: features[name] for name in self.names}
            if self.head is not None:
                named[PENULTIMATE_BLOCK] = self.head(features)
            vectors = embedding_from_choices(self.choice, named, self.num_layers)
        return ShardVectors(vectors, tokens, encoded, ref.key)


@functools.lru_cache(maxsize=2)
def load_export(saved_model: str) -> Any:
    """An exported classifier SavedModel, loaded once per process (its artifact key fixes its
    content) and shared by every embedding choice served from it."""
    import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

    return tf.saved_model.load(saved_model)


class ExportedEmbedder:
    """Embeddings from an exported classifier SavedModel's own pass (`embed` and `encode`
    signatures): for a classifier whose encoder trained, or one whose encoder artifact is not in
    the store."""

    def __init__(self, saved_model: str | Path, choice: EmbeddingChoice, batch_size: int = 64):
        if choice.long_text == LongText.chunk:
            raise chunking_through_export(saved_model)
        self.model = load_export(str(saved_model))
        self.preprocessor = self.model.preprocessor
        self.seq_length = int(self.model.seq_length.numpy())
        self.choice, self.batch_size = choice, batch_size
        encode_outputs = self.model.signatures["encode"].structured_outputs
        self.num_layers = sum(1 for k in encode_outputs if k.endswith("_cls"))
        choice.check_layers(self.num_layers)
        self.names = choices_needed(choice, self.num_layers)
        self.choice_blocks = None
        if choice.source == EmbedSource.all_choices:
            self.names = [*encoder_choice_names(self.num_layers), PENULTIMATE_BLOCK]
            self.choice_blocks = [
                {"name": name, "dim": int(encode_outputs[name].shape[-1])} for name in self.names
            ]

    def _run_batch(self, texts: list[str]) -> dict[str, Any]:
        batch = tf.constant(texts)
        if self.choice.source == EmbedSource.penultimate:
            return {"embedding": self.model.signatures["embed"](text=batch)["embedding"]}
        encoded = self.model.signatures["encode"](text=batch)
        return {name: encoded[name] for name in self.names}

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings [n, dim] and token counts [n] of `texts`."""
        tokens = count_tokens(self.preprocessor, texts)
        results = batched_inference(
            texts,
            lambda index: self._run_batch([texts[i] for i in index]),
            self.batch_size,
            "embedding",
            tokens,
        )
        if self.choice.source == EmbedSource.penultimate:
            vectors = results["embedding"]
            vectors = l2_normalize(vectors) if self.choice.normalize else vectors
        else:
            vectors = embedding_from_choices(self.choice, results, self.num_layers)
        return vectors, tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_with_tokens(texts)[0]

    def embed_shard(self, frame: pl.DataFrame, shard: Path, shard_sha256: str) -> ShardVectors:
        vectors, tokens = self.embed_with_tokens(frame["text"].to_list())
        return ShardVectors(vectors, tokens, frame.height, None)


def extract_shard_embeddings(
    embedder: Embedder,
    shard: Path,
    shard_sha256: str,
    out: Path,
    choice: EmbeddingChoice,
    splits: Sequence[str] | None,
) -> dict[str, Any]:
    """Embed one dataset shard into `out` (written atomically); returns rows, dim, truncated
    texts, texts through an encoder, the features artifact used, throughput and, for
    `all_choices`, the blocks of each vector."""
    frame = read_shard(shard, splits)
    started = time.perf_counter()
    if frame.height == 0:
        result = ShardVectors(np.zeros((0, 0), np.float32), np.zeros(0, np.int32), 0, None)
        table = pa.table({"id": pa.array([], pa.string())})
    else:
        result = embedder.embed_shard(frame, shard, shard_sha256)
        table = embeddings_table(frame, result.vectors, str(choice.dtype))
    seconds = time.perf_counter() - started
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return {
        "rows": frame.height,
        "dim": int(result.vectors.shape[1]),
        **long_text_counts(result.tokens, embedder.seq_length, EncoderPass.of(choice)),
        "encoded_texts": result.encoded_texts,
        "features": result.features,
        "texts_per_s": round(frame.height / seconds, 1) if seconds > 0 else 0.0,
        "choice_blocks": embedder.choice_blocks,
    }


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
    """The embedder for a model artifact, loaded once per process (per Dask worker) and reused:
    from cached encoder features for an encoder or a frozen-encoder classifier's export, else
    from the exported model's own pass."""
    limit_tensorflow_threads(tf_threads)
    choice = EmbeddingChoice.model_validate_json(choice_json)
    model = ArtifactRef(stage=model_stage, key=Path(model_uri).name, uri=model_uri)
    store = ArtifactStore(Path(model_uri).parent.parent)
    if model_stage != "export":
        return FeatureEmbedder(store, model, choice, batch_size)
    frozen = frozen_classifier_parts(store, model)
    if frozen is None or choice.precision != Precision.float32:
        return ExportedEmbedder(Path(model_uri) / SAVED_MODEL_DIR, choice, batch_size)
    classifier, encoder, input_names = frozen
    needs_head = choice.source in (EmbedSource.penultimate, EmbedSource.all_choices)
    head = ClassifierHead(classifier, input_names) if needs_head else None
    return FeatureEmbedder(store, encoder, choice, batch_size, head)
