"""The dropout report, read from real models on real mail: realised masks against `rate` and the
mode's sharing pattern, which layers a training step moves, how dropout moves each output and the
served embedding, and MC dropout at rate 0 equal to the deterministic prediction."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tensorflow as tf

from penultimate.classifier import TextClassifier
from penultimate.config import TrainConfig
from penultimate.dropout_report import (
    REPORT_FILE,
    dropout_report_markdown,
    mask_picture_name,
    write_dropout_report,
)
from penultimate.encoders.pair import EncoderPair
from penultimate.explain_dropout import DROPPED, KEPT, REPORT_BATCH, UNKNOWN, explain_dropout
from penultimate.features import LoadedEncoder, load_encoder
from penultimate.train import compile_end_to_end, text_predictions

# What one draw of each mode covers, as the report names the axes of token states.
SHARED_BY_MODE = {
    "element": [],
    "feature": ["tokens"],
    "token": ["features"],
    "sample": ["tokens", "features"],
    "batch_shared": ["samples", "tokens"],
}


@pytest.fixture(scope="module")
def batch(corpus_slice: Path) -> tuple[list[str], np.ndarray]:
    frame = pl.read_parquet(corpus_slice).head(REPORT_BATCH)
    return frame["raw"].to_list(), (frame["label"] == "spam").cast(pl.Int32).to_numpy()


def classifier(pair: Path, **config: object) -> tuple[TextClassifier, LoadedEncoder]:
    loaded = load_encoder(EncoderPair(pair))
    # No lexical branch: these tests look at dropout, which it does not have.
    train_config = TrainConfig.model_validate({"lexical": None, **config})
    info = loaded.info
    model = TextClassifier(str(EncoderPair(pair).encoder), train_config, 2, info.num_layers)
    model(loaded.tokenize(["probe"]), training=False)
    return model, loaded


def report_of(pair: Path, batch: tuple[list[str], np.ndarray], **config: object) -> dict:
    model, loaded = classifier(pair, **config)
    one_step = functools.partial(compile_end_to_end, total_steps=None)
    return explain_dropout(model, loaded.tokenize(batch[0]), batch[1], one_step)


@pytest.mark.parametrize("mode", list(SHARED_BY_MODE))
def test_each_mask_drops_rate_of_its_units_shared_along_the_modes_axes(
    mode: str, hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    report = report_of(hub_pair, batch, dropout=[{"at": "sequence", "rate": 0.3, "mask": mode}])
    (mask,) = report["masks"]
    assert mask["within_bound"], (mask["observed_drop_fraction"], mask["binomial_bound"])
    assert abs(mask["observed_drop_fraction"] - 0.3) <= mask["binomial_bound"]
    assert mask["shared_along"] == SHARED_BY_MODE[mode] == mask["shared_along_expected"]
    assert mask["kept_scale_mean"] == pytest.approx(1 / 0.7, rel=1e-5)
    assert mask["realised"].shape == tuple(mask["input_shape"])


def test_columns_limit_the_drop_and_vectors_are_samples_by_features(
    hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    columns = list(range(0, 64, 4))
    report = report_of(hub_pair, batch, dropout=[{"at": "pooled", "rate": 0.5, "columns": columns}])
    (mask,) = report["masks"]
    assert mask["axes"] == ["samples", "features"] and mask["input_shape"] == [REPORT_BATCH, 64]
    assert mask["mask_units"] == REPORT_BATCH * len(columns) and mask["within_bound"]
    assert mask["other_columns_max_change"] == 0.0
    others = np.setdiff1d(np.arange(64), columns)
    assert (mask["realised"][:, others] == KEPT).all()
    assert (mask["realised"][:, columns] == DROPPED).any()


def test_stacked_dropouts_each_read_their_own_mask_past_the_zeros_before_them(
    hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    """A dropout after another (or after a ReLU) sees zeros it did not make: they are unknown,
    not kept, so each layer's fraction and sharing are its own."""
    dropout = [
        {"at": "sequence", "rate": 0.3, "mask": "feature"},
        {"at": "sequence", "rate": 0.2, "mask": "token", "columns": list(range(0, 64, 2))},
        {"at": "pooled", "rate": 0.2, "mask": "batch_shared"},
        {"at": "hidden:0", "rate": 0.3},
        {"at": "head", "rate": 0.5, "mask": "sample"},
    ]
    report = report_of(
        hub_pair, batch, hidden=[{"units": 32, "activation": "relu"}], dropout=dropout
    )
    for mask in report["masks"]:
        assert mask["within_bound"], mask["layer"]
        assert mask["shared_along"] == mask["shared_along_expected"], mask["layer"]
    hidden = report["masks"][3]
    assert (hidden["realised"] == UNKNOWN).any()  # the ReLU's zeros
    assert hidden["mask_units"] == (hidden["realised"] != UNKNOWN).sum()


