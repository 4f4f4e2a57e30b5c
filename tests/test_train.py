"""Training: config validation naming the field, checks against data and encoder before compute,
encoder freezing that leaves frozen weights bit-identical, and the train flow end to end."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tensorflow as tf
import tf_keras

from conftest import run_cli
from penultimate.artifacts import ArtifactRef
from penultimate.classifier import TextClassifier
from penultimate.config import ClassWeights, EncoderConfig, TrainConfig
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.features import load_encoder
from penultimate.ingest import label_counts_per_split
from penultimate.lexical import LexicalVocabulary
from penultimate.train import (
    AUTO_WEIGHT_CAP,
    TrainInputError,
    class_weights,
    validate_training_inputs,
)
from penultimate.training_log import still_improving

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
        ({"lexical": {"max_tokens": 500_000}}, "lexical.max_tokens"),
        ({"lexical": {"ngrams": 4}}, "lexical.ngrams"),
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
    config = TrainConfig(
        freeze=freeze, learning_rate=1e-2, encoder_learning_rate=1e-3, lexical=None
    )
    loaded = load_encoder(pair)
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


def test_freeze_top_n_trains_only_the_top_blocks_and_pooler(tiny_bert_pair: Path) -> None:
    """The built-in converter's names: blocks `layer_<i>/`, the pooler `pooler/` (3 blocks)."""
    before, model = fit_one_epoch(EncoderPair(tiny_bert_pair), "top:2")
    changed = {
        v.name for v in model.encoder.weights if not np.array_equal(v.numpy(), before[v.name])
    }
    trainable = ("layer_1/", "layer_2/", "pooler/")
    frozen = {n for n in before if not n.startswith(trainable)}
    assert any(n.startswith("layer_0/") for n in frozen)
    assert not changed & frozen, sorted(changed & frozen)
    assert any(n.startswith("layer_1/") for n in changed)
    assert any(n.startswith("layer_2/") for n in changed)


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


@pytest.mark.parametrize("pair_name", ["tiny_bert_pair", "hub_pair"])
def test_freeze_all_leaves_the_encoder_bit_identical(
    pair_name: str, request: pytest.FixtureRequest
) -> None:
    before, model = fit_one_epoch(EncoderPair(request.getfixturevalue(pair_name)), "all")
    for variable in model.encoder.weights:
        np.testing.assert_array_equal(
            variable.numpy(), before[variable.name], err_msg=variable.name
        )
    assert not model.encoder.trainable_weights


def test_auto_class_weights_are_smoothed_and_capped_balanced_is_inverse_frequency() -> None:
    counts = np.array([1000, 250, 40, 2, 0])
    auto = class_weights(counts, ClassWeights.auto)
    balanced = class_weights(counts, ClassWeights.balanced)
    assert auto is not None and balanced is not None
    present = [0, 1, 2, 3]
    # Both keep the loss's scale: the row-weighted mean weight is 1.
    for weights in (auto, balanced):
        assert sum(counts[c] * weights[c] for c in present) == pytest.approx(counts.sum())
    # Inverse square root: 4x fewer rows, 2x the weight; the 2-row class is capped at 10x.
    assert auto[1] / auto[0] == pytest.approx(2.0)
    assert auto[3] / auto[0] == pytest.approx(AUTO_WEIGHT_CAP)
    assert balanced[3] / balanced[0] == pytest.approx(500.0)
    assert auto[4] == max(auto[c] for c in present)  # no rows: never in the loss
    assert class_weights(counts, ClassWeights.none) is None


def test_a_run_that_ends_still_improving_gets_a_warning() -> None:
    falling = {"val_loss": [0.9, 0.7, 0.6, 0.55, 0.52]}
    assert "0.5500 -> 0.5200" in str(still_improving(falling, epochs=5))
    # Early stopping ended it, or the best epoch was earlier: nothing to say.
    assert still_improving(falling, epochs=10) is None
    assert still_improving({"val_loss": [0.9, 0.5, 0.6, 0.7, 0.8]}, epochs=5) is None
    assert still_improving({"loss": [0.9, 0.5]}, epochs=2) is None


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
    lexical = LexicalVocabulary(["the", "senate"], [1.0, 2.5], 2)
    model = TextClassifier(str(EncoderPair(minilm_pair).encoder), config, 3, 6, vocabulary=lexical)
    rebuilt = TextClassifier.from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.train_config == config and rebuilt.output_layer.units == 3
    assert rebuilt.vocabulary == lexical
    with pytest.raises(ValueError, match=r"exactly when config\.lexical is set"):
        TextClassifier(str(EncoderPair(minilm_pair).encoder), config, 3, 6)


