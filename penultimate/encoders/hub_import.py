"""Import any TF-Hub-format BERT pair (a TF-Hub / Kaggle handle or a local SavedModel folder each)
into an encoder artifact: resolved as `tensorflow_hub` does, content-hashed, copied and checked.
"""

from __future__ import annotations

import shutil
from typing import Any

import tensorflow as tf

from penultimate.config import EncoderConfig
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.encoders.sources import HubPairError, resolve_handle

ENCODER_OUTPUTS = ("pooled_output", "sequence_output", "encoder_outputs", "default")


def _check_preprocessor(preprocessor: Any, handle: str, seq_length: int) -> dict[str, tf.Tensor]:
    """Encoder inputs of length `seq_length` through the standard calls, or a HubPairError."""
    for name in ("tokenize", "bert_pack_inputs"):
        if not hasattr(preprocessor, name):
            raise HubPairError(
                f"encoder.hub_preprocessor: {handle!r} is not a TF-Hub BERT preprocessor "
                f"(it has no `{name}`)"
            )
    if not hasattr(preprocessor.tokenize, "get_special_tokens_dict"):
        raise HubPairError(
            f"encoder.hub_preprocessor: {handle!r} has no tokenize.get_special_tokens_dict"
        )
    try:
        tokens = preprocessor.tokenize(tf.constant(["a probe text", ""]))
        return preprocessor.bert_pack_inputs([tokens], seq_length=tf.constant(seq_length))
    except (tf.errors.OpError, TypeError, ValueError) as error:
        raise HubPairError(
            f"encoder.hub_preprocessor: {handle!r}: tokenize + bert_pack_inputs failed: "
            f"{str(error).splitlines()[0]}"
        ) from None


def _check_encoder(encoder: Any, inputs: dict[str, tf.Tensor], handle: str) -> dict[str, Any]:
    try:
        outputs = encoder(inputs, training=False)
    except (tf.errors.OpError, TypeError, ValueError) as error:
        raise HubPairError(
            f"encoder.hub_encoder: {handle!r} cannot encode the preprocessor's inputs "
            f"(input_word_ids/input_mask/input_type_ids of length "
            f"{int(inputs['input_word_ids'].shape[1])}): {str(error).splitlines()[0]}"
        ) from None
    missing = [name for name in ENCODER_OUTPUTS if name not in outputs]
    if missing:
        raise HubPairError(
            f"encoder.hub_encoder: {handle!r} is not a TF-Hub BERT encoder: no {missing} output"
        )
    return outputs


def import_hub_pair(config: EncoderConfig, pair: EncoderPair) -> EncoderInfo:
    """Copy the configured pair into `pair`, check its standard interface at `seq_length` on the
    copies, and record what it is in `pair.info_file`."""
    assert config.hub_preprocessor is not None and config.hub_encoder is not None
    sources = {
        "hub_preprocessor": resolve_handle(config.hub_preprocessor, "hub_preprocessor"),
        "hub_encoder": resolve_handle(config.hub_encoder, "hub_encoder"),
    }
    shutil.copytree(sources["hub_preprocessor"], pair.preprocessor)
    shutil.copytree(sources["hub_encoder"], pair.encoder)
    import tensorflow_text  # noqa: F401  (registers the ops TF-Hub preprocessors use)

    preprocessor = tf.saved_model.load(str(pair.preprocessor))
    encoder = tf.saved_model.load(str(pair.encoder))
    inputs = _check_preprocessor(preprocessor, config.hub_preprocessor, config.seq_length)
    outputs = _check_encoder(encoder, inputs, config.hub_encoder)
    special = {k: int(v) for k, v in preprocessor.tokenize.get_special_tokens_dict().items()}
    info = EncoderInfo(
        num_layers=len(outputs["encoder_outputs"]),
        hidden_size=int(outputs["sequence_output"].shape[-1]),
        seq_length=config.seq_length,
        vocab_size=special["vocab_size"],
        trainable_variables=[v.name for v in getattr(encoder, "trainable_variables", [])],
        origin={
            "hub_preprocessor": config.hub_preprocessor,
            "hub_encoder": config.hub_encoder,
            "resolved": {field: str(folder) for field, folder in sources.items()},
        },
    )
    pair.write_info(info)
    return info
