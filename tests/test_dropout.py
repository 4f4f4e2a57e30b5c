"""StructuredDropout: the mask's structure per mode, column restriction, scaling and serialisation.

Masks are read off outputs: with strictly positive inputs, a dropped value is exactly 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow is imported)
from penultimate.dropout import MASK_MODES, StructuredDropout

BATCH, TOKENS, FEATURES, RATE = 64, 20, 48, 0.3
SEQUENCE = (BATCH, TOKENS, FEATURES)
VECTOR = (BATCH, FEATURES)
COLUMNS = [0, 5, 7]

# Axes along which each mode's mask must be constant; along every other axis it must vary.
SEQUENCE_CONSTANT_AXES = {
    "element": (),
    "feature": (1,),
    "token": (2,),
    "sample": (1, 2),
    "batch_shared": (0, 1),
}
VECTOR_CONSTANT_AXES = {"element": (), "sample": (1,), "batch_shared": (0,)}
# How many independent mask draws one call makes per feature column, per mode.
UNITS_PER_COLUMN = {
    "element": BATCH * TOKENS,
    "feature": BATCH,
    "token": BATCH * TOKENS,
    "sample": BATCH,
    "batch_shared": 1,
}


def dropped_mask(layer: StructuredDropout, inputs: tf.Tensor) -> np.ndarray:
    return layer(inputs, training=True).numpy() == 0


def constant_along(mask: np.ndarray, axis: int) -> bool:
    return bool(np.all(mask == mask.take([0], axis=axis)))


def assert_structure(mask: np.ndarray, constant_axes: tuple[int, ...]) -> None:
    for axis in range(mask.ndim):
        assert constant_along(mask, axis) == (axis in constant_axes), f"axis {axis}"


def binomial_bound(n: int, p: float = RATE) -> float:
    return 4 * np.sqrt(p * (1 - p) / n)


def positive_inputs(shape: tuple[int, ...], seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(0.5, 2.0, shape), tf.float32)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_sequence_mask_is_shared_exactly_along_the_modes_axes(mode: str) -> None:
    layer = StructuredDropout(RATE, mask=mode, seed=1)
    outputs = layer(tf.ones(SEQUENCE), training=True).numpy()
    assert_structure(outputs == 0, SEQUENCE_CONSTANT_AXES[mode])
    np.testing.assert_allclose(outputs[outputs != 0], 1 / (1 - RATE), rtol=1e-6)


@pytest.mark.parametrize("mode", sorted(VECTOR_CONSTANT_AXES))
def test_vector_mask_is_shared_exactly_along_the_modes_axes(mode: str) -> None:
    layer = StructuredDropout(RATE, mask=mode, seed=2)
    assert_structure(dropped_mask(layer, tf.ones(VECTOR)), VECTOR_CONSTANT_AXES[mode])


def test_element_mask_mixes_within_nearly_every_token_vector() -> None:
    dropped = dropped_mask(StructuredDropout(RATE, seed=3), tf.ones(SEQUENCE))
    mixed = dropped.any(axis=-1) & ~dropped.all(axis=-1)
    # A token vector of 48 values is entirely kept with probability 0.7**48, about 4e-8.
    assert mixed.mean() > 0.99


def test_noise_shape_follows_the_dynamic_batch_and_token_counts() -> None:
    inputs = tf.ones(SEQUENCE)
    expected = {
        "element": [BATCH, TOKENS, FEATURES],
        "feature": [BATCH, 1, FEATURES],
        "token": [BATCH, TOKENS, 1],
        "sample": [BATCH, 1, 1],
        "batch_shared": [1, 1, FEATURES],
    }
    for mode, shape in expected.items():
        assert StructuredDropout(RATE, mask=mode).noise_shape_for(inputs).numpy().tolist() == shape
    vector = StructuredDropout(RATE, mask="batch_shared").noise_shape_for(tf.ones(VECTOR))
    assert vector.numpy().tolist() == [1, FEATURES]


def test_token_mask_under_tf_function_with_unknown_batch_and_tokens() -> None:
    layer = StructuredDropout(RATE, mask="token", seed=4)
    spec = tf.TensorSpec([None, None, FEATURES], tf.float32)
    drop = tf.function(lambda x: layer(x, training=True), input_signature=[spec])
    for shape in (SEQUENCE, (7, 33, FEATURES)):
        assert_structure(drop(tf.ones(shape)).numpy() == 0, SEQUENCE_CONSTANT_AXES["token"])


@pytest.mark.parametrize("mode", MASK_MODES)
def test_columns_restrict_dropout_to_the_named_columns(mode: str) -> None:
    layer = StructuredDropout(RATE, mask=mode, columns=COLUMNS, seed=5)
    inputs = positive_inputs(SEQUENCE)
    draws = 60
    outputs = np.stack([layer(inputs, training=True).numpy() for _ in range(draws)])
    x = np.broadcast_to(inputs.numpy(), outputs.shape)
    others = np.setdiff1d(np.arange(FEATURES), COLUMNS)
    np.testing.assert_array_equal(outputs[..., others], x[..., others])

    named, named_x = outputs[..., COLUMNS], x[..., COLUMNS]
    kept = named != 0
    np.testing.assert_allclose(named[kept], named_x[kept] / (1 - RATE), rtol=1e-6)
    for draw in named == 0:
        # Within the named columns the mask still has the mode's structure.
        for axis in SEQUENCE_CONSTANT_AXES[mode]:
            assert constant_along(draw, axis), f"axis {axis}"
    n = draws * UNITS_PER_COLUMN[mode]
    for column, zero_fraction in zip(COLUMNS, (named == 0).mean(axis=(0, 1, 2)), strict=True):
        assert abs(zero_fraction - RATE) <= binomial_bound(n), f"column {column}"


def test_kept_values_are_scaled_exactly_and_the_drop_rate_matches() -> None:
    inputs = positive_inputs(SEQUENCE, seed=6)
    outputs = StructuredDropout(RATE, seed=7)(inputs, training=True).numpy()
    kept = outputs != 0
    np.testing.assert_allclose(outputs[kept], inputs.numpy()[kept] / (1 - RATE), rtol=1e-6)
    assert abs((~kept).mean() - RATE) <= binomial_bound(outputs.size)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_half_precision_keeps_dtype_and_rounds_the_scaled_value_once(dtype: tf.DType) -> None:
    inputs = tf.cast(positive_inputs(SEQUENCE, seed=8), dtype)
    outputs = StructuredDropout(RATE, mask="token", seed=9)(inputs, training=True)
    assert outputs.dtype == dtype
    kept = outputs.numpy() != 0
    exact = tf.cast(tf.cast(inputs, tf.float32) / (1 - RATE), dtype).numpy()
    np.testing.assert_array_equal(outputs.numpy()[kept], exact[kept])
    assert abs((~kept).mean() - RATE) <= binomial_bound(BATCH * TOKENS)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_identity_outside_training_and_at_rate_zero(mode: str) -> None:
    inputs = positive_inputs(SEQUENCE, seed=10)
    layer = StructuredDropout(RATE, mask=mode, columns=COLUMNS)
    np.testing.assert_array_equal(layer(inputs, training=False).numpy(), inputs.numpy())
    np.testing.assert_array_equal(layer(inputs).numpy(), inputs.numpy())
    inactive = StructuredDropout(0.0, mask=mode)(inputs, training=True)
    np.testing.assert_array_equal(inactive.numpy(), inputs.numpy())


def functional_model(layer: StructuredDropout) -> tf_keras.Model:
    inputs = tf_keras.Input(shape=(TOKENS, FEATURES))
    return tf_keras.Model(inputs, layer(inputs))


def test_functional_model_is_the_identity_in_inference_and_drops_in_training() -> None:
    model = functional_model(StructuredDropout(RATE, mask="feature", seed=11))
    inputs = positive_inputs(SEQUENCE, seed=12)
    for _ in range(2):
        np.testing.assert_array_equal(model(inputs).numpy(), inputs.numpy())
        np.testing.assert_array_equal(model.predict(inputs, verbose=0), inputs.numpy())
    dropped = model(inputs, training=True).numpy() == 0
    assert_structure(dropped, SEQUENCE_CONSTANT_AXES["feature"])


def test_keras_mask_passes_through() -> None:
    inputs = np.ones(SEQUENCE, np.float32)
    inputs[:, TOKENS // 2 :] = 0
    masked = tf_keras.layers.Masking(mask_value=0.0)(inputs)
    outputs = StructuredDropout(RATE, mask="token")(masked, training=True)
    np.testing.assert_array_equal(outputs._keras_mask.numpy(), masked._keras_mask.numpy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": -0.1}, r"rate must be a number in \[0, 1\), got -0.1"),
        ({"rate": 1.0}, r"rate must be a number in \[0, 1\), got 1.0"),
        ({"rate": float("nan")}, r"rate must be a number in \[0, 1\), got nan"),
        ({"rate": RATE, "mask": "channel"}, r"mask must be one of .*'channel'"),
        ({"rate": RATE, "columns": [3, -1, -2]}, r"columns must be non-negative .*\[-2, -1\]"),
        ({"rate": RATE, "columns": [3, 4, 3]}, r"columns must not repeat an index, got \[3\]"),
        ({"rate": RATE, "columns": []}, r"columns must name at least one feature"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StructuredDropout(**kwargs)


@pytest.mark.parametrize("mode", ["feature", "token"])
def test_token_modes_reject_vector_inputs(mode: str) -> None:
    with pytest.raises(ValueError, match=rf"mask='{mode}' needs a token axis"):
        StructuredDropout(RATE, mask=mode)(tf.ones(VECTOR), training=True)


def test_columns_out_of_range_name_the_indices_and_feature_size() -> None:
    layer = StructuredDropout(RATE, columns=[3, FEATURES, FEATURES + 2])
    with pytest.raises(ValueError, match=rf"columns \[48, 50\] .* feature size {FEATURES}"):
        layer(tf.ones(SEQUENCE), training=True)


def test_get_config_round_trips() -> None:
    layer = StructuredDropout(RATE, mask="token", columns=COLUMNS, seed=13, name="drop")
    clone = StructuredDropout.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.rate, clone.mask, clone.columns, clone.seed) == (RATE, "token", (0, 5, 7), 13)


def test_saved_model_reloads_without_custom_objects(tmp_path: Path) -> None:
    layer = StructuredDropout(RATE, mask="sample", columns=COLUMNS, seed=14, name="drop")
    path = str(tmp_path / "model")
    functional_model(layer).save(path)  # no .keras suffix: tf-keras writes a SavedModel
    assert (tmp_path / "model" / "saved_model.pb").is_file()

    loaded = tf_keras.models.load_model(path)
    reloaded = loaded.get_layer("drop")
    assert isinstance(reloaded, StructuredDropout)
    assert reloaded.get_config() == layer.get_config()
    inputs = positive_inputs(SEQUENCE, seed=15)
    np.testing.assert_array_equal(loaded(inputs).numpy(), inputs.numpy())
    dropped = loaded(inputs, training=True).numpy() == 0
    assert not dropped[..., np.setdiff1d(np.arange(FEATURES), COLUMNS)].any()
    assert_structure(dropped[..., COLUMNS], SEQUENCE_CONSTANT_AXES["sample"])
