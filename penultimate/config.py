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


class Pooling(StrEnum):
    pooled = "pooled"
    cls = "cls"
    mean = "mean"
    max = "max"


class MaskMode(StrEnum):
    element = "element"
    feature = "feature"
    token = "token"
    sample = "sample"
    batch_shared = "batch_shared"


_TOKEN_AXIS_MODES = {MaskMode.feature, MaskMode.token}


class DropoutSpec(_Config):
    """One dropout layer: where it sits, its rate, its mask shape, and optionally which columns."""

    at: str = Field(
        "head",
        description="sequence (token outputs before pooling) | pooled | hidden:<i> (after hidden "
        "layer i) | head (right before the output layer)",
        pattern=r"^(sequence|pooled|head|hidden:\d+)$",
    )
    rate: float = Field(0.1, ge=0, lt=1, description="Probability of dropping each unit.")
    mask: MaskMode = Field(
        MaskMode.element,
        description="What one mask value covers (its noise_shape): one value, a feature on every "
        "token, a whole token, a whole example, or the same features for the whole batch.",
    )
    columns: list[int] | None = Field(
        None, description="Feature indices the dropout is limited to; None = all features."
    )

    @model_validator(mode="after")
    def _mask_fits_placement(self) -> Self:
        if self.mask in _TOKEN_AXIS_MODES and self.at != "sequence":
            raise ValueError(
                f"mask {self.mask!r} needs a token axis; it is only valid with at: sequence "
                f"(got at: {self.at})"
            )
        if self.columns is not None:
            if not self.columns:
                raise ValueError("columns is empty; omit it to drop from all features")
            if min(self.columns) < 0 or len(set(self.columns)) != len(self.columns):
                raise ValueError("columns must be distinct non-negative feature indices")
        return self


class HiddenLayer(_Config):
    units: int = Field(ge=1, le=16384, description="Width of the Dense layer.")
    activation: str = Field(
        "relu", pattern=r"^(relu|gelu|tanh|linear|swish)$", description="Its activation function."
    )


class ClassWeights(StrEnum):
    auto = "auto"
    none = "none"


class TrainConfig(_Config):
    """Classifier on a dataset artifact: encoder -> pooling -> hidden layers -> dropout -> Dense."""

    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig,
        description="The encoder pair: built-in, converted or a TF-Hub/Kaggle pair (each value "
        "builds or imports and caches its own encoder artifact).",
    )
    pooling: Pooling = Field(
        Pooling.mean,
        description="How token outputs become one vector: the pooler output, CLS, or mask-aware "
        "mean or max.",
    )
    layer: int = Field(-1, description="Encoder layer pooled for the head; negative from the top.")
    hidden: list[HiddenLayer] = Field(
        default_factory=list, description="Dense layers between the pooling and the output layer."
    )
    dropout: list[DropoutSpec] = Field(
        default_factory=lambda: [DropoutSpec()],
        description="Every dropout layer of the classifier, wherever it sits.",
    )
    freeze: str = Field(
        "all",
        pattern=r"^(all|none|top:\d+)$",
        description="all | none | top:<N> (train only the top N encoder blocks and the pooler)",
    )
    learning_rate: float = Field(
        3e-2, gt=0, description="AdamW rate for the head (pooled MiniLM features are small-scale)."
    )
    encoder_learning_rate: float = Field(3e-5, gt=0, description="AdamW rate for encoder blocks.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay (not on biases and norms).")
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of steps with a linear warm-up, then linear decay."
    )
    epochs: int = Field(5, ge=1, le=1000, description="Most epochs; early stopping may end sooner.")
    batch_size: int = Field(32, ge=1, le=4096, description="Texts per training step.")
    early_stopping_patience: int = Field(
        2, ge=0, description="Epochs without val-loss improvement before stopping; 0 = never."
    )
    class_weights: ClassWeights = Field(
        ClassWeights.auto, description="auto = inverse class frequency; none = equal weights."
    )
    seed: int = Field(0, description="Seeds TensorFlow, NumPy, Python and each dropout layer.")

    @model_validator(mode="after")
    def _placements_exist(self) -> Self:
        if self.pooling == Pooling.pooled and self.layer != -1:
            raise ValueError(
                "pooling: pooled is the pooler output of the last layer; use layer: -1"
            )
        for i, spec in enumerate(self.dropout):
            if spec.at.startswith("hidden:") and int(spec.at.split(":")[1]) >= len(self.hidden):
                raise ValueError(
                    f"dropout[{i}].at: {spec.at} but there are {len(self.hidden)} hidden layers"
                )
            if spec.at == "sequence" and self.pooling == Pooling.pooled:
                raise ValueError(
                    f"dropout[{i}].at: sequence has no effect with pooling: pooled "
                    "(the pooler reads the encoder's own last layer)"
                )
        return self

    @property
    def uses_feature_cache(self) -> bool:
        """With the encoder frozen and no dropout before pooling, its output never changes: the
        pooled features are computed once and the head trains on them."""
        return self.trained_top_blocks == 0 and not any(d.at == "sequence" for d in self.dropout)

    @property
    def trained_top_blocks(self) -> int | None:
        """How many top encoder blocks train: None = all, 0 = none."""
        if self.freeze == "all":
            return 0
        if self.freeze == "none":
            return None
        return int(self.freeze.split(":")[1])


class ExportConfig(_Config):
    """How a model artifact becomes a SavedModel artifact."""

    verify_texts: int = Field(
        64, ge=8, le=4096, description="Held-out texts the reloaded SavedModel is checked on."
    )


class EmbedSource(StrEnum):
    penultimate = "penultimate"
    encoder = "encoder"
    # Every layer x token pooling, the pooler output and (from an exported classifier) the
    # penultimate features, side by side from one encoder pass: what the probe flow compares.
    all_choices = "all_choices"


