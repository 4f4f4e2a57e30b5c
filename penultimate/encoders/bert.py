"""A BERT encoder as a `tf.Module` with TF Hub's BERT encoder interface, built from numpy weights.

Inputs `input_word_ids`/`input_mask`/`input_type_ids` [batch, seq]; outputs `pooled_output`,
`sequence_output`, `encoder_outputs` (one per layer) and `default` (= pooled_output).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf


def _gelu_exact(x: tf.Tensor) -> tf.Tensor:
    # tf.nn.gelu writes the exact form with erfc, which neither grappler's oneDNN remapper nor
    # OpenVINO's converter fuse into the product before it; this erf form both fuse (TensorFlow,
    # 8192 x 384 x 1536 product + GELU: 50 -> 40 ms), and it is PyTorch's formula.
    return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))


_ACTIVATIONS = {
    # BERT's "gelu" is the exact erf form; the tanh approximation drifts by ~5e-4 per layer.
    "gelu": _gelu_exact,
    "gelu_new": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "relu": tf.nn.relu,
}
# Additive attention bias for padded keys; large enough that softmax gives them exactly 0.
_MASKED_BIAS = -1e9


@dataclass(frozen=True)
class BertArchitecture:
    """The shape of a BERT model, read from a Hugging Face `config.json`."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    hidden_dropout: float
    attention_dropout: float

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> BertArchitecture:
        act = config.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"config.json: hidden_act {act!r} unsupported; use {sorted(_ACTIVATIONS)}"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("config.json: only position_embedding_type 'absolute' is supported")
        arch = cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_positions=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=act,
            hidden_dropout=float(config.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
        )
        if arch.hidden_size % arch.num_heads:
            raise ValueError("config.json: hidden_size must be divisible by num_attention_heads")
        return arch


def _dense(weights: Mapping[str, np.ndarray], prefix: str, name: str) -> tuple[tf.Variable, ...]:
    # PyTorch Linear stores [out, in]; a TF kernel is [in, out].
    kernel = np.ascontiguousarray(weights[f"{prefix}.weight"].T)
    return (
        tf.Variable(kernel, name=f"{name}/kernel"),
        tf.Variable(weights[f"{prefix}.bias"], name=f"{name}/bias"),
    )


def _layer_norm_vars(
    weights: Mapping[str, np.ndarray], prefix: str, name: str
) -> tuple[tf.Variable, ...]:
    return (
        tf.Variable(weights[f"{prefix}.weight"], name=f"{name}/gamma"),
        tf.Variable(weights[f"{prefix}.bias"], name=f"{name}/beta"),
    )


class _TransformerBlock(tf.Module):
    def __init__(self, arch: BertArchitecture, weights: Mapping[str, np.ndarray], index: int):
        super().__init__(name=f"layer_{index}")
        p, n = f"encoder.layer.{index}", f"layer_{index}"
        self.query = _dense(weights, f"{p}.attention.self.query", f"{n}/attention/query")
        self.key = _dense(weights, f"{p}.attention.self.key", f"{n}/attention/key")
        self.value = _dense(weights, f"{p}.attention.self.value", f"{n}/attention/value")
        self.attention_output = _dense(
            weights, f"{p}.attention.output.dense", f"{n}/attention/output"
        )
        self.attention_norm = _layer_norm_vars(
            weights, f"{p}.attention.output.LayerNorm", f"{n}/attention/layer_norm"
        )
        self.intermediate = _dense(weights, f"{p}.intermediate.dense", f"{n}/intermediate")
        self.output = _dense(weights, f"{p}.output.dense", f"{n}/output")
        self.output_norm = _layer_norm_vars(
            weights, f"{p}.output.LayerNorm", f"{n}/output/layer_norm"
        )


