"""Convert a BERT-family safetensors folder into a TF-Hub-format preprocessor/encoder pair, offline.

Needs `config.json`, `vocab.txt` and `model.safetensors`; `minilm-l6` names the built-in folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from penultimate.encoders.bert import BertArchitecture, BertEncoder, save_encoder
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.encoders.preprocessor import save_preprocessor
from penultimate.encoders.sources import EncoderSourceError

# Checkpoints saved from task models (BertForSequenceClassification, ...) prefix the encoder.
_ENCODER_PREFIXES = ("bert.", "model.")


def read_architecture(folder: Path) -> BertArchitecture:
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise EncoderSourceError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not 'bert'"
        )
    try:
        return BertArchitecture.from_hf_config(config)
    except KeyError as missing:
        raise EncoderSourceError(f"{folder / 'config.json'}: missing field {missing}") from None


def read_weights(folder: Path, arch: BertArchitecture) -> dict[str, np.ndarray]:
    """The encoder's tensors with any task-model prefix removed, checked against `arch`."""
    raw = load_file(str(folder / "model.safetensors"))
    weights: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        for prefix in _ENCODER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        weights[name] = value.astype(np.float32) if value.dtype != np.int64 else value
    expected = {
        "embeddings.word_embeddings.weight": (arch.vocab_size, arch.hidden_size),
        "pooler.dense.weight": (arch.hidden_size, arch.hidden_size),
        f"encoder.layer.{arch.num_layers - 1}.output.dense.weight": (
            arch.hidden_size,
            arch.intermediate_size,
        ),
    }
    for name, shape in expected.items():
        if name not in weights:
            raise EncoderSourceError(f"{folder / 'model.safetensors'}: no tensor {name}")
        if weights[name].shape != shape:
            raise EncoderSourceError(
                f"{folder / 'model.safetensors'}: {name} has shape {weights[name].shape}, "
                f"config.json implies {shape}"
            )
    return weights


def build_encoder_pair(
    folder: Path,
    out: Path,
    *,
    seq_length: int,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
) -> EncoderPair:
    """Write `out/preprocessor` and `out/encoder` SavedModels; dropout defaults to config.json's."""
    arch = read_architecture(folder)
    if seq_length > arch.max_positions:
        raise EncoderSourceError(
            f"seq_length {seq_length} exceeds the model's max_position_embeddings "
            f"{arch.max_positions}"
        )
    encoder = BertEncoder(
        arch,
        read_weights(folder, arch),
        hidden_dropout=arch.hidden_dropout if hidden_dropout is None else hidden_dropout,
        attention_dropout=arch.attention_dropout
        if attention_dropout is None
        else attention_dropout,
    )
    pair = EncoderPair(out)
    save_encoder(encoder, str(pair.encoder))
    save_preprocessor(folder / "vocab.txt", pair.preprocessor, seq_length=seq_length)
    pair.write_info(
        EncoderInfo(
            num_layers=arch.num_layers,
            hidden_size=arch.hidden_size,
            seq_length=seq_length,
            vocab_size=arch.vocab_size,
            trainable_variables=[v.name for v in encoder.trainable_variables],
            origin={"weights_folder": str(folder)},
        )
    )
    return pair
