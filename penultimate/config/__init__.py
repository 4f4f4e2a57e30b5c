"""Pydantic configuration models, one module per stage: they validate CLI/YAML input, become the
Prefect UI forms, and are written into every artifact's manifest. Import them from here."""

from __future__ import annotations

from penultimate.config.base import ConfigFileError, load_config
from penultimate.config.cluster import ClusterAlgorithm, ClusterConfig, Projection
from penultimate.config.embed import (
    DaskRunnerConfig,
    EmbedConfig,
    EmbeddingChoice,
    EmbedSource,
    EmbedStageConfig,
    LayerCombine,
    LongText,
    OutputDtype,
    Precision,
    Runtime,
    Split,
)
from penultimate.config.encoder import BUILTIN_ENCODER, EncoderConfig, Pooling
from penultimate.config.export import ExportConfig
from penultimate.config.ingest import (
    EmptyTextPolicy,
    FileFormat,
    IngestConfig,
    SplitRatios,
    TextFormat,
)
from penultimate.config.pipeline import PipelineConfig
from penultimate.config.probe import ProbeConfig
from penultimate.config.train import (
    ClassWeights,
    DropoutSpec,
    HiddenLayer,
    LexicalConfig,
    MaskMode,
    TrainConfig,
)

__all__ = [
    "BUILTIN_ENCODER",
    "ClassWeights",
    "ClusterAlgorithm",
    "ClusterConfig",
    "ConfigFileError",
    "DaskRunnerConfig",
    "DropoutSpec",
    "EmbedConfig",
    "EmbedSource",
    "EmbedStageConfig",
    "EmbeddingChoice",
    "EmptyTextPolicy",
    "EncoderConfig",
    "ExportConfig",
    "FileFormat",
    "HiddenLayer",
    "IngestConfig",
    "LayerCombine",
    "LexicalConfig",
    "LongText",
    "MaskMode",
    "OutputDtype",
    "PipelineConfig",
    "Pooling",
    "Precision",
    "ProbeConfig",
    "Projection",
    "Runtime",
    "Split",
    "SplitRatios",
    "TextFormat",
    "TrainConfig",
    "load_config",
]