class BertEncoder(tf.Module):
    """BERT encoder with TF Hub's encoder interface; dropout only when `training=True`.

    Args:
        arch: the model's shape.
        weights: Hugging Face `BertModel` state dict as numpy arrays (no `bert.` prefix).
        hidden_dropout: dropout on embeddings and block outputs while training.
        attention_dropout: dropout on attention probabilities while training.

    Example:
        >>> encoder = BertEncoder(arch, weights, hidden_dropout=0.1, attention_dropout=0.1)
        >>> out = encoder({"input_word_ids": ids, "input_mask": mask, "input_type_ids": types})
        >>> out["sequence_output"].shape  # [batch, seq, hidden]
    """

    def __init__(
        self,
        arch: BertArchitecture,
        weights: Mapping[str, np.ndarray],
        hidden_dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__(name="bert_encoder")
        self.arch = arch
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.word_embeddings = tf.Variable(
            weights["embeddings.word_embeddings.weight"], name="embeddings/word_embeddings"
        )
        self.position_embeddings = tf.Variable(
            weights["embeddings.position_embeddings.weight"], name="embeddings/position_embeddings"
        )
        self.type_embeddings = tf.Variable(
            weights["embeddings.token_type_embeddings.weight"], name="embeddings/type_embeddings"
        )
        self.embedding_norm = _layer_norm_vars(
            weights, "embeddings.LayerNorm", "embeddings/layer_norm"
        )
        self.blocks = [_TransformerBlock(arch, weights, i) for i in range(arch.num_layers)]
        self.pooler = _dense(weights, "pooler.dense", "pooler/dense")
        self._activation = _ACTIVATIONS[arch.hidden_act]

    def _norm(self, x: tf.Tensor, params: tuple[tf.Variable, ...]) -> tf.Tensor:
        # Written as PyTorch's LayerNorm computes it, with list axes: TensorFlow runs it faster
        # than tf.nn.moments + rsqrt (3.9 vs 4.7 ms on 8192 x 384), and OpenVINO's converter
        # fuses it into one MVN op, which it does not for the moments form.
        gamma, beta = params
        centered = x - tf.reduce_mean(x, axis=[-1], keepdims=True)
        variance = tf.reduce_mean(tf.square(centered), axis=[-1], keepdims=True)
        return centered / tf.sqrt(variance + self.arch.layer_norm_eps) * gamma + beta

    @staticmethod
    def _project(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """x [tokens, in] @ kernel + bias in `dtype`, written as MatMul + BiasAdd on a 2-D token
        matrix: the pattern grappler's oneDNN remapper fuses into one kernel together with a
        following GELU (an einsum with a broadcast add is neither fused nor as fast).

        In bfloat16 the kernel is a constant of the graph, its value when traced: oneDNN then
        keeps a reordered copy and runs the fused product on a faster kernel than for a variable
        (mail, 640 texts: 131 -> 170 texts/s). The bfloat16 path serves inference only.
        """
        if dtype == tf.bfloat16:
            with tf.init_scope():  # read the value now, outside the graph being traced
                value = tf.cast(kernel, dtype).numpy()
            weights = tf.constant(value)
        else:
            weights = tf.cast(kernel, dtype)
        return tf.nn.bias_add(tf.matmul(x, weights), tf.cast(bias, dtype))

    @staticmethod
    def _dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
        return tf.nn.dropout(x, rate=rate) if training and rate > 0 else x

    def _attention(
        self,
        x: tf.Tensor,
        batch: tf.Tensor,
        seq: tf.Tensor,
        block: _TransformerBlock,
        bias: tf.Tensor,
        training: bool,
        dtype: tf.DType,
    ) -> tf.Tensor:
        """Self-attention of `x` [batch * seq, hidden]; returns [batch * seq, hidden] float32."""
        heads = self.arch.num_heads
        head_size = self.arch.hidden_size // heads
        # One [hidden, 3 * hidden] product instead of three, then one transpose to split heads.
        kernel = tf.concat([block.query[0], block.key[0], block.value[0]], axis=1)
        qkv_bias = tf.concat([block.query[1], block.key[1], block.value[1]], axis=0)
        if dtype == tf.bfloat16:
            # The bias is added after the reshape, not fused into the MatMul: oneDNN runs a bare
            # bfloat16 MatMul on AMX tiles but a bias-fused one on a slower kernel (1.6x here).
            qkv = tf.matmul(tf.cast(x, dtype), tf.cast(kernel, dtype))
            qkv = tf.reshape(qkv, [batch, seq, 3, heads, head_size]) + tf.cast(
                tf.reshape(qkv_bias, [3, heads, head_size]), dtype
            )
        else:
            qkv = tf.nn.bias_add(tf.matmul(x, kernel), qkv_bias)
            qkv = tf.reshape(qkv, [batch, seq, 3, heads, head_size])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])
        q, k, v = tf.unstack(qkv, axis=0)
        scores = tf.matmul(q, k, transpose_b=True)
        scores = tf.cast(scores, tf.float32) * (1.0 / math.sqrt(head_size)) + bias
        probs = self._dropout(tf.nn.softmax(scores, axis=-1), self.attention_dropout, training)
        context = tf.matmul(tf.cast(probs, dtype), v)
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, self.arch.hidden_size])
        kernel, output_bias = block.attention_output
        # Same reason: a bare MatMul, its bias added in float32 after the cast.
        return tf.cast(tf.matmul(context, tf.cast(kernel, dtype)), tf.float32) + output_bias

    def encode(
        self,
        inputs: Mapping[str, tf.Tensor],
        training: bool = False,
        matmul_dtype: tf.DType = tf.float32,
    ) -> dict[str, Any]:
        """The encoder's outputs; `matmul_dtype=tf.bfloat16` runs the matmuls (and the GELU fused
        into the intermediate one) in bfloat16 with float32 accumulation on CPUs that have bf16
        instructions, while embeddings, residuals, layer norms and softmax stay float32."""
        ids = tf.cast(inputs["input_word_ids"], tf.int32)
        mask = tf.cast(inputs["input_mask"], tf.float32)
        types = tf.cast(inputs["input_type_ids"], tf.int32)
        batch, seq = tf.shape(ids)[0], tf.shape(ids)[1]
        hidden_size = self.arch.hidden_size
        x = (
            tf.gather(self.word_embeddings, ids)
            + self.position_embeddings[tf.newaxis, :seq]
            + tf.gather(self.type_embeddings, types)
        )
        # The blocks work on a [batch * seq, hidden] token matrix: every projection is then a
        # plain 2-D MatMul, which is what oneDNN fuses with its bias and activation.
        x = tf.reshape(x, [-1, hidden_size])
        x = self._dropout(self._norm(x, self.embedding_norm), self.hidden_dropout, training)
        bias = (1.0 - mask[:, tf.newaxis, tf.newaxis, :]) * _MASKED_BIAS
        layer_outputs = []
        for block in self.blocks:
            attended = self._dropout(
                self._attention(x, batch, seq, block, bias, training, matmul_dtype),
                self.hidden_dropout,
                training,
            )
            x = self._norm(x + attended, block.attention_norm)
            hidden = self._activation(
                self._project(tf.cast(x, matmul_dtype), *block.intermediate, matmul_dtype)
            )
            out = tf.cast(self._project(hidden, *block.output, matmul_dtype), tf.float32)
            out = self._dropout(out, self.hidden_dropout, training)
            x = self._norm(x + out, block.output_norm)
            layer_outputs.append(tf.reshape(x, [batch, seq, hidden_size]))
        kernel, bias_p = self.pooler
        pooled = tf.tanh(tf.matmul(layer_outputs[-1][:, 0], kernel) + bias_p)
        return {
            "pooled_output": pooled,
            "sequence_output": layer_outputs[-1],
            "encoder_outputs": layer_outputs,
            "default": pooled,
        }

    @tf.function
    def __call__(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, Any]:
        return self.encode(inputs, training=training)

    @tf.function
    def call_bfloat16(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, Any]:
        """Inference with bfloat16 matmuls (`precision: bfloat16`); see `encode`. Its feed-forward
        weights are those of its first trace (constants, see `_project`): a SavedModel's."""
        return self.encode(inputs, training=False, matmul_dtype=tf.bfloat16)

    def input_spec(self) -> dict[str, tf.TensorSpec]:
        return {
            name: tf.TensorSpec([None, None], tf.int32, name=name)
            for name in ("input_word_ids", "input_mask", "input_type_ids")
        }


