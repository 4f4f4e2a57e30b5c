"""The text classifier: TF-Hub BERT encoder -> pooling -> hidden Dense layers -> Dense, with every
dropout placed, shaped and limited as `TrainConfig.dropout` says, encoder blocks frozen or not, and
the lexical branch's TF-IDF logits added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from penultimate.config import Pooling, TrainConfig
from penultimate.dropout import StructuredDropout
from penultimate.features import LoadedEncoder, pool_encoder_outputs
from penultimate.lexical import LexicalFeatures, LexicalVocabulary

# Transformer blocks and the pooler as TF-Hub BERT encoders name their variables: `layer_<i>/...`
# and `pooler/...` in the built-in encoder, `transformer/layer_<i>/...` and `pooler_transform/...`
# in TensorFlow Model Garden exports (the TF-Hub / Kaggle BERT family).
TRANSFORMER_BLOCK = re.compile(r"(?:^|/)layer_(\d+)/")
POOLER = re.compile(r"(?:^|/)pooler(?:_transform)?/")
# The classifier's inputs are the encoder's plus the raw text, for the lexical branch.
ENCODER_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
TEXT_INPUT = "text"


# Named intermediate outputs collected during one eager forward pass (see `tapped_forward`).
Taps = dict[str, tf.Tensor] | None


def classifier_inputs(loaded: LoadedEncoder, texts: Sequence[str]) -> dict[str, tf.Tensor]:
    """A `TextClassifier`'s inputs for `texts`: the encoder's, padded to the longest text, and
    the text itself for the lexical branch."""
    inputs = loaded.tokenize(texts)
    inputs[TEXT_INPUT] = tf.constant(list(texts), tf.string)
    return inputs


class EncoderStructureError(ValueError):
    """`freeze: top:N` cannot tell the encoder's blocks or pooler apart by variable name."""


class WarmupLinearDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`.

    Args:
        peak: the learning rate reached at the end of warm-up.
        warmup_steps: optimiser steps of warm-up (0 = start at the peak).
        total_steps: optimiser steps of the whole run.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warm = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * tf.clip_by_value(tf.minimum(warm, decay), 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def encoder_variables_to_train(
    names: list[str], num_layers: int, top_blocks: int | None
) -> list[str]:
    """The names of the trainable encoder variables that `freeze` trains: all (None), none (0),
    or those of the top `top_blocks` blocks and of the pooler.

    Raises EncoderStructureError unless every block 0..num_layers-1 and the pooler are found, so
    `top:N` can never silently train less than it says.
    """
    if top_blocks is None:
        return list(names)
    if top_blocks == 0:
        return []
    blocks = {int(m.group(1)) for m in map(TRANSFORMER_BLOCK.search, names) if m}
    if blocks != set(range(num_layers)):
        raise EncoderStructureError(
            f"freeze: top:{top_blocks} needs the encoder's {num_layers} blocks named "
            f"layer_<i>/...; found blocks {sorted(blocks)} (use freeze: all or none)"
        )
    if not any(POOLER.search(name) for name in names):
        raise EncoderStructureError(
            f"freeze: top:{top_blocks} needs the pooler's variables (pooler/... or "
            "pooler_transform/...); this encoder has none (use freeze: all or none)"
        )
    first = num_layers - top_blocks
    return [
        name
        for name in names
        if ((block := TRANSFORMER_BLOCK.search(name)) and int(block.group(1)) >= first)
        or POOLER.search(name)
    ]


class TextClassifier(tf_keras.Model):
    """BERT-style classifier with configurable dropout and an optional lexical branch, on encoder
    inputs (token ids) plus the raw `text` (see `classifier_inputs`).

    Args:
        encoder: handle or path of a TF-Hub BERT encoder taking
            `input_word_ids`/`input_mask`/`input_type_ids`.
        config: the training config (pooling, layer, hidden layers, dropout, freeze, lexical).
        num_classes: 2 gives one sigmoid logit; more give one softmax logit per class.
        num_layers: encoder blocks, to resolve `freeze: top:N`.
        vocabulary: the lexical branch's terms and idf; required when `config.lexical` is set.

    Example:
        >>> model = TextClassifier("encoder/", TrainConfig(), 2, 6, vocabulary=vocabulary)
        >>> inputs = classifier_inputs(load_encoder(pair), ["hello"])
        >>> logits = model(inputs)          # [1, 1]: deep logit + lexical logit
        >>> features = model.embed(inputs)  # the penultimate layer, before head dropout
    """

    def __init__(
        self,
        encoder: str,
        config: TrainConfig,
        num_classes: int,
        num_layers: int,
        vocabulary: LexicalVocabulary | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (config.lexical is None) != (vocabulary is None):
            raise ValueError("a lexical vocabulary is needed exactly when config.lexical is set")
        self.train_config = config
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.encoder_handle = encoder
        self.encoder = hub.KerasLayer(encoder, trainable=config.trained_top_blocks != 0)
        dropouts: dict[str, list[StructuredDropout]] = {}
        for index, spec in enumerate(config.dropout):
            layer = StructuredDropout(
                spec.rate,
                mask=str(spec.mask),
                columns=spec.columns,
                seed=config.seed + index,
                name=f"dropout_{index}_{spec.at.replace(':', '_')}",
            )
            dropouts.setdefault(spec.at, []).append(layer)
        # Assigned once, complete: Keras tracks attribute containers and rejects later mutation.
        self.dropouts = dropouts
        self.hidden_layers = [
            tf_keras.layers.Dense(h.units, activation=str(h.activation), name=f"hidden_{i}")
            for i, h in enumerate(config.hidden)
        ]
        outputs = 1 if num_classes == 2 else num_classes
        self.output_layer = tf_keras.layers.Dense(outputs, name="logits")
        self.vocabulary = vocabulary
        self.lexical_features: LexicalFeatures | None = None
        self.lexical_layer: tf_keras.layers.Dense | None = None
        if vocabulary is not None:
            self.lexical_features = LexicalFeatures(
                vocabulary.terms, vocabulary.idf, vocabulary.ngrams
            )
            # No bias: the deep output layer has one.
            self.lexical_layer = tf_keras.layers.Dense(
                outputs, use_bias=False, name="lexical_logits"
            )
        self.encoder_optimizer: tf_keras.optimizers.Optimizer | None = None

    def get_config(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder_handle,
            "config": self.train_config.model_dump(mode="json"),
            "num_classes": self.num_classes,
            "num_layers": self.num_layers,
            "vocabulary": None if self.vocabulary is None else asdict(self.vocabulary),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextClassifier:
        options = dict(config)
        options["config"] = TrainConfig.model_validate(options["config"])
        if options.get("vocabulary") is not None:
            options["vocabulary"] = LexicalVocabulary(**options["vocabulary"])
        return cls(**options)

    def run_encoder(self, inputs: Mapping[str, tf.Tensor], training: bool) -> dict[str, Any]:
        """The encoder's outputs for the classifier's `inputs` (the `text` left out)."""
        return self.encoder({key: inputs[key] for key in ENCODER_INPUTS}, training=training)

    def lexical_logits(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor | None:
        """The lexical branch's term of the logits (deterministic: it has no dropout), or None
        without a lexical branch."""
        if self.lexical_features is None or self.lexical_layer is None:
            return None
        return self.lexical_layer(self.lexical_features(inputs[TEXT_INPUT]))

    def _drop(self, at: str, x: tf.Tensor, active: bool, taps: Taps = None) -> tf.Tensor:
        for layer in self.dropouts.get(at, []):
            if taps is not None:
                taps[f"{layer.name}:input"] = x
            x = layer(x, training=active)
            if taps is not None:
                taps[layer.name] = x
        return x

    def encoder_features(
        self, inputs: Mapping[str, tf.Tensor], encoder_training: bool, dropout: bool
    ) -> tf.Tensor:
        """Pooled encoder output after any `sequence` dropout: [batch, encoder features]."""
        outputs = self.run_encoder(inputs, encoder_training)
        return self.pool(outputs, inputs["input_mask"], dropout)

    def pool(
        self, outputs: Mapping[str, Any], mask: tf.Tensor, dropout: bool, taps: Taps = None
    ) -> tf.Tensor:
        """The configured layer and pooling of encoder outputs, with `sequence` dropout first."""
        config = self.train_config
        if config.pooling == Pooling.pooled:
            return outputs["pooled_output"]
        states = self._drop("sequence", outputs["encoder_outputs"][config.layer], dropout, taps)
        return pool_encoder_outputs({"encoder_outputs": [states]}, mask, 0, config.pooling)

    def penultimate(self, features: tf.Tensor, dropout: bool, taps: Taps = None) -> tf.Tensor:
        """Pooled encoder features to the head dropout's input: the embedding we serve."""
        x = self._drop("pooled", features, dropout, taps)
        for index, dense in enumerate(self.hidden_layers):
            x = dense(x)
            if taps is not None:
                taps[dense.name] = x
            x = self._drop(f"hidden:{index}", x, dropout, taps)
        return x

    def head(
        self,
        penultimate: tf.Tensor,
        dropout: bool,
        lexical_logits: tf.Tensor | None,
        taps: Taps = None,
    ) -> tf.Tensor:
        """Logits: the output layer on the (head-dropped) penultimate features, plus the lexical
        branch's term when there is one (see `lexical_logits`)."""
        logits = self.output_layer(self._drop("head", penultimate, dropout, taps))
        return logits if lexical_logits is None else logits + lexical_logits

    def tapped_forward(
        self, inputs: Mapping[str, tf.Tensor], training: bool
    ) -> dict[str, tf.Tensor]:
        """Every named intermediate output of one forward pass, in order: `encoder_block_<i>`
        token states, `pooled`, `hidden_<i>`, each dropout layer's input (`<name>:input`) and
        output (`<name>`), `penultimate` (the served embedding's layer), `lexical_logits` (with a
        lexical branch) and `logits`. With `training=True` every dropout is on and a trainable
        encoder runs its own dropout too."""
        taps: dict[str, tf.Tensor] = {}
        outputs = self.run_encoder(inputs, training)
        for index, states in enumerate(outputs["encoder_outputs"]):
            taps[f"encoder_block_{index}"] = states
        taps["pooled"] = self.pool(outputs, inputs["input_mask"], training, taps)
        taps["penultimate"] = self.penultimate(taps["pooled"], training, taps)
        lexical_logits = self.lexical_logits(inputs)
        if lexical_logits is not None:
            taps["lexical_logits"] = lexical_logits
        taps["logits"] = self.head(taps["penultimate"], training, lexical_logits, taps)
        return taps

    def logits_from_encoder_outputs(
        self,
        outputs: Mapping[str, Any],
        mask: tf.Tensor,
        dropout: bool,
        lexical_logits: tf.Tensor | None,
    ) -> tf.Tensor:
        """Everything after the encoder; MC-dropout reuses one encoder pass (and one lexical
        term) for many samples."""
        penultimate = self.penultimate(self.pool(outputs, mask, dropout), dropout)
        return self.head(penultimate, dropout, lexical_logits)

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        active = bool(training)
        outputs = self.run_encoder(inputs, active)
        return self.logits_from_encoder_outputs(
            outputs, inputs["input_mask"], active, self.lexical_logits(inputs)
        )

    def embed(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Penultimate features, deterministic: encoder and every dropout in inference mode."""
        return self.penultimate(self.encoder_features(inputs, False, False), False)

    def encoder_variables_to_train(self) -> list[tf.Variable]:
        # Only trainable variables: a SavedModel may carry others (Model Garden: do_lower_case).
        variables = {v.name: v for v in self.encoder.trainable_weights}
        names = encoder_variables_to_train(
            list(variables), self.num_layers, self.train_config.trained_top_blocks
        )
        return [variables[name] for name in names]

    def head_variables(self) -> list[tf.Variable]:
        encoder_ids = {id(v) for v in self.encoder.weights}
        return [v for v in self.trainable_variables if id(v) not in encoder_ids]

    def compile_with_optimizers(
        self,
        head_optimizer: tf_keras.optimizers.Optimizer,
        encoder_optimizer: tf_keras.optimizers.Optimizer | None,
        **compile_kwargs: Any,
    ) -> None:
        """Compile with one optimiser for the head and one (smaller rate) for encoder blocks."""
        self.compile(optimizer=head_optimizer, **compile_kwargs)
        self.encoder_optimizer = encoder_optimizer

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        head_vars = self.head_variables()
        encoder_vars = self.encoder_variables_to_train() if self.encoder_optimizer else []
        with tf.GradientTape() as tape:
            logits = self(x, training=True)
            loss = self.compute_loss(x, y, logits, sample_weight)
        gradients = tape.gradient(loss, head_vars + encoder_vars)
        # Only the chosen variables get gradients applied: frozen blocks stay bit-identical.
        self.optimizer.apply_gradients(zip(gradients[: len(head_vars)], head_vars, strict=True))
        if encoder_vars:
            self.encoder_optimizer.apply_gradients(
                zip(gradients[len(head_vars) :], encoder_vars, strict=True)
            )
        return self.compute_metrics(x, y, logits, sample_weight)


class HeadModel(tf_keras.Model):
    """The classifier's layers after the encoder, trained on cached pooled encoder features:
    inputs `{"features": [batch, F] float32, "text": [batch] string}` (the text feeds the
    lexical branch).

    It shares its layers (and so its weights) with `classifier`.
    """

    def __init__(self, classifier: TextClassifier, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        return self.logits(
            inputs["features"], bool(training), self.classifier.lexical_logits(inputs)
        )

    def logits(
        self, features: tf.Tensor, dropout: bool, lexical_logits: tf.Tensor | None
    ) -> tf.Tensor:
        """Logits from pooled `features` [batch, F] and the batch's lexical term (or None)."""
        penultimate = self.classifier.penultimate(features, dropout)
        return self.classifier.head(penultimate, dropout, lexical_logits)
