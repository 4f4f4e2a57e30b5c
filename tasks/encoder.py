"""Encoder task: the configured encoder pair as an artifact, cached: converted from BERT
safetensors (built-in or a folder) or imported from a TF-Hub / Kaggle pair.

The artifact key covers the weights' content, never a path: new bytes at the same path give a new
key, the same bytes moved elsewhere the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from penultimate.artifacts import ArtifactRef
from penultimate.config import EncoderConfig
from penultimate.encoders.pair import EncoderPair
from penultimate.encoders.sources import (
    hub_pair_fingerprint,
    resolve_weights_folder,
    weights_fingerprint,
)
from penultimate.stages import ENCODER_STAGE
from tasks.caching import artifact_task

# The library modules that load TensorFlow (or scikit-learn) are imported inside the task bodies:
# a run whose every task is cached then never imports them (see docs/DESIGN.md).


def encoder_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: EncoderConfig = params["config"]
    if config.is_hub_pair:
        return {"hub_pair": hub_pair_fingerprint(config), "seq_length": config.seq_length}, []
    folder = resolve_weights_folder(config.source or "")
    return {"config": config, "weights_sha256": weights_fingerprint(folder)}, []


@artifact_task(ENCODER_STAGE, identity=encoder_identity, name="build-encoder")
def build_encoder(out: Path, config: EncoderConfig, store_root: str) -> dict[str, Any]:
    """Convert the configured weights, or import the configured TF-Hub pair, into
    `preprocessor/` and `encoder/` SavedModels with `encoder.json`."""
    from penultimate.encoders.bert_convert import build_encoder_pair
    from penultimate.encoders.hub_import import import_hub_pair

    logger = get_run_logger()
    pair = EncoderPair(out)
    if config.is_hub_pair:
        logger.info("importing %s + %s", config.hub_preprocessor, config.hub_encoder)
        info = import_hub_pair(config, pair)
    else:
        folder = resolve_weights_folder(config.source or "")
        logger.info("converting %s (seq_length %d)", folder, config.seq_length)
        build_encoder_pair(
            folder,
            out,
            seq_length=config.seq_length,
            hidden_dropout=config.hidden_dropout,
            attention_dropout=config.attention_dropout,
        )
        info = pair.read_info()
    logger.info(
        "encoder: %d layers, hidden size %d, seq_length %d, vocabulary %d",
        info.num_layers,
        info.hidden_size,
        info.seq_length,
        info.vocab_size,
    )
    return info.summary()