def save_encoder(encoder: BertEncoder, export_dir: str) -> None:
    """Save as a Reusable SavedModel that `hub.KerasLayer` can load, fine-tune and call.

    Both the inference and the training graph are traced so `training=` works after loading;
    `call_bfloat16` is kept too, for `precision: bfloat16` embeddings.
    """
    spec = encoder.input_spec()
    encoder.__call__.get_concrete_function(spec, training=False)
    encoder.__call__.get_concrete_function(spec, training=True)
    encoder.call_bfloat16.get_concrete_function(spec)

    @tf.function(input_signature=[spec])
    def serving(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # Signatures allow only flat dicts of tensors, so layers become encoder_outputs_<i>.
        out = encoder.encode(inputs, training=False)
        flat = {k: v for k, v in out.items() if k != "encoder_outputs"}
        flat.update({f"encoder_outputs_{i}": t for i, t in enumerate(out["encoder_outputs"])})
        return flat

    # tf.Module's variable lists are properties, which SavedModel does not keep; the Reusable
    # SavedModel API that hub.KerasLayer reads wants them as plain attributes of the root.
    root = tf.train.Checkpoint(encoder=encoder)
    root.__call__ = encoder.__call__
    root.call_bfloat16 = encoder.call_bfloat16
    root.variables = list(encoder.variables)
    root.trainable_variables = list(encoder.trainable_variables)
    root.regularization_losses = []
    tf.saved_model.save(root, export_dir, signatures={"serving_default": serving})
