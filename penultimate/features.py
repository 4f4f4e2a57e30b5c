"""Encoder features: pick a layer and a pooling of a TF-Hub BERT encoder's outputs, and encode many
texts fast (sorted by length, each batch padded only to its own longest text).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from penultimate.config import Pooling, Precision
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.errors import InputError
from penultimate.pooling import cls_token, masked_max, masked_mean

TOKEN_POOLINGS = ("cls", "mean", "max")


def encoder_choice_names(num_layers: int) -> list[str]:
    """Every (layer, pooling) choice of an encoder with `num_layers` layers, named as the exported
    `encode` signature names its outputs: `layer_<i>_<pooling>` per layer and token pooling, then
    `pooled` (the pooler output)."""
    return [f"layer_{i}_{p}" for i in range(num_layers) for p in TOKEN_POOLINGS] + ["pooled"]


def encoder_choices(outputs: Mapping[str, Any], mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """Every vector `encoder_choice_names` names, from one encoder pass."""
    choices = {
        f"layer_{i}_{p}": pool_tokens(states, mask, p)
        for i, states in enumerate(outputs["encoder_outputs"])
        for p in TOKEN_POOLINGS
    }
    choices["pooled"] = outputs["pooled_output"]
    return choices


def select_layer(outputs: Mapping[str, Any], layer: int) -> tf.Tensor:
    """Token states of encoder layer `layer` (negative counts from the top; -1 = last)."""
    layers = outputs["encoder_outputs"]
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer {layer} does not exist; the encoder has {len(layers)} layers")
    return layers[layer]


def pool_tokens(states: tf.Tensor, mask: tf.Tensor, pooling: Pooling | str) -> tf.Tensor:
    """[batch, tokens, features] -> [batch, features] with a token-level pooling."""
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


def token_counts(tokens: tf.RaggedTensor) -> tf.Tensor:
    """Tokens per text of a `tokenize` output: [batch, (words), (wordpieces)] or [batch, (tokens)]
    (both ragged ranks are TF Hub's standard)."""
    flat = tokens.merge_dims(1, -1) if tokens.ragged_rank > 1 else tokens
    return flat.row_lengths()


def pack_to_longest(preprocessor: Any, texts: tf.Tensor, seq_length: int) -> dict[str, tf.Tensor]:
    """Encoder inputs for [batch] strings, padded only to the batch's longest row (at most
    `seq_length`), through the standard TF-Hub preprocessor interface: `tokenize`, then
    `bert_pack_inputs` at that length. Works for any TF-Hub BERT preprocessor."""
    tokens = preprocessor.tokenize(texts)
    # [CLS] + tokens + [SEP]; the maximum with 0 gives an empty batch a valid length too.
    longest = tf.cast(tf.maximum(tf.reduce_max(token_counts(tokens)), 0), tf.int32) + 2
    return preprocessor.bert_pack_inputs([tokens], seq_length=tf.minimum(longest, seq_length))


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


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar lengths, so padding costs little; longest first to fail fast."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def traced_features(
    loaded: LoadedEncoder,
    features: Callable[[Mapping[str, Any], tf.Tensor], tf.Tensor],
    precision: Precision = Precision.float32,
) -> Callable[[dict[str, tf.Tensor]], tf.Tensor]:
    """`features(encoder_outputs, input_mask)` as one graph for every batch shape.

    Build it once per embedder and reuse it: a trace costs about a second, and a fresh
    `tf.function` per call (per shard) would pay it again each time.
    """
    encoder = loaded.inference(precision)
    spec = {
        name: tf.TensorSpec([None, None], tf.int32, name=name)
        for name in ("input_word_ids", "input_mask", "input_type_ids")
    }

    @tf.function(input_signature=[spec])
    def run(inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return features(encoder(inputs), inputs["input_mask"])

    return run


def encode_texts(
    loaded: LoadedEncoder,
    texts: Sequence[str],
    run: Callable[[dict[str, tf.Tensor]], tf.Tensor],
    batch_size: int = 64,
) -> np.ndarray:
    """`run` (see `traced_features`) over every text, in input order, as float32 [n, dim]."""
    if not texts:
        raise ValueError("no texts to encode")
    # Character length orders texts well enough for batching; exact token counts would cost a pass.
    batches = length_sorted_batches([len(t) for t in texts], batch_size)
    result: np.ndarray | None = None
    for index in batches:
        vectors = run(loaded.tokenize([texts[i] for i in index])).numpy()
        if result is None:
            result = np.empty((len(texts), vectors.shape[1]), np.float32)
        result[index] = vectors
    assert result is not None
    return result
