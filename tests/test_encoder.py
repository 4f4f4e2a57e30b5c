"""The built-in `minilm-l6` encoder pair against the sentence-transformers reference fixture, and
the converter's contract: TF-Hub-format SavedModels, any BERT folder, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from conftest import FIXTURES, task_run_states
from encoder_fixtures import TINY_BERT
from penultimate.encoders.pair import EncoderPair
from penultimate.encoders.sources import EncoderSourceError, resolve_weights_folder
from penultimate.pooling import l2_normalize, masked_mean

REFERENCE = json.loads((FIXTURES / "minilm_reference.json").read_text())
ARRAYS = np.load(FIXTURES / "minilm_reference.npz")
SEQ_LENGTH = REFERENCE["max_seq_length"]


@pytest.fixture(scope="module")
def pair(minilm_pair: Path) -> EncoderPair:
    return EncoderPair(minilm_pair)


@pytest.fixture(scope="module")
def reference_inputs(pair: EncoderPair) -> dict[str, tf.Tensor]:
    preprocessor = hub.KerasLayer(str(pair.preprocessor))
    return preprocessor(tf.constant(REFERENCE["sentences"]))


def test_token_ids_identical_to_reference(reference_inputs: dict[str, tf.Tensor]) -> None:
    ids = reference_inputs["input_word_ids"].numpy()
    mask = reference_inputs["input_mask"].numpy()
    assert ids.shape == (len(REFERENCE["sentences"]), SEQ_LENGTH)
    for row, expected in enumerate(REFERENCE["token_ids"]):
        got = ids[row][mask[row] == 1].tolist()
        assert got == expected, f"sentence {row}: {REFERENCE['sentences'][row]!r}"
        assert (ids[row][mask[row] == 0] == 0).all()
    assert (reference_inputs["input_type_ids"].numpy() == 0).all()


def test_mean_pooled_embeddings_match_reference(
    pair: EncoderPair, reference_inputs: dict[str, tf.Tensor]
) -> None:
    encoder = hub.KerasLayer(str(pair.encoder))
    outputs = encoder(reference_inputs)
    ours = l2_normalize(masked_mean(outputs["sequence_output"], reference_inputs["input_mask"]))
    cosine = np.sum(ours.numpy() * ARRAYS["embeddings"], axis=1)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= 0.9999, f"worst {cosine.min():.6f}: {REFERENCE['sentences'][worst]!r}"


def test_every_layer_matches_reference_hidden_states(pair: EncoderPair) -> None:
    preprocessor = tf.saved_model.load(str(pair.preprocessor))
    encoder = tf.saved_model.load(str(pair.encoder))
    indices = REFERENCE["hidden_state_sentence_indices"]
    inputs = preprocessor(tf.constant([REFERENCE["sentences"][i] for i in indices]))
    layers = encoder(inputs, training=False)["encoder_outputs"]
    expected = ARRAYS["hidden_states"]  # [sentences, embeddings + layers, positions, features]
    positions = expected.shape[2]
    mask = ARRAYS["hidden_states_mask"][:, :positions].astype(bool)
    assert len(layers) == expected.shape[1] - 1
    for layer, states in enumerate(layers, start=1):
        diff = np.abs(states.numpy()[:, :positions] - expected[:, layer])[mask]
        assert diff.max() <= 1e-3, f"layer {layer}: max abs diff {diff.max():.2e}"


def test_pair_works_as_tf_hub_layers_in_a_keras_model(pair: EncoderPair) -> None:
    text = tf_keras.layers.Input(shape=(), dtype=tf.string)
    encoded = hub.KerasLayer(str(pair.encoder), trainable=True)(
        hub.KerasLayer(str(pair.preprocessor))(text)
    )
    model = tf_keras.Model(text, encoded["pooled_output"])
    batch = tf.constant(["a short one", "and another, somewhat longer, sentence"])
    assert model(batch).shape == (2, 384)
    assert len(model.trainable_weights) == 6 * 16 + 7  # blocks + embeddings, norms, pooler
    inference = model(batch, training=False).numpy()
    np.testing.assert_array_equal(inference, model(batch, training=False).numpy())
    assert not np.allclose(model(batch, training=True).numpy(), inference, atol=1e-4)


def test_saved_models_are_relocatable(pair: EncoderPair, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(pair.root, moved)
    preprocessor = tf.saved_model.load(str(EncoderPair(moved).preprocessor))
    assert preprocessor(tf.constant(["hello world"]))["input_word_ids"].numpy()[0, :4].tolist() == [
        101,
        7592,
        2088,
        102,
    ]


def test_build_encoder_rerun_is_cached(
    minilm_pair: Path, encoder_store: str, prefect_api: str
) -> None:
    from flows.build_encoder import build_encoder_flow

    built = (minilm_pair / "manifest.json").stat().st_mtime_ns
    first = build_encoder_flow(store_root=encoder_store, return_state=True)
    # The fixture's artifact (same key) is complete: the flow reuses it, rebuilding nothing.
    assert first.result().path == minilm_pair
    assert (minilm_pair / "manifest.json").stat().st_mtime_ns == built
    state = build_encoder_flow(store_root=encoder_store, return_state=True)
    assert state.result().path == minilm_pair
    assert task_run_states(state)["build-encoder"] == "Cached"


def test_converter_names_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(resolve_weights_folder("minilm-l6"), folder)
    (folder / "vocab.txt").unlink()
    with pytest.raises(EncoderSourceError, match=r"missing vocab\.txt"):
        resolve_weights_folder(str(folder))
    with pytest.raises(EncoderSourceError, match="not a built-in name"):
        resolve_weights_folder(str(tmp_path / "nowhere"))


def test_converter_takes_any_bert_folder(tiny_bert_pair: Path, tmp_path: Path) -> None:
    """tiny_bert_pair is a random BERT of another shape than MiniLM's, converted by
    `build_encoder_pair` at seq_length 16."""
    from penultimate.encoders.bert_convert import build_encoder_pair

    pair = EncoderPair(tiny_bert_pair)
    inputs = tf.saved_model.load(str(pair.preprocessor))(tf.constant(["hello tiny world"]))
    outputs = tf.saved_model.load(str(pair.encoder))(inputs, training=False)
    assert outputs["sequence_output"].shape == (1, 16, TINY_BERT["hidden_size"])
    assert len(outputs["encoder_outputs"]) == TINY_BERT["num_hidden_layers"]
    with pytest.raises(EncoderSourceError, match="exceeds the model's max_position_embeddings"):
        build_encoder_pair(tiny_bert_pair.parent / "checkpoint", tmp_path / "out", seq_length=128)
