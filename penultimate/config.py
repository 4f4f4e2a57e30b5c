"""Pydantic configuration models, one per flow: they validate CLI/YAML input, become the Prefect UI
forms, and are written into every artifact's manifest.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from penultimate.errors import InputError


class _Config(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class FileFormat(StrEnum):
    auto = "auto"
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


class TextFormat(StrEnum):
    plain = "plain"
    email = "email"


class EmptyTextPolicy(StrEnum):
    drop = "drop"
    error = "error"


class SplitRatios(_Config):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split ratios must sum to 1, got {total:g}")
        return self


class IngestConfig(_Config):
    """Raw corpus -> dataset artifact: Parquet shards with `id`, `text`, `label`, `split`."""

    source: str = Field(
        description="File or folder of Parquet/CSV/JSONL files; local path or fsspec URL."
    )
    format: FileFormat = Field(FileFormat.auto, description="File format; auto = from suffix.")
    text_format: TextFormat = Field(
        TextFormat.plain, description="email = the text column holds raw RFC 822 messages."
    )
    id_column: str = "id"
    text_column: str = "text"
    label_column: str | None = Field("label", description="None for an unlabelled corpus.")
    passthrough_columns: list[str] = Field(default_factory=list)
    shard_rows: int = Field(2000, ge=1, description="Rows per output Parquet shard.")
    split: SplitRatios = Field(default_factory=SplitRatios)
    split_salt: str = Field(
        "penultimate", description="Mixed into the id hash; change it to draw a different split."
    )
    empty_text: EmptyTextPolicy = Field(
        EmptyTextPolicy.drop,
        description="What to do with null/empty text: drop and count, or error.",
    )
    max_text_chars: int = Field(
        20_000,
        ge=1,
        description="Texts are cut to this many characters (tokenizers truncate anyway).",
    )

    @field_validator("passthrough_columns")
    @classmethod
    def _unique(cls, columns: list[str]) -> list[str]:
        if len(set(columns)) != len(columns):
            raise ValueError("passthrough_columns has duplicates")
        reserved = {"id", "text", "label", "split"} & set(columns)
        if reserved:
            raise ValueError(f"passthrough_columns may not name output columns {sorted(reserved)}")
        return columns


class EncoderConfig(_Config):
    """A TF-Hub-format encoder pair to build (built-in or converted from a safetensors folder)."""

    source: str = Field(
        "minilm-l6",
        description="Built-in name (minilm-l6) or a BERT safetensors folder "
        "(config.json, vocab.txt, model.safetensors).",
    )
    seq_length: int = Field(128, ge=8, le=512, description="Preprocessor output length.")
    hidden_dropout: float | None = Field(
        None, ge=0, lt=1, description="Encoder dropout while fine-tuning; None = config.json's."
    )
    attention_dropout: float | None = Field(
        None, ge=0, lt=1, description="Attention dropout while fine-tuning; None = config.json's."
    )


class ConfigFileError(InputError):
    """A config file that cannot be read or does not validate; the message names file and field."""


C = TypeVar("C", bound=BaseModel)


def load_config(model: type[C], path: str | Path, section: str | None = None) -> C:
    """Read YAML (or JSON) from `path` into `model`, naming the file and field on any error."""
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read config: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{path}: not valid YAML: {error}") from None
    if section is not None:
        data = (data or {}).get(section, {})
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping of {model.__name__} fields")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigFileError(f"{path}: invalid {model.__name__}: {problems}") from None
