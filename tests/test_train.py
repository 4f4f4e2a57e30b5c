"""Training: config validation naming the field, checks against data and encoder before compute,
encoder freezing that leaves frozen weights bit-identical, and the train flow end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tensorflow as tf
import tf_keras

from conftest import run_cli
from penultimate.artifacts import ArtifactRef
from penultimate.classifier import TextClassifier
from penultimate.config import EncoderConfig, TrainConfig
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.features import LoadedEncoder
from penultimate.ingest import label_counts_per_split
from penultimate.train import TrainInputError, validate_training_inputs

SHAPE = EncoderInfo(num_layers=6, hidden_size=384, seq_length=128, vocab_size=30522)
DATASET = ArtifactRef(stage="dataset", key="k", uri="/store/dataset/k")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dropout": [{"rate": 1.0}]}, "dropout.0.rate"),
        ({"dropout": [{"at": "pooled", "mask": "feature"}]}, "needs a token axis"),
        ({"dropout": [{"at": "head", "mask": "token"}]}, "needs a token axis"),
        ({"dropout": [{"at": "hidden:1"}], "hidden": [{"units": 8}]}, r"dropout\[0\]\.at"),
        ({"dropout": [{"at": "middle"}]}, "dropout.0.at"),
        ({"dropout": [{"columns": [-1, 2]}]}, "non-negative"),
        ({"freeze": "top:two"}, "freeze"),
        ({"pooling": "pooled", "layer": -2}, "use layer: -1"),
        ({"encoder": {"hub_encoder": "some/path"}}, "go together"),
        (
            {"encoder": {"source": "my/bert", "hub_preprocessor": "p", "hub_encoder": "e"}},
            "two ways to name the encoder",
        ),
        (
            {"encoder": {"hub_preprocessor": "p", "hub_encoder": "e", "hidden_dropout": 0.2}},
            "baked into its SavedModel",
        ),
        ({"hub_encoder": "some/path"}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.model_validate(overrides)


def test_a_hub_pair_replaces_the_default_source() -> None:
    # The UI's form sends the default source along with the hub fields a user filled in.
    form = EncoderConfig.model_validate(
        {"source": "minilm-l6", "hub_preprocessor": "p", "hub_encoder": "e"}
    )
    assert form.source is None and form.is_hub_pair
    assert EncoderConfig.model_validate(form.model_dump()) == form
    assert EncoderConfig().source == "minilm-l6" and not EncoderConfig().is_hub_pair


def frame(labels: list[str], splits: list[str]) -> pl.DataFrame:
    n = len(labels)
    return pl.DataFrame(
        {"id": [str(i) for i in range(n)], "text": ["t"] * n, "label": labels, "split": splits}
    )


def counts(labelled: pl.DataFrame) -> dict[str, dict[str, int]] | None:
    """What the dataset manifest says of `labelled` (None without a label column)."""
    return label_counts_per_split(labelled) if "label" in labelled.columns else None


def test_inputs_checked_against_data_and_encoder() -> None:
    good = frame(["a", "b", "a", "b"], ["train", "train", "val", "test"])
    assert validate_training_inputs(TrainConfig(), DATASET, counts(good), SHAPE).names == ["a", "b"]
    single = frame(["a", "a", "a"], ["train", "train", "val"])
    with pytest.raises(TrainInputError, match="single class"):
        validate_training_inputs(TrainConfig(), DATASET, counts(single), SHAPE)
    no_val = frame(["a", "b"], ["train", "train"])
    with pytest.raises(TrainInputError, match="no rows in the 'val' split"):
        validate_training_inputs(TrainConfig(), DATASET, counts(no_val), SHAPE)
    with pytest.raises(TrainInputError, match="layer: 6 does not exist"):
        validate_training_inputs(TrainConfig(layer=6), DATASET, counts(good), SHAPE)
    wide = TrainConfig.model_validate({"dropout": [{"at": "pooled", "columns": [3, 384, 500]}]})
    with pytest.raises(TrainInputError, match=r"dropout\[0\]\.columns: \[384, 500\]"):
        validate_training_inputs(wide, DATASET, counts(good), SHAPE)
    hidden = TrainConfig.model_validate(
        {"hidden": [{"units": 16}], "dropout": [{"at": "head", "columns": [16]}]}
    )
    with pytest.raises(TrainInputError, match="16 features at head"):
        validate_training_inputs(hidden, DATASET, counts(good), SHAPE)
    # mean_max puts mean and max side by side: twice the encoder's width after pooling.
    both = {"pooling": "mean_max", "dropout": [{"at": "pooled", "columns": [700]}]}
    validate_training_inputs(TrainConfig.model_validate(both), DATASET, counts(good), SHAPE)
    both["dropout"] = [{"at": "pooled", "columns": [768]}]
    with pytest.raises(TrainInputError, match=r"\[768\] out of range for 768 features at pooled"):
        validate_training_inputs(TrainConfig.model_validate(both), DATASET, counts(good), SHAPE)
    with pytest.raises(TrainInputError, match="no label column"):
        validate_training_inputs(TrainConfig(), DATASET, counts(good.drop("label")), SHAPE)


def fit_one_epoch(pair: EncoderPair, freeze: str) -> tuple[dict[str, np.ndarray], TextClassifier]:
    config = TrainConfig(freeze=freeze, learning_rate=1e-2, encoder_learning_rate=1e-3)
    loaded = LoadedEncoder.load(pair)
    model = TextClassifier(str(pair.encoder), config, 2, num_layers=loaded.info.num_layers)
    texts = [
        f"message number {i} about {'cheap pills' if i % 2 else 'the meeting'}" for i in range(16)
    ]
    inputs = loaded.tokenize(texts)
    model(inputs)
    before = {v.name: v.numpy().copy() for v in model.encoder.weights}
    model.compile_with_optimizers(
        tf_keras.optimizers.AdamW(1e-2),
        tf_keras.optimizers.AdamW(1e-3) if freeze != "all" else None,
        loss=tf_keras.losses.BinaryCrossentropy(from_logits=True),
    )
    labels = np.array([i % 2 for i in range(16)], np.int32)
    model.fit(
        tf.data.Dataset.from_tensor_slices((dict(inputs), labels)).batch(8), epochs=1, verbose=0
    )
    return before, model


def test_freeze_top_n_trains_only_the_top_blocks_and_pooler(minilm_pair: Path) -> None:
    before, model = fit_one_epoch(EncoderPair(minilm_pair), "top:2")
    changed = {
        v.name for v in model.encoder.weights if not np.array_equal(v.numpy(), before[v.name])
    }
    trainable = ("layer_4/", "layer_5/", "pooler/")
    frozen = {n for n in before if not n.startswith(trainable)}
    assert not changed & frozen, sorted(changed & frozen)
    assert any(n.startswith("layer_4/") for n in changed)
    assert any(n.startswith("layer_5/") for n in changed)


def test_freeze_top_n_on_a_model_garden_encoder(hub_pair: Path) -> None:
    """The TF-Hub / Kaggle BERT family names blocks `transformer/layer_<i>/` and the pooler
    `pooler_transform/`: top:1 trains exactly block 1 and the pooler, and both change."""
    before, model = fit_one_epoch(EncoderPair(hub_pair), "top:1")
    changed = {
        v.name for v in model.encoder.weights if not np.array_equal(v.numpy(), before[v.name])
    }
    trainable = ("transformer/layer_1/", "pooler_transform/")
    frozen = {n for n in before if not n.startswith(trainable)}
    assert frozen and not changed & frozen, sorted(changed & frozen)
    assert any(n.startswith("transformer/layer_1/") for n in changed)
    assert any(n.startswith("pooler_transform/") for n in changed)
    with pytest.raises(TrainInputError, match="found blocks \\[0, 1\\]"):
        validate_training_inputs(
            TrainConfig(freeze="top:1", layer=0),
            DATASET,
            counts(frame(["a", "b", "a", "b"], ["train", "train", "val", "test"])),
            dataclasses.replace(EncoderPair(hub_pair).read_info(), num_layers=3),
        )


@pytest.mark.parametrize("pair_name", ["minilm_pair", "hub_pair"])
def test_freeze_all_leaves_the_encoder_bit_identical(
    pair_name: str, request: pytest.FixtureRequest
) -> None:
    before, model = fit_one_epoch(EncoderPair(request.getfixturevalue(pair_name)), "all")
    for variable in model.encoder.weights:
        np.testing.assert_array_equal(
            variable.numpy(), before[variable.name], err_msg=variable.name
        )
    assert not model.encoder.trainable_weights


def test_cli_train_names_a_bad_dataset_folder(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 1\n")
    missing = str(tmp_path / "dataset" / "nope")
    result = run_cli("train", "--config", str(config), "--dataset", missing)
    assert result.returncode == 2
    assert "nope: not a complete artifact" in result.stderr
    config.write_text("dropout: [{at: pooled, mask: token}]\n")
    result = run_cli("train", "--config", str(config), "--dataset", str(tmp_path))
    assert result.returncode == 2
    assert "train.yaml" in result.stderr and "needs a token axis" in result.stderr


def test_classifier_config_round_trips(minilm_pair: Path) -> None:
    config = TrainConfig.model_validate(
        {"hidden": [{"units": 8}], "dropout": [{"at": "hidden:0", "rate": 0.2, "columns": [1]}]}
    )
    model = TextClassifier(str(EncoderPair(minilm_pair).encoder), config, 3, 6)
    rebuilt = TextClassifier.from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.train_config == config and rebuilt.output_layer.units == 3
