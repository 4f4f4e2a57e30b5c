"""An encoder artifact's layout: `preprocessor/` and `encoder/` SavedModels in TF-Hub format and
`encoder.json`, the facts every later stage needs (layers, width, seq_length) without loading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from penultimate.artifacts import Manifest, write_text_atomic
from penultimate.errors import InputError

PREPROCESSOR_DIR = "preprocessor"
ENCODER_DIR = "encoder"
INFO_FILE = "encoder.json"


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder pair is, recorded when it is built or imported.

    Args:
        num_layers: transformer blocks (= entries of `encoder_outputs`).
        hidden_size: width of every layer's token states and of `pooled_output`.
        seq_length: most tokens per text the pair is used with ([CLS] and [SEP] included).
        vocab_size: the preprocessor's vocabulary size.
        trainable_variables: the encoder's trainable variable names, for `freeze: top:N`.
        origin: where it came from (built-in name, folder, handles), for people, not for keys.
    """

    num_layers: int
    hidden_size: int
    seq_length: int
    vocab_size: int
    trainable_variables: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The headline facts, for manifests and logs."""
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "seq_length": self.seq_length,
            "vocab_size": self.vocab_size,
            "origin": self.origin,
        }


def encoder_layers(manifest: Manifest | None) -> int:
    """The layers of the encoder of an `encoder` artifact, or inside an `export` artifact, read
    from the artifact's manifest."""
    if manifest is None:
        raise InputError(
            "the encoder or export artifact is not complete (manifest.json missing or invalid)"
        )
    if manifest.stage == "export":
        return int(manifest.metrics["encoder"]["num_layers"])
    return int(manifest.metrics["num_layers"])


@dataclass(frozen=True)
class EncoderPair:
    """Where an encoder artifact's parts live, under one root folder."""

    root: Path

    @property
    def preprocessor(self) -> Path:
        return self.root / PREPROCESSOR_DIR

    @property
    def encoder(self) -> Path:
        return self.root / ENCODER_DIR

    @property
    def info_file(self) -> Path:
        return self.root / INFO_FILE

    def read_info(self) -> EncoderInfo:
        return EncoderInfo(**json.loads(self.info_file.read_text()))

    def write_info(self, info: EncoderInfo) -> None:
        write_text_atomic(self.info_file, json.dumps(asdict(info), indent=2))
