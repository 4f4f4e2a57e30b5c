"""The embed stage's config: which vector each text becomes (the embedding choice), which rows,
and the Dask cluster the per-shard tasks run on."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from penultimate.config.base import _Config
from penultimate.config.encoder import EncoderConfig, Pooling
from penultimate.errors import InputError


class EmbedSource(StrEnum):
    penultimate = "penultimate"
    encoder = "encoder"
    # Every layer x token pooling, the pooler output and (from an exported classifier) the
    # penultimate features, side by side from one encoder pass: what the probe flow compares.
    all_choices = "all_choices"


class Split(StrEnum):
    """The splits ingest draws (penultimate.ingest.SPLITS)."""

    train = "train"
    val = "val"
    test = "test"


class LayerCombine(StrEnum):
    mean = "mean"
    concat = "concat"


class OutputDtype(StrEnum):
    float32 = "float32"
    float16 = "float16"


class Precision(StrEnum):
    """The encoder's matmul precision: float32 (exact) or bfloat16 (faster on CPUs with bf16
    instructions; cosine to float32 >= 0.999 on the demo corpus, see benchmarks/RESULTS.md)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


class Runtime(StrEnum):
    """What executes the encoder: TensorFlow, or OpenVINO on the same SavedModel (an optional
    extra, `pip install 'penultimate[openvino]'`; faster in bfloat16, see benchmarks/RESULTS.md)."""

    tensorflow = "tensorflow"
    openvino = "openvino"


class LongText(StrEnum):
    """Texts longer than the encoder's seq_length: cut there, or embedded window by window."""

    truncate = "truncate"
    chunk = "chunk"


class EmbeddingChoice(_Config):
    """Which vector to take for each text: the classifier's penultimate features, or encoder layers
    pooled and combined."""

    source: EmbedSource = Field(
        EmbedSource.encoder,
        description="encoder = pooled encoder layers; penultimate = the classifier's features "
        "before its head dropout (needs an exported classifier).",
    )
    layers: list[int] = Field(
        default_factory=lambda: [-1],
        min_length=1,
        description="Encoder layers (negative from the top), e.g. [-2] or [-4, -3, -2, -1].",
    )
    combine: LayerCombine = Field(
        LayerCombine.mean, description="How several layers become one vector: mean or concat."
    )
    pooling: Pooling = Field(
        Pooling.mean,
        description="Token outputs to one vector: CLS, the pooler output, or mask-aware mean, "
        "max or both concatenated.",
    )
    normalize: bool = Field(True, description="L2-normalise each vector.")
    dtype: OutputDtype = Field(OutputDtype.float32, description="Stored vector precision.")
    precision: Precision = Field(
        Precision.float32, description="Encoder matmul precision; bfloat16 needs a bare encoder."
    )
    runtime: Runtime = Field(
        Runtime.tensorflow,
        description="What executes the encoder: tensorflow, or openvino (the same SavedModel, "
        "faster in bfloat16; pip install 'penultimate[openvino]'); openvino needs a bare encoder.",
    )
    long_text: LongText = Field(
        LongText.truncate,
        description="Texts over the encoder's seq_length: truncate (keep the first tokens) or "
        "chunk (embed windows of seq_length tokens, averaged weighted by their tokens).",
    )
    chunk_stride: int | None = Field(
        None,
        ge=1,
        le=510,
        description="Tokens between the starts of a text's windows with long_text: chunk; "
        "None = one window length (no overlap); less overlaps the windows.",
    )

    def check_layers(self, num_layers: int) -> None:
        """Every index of `layers` names a layer of an encoder with `num_layers` layers."""
        outside = [i for i in self.layers if not -num_layers <= i < num_layers]
        if outside and self.source != EmbedSource.penultimate:
            raise InputError(
                f"embedding.layers: {outside} outside the encoder's {num_layers} layers "
                f"(0..{num_layers - 1}, or -1..-{num_layers} from the top)"
            )

    @model_validator(mode="after")
    def _pooled_is_one_vector(self) -> Self:
        if len(set(self.layers)) != len(self.layers):
            raise ValueError("layers has duplicates")
        if self.source == EmbedSource.all_choices and (
            self.layers != [-1] or self.pooling != Pooling.mean
        ):
            raise ValueError("source: all_choices takes every layer and pooling; leave both unset")
        if self.pooling == Pooling.pooled and self.layers != [-1]:
            raise ValueError(
                "pooling: pooled is the pooler output of the last layer; use layers: [-1]"
            )
        if self.chunk_stride is not None and self.long_text != LongText.chunk:
            raise ValueError("chunk_stride goes with long_text: chunk")
        if self.long_text == LongText.chunk and self.source == EmbedSource.penultimate:
            raise ValueError(
                "long_text: chunk embeds encoder layers window by window (source: encoder or "
                "all_choices); a classifier's penultimate features are of one window"
            )
        bare_only = self.bare_encoder_only()
        if self.source == EmbedSource.penultimate and bare_only:
            raise ValueError(
                f"{bare_only} (source: encoder); an exported classifier computes in float32 on "
                "TensorFlow"
            )
        return self

    def bare_encoder_only(self, prefix: str = "") -> str | None:
        """`"<field>: <value> runs a bare encoder"` for this choice's settings that only a bare
        encoder runs (bfloat16 matmuls, the OpenVINO runtime), fields prefixed with `prefix`;
        None when it has none."""
        chosen = []
        if self.precision == Precision.bfloat16:
            chosen.append(f"{prefix}precision: {self.precision}")
        if self.runtime == Runtime.openvino:
            chosen.append(f"{prefix}runtime: {self.runtime}")
        if not chosen:
            return None
        return f"{' and '.join(chosen)} {'runs' if len(chosen) == 1 else 'run'} a bare encoder"


class DaskRunnerConfig(_Config):
    """Where the per-shard tasks run: a local Dask cluster (default) or an existing one."""

    dask_address: str | None = Field(
        None, description="tcp://host:port of an existing Dask scheduler; None = local cluster."
    )
    n_workers: int = Field(2, ge=1, le=256, description="Local cluster worker processes.")
    tf_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="TensorFlow threads per worker, so workers don't fight for cores.",
    )


class EmbedStageConfig(_Config):
    """What to embed and where to run it; the model comes from `EmbedConfig` or the pipeline."""

    embedding: EmbeddingChoice = Field(
        default_factory=EmbeddingChoice, description="Which vector each text becomes."
    )
    splits: list[Split] | None = Field(
        None, min_length=1, description="Only these splits; None = every row."
    )
    batch_size: int = Field(
        64, ge=1, le=4096, description="Texts per model call (length-sorted, padded per batch)."
    )
    runner: DaskRunnerConfig = Field(
        default_factory=DaskRunnerConfig, description="The Dask cluster the shard tasks run on."
    )


class EmbedConfig(EmbedStageConfig):
    """Embeddings of a dataset's shards from an exported classifier or a bare encoder, on Dask."""

    export: str | None = Field(
        None, description="Export artifact folder; None = the bare encoder in `encoder`."
    )
    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig, description="The bare encoder used when `export` is None."
    )

    @model_validator(mode="after")
    def _penultimate_needs_a_classifier(self) -> Self:
        if self.embedding.source == EmbedSource.penultimate and self.export is None:
            raise ValueError("embedding.source: penultimate needs `export` (a trained classifier)")
        bare_only = self.embedding.bare_encoder_only("embedding.")
        if self.export is not None and bare_only:
            raise ValueError(
                f"{bare_only} (no `export`); an exported classifier computes in float32 on "
                "TensorFlow"
            )
        return self
