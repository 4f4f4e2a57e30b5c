"""Encoder features: pick layers and poolings of a TF-Hub BERT encoder's outputs, encode many texts
fast (sorted by length, each batch padded only to its own longest text), cache them per shard.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import Pooling, Precision, Runtime
from penultimate.console import progress_bar
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.errors import InputError
from penultimate.pooling import cls_token, masked_max, masked_mean
from penultimate.shard_features import (
    DEFAULT_PASS,
    FEATURES_FILE,
    EncoderPass,
    covering_features,
    encoder_choice_names,
    every_choice_features,
    features_key,
    long_text_counts,
    read_features,
    read_shard,
    window_counts,
    write_features,
)
from penultimate.stages import FEATURES_STAGE


def selected_choices(
    outputs: Mapping[str, Any], mask: tf.Tensor, names: Sequence[str]
) -> dict[str, tf.Tensor]:
    """The named vectors (`layer_<i>_<pooling>` or `pooled`, see `encoder_choice_names`) of one
    encoder pass."""
    chosen = {}
    for name in names:
        if name == "pooled":
            chosen[name] = outputs["pooled_output"]
        else:
            _, layer, pooling = name.split("_")
            chosen[name] = pool_tokens(outputs["encoder_outputs"][int(layer)], mask, pooling)
    return chosen


def encoder_choices(outputs: Mapping[str, Any], mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """Every vector `encoder_choice_names` names, from one encoder pass."""
    names = encoder_choice_names(len(outputs["encoder_outputs"]))
    return selected_choices(outputs, mask, names)


def select_layer(outputs: Mapping[str, Any], layer: int) -> tf.Tensor:
    """Token states of encoder layer `layer` (negative counts from the top; -1 = last)."""
    layers = outputs["encoder_outputs"]
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer {layer} does not exist; the encoder has {len(layers)} layers")
    return layers[layer]


def pool_tokens(states: tf.Tensor, mask: tf.Tensor, pooling: Pooling | str) -> tf.Tensor:
    """[batch, tokens, features] -> [batch, features] with a token-level pooling ([batch,
    2 * features] for `mean_max`: mean, then max)."""
    if pooling == Pooling.mean_max:
        return tf.concat([masked_mean(states, mask), masked_max(states, mask)], axis=-1)
    if pooling == Pooling.cls:
        return cls_token(states)
    if pooling == Pooling.mean:
        return masked_mean(states, mask)
    if pooling == Pooling.max:
        return masked_max(states, mask)
    raise ValueError(f"pooling {pooling!r} is not a token pooling")


def pool_encoder_outputs(
    outputs: Mapping[str, Any], mask: tf.Tensor, layer: int, pooling: Pooling | str
) -> tf.Tensor:
    """The feature vector a (layer, pooling) choice names; `pooled` is the encoder's pooler."""
    if pooling == Pooling.pooled:
        return outputs["pooled_output"]
    return pool_tokens(select_layer(outputs, layer), mask, pooling)


def merged_wordpieces(tokens: tf.RaggedTensor) -> tf.RaggedTensor:
    """A `tokenize` output, [batch, (words), (wordpieces)] or [batch, (tokens)] (both ragged
    ranks are TF Hub's standard), as [batch, (tokens)]."""
    return tokens.merge_dims(1, -1) if tokens.ragged_rank > 1 else tokens


def pack_to_longest(preprocessor: Any, texts: tf.Tensor, seq_length: int) -> dict[str, tf.Tensor]:
    """Encoder inputs for [batch] strings, padded only to the batch's longest row (at most
    `seq_length`), through the standard TF-Hub preprocessor interface: `tokenize`, then
    `bert_pack_inputs` at that length. Works for any TF-Hub BERT preprocessor."""
    return pack_wordpieces(
        preprocessor, merged_wordpieces(preprocessor.tokenize(texts)), seq_length
    )