def test_a_step_moves_the_trained_layers_only_and_the_model_is_put_back(
    hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    model, loaded = classifier(
        hub_pair, freeze="top:1", hidden=[{"units": 8}], dropout=[{"at": "hidden:0"}]
    )
    before = [v.numpy().copy() for v in model.weights]
    one_step = functools.partial(compile_end_to_end, total_steps=None)
    report = explain_dropout(model, loaded.tokenize(batch[0]), batch[1], one_step)
    layers = {row["layer"]: row for row in report["weights"]}
    assert set(layers) >= {"encoder_embeddings", "encoder_block_0", "encoder_block_1"}
    for moved in ("encoder_block_1", "hidden_0", "logits"):
        assert layers[moved]["changed"] and layers[moved]["gradient_nonzero"], moved
    # Mean pooling never reads the pooler: no gradient, yet AdamW's decoupled weight decay
    # moves it, because top:1 trains it.
    assert layers["encoder_pooler"]["changed"] and not layers["encoder_pooler"]["gradient_nonzero"]
    for frozen in ("encoder_embeddings", "encoder_block_0"):
        # Dropout after the encoder changes the gradient that reaches a frozen block; its
        # weights never move.
        assert layers[frozen]["gradient_nonzero"] and not layers[frozen]["changed"], frozen
    for variable, old in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.name)


def test_outputs_before_the_first_dropout_never_change_and_the_served_embedding_is_fixed(
    hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    report = report_of(hub_pair, batch, freeze="all", dropout=[{"at": "head", "rate": 0.4}])
    outputs = {row["output"]: row for row in report["outputs"]}
    for unchanged in ("encoder_block_0", "encoder_block_1", "pooled", "penultimate"):
        assert not outputs[unchanged]["changed"], unchanged
        assert outputs[unchanged]["relative_change"] == 0.0
    assert outputs["logits"]["changed"] and outputs["dropout_0_head"]["relative_change"] > 0.3
    weights = {row["layer"]: row for row in report["weights"]}
    assert not any(weights[f"encoder_block_{i}"]["changed"] for i in range(2))
    embeddings = {row["comparison"]: row for row in report["embeddings"]}
    assert embeddings["served embedding, computed twice at inference"]["cosine_min"] > 0.99999
    assert embeddings["penultimate layer with training=True vs served"]["cosine_min"] > 0.99999
    after = embeddings["after dropout_0_head (training=True) vs served"]
    assert after["cosine_mean"] < 0.9  # about sqrt(1 - rate) for a value-wise mask


def test_dropout_before_the_penultimate_layer_moves_the_training_embedding(
    hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    report = report_of(
        hub_pair, batch, hidden=[{"units": 16}], dropout=[{"at": "hidden:0", "rate": 0.3}]
    )
    embeddings = {row["comparison"]: row for row in report["embeddings"]}
    assert embeddings["penultimate layer with training=True vs served"]["cosine_mean"] < 0.95
    assert embeddings["penultimate layer: two training=True draws"]["cosine_mean"] < 0.95
    assert embeddings["served embedding, computed twice at inference"]["cosine_min"] > 0.99999


def test_the_report_is_written_with_a_picture_per_mask_and_renders(
    hub_pair: Path, batch: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    report = report_of(
        hub_pair,
        batch,
        hidden=[{"units": 8}],
        dropout=[{"at": "sequence", "mask": "feature"}, {"at": "hidden:0", "rate": 0.2}],
    )
    folder = tmp_path / "dropout_report"
    headline = write_dropout_report(report, folder)
    assert set(headline["masks"]) == {"dropout_0_sequence", "dropout_1_hidden_0"}
    for layer in headline["masks"]:
        picture = (folder / mask_picture_name(layer)).read_bytes()
        assert picture.startswith(b"\x89PNG") and len(picture) > 5_000
    assert "encoder_block_0" in headline["unchanged_layers"]
    markdown = dropout_report_markdown(folder, tmp_path, "test")
    assert markdown.count("data:image/png;base64,") == 2
    assert "| dropout_0_sequence | feature | 0.1 |" in markdown
    assert (folder / REPORT_FILE).is_file()


def test_mc_dropout_at_rate_zero_is_the_deterministic_prediction(
    hub_pair: Path, batch: tuple[list[str], np.ndarray]
) -> None:
    model, loaded = classifier(hub_pair, dropout=[{"at": "head", "rate": 0.0}])
    logits, _, draws = text_predictions(model, loaded, batch[0], (3,))
    stack, seconds = draws[3]
    assert stack.shape == (3, *logits.shape) and seconds >= 0
    np.testing.assert_array_equal(stack, np.broadcast_to(logits, stack.shape))
    model, loaded = classifier(hub_pair, dropout=[{"at": "head", "rate": 0.5}])
    logits, _, draws = text_predictions(model, loaded, batch[0], (3,))
    assert np.abs(draws[3][0] - logits).max() > 0
    assert tf.reduce_all(tf.math.is_finite(draws[3][0]))
