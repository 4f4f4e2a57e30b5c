"""Where an encoder pair comes from (built-in, a safetensors folder or a TF-Hub pair), and the one
pooling enum that turns its token outputs into vectors."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self

from pydantic import Field, model_validator

from penultimate.config.base import _Config

BUILTIN_ENCODER = "minilm-l6"


class EncoderConfig(_Config):
    """Where the encoder pair comes from: the built-in one, a BERT safetensors folder converted
    offline, or any TF-Hub-format preprocessor + encoder pair (TF-Hub / Kaggle handle or local
    SavedModel folder each), imported into the store."""

    source: str | None = Field(
        BUILTIN_ENCODER,
        description="Built-in name (minilm-l6) or a BERT safetensors folder "
        "(config.json, vocab.txt, model.safetensors); the default gives way to hub_preprocessor/"
        "hub_encoder.",
    )
    hub_preprocessor: str | None = Field(
        None,
        description="TF-Hub/Kaggle handle or local SavedModel folder of a BERT preprocessor "
        "(call, tokenize, bert_pack_inputs); goes with hub_encoder.",
    )
    hub_encoder: str | None = Field(
        None,
        description="TF-Hub/Kaggle handle or local SavedModel folder of a BERT encoder "
        "(pooled_output, sequence_output, encoder_outputs); its baked-in dropout applies.",
    )
    seq_length: int = Field(
        128, ge=8, le=512, description="Most tokens per text, [CLS] and [SEP] included."
    )
    hidden_dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Encoder dropout while fine-tuning a converted encoder; None = config.json's.",
    )
    attention_dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Attention dropout while fine-tuning a converted encoder; None = "
        "config.json's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _hub_pair_replaces_the_default_source(cls, data: Any) -> Any:
        # The default source gives way to a hub pair: a UI form always sends the default along.
        hub_given = isinstance(data, dict) and any(
            data.get(name) is not None for name in ("hub_preprocessor", "hub_encoder")
        )
        if hub_given and data.get("source", BUILTIN_ENCODER) == BUILTIN_ENCODER:
            return {**data, "source": None}
        return data

    @model_validator(mode="after")
    def _one_way_to_name_the_encoder(self) -> Self:
        if (self.hub_preprocessor is None) != (self.hub_encoder is None):
            raise ValueError("hub_preprocessor and hub_encoder go together")
        if self.is_hub_pair:
            if self.source is not None:
                raise ValueError(
                    "source and hub_preprocessor/hub_encoder are two ways to name the encoder; "
                    "give one"
                )
            for name in ("hidden_dropout", "attention_dropout"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name}: a TF-Hub encoder's dropout is baked into its SavedModel"
                    )
        elif self.source is None:
            raise ValueError("source: name a built-in encoder or a folder, or give hub_* handles")
        return self

    @property
    def is_hub_pair(self) -> bool:
        return self.hub_encoder is not None


class Pooling(StrEnum):
    """How one encoder layer's token outputs become one vector: the pooler output (last layer
    only), the [CLS] token, mask-aware mean or max, or mean and max side by side."""

    pooled = "pooled"
    cls = "cls"
    mean = "mean"
    max = "max"
    mean_max = "mean_max"
