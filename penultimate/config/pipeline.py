"""The pipeline's config: every stage's section in one file, checked to fit together."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from penultimate.config.base import _Config
from penultimate.config.cluster import ClusterConfig
from penultimate.config.embed import (
    EmbedConfig,
    EmbeddingChoice,
    EmbedSource,
    EmbedStageConfig,
)
from penultimate.config.export import ExportConfig
from penultimate.config.ingest import IngestConfig
from penultimate.config.train import TrainConfig


class PipelineConfig(_Config):
    """Every stage in one file: ingest -> train -> export -> embed -> cluster."""

    ingest: IngestConfig = Field(description="The corpus and how it becomes a dataset.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The classifier.")
    export: ExportConfig = Field(
        default_factory=ExportConfig, description="How the trained model is exported and checked."
    )
    embed: EmbedStageConfig = Field(
        default_factory=lambda: EmbedStageConfig(
            embedding=EmbeddingChoice(source=EmbedSource.penultimate)
        ),
        description="Embeddings of the dataset from the exported classifier (default: its "
        "penultimate features, before dropout) or from its encoder's layers.",
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="Clustering of the embeddings."
    )

    @model_validator(mode="after")
    def _stages_take_their_inputs_from_the_pipeline(self) -> Self:
        if self.cluster.embeddings is not None:
            raise ValueError("cluster.embeddings: the pipeline clusters the embeddings it makes")
        bare_only = self.embed.embedding.bare_encoder_only("embed.embedding.")
        if bare_only:
            raise ValueError(
                f"{bare_only}; the pipeline embeds with its exported classifier, which computes "
                "in float32 on TensorFlow"
            )
        return self

    def embed_config(self, export_uri: str) -> EmbedConfig:
        """The embed stage's config with the exported classifier as its model."""
        return EmbedConfig(**dict(self.embed), export=export_uri, encoder=self.train.encoder)
