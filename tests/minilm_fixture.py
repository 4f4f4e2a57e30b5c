"""The built-in MiniLM encoder pair for the tests, built once per test session into a store the
session's pytest-xdist workers share; run as a script, it is the background build conftest starts.

`python tests/minilm_fixture.py STORE` builds the pair into STORE unless it is there already.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import penultimate  # noqa: F401  (selects tf-keras before anything imports TensorFlow)
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EncoderConfig
from penultimate.stages import ENCODER_STAGE

# The background build holds the lock from before it starts until it exits; a fixture that
# takes the lock therefore sees either no pair (and builds it) or the finished one.
LOCK_FILE = "minilm.lock"
STORE_FOLDER = "minilm-store"


def publish_minilm_pair(session_root: Path) -> ArtifactRef:
    """Build the built-in encoder under the key the build-encoder task computes (so flows reuse
    it) into `session_root`'s shared store, unless a valid one is there; return its reference.

    The caller holds `session_root / LOCK_FILE`.
    """
    from penultimate.encoders.bert_convert import build_encoder_pair
    from penultimate.encoders.pair import EncoderPair
    from penultimate.encoders.sources import resolve_weights_folder
    from tasks.encoder import encoder_identity

    config = EncoderConfig()
    key_config, _ = encoder_identity({"config": config})

    def build(out: Path) -> dict[str, Any]:
        build_encoder_pair(resolve_weights_folder(config.source or ""), out, seq_length=128)
        return EncoderPair(out).read_info().summary()

    shared = ArtifactStore(session_root / STORE_FOLDER)
    ref = shared.ref_for(ENCODER_STAGE, key_config, [])
    if shared.validate(ref) is None:
        shared.publish(ENCODER_STAGE, key_config, build, ref=ref)
    return ref


if __name__ == "__main__":
    publish_minilm_pair(Path(sys.argv[1]))
