"""The ingest stage's config: which corpus, which columns, how text is cleaned and how rows are
split and sharded into a dataset artifact."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, field_validator, model_validator

from penultimate.config.base import _Config


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
    keep = "keep"


class SplitRatios(_Config):
    train: float = Field(0.8, ge=0, le=1, description="Share of rows in the train split.")
    val: float = Field(0.1, ge=0, le=1, description="Share of rows in the validation split.")
    test: float = Field(0.1, ge=0, le=1, description="Share of rows in the test split.")

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
    id_column: str = Field("id", description="Source column with a unique id per row.")
    text_column: str = Field("text", description="Source column with the text (or raw mail).")
    label_column: str | None = Field("label", description="None for an unlabelled corpus.")
    passthrough_columns: list[str] = Field(
        default_factory=list, description="Extra source columns carried into the dataset."
    )
    shard_rows: int = Field(2000, ge=1, description="Rows per output Parquet shard.")
    split: SplitRatios = Field(
        default_factory=SplitRatios, description="Train/val/test shares; they must sum to 1."
    )
    split_salt: str = Field(
        "penultimate", description="Mixed into the id hash; change it to draw a different split."
    )
    empty_text: EmptyTextPolicy = Field(
        EmptyTextPolicy.drop,
        description="What to do with null/empty text: drop and count, error, or keep (as an "
        "empty string, for a dataset that is only embedded: it gets the empty text's embedding).",
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
