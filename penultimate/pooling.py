"""Mask-aware pooling of token states [batch, tokens, features] into vectors [batch, features].

Padded positions carry non-zero states in BERT outputs, so every pooling here honours the mask.
"""

from __future__ import annotations

import tensorflow as tf


def masked_mean(states: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over unmasked tokens, as sentence-transformers pools; a row with no tokens gives 0."""
    weights = tf.cast(mask, states.dtype)[:, :, tf.newaxis]
    total = tf.reduce_sum(states * weights, axis=1)
    count = tf.maximum(tf.reduce_sum(weights, axis=1), tf.constant(1e-9, states.dtype))
    return total / count


def masked_max(states: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Per-feature max over unmasked tokens; padded positions can never win."""
    keep = tf.cast(mask, tf.bool)[:, :, tf.newaxis]
    return tf.reduce_max(tf.where(keep, states, states.dtype.min), axis=1)


def cls_token(states: tf.Tensor) -> tf.Tensor:
    """The first token's state ([CLS] in BERT inputs)."""
    return states[:, 0]


def l2_normalize(vectors: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(vectors, axis=-1)