def token_windows(
    tokens: tf.RaggedTensor, window: int, stride: int
) -> tuple[tf.RaggedTensor, tf.Tensor]:
    """[batch, (tokens)] wordpieces -> windows of at most `window` tokens starting every `stride`
    tokens, enough to cover each row (one, maybe empty, for a row that fits), as
    [windows, (tokens)]; and the row each window came from (int64 [windows])."""
    lengths = tokens.row_lengths()
    counts = 1 + tf.maximum(lengths - window + stride - 1, 0) // stride
    owner = tf.repeat(tf.range(tf.size(lengths, out_type=tf.int64)), counts)
    starts = tf.gather(tokens.row_starts(), owner) + tf.ragged.range(counts).flat_values * stride
    ends = tf.minimum(starts + window, tf.gather(tokens.row_limits(), owner))
    return tf.gather(tokens.flat_values, tf.ragged.range(starts, ends)), owner


def one_word_per_row(wordpieces: tf.RaggedTensor) -> tf.RaggedTensor:
    """[batch, (tokens)] -> [batch, (1), (tokens)]: the [batch, (words), (wordpieces)] form every
    TF-Hub preprocessor's `bert_pack_inputs` accepts."""
    return tf.RaggedTensor.from_row_lengths(wordpieces, tf.ones_like(wordpieces.row_lengths()))


def pack_wordpieces(
    preprocessor: Any, wordpieces: tf.RaggedTensor, seq_length: int
) -> dict[str, tf.Tensor]:
    """Encoder inputs for already tokenized texts ([batch, (tokens)], see `text_wordpieces`),
    padded only to the batch's longest row (at most `seq_length`)."""
    # The maximum with 2 ([CLS] and [SEP]) gives an empty batch a valid length too.
    longest = tf.maximum(tf.cast(tf.reduce_max(wordpieces.row_lengths()), tf.int32) + 2, 2)
    return preprocessor.bert_pack_inputs(
        [one_word_per_row(wordpieces)], seq_length=tf.minimum(longest, seq_length)
    )