def event_values(folder: Path) -> dict[str, tf.compat.v1.Summary.Value]:
    """Tag -> the summary value of every event file directly in `folder`."""
    values = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            values.update({value.tag: value for value in event.summary.value})
    return values


def test_training_logs_timed_epochs_and_a_named_tensorboard_run_with_hparams(
    hub_pair: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Trained on made-up encoder features (the hub pair's width, 64): a log line per epoch
    with its time, and the TensorBoard run under a readable name with its hparams session."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    from penultimate.train import LabelSpace, fit_classifier

    config = TrainConfig.model_validate(
        {
            "epochs": 3,
            "early_stopping_patience": 0,
            "hidden": [{"units": 8}],
            "dropout": [
                {"at": "pooled", "rate": 0.2, "mask": "batch_shared"},
                {"at": "head", "rate": 0.5, "columns": [0, 1, 2]},
            ],
        }
    )
    rows = {"train": 48, "val": 16, "test": 16}
    splits = [split for split, n in rows.items() for _ in range(n)]
    labels = ["ham", "spam"] * (len(splits) // 2)
    data = frame(labels, splits)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(labels), 64)).astype(np.float32)
    vectors[:, 0] += np.array([label == "spam" for label in labels]) * 3
    features = {split: vectors[[s == split for s in splits]] for split in rows}
    pair = EncoderPair(hub_pair)
    logger = logging.getLogger("test_train")
    with caplog.at_level(logging.INFO, logger="test_train"):
        metrics = fit_classifier(
            config, data, LabelSpace(["ham", "spam"]), pair, load_encoder(pair), tmp_path,
            features, logger.info,
        )  # fmt: skip
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    number = r"\d+\.\d{4}"
    line = rf"epoch (\d)/3: loss {number}, accuracy {number}, val_loss {number}, "
    line += rf"val_accuracy {number} \((\d+\.\d s|\d+ ms)\)"
    matches = [re.fullmatch(line, e) for e in epochs]
    assert len(epochs) == 3 and [m.group(1) for m in matches if m] == ["1", "2", "3"], epochs

    run = metrics["tensorboard_run"]
    assert re.fullmatch(
        r"freeze-all_pool-mean_hidden-8_drop-pooled0\.2-batch_shared\+head0\.5-cols3_[0-9a-f]{8}",
        run,
    ), run
    assert [p.name for p in (tmp_path / "tensorboard").iterdir()] == [run]
    run_dir = tmp_path / "tensorboard" / run
    assert "epoch_loss" in event_values(run_dir / "train")
    assert {"epoch_loss", "epoch_accuracy"} <= set(event_values(run_dir / "validation"))
    summary = event_values(run_dir)
    assert summary["test/accuracy"].metadata.plugin_data.plugin_name == "scalars"
    assert tf.make_ndarray(summary["test/accuracy"].tensor) == pytest.approx(
        metrics["test"]["accuracy"]
    )
    session = plugin_data_pb2.HParamsPluginData.FromString(
        summary["_hparams_/session_start_info"].metadata.plugin_data.content
    ).session_start_info
    assert session.group_name == run
    hparams = {name: value.WhichOneof("kind") for name, value in session.hparams.items()}
    assert session.hparams["freeze"].string_value == "all"
    assert session.hparams["pooling"].string_value == "mean"
    assert session.hparams["dropout_pooled"].number_value == pytest.approx(0.2)
    assert session.hparams["dropout_head"].number_value == pytest.approx(0.5)
    assert session.hparams["dropout_sequence"].number_value == 0
    assert session.hparams["learning_rate"].number_value == pytest.approx(3e-2)
    assert hparams["dropout"] == "string_value" and hparams["layer"] == "number_value"


def test_the_label_line_stays_short_for_many_classes() -> None:
    from tasks.train import named_labels

    assert named_labels(["ham", "spam"]) == "2 labels: ham, spam"
    many = [f"class {i:02d}" for i in range(43)]
    assert named_labels(many) == (
        "43 labels: class 00, class 01, class 02, class 03, class 04, class 05, class 06, ..., "
        "class 42"
    )