class LayerCombine(StrEnum):
    mean = "mean"
    concat = "concat"


class EmbedPooling(StrEnum):
    cls = "cls"
    pooled = "pooled"
    mean = "mean"
    max = "max"
    mean_max = "mean_max"


class OutputDtype(StrEnum):
    float32 = "float32"
    float16 = "float16"


class Precision(StrEnum):
    """The encoder's matmul precision: float32 (exact) or bfloat16 (faster on CPUs with bf16
    instructions; cosine to float32 >= 0.999 on the demo corpus, see benchmarks/RESULTS.md)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


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
    pooling: EmbedPooling = Field(
        EmbedPooling.mean,
        description="Token outputs to one vector: CLS, the pooler output, or mask-aware mean, "
        "max or both concatenated.",
    )
    normalize: bool = Field(True, description="L2-normalise each vector.")
    dtype: OutputDtype = Field(OutputDtype.float32, description="Stored vector precision.")
    precision: Precision = Field(
        Precision.float32, description="Encoder matmul precision; bfloat16 needs a bare encoder."
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
            self.layers != [-1] or self.pooling != EmbedPooling.mean
        ):
            raise ValueError("source: all_choices takes every layer and pooling; leave both unset")
        if self.pooling == EmbedPooling.pooled and self.layers != [-1]:
            raise ValueError(
                "pooling: pooled is the pooler output of the last layer; use layers: [-1]"
            )
        if self.precision == Precision.bfloat16 and self.source == EmbedSource.penultimate:
            raise ValueError(
                "precision: bfloat16 runs a bare encoder (source: encoder); an exported "
                "classifier computes in float32"
            )
        return self


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
    splits: list[str] | None = Field(None, description="Only these splits; None = every row.")
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
        if self.embedding.precision == Precision.bfloat16 and self.export is not None:
            raise ValueError(
                "embedding.precision: bfloat16 runs a bare encoder (no `export`); an exported "
                "classifier computes in float32"
            )
        return self


class ClusterAlgorithm(StrEnum):
    kmeans = "kmeans"
    minibatch_kmeans = "minibatch_kmeans"
    hdbscan = "hdbscan"
    agglomerative = "agglomerative"


class Projection(StrEnum):
    pca = "pca"
    umap = "umap"
    tsne = "tsne"


class ClusterConfig(_Config):
    """Clusters, quality metrics, 2-D maps and a report for an embeddings artifact."""

    embeddings: str | None = Field(
        None, description="Embeddings artifact folder; None = the one the pipeline just made."
    )
    algorithm: ClusterAlgorithm = Field(
        ClusterAlgorithm.kmeans,
        description="kmeans, minibatch_kmeans (streams every point), hdbscan (noise = cluster -1) "
        "or agglomerative.",
    )
    k: int | None = Field(
        2, ge=2, le=1000, description="Clusters for kmeans, minibatch_kmeans, agglomerative."
    )
    k_range: tuple[int, int] | None = Field(
        None, description="[lowest, highest] k to try; the best silhouette wins (replaces k)."
    )
    min_cluster_size: int = Field(15, ge=2, description="hdbscan: smallest cluster; rest = noise.")
    reduce_to: int | None = Field(
        None, ge=2, le=4096, description="PCA to this many dimensions before clustering."
    )
    projection: Projection = Field(Projection.pca, description="How the 2-D maps are made.")
    projection_sample: int = Field(
        5000, ge=100, description="umap/tsne fit on at most this many points (pca: all)."
    )
    fit_sample: int = Field(
        50_000,
        ge=100,
        description="kmeans/hdbscan/agglomerative fit on at most this many points and assign the "
        "rest in a streaming pass; minibatch_kmeans streams every point.",
    )
    metrics_sample: int = Field(
        5000, ge=100, description="Silhouette, Davies-Bouldin, Calinski-Harabasz sample size."
    )
    top_terms: int = Field(10, ge=1, le=100, description="Distinctive terms per cluster.")
    seed: int = Field(0, description="Seeds every random choice: samples, initialisation, maps.")

    @model_validator(mode="after")
    def _k_and_sample_sizes_agree(self) -> Self:
        if self.k_range is not None:
            low, high = self.k_range
            if not 2 <= low <= high <= 1000:
                raise ValueError("k_range: need 2 <= lowest <= highest <= 1000")
            if self.algorithm == ClusterAlgorithm.hdbscan:
                raise ValueError("k_range: hdbscan finds its own number of clusters")
        elif self.k is None and self.algorithm != ClusterAlgorithm.hdbscan:
            raise ValueError(f"k: {self.algorithm} needs k (or k_range)")
        most_clusters = self.k_range[1] if self.k_range is not None else self.k
        if most_clusters is not None and most_clusters > self.fit_sample:
            raise ValueError(f"k: {most_clusters} clusters, but fit_sample is {self.fit_sample}")
        if self.reduce_to is not None and self.reduce_to > self.fit_sample:
            raise ValueError(f"reduce_to: {self.reduce_to} exceeds fit_sample {self.fit_sample}")
        return self


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
        if self.embed.embedding.precision == Precision.bfloat16:
            raise ValueError(
                "embed.embedding.precision: the pipeline embeds with its exported classifier, "
                "which computes in float32"
            )
        return self

    def embed_config(self, export_uri: str) -> EmbedConfig:
        """The embed stage's config with the exported classifier as its model."""
        return EmbedConfig(**dict(self.embed), export=export_uri, encoder=self.train.encoder)


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
        20000, ge=2, description="Train rows the probes fit on (a seeded sample beyond this)."
    )
    max_test_rows: int = Field(20000, ge=2, description="Test rows the probes are scored on.")
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
