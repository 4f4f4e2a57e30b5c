"""Encoder task: build a TF-Hub-format preprocessor/encoder pair from BERT safetensors, cached.

The artifact key covers the weights' checksum, so new weights in the same folder rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EncoderConfig
from penultimate.encoders.bert_convert import (
    ENCODER_STAGE,
    build_encoder_pair,
    resolve_weights_folder,
    weights_fingerprint,
)
from tasks.caching import artifact_task


def encoder_identity(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ArtifactRef]]:
    config: EncoderConfig = params["config"]
    folder = resolve_weights_folder(config.source)
    return {"config": config, "weights_sha256": weights_fingerprint(folder)}, []


@artifact_task(ENCODER_STAGE, identity=encoder_identity, name="build-encoder")
def build_encoder(config: EncoderConfig, store_root: str) -> ArtifactRef:
    """Convert the configured weights into `preprocessor/` and `encoder/` SavedModels."""
    folder = resolve_weights_folder(config.source)
    key_config, _ = encoder_identity({"config": config})
    get_run_logger().info("converting %s (seq_length %d)", folder, config.seq_length)

    def write(out: Path) -> dict[str, Any]:
        build_encoder_pair(
            folder,
            out,
            seq_length=config.seq_length,
            hidden_dropout=config.hidden_dropout,
            attention_dropout=config.attention_dropout,
        )
        return {"weights_folder": str(folder)}

    return ArtifactStore(store_root).publish(ENCODER_STAGE, key_config, write)
