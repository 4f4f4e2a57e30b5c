"""The build-encoder flow: built-in weights, a BERT safetensors folder or a TF-Hub / Kaggle pair ->
TF-Hub-format preprocessor + encoder artifact.

Run with `penultimate build-encoder [--config FILE]` or as the `build-encoder` deployment.
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EncoderConfig
from tasks.encoder import build_encoder

DEFAULT_ENCODER = EncoderConfig()


@flow(name="build-encoder", log_prints=True)
def build_encoder_flow(
    config: EncoderConfig = DEFAULT_ENCODER, store_root: str | None = None
) -> ArtifactRef:
    """Build (or reuse) the encoder pair; the built-in `minilm-l6` by default."""
    return build_encoder(config=config, store_root=str(ArtifactStore(store_root).root))