def pack_windows(
    preprocessor: Any, wordpieces: tf.RaggedTensor, seq_length: int, stride: int
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Encoder inputs for every window of already tokenized texts ([batch, (tokens)], see
    `token_windows`), padded to the longest window, and the text each window came from (int64
    [windows])."""
    windows, owner = token_windows(wordpieces, seq_length - 2, stride)
    longest = tf.cast(tf.reduce_max(windows.row_lengths()), tf.int32) + 2
    return preprocessor.bert_pack_inputs([one_word_per_row(windows)], seq_length=longest), owner


def token_weighted_mean(
    vectors: tf.Tensor, weights: tf.Tensor, owner: tf.Tensor, rows: tf.Tensor
) -> tf.Tensor:
    """Per-window vectors [windows, dim] -> per-text means [rows, dim], each window weighted
    by its tokens, so a short last window counts for what it holds."""
    weighted = tf.math.unsorted_segment_sum(vectors * weights[:, None], owner, rows)
    return weighted / tf.math.unsorted_segment_sum(weights, owner, rows)[:, None]


def text_wordpieces(
    preprocessor: Any, texts: Sequence[str], batch_size: int = 1024
) -> tf.RaggedTensor:
    """Every text's wordpieces, untruncated, as [n, (tokens)]: one tokenizer pass whose result
    both sorts the batches (see `count_tokens`) and feeds them (see `pack_wordpieces`)."""
    parts = []
    for start in range(0, max(len(texts), 1), batch_size):
        batch = tf.constant(list(texts[start : start + batch_size]), tf.string)
        parts.append(merged_wordpieces(preprocessor.tokenize(batch)))
    return tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]


def count_tokens(preprocessor: Any, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
    """Each text's tokens with [CLS] and [SEP], before truncation (int32 [n]). One tokenizer pass
    costs about 1% of an encoder pass, and sorting batches by these counts instead of characters
    is what keeps padding low (3x the throughput on short texts)."""
    return wordpiece_counts(text_wordpieces(preprocessor, texts, batch_size))


def wordpiece_counts(wordpieces: tf.RaggedTensor) -> np.ndarray:
    """Tokens per row of [n, (tokens)] wordpieces with [CLS] and [SEP] (int32 [n])."""
    return (wordpieces.row_lengths().numpy() + 2).astype(np.int32)


@dataclass
class LoadedEncoder:
    """An encoder artifact's preprocessor/encoder pair, loaded once and reused for every batch."""

    preprocessor: Any
    encoder: Any
    info: EncoderInfo

    def __post_init__(self) -> None:
        seq_length = self.info.seq_length

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def pack(texts: tf.Tensor) -> dict[str, tf.Tensor]:
            return pack_to_longest(self.preprocessor, texts, seq_length)

        self._pack = pack

    @classmethod
    def load(cls, pair: EncoderPair) -> LoadedEncoder:
        import tensorflow_text  # noqa: F401  (registers the ops the preprocessor uses)

        return cls(
            tf.saved_model.load(str(pair.preprocessor)),
            tf.saved_model.load(str(pair.encoder)),
            pair.read_info(),
        )

    def inference(self, precision: Precision) -> Callable[[dict[str, tf.Tensor]], Any]:
        """The encoder's inference call at `precision` (bfloat16: built-in encoders only)."""
        if precision == Precision.float32:
            return lambda inputs: self.encoder(inputs, training=False)
        if not hasattr(self.encoder, "call_bfloat16"):
            raise InputError(
                "precision: bfloat16 needs an encoder built by `penultimate build-encoder` "
                "(it carries a bfloat16 call); this encoder has none"
            )
        return self.encoder.call_bfloat16

    def tokenize(self, texts: Sequence[str]) -> dict[str, tf.Tensor]:
        """Encoder inputs padded to the batch's longest text (see `pack_to_longest`)."""
        return self._pack(tf.constant(list(texts), tf.string))


@functools.lru_cache(maxsize=4)
def load_encoder(pair: EncoderPair) -> LoadedEncoder:
    """The encoder artifact's pair, loaded once per process (its key fixes its content) and shared
    by every task of the process that uses it."""
    return LoadedEncoder.load(pair)


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, rows: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Index batches of similar lengths, so padding costs little; longest first to fail fast.
    With `rows` (the encoder rows each item becomes, e.g. its windows), a batch holds at most
    `batch_size` rows, or one item that alone has more."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    if rows is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start, filled = [], 0, 0
    for position, item in enumerate(order):
        if filled and filled + rows[item] > batch_size:
            batches.append(order[start:position])
            start, filled = position, 0
        filled += rows[item]
    return [*batches, order[start:]] if len(order) else batches


def batched_inference(
    texts: Sequence[str],
    run_batch: Callable[[np.ndarray], Mapping[str, Any]],
    batch_size: int,
    desc: str = "encoding",
    lengths: Sequence[int] | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """`run_batch` (a batch's indices into `texts` -> named arrays [batch, ...]) over
    length-sorted batches of `texts`, every output put back in input order as [len(texts), ...];
    the one inference loop of encoders, exported models and classifiers. `lengths` orders the
    batches (token counts, see `count_tokens`; characters when None), `rows` sizes them (see
    `length_sorted_batches`). A terminal shows its progress as `desc`."""
    if not texts:
        raise ValueError("no texts to run")
    order_by = [len(t) for t in texts] if lengths is None else lengths
    results: dict[str, np.ndarray] = {}
    with progress_bar(len(texts), desc, "text") as bar:
        for index in length_sorted_batches(order_by, batch_size, rows):
            for name, value in run_batch(index).items():
                array = np.asarray(value)
                if name not in results:
                    results[name] = np.empty((len(texts), *array.shape[1:]), array.dtype)
                results[name][index] = array
            bar.update(len(index))
    return results


class ChoiceEncoder:
    """Texts -> named (layer, pooling) vectors and token counts. Every text is tokenized once;
    the batches are packed, encoded and pooled by one traced graph for every batch shape (with
    `runtime: openvino`, OpenVINO encodes between TensorFlow's traced packing and pooling). A
    trace costs about a second: build one per process and reuse it, see `choice_encoder`.

    Args:
        loaded: the preprocessor and encoder.
        names: the vectors to compute (see `encoder_choice_names`).
        encoder_pass: the matmul precision, the runtime, and whether long texts are cut or
            chunked; a chunked text's vector is the token-weighted mean of its windows' vectors.

    Example:
        >>> vectors, tokens = choice_encoder(pair, ("layer_5_mean",)).encode(["a text", "more"])
        >>> vectors["layer_5_mean"].shape, tokens  # (2, 384), [4, 3]
    """

    def __init__(
        self, loaded: LoadedEncoder, names: Sequence[str], encoder_pass: EncoderPass = DEFAULT_PASS
    ) -> None:
        self.loaded, self.names, self.encoder_pass = loaded, list(names), encoder_pass
        seq_length = loaded.info.seq_length
        self.stride = encoder_pass.stride(seq_length)
        # The graphs take wordpieces, not strings: `encode` tokenizes every text once, to sort
        # the batches by length and to feed them (a second pass was work for nothing).
        self._empty = text_wordpieces(loaded.preprocessor, [""])
        wordpieces_spec = [
            tf.RaggedTensorSpec([None, None], self._empty.dtype, 1, self._empty.row_splits.dtype)
        ]

        def pack(wordpieces: tf.RaggedTensor) -> tuple[dict[str, tf.Tensor], tf.Tensor | None]:
            """Encoder inputs, and with chunking the text each window came from."""
            if encoder_pass.chunks:
                return pack_windows(loaded.preprocessor, wordpieces, seq_length, self.stride)
            return pack_wordpieces(loaded.preprocessor, wordpieces, seq_length), None

        openvino = encoder_pass.runtime == Runtime.openvino
        if openvino:
            encoder = openvino_inference(loaded, self.names, encoder_pass.precision)
            # OpenVINO runs outside TensorFlow's graph: packing is traced on its own.
            pack = tf.function(pack, input_signature=wordpieces_spec)
        else:
            encoder = loaded.inference(encoder_pass.precision)

        def run(wordpieces: tf.RaggedTensor) -> dict[str, tf.Tensor]:
            """The named vectors of a batch; a chunked text's is its windows' token-weighted
            mean."""
            inputs, owner = pack(wordpieces)
            mask = inputs["input_mask"]
            chosen = selected_choices(encoder(inputs), mask, self.names)
            if owner is None:
                return chosen
            weights = tf.cast(tf.reduce_sum(mask, axis=1), tf.float32)
            rows = wordpieces.nrows()
            return {n: token_weighted_mean(v, weights, owner, rows) for n, v in chosen.items()}

        self.run: Callable[[tf.RaggedTensor], dict[str, tf.Tensor]] = (
            run if openvino else tf.function(run, input_signature=wordpieces_spec)
        )

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, desc: str = "encoding"
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The named vectors (float32 [n, dim] each) and token counts (int32 [n]) of `texts`;
        with chunking, a batch holds at most `batch_size` windows."""
        if not texts:
            empty = {k: v.numpy()[:0] for k, v in self.run(self._empty).items()}
            return empty, np.zeros(0, np.int32)
        wordpieces = text_wordpieces(self.loaded.preprocessor, texts)
        tokens = wordpiece_counts(wordpieces)
        rows = None
        if self.encoder_pass.chunks:
            rows = window_counts(tokens, self.loaded.info.seq_length, self.stride)
        vectors = batched_inference(
            texts,
            lambda index: self.run(tf.gather(wordpieces, index)),
            batch_size,
            desc,
            tokens,
            rows,
        )
        return vectors, tokens


def openvino_inference(
    loaded: LoadedEncoder, names: Sequence[str], precision: Precision
) -> Callable[[Mapping[str, tf.Tensor]], dict[str, Any]]:
    """The encoder of `loaded` run by OpenVINO (`runtime: openvino`), computing only the outputs
    the named vectors need, with TensorFlow's thread limit; returns outputs shaped as the
    TensorFlow encoder's (`encoder_outputs` indexed by layer, `pooled_output`)."""
    from penultimate.encoders.openvino_runtime import OpenVinoEncoder

    layers = sorted({int(n.split("_")[1]) for n in names if n != "pooled"})
    wanted = [f"encoder_outputs_{i}" for i in layers] + ["pooled_output"] * ("pooled" in names)
    signatures = getattr(loaded.encoder, "signatures", {})
    if "serving_default" not in signatures:
        raise InputError(
            "embedding.runtime: openvino converts the encoder's serving_default signature; "
            "this encoder SavedModel has none (an encoder built by `penultimate build-encoder` "
            "has one)"
        )
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    compiled = OpenVinoEncoder(signatures["serving_default"], wanted, precision, threads)

    def run(inputs: Mapping[str, tf.Tensor]) -> dict[str, Any]:
        out = {name: tf.convert_to_tensor(value) for name, value in compiled(inputs).items()}
        return {
            "encoder_outputs": {i: out[f"encoder_outputs_{i}"] for i in layers},
            "pooled_output": out.get("pooled_output"),
        }

    return run


@functools.lru_cache(maxsize=8)
def choice_encoder(
    pair: EncoderPair, names: tuple[str, ...], encoder_pass: EncoderPass = DEFAULT_PASS
) -> ChoiceEncoder:
    """The `ChoiceEncoder` of an encoder artifact, names and pass, built once per process."""
    return ChoiceEncoder(load_encoder(pair), names, encoder_pass)


def fill_shard_features(
    out: Path,
    store: ArtifactStore,
    encoder: ArtifactRef,
    shard: Path,
    shard_sha256: str,
    names: Sequence[str],
    encoder_pass: EncoderPass = DEFAULT_PASS,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Write the `names` features of every row of a dataset shard into `out` (a features
    artifact's staging folder) and return its metrics: the columns of the shard's every-choice
    artifact when the store has one (no encoder pass), else one encoder pass."""
    pair = EncoderPair(encoder.path)
    info = pair.read_info()
    started = time.perf_counter()
    frame = read_shard(shard)
    every = every_choice_features(store, encoder, shard_sha256, encoder_pass)
    if every is not None:
        _, tokens, vectors = read_features(every, names)
        encoded, copied_from = 0, every.key
    else:
        vectors, tokens = choice_encoder(pair, tuple(names), encoder_pass).encode(
            frame["text"].to_list(), batch_size, f"encoding {shard.name}"
        )
        encoded, copied_from = frame.height, None
    seconds = time.perf_counter() - started
    write_features(out / FEATURES_FILE, frame["id"], tokens, vectors)
    return {
        "rows": frame.height,
        "encoded_texts": encoded,
        "copied_from": copied_from,
        "choices": list(names),
        "seq_length": info.seq_length,
        **long_text_counts(tokens, info.seq_length, encoder_pass),
        "texts_per_s": round(frame.height / seconds, 1) if seconds > 0 else 0.0,
        "source_shard": store.relative(shard),
    }


def ensure_shard_features(
    store: ArtifactStore,
    encoder: ArtifactRef,
    shard: Path,
    shard_sha256: str,
    names: Sequence[str],
    encoder_pass: EncoderPass = DEFAULT_PASS,
    batch_size: int = 64,
) -> tuple[ArtifactRef, int]:
    """A complete features artifact of `encoder` holding `names` for every row of a dataset
    shard, and how many texts went through the encoder for it: 0 when the store had one (see
    `covering_features`), else the shard's rows, encoded once and published."""
    num_layers = EncoderPair(encoder.path).read_info().num_layers
    found = covering_features(store, encoder, shard_sha256, names, encoder_pass, num_layers)
    if found is not None:
        return found, 0
    key = features_key(names, shard_sha256, encoder_pass, num_layers)
    ref, manifest = store.publish(
        FEATURES_STAGE,
        key,
        lambda out: fill_shard_features(
            out, store, encoder, shard, shard_sha256, names, encoder_pass, batch_size
        ),
        [encoder],
    )
    return ref, int(manifest.metrics["encoded_texts"])
