"""The encoders the tests build: the built-in MiniLM pair (once per test session, into a store the
session's pytest-xdist workers share) and a tiny random BERT checkpoint folder (converter and
training-mechanics tests).

`python tests/encoder_fixtures.py ROOT` builds the MiniLM pair into ROOT's store unless it is
there already: the background build conftest starts.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

import penultimate  # noqa: F401  (selects tf-keras before anything imports TensorFlow)
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EncoderConfig
from penultimate.encoders.sources import resolve_weights_folder
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


# A BERT small enough to train in a blink, with MiniLM's vocabulary: 3 blocks, so "top:2"
# freezes one of them.
TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def write_tiny_bert_folder(folder: Path) -> Path:
    """A Hugging Face BERT checkpoint folder (config.json, vocab.txt, model.safetensors) of
    TINY_BERT's shape with random weights, named as a task checkpoint names them ("bert.")."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**TINY_BERT, "model_type": "bert"}))
    shutil.copy(resolve_weights_folder("minilm-l6") / "vocab.txt", folder / "vocab.txt")
    save_file(tiny_bert_weights(TINY_BERT), str(folder / "model.safetensors"))
    return folder


def tiny_bert_weights(arch: dict[str, int]) -> dict[str, np.ndarray]:
    """Random weights (normal, sd 0.02, seed 0) for every tensor of a BERT of shape `arch`."""
    rng = np.random.default_rng(0)
    hidden, inter = arch["hidden_size"], arch["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (arch["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": (arch["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
        "pooler.dense.weight": (hidden, hidden),
        "pooler.dense.bias": (hidden,),
    }
    for i in range(arch["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            shapes[f"{p}.{name}.weight"] = (hidden, hidden)
            shapes[f"{p}.{name}.bias"] = (hidden,)
        shapes[f"{p}.intermediate.dense.weight"] = (inter, hidden)
        shapes[f"{p}.intermediate.dense.bias"] = (inter,)
        shapes[f"{p}.output.dense.weight"] = (hidden, inter)
        shapes[f"{p}.output.dense.bias"] = (hidden,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}.{norm}.weight"] = (hidden,)
            shapes[f"{p}.{norm}.bias"] = (hidden,)
    # A task checkpoint's "bert." prefix must be understood too.
    return {f"bert.{k}": rng.normal(0, 0.02, s).astype(np.float32) for k, s in shapes.items()}


if __name__ == "__main__":
    publish_minilm_pair(Path(sys.argv[1]))
