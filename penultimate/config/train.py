"""The train stage's config: the classifier on top of the encoder (pooling, hidden layers, every
dropout layer with its mask, freezing) and how it is optimised."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from penultimate.config.base import _Config, choice_or_pattern
from penultimate.config.encoder import EncoderConfig, Pooling


class MaskMode(StrEnum):
    """What one dropout mask value covers (see `penultimate.dropout.StructuredDropout`)."""

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
        description="`sequence` (token outputs before pooling) | `pooled` | `hidden:i` (after "
        "hidden layer i, from 0) | `head` (right before the output layer)",
        pattern=r"^(sequence|pooled|head|hidden:\d+)$",
        json_schema_extra=choice_or_pattern(
            ["head", "pooled", "sequence"], r"^hidden:\d+$", "hidden:i"
        ),
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


class Activation(StrEnum):
    relu = "relu"
    gelu = "gelu"
    tanh = "tanh"
    linear = "linear"
    swish = "swish"


class HiddenLayer(_Config):
    units: int = Field(ge=1, le=16384, description="Width of the Dense layer.")
    activation: Activation = Field(Activation.relu, description="Its activation function.")


class LexicalConfig(_Config):
    """The lexical branch: TF-IDF of the raw text, a linear term added to the logits, its weights
    starting from a logistic regression on the train split's TF-IDF."""

    max_tokens: int = Field(
        50_000,
        ge=10,
        le=200_000,
        description="Most terms (words and word n-grams) counted: about those in the most "
        "train texts, each in at least 2.",
    )
    ngrams: int = Field(2, ge=1, le=3, description="Terms are runs of 1 to this many words.")


class ClassWeights(StrEnum):
    """Loss weights per class (see `penultimate.train.class_weights`)."""

    auto = "auto"
    balanced = "balanced"
    none = "none"


class TrainConfig(_Config):
    """Classifier on a dataset artifact: encoder -> pooling -> hidden layers -> dropout -> Dense,
    plus (by default) the lexical branch's TF-IDF -> Dense, the two added as logits."""

    encoder: EncoderConfig = Field(
        default_factory=EncoderConfig,
        description="The encoder pair: built-in, converted or a TF-Hub/Kaggle pair (each value "
        "builds or imports and caches its own encoder artifact).",
    )
    pooling: Pooling = Field(
        Pooling.mean,
        description="How token outputs become one vector: the pooler output, CLS, or mask-aware "
        "mean, max or both side by side (mean_max: twice the encoder's width).",
    )
    layer: int = Field(-1, description="Encoder layer pooled for the head; negative from the top.")
    hidden: list[HiddenLayer] = Field(
        default_factory=list, description="Dense layers between the pooling and the output layer."
    )
    dropout: list[DropoutSpec] = Field(
        default_factory=lambda: [DropoutSpec()],
        description="Every dropout layer of the classifier, wherever it sits.",
    )
    lexical: LexicalConfig | None = Field(
        default_factory=LexicalConfig,
        description="A wide & deep classifier: sublinear TF-IDF of the text's terms (words and, "
        "by default, word pairs), through its own Dense layer, added to the logits. Names, dates "
        "and headers reach the prediction that mean pooling averages away; the served embedding "
        "stays the penultimate layer. null = logits from the embedding alone.",
    )
    freeze: str = Field(
        "all",
        pattern=r"^(all|none|top:\d+)$",
        json_schema_extra=choice_or_pattern(["all", "none"], r"^top:\d+$", "top:N"),
        description="`all` | `none` | `top:N` (train only the top N encoder blocks and the pooler)",
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
        ClassWeights.auto,
        description="auto = inverse square-root class frequency, the largest at most 10x the "
        "smallest; balanced = inverse frequency; none = equal weights.",
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
