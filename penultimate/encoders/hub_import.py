"""Import any TF-Hub-format BERT pair (a TF-Hub / Kaggle handle or a local SavedModel folder each)
into an encoder artifact: resolved as `tensorflow_hub` does, content-hashed, copied and checked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import tensorflow as tf

from penultimate.artifacts import sha256_file_memo
from penultimate.config import EncoderConfig
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.errors import InputError

ENCODER_OUTPUTS = ("pooled_output", "sequence_output", "encoder_outputs", "default")
_SAVED_MODEL = "saved_model.pb"


class HubPairError(InputError):
    """A handle or folder that does not resolve, or a SavedModel without the BERT interface; the
    message names the `encoder.*` field."""


def resolve_handle(handle: str, field: str) -> Path:
    """The local SavedModel folder of `handle`: a folder as given, or a TF-Hub / Kaggle URL
    resolved through `tensorflow_hub.resolve` (its cache, `TFHUB_CACHE_DIR`, first)."""
    if "://" in handle and not handle.startswith("file://"):
        import tensorflow_hub as hub

        try:
            folder = Path(hub.resolve(handle))
        except Exception as error:  # urllib, HTTP and TF file errors alike
            cache = os.environ.get("TFHUB_CACHE_DIR", "(TFHUB_CACHE_DIR not set)")
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise HubPairError(
                f"encoder.{field}: handle {handle!r} does not resolve: not in the TF-Hub cache "
                f"{cache} and not downloadable ({type(error).__name__}: {first_line})"
            ) from None
    else:
        folder = Path(handle.removeprefix("file://")).expanduser()
        if not folder.is_dir():
            raise HubPairError(f"encoder.{field}: {handle!r} is not an existing folder")
    if not (folder / _SAVED_MODEL).is_file():
        raise HubPairError(f"encoder.{field}: {handle!r} ({folder}) holds no {_SAVED_MODEL}")
    return folder.resolve()


def saved_model_fingerprint(folder: Path) -> str:
    """sha256 over every file's relative path and content: new bytes at the same path give a new
    fingerprint, the same bytes anywhere the same one."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(sha256_file_memo(file).encode())
    return digest.hexdigest()


def hub_pair_fingerprint(config: EncoderConfig) -> dict[str, str]:
    """The content fingerprints of the configured pair (the encoder artifact's identity)."""
    assert config.hub_preprocessor is not None and config.hub_encoder is not None
    return {
        "preprocessor_sha256": saved_model_fingerprint(
            resolve_handle(config.hub_preprocessor, "hub_preprocessor")
        ),
        "encoder_sha256": saved_model_fingerprint(
            resolve_handle(config.hub_encoder, "hub_encoder")
        ),
    }


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
