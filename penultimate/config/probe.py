"""The probe flow's config: the corpus, the encoder or exported classifier, and the probes'
scoring settings (their own cache key)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator

from penultimate.config.base import _Config
from penultimate.config.embed import (
    DaskRunnerConfig,
    EmbedConfig,
    EmbeddingChoice,
    EmbedSource,
    Precision,
)
from penultimate.config.encoder import EncoderConfig
from penultimate.config.ingest import IngestConfig


class ProbeConfig(_Config):
    """The probe flow: every encoder layer x pooling (and an exported classifier's penultimate
    features) scored by a linear probe, a shuffled-label control probe and k-means agreement."""

    ingest: IngestConfig = Field(description="The labelled corpus; probes fit train, score test.")
    export: str | None = Field(
        None, description="Export artifact folder (adds its penultimate features); None = encoder."
    )
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig, description="The bare encoder used when `export` is None."
    )
    precision: Precision = Field(
        Precision.float32, description="Encoder matmul precision; bfloat16 needs a bare encoder."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Texts per encoder call.")
    runner: DaskRunnerConfig = Field(
        default_factory=DaskRunnerConfig, description="The Dask cluster the extraction runs on."
    )
    max_train_rows: int = Field(
        20000,
        ge=2,
        description="Train rows the probes fit on (beyond this, a seeded sample in which each "
        "label keeps its share).",
    )
    max_test_rows: int = Field(
        20000, ge=2, description="Test rows the probes are scored on (sampled as train's are)."
    )
    regularization: float = Field(
        1.0, gt=0, description="Inverse L2 strength (C) of the logistic-regression probes."
    )
    cluster_rows: int = Field(
        5000, ge=2, description="Rows k-means clusters per choice (k = number of labels)."
    )
    seed: int = Field(0, description="Seeds the samples, the control task's shuffle and k-means.")

    @model_validator(mode="after")
    def _bfloat16_needs_a_bare_encoder(self) -> Self:
        if self.precision == Precision.bfloat16 and self.export is not None:
            raise ValueError(
                "precision: bfloat16 runs a bare encoder; an exported classifier computes in "
                "float32"
            )
        return self

    def embed_config(self) -> EmbedConfig:
        """The embed stage's config: every choice side by side, for the train and test splits."""
        return EmbedConfig(
            embedding=EmbeddingChoice(source=EmbedSource.all_choices, precision=self.precision),
            splits=["train", "test"],
            batch_size=self.batch_size,
            runner=self.runner,
            export=self.export,
            encoder=self.encoder,
        )

    def scoring(self) -> dict[str, Any]:
        """The settings the probe scores depend on, beyond the embeddings (the cache key)."""
        return self.model_dump(
            include={"max_train_rows", "max_test_rows", "regularization", "cluster_rows", "seed"}
        )
