"""Structured dropout for token states [batch, tokens, features] and vectors [batch, features].

One tf-keras layer drops single values, features, tokens, whole samples or one batch-wide mask.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras

from penultimate.config import MaskMode

# The config's list of modes is the layer's: one enum, so a mode cannot exist in one only.
MASK_MODES = tuple(mode.value for mode in MaskMode)

# Per mode, which input axes (batch, tokens, features) the mask varies along; the others get
# noise-shape 1 so one draw is broadcast over them.
_VARYING_AXES = {
    MaskMode.element: (True, True, True),
    MaskMode.feature: (True, False, True),
    MaskMode.token: (True, True, False),
    MaskMode.sample: (True, False, False),
    MaskMode.batch_shared: (False, False, True),
}
_NEEDS_TOKENS = (MaskMode.feature, MaskMode.token)


@tf_keras.utils.register_keras_serializable(package="penultimate")
class StructuredDropout(tf_keras.layers.Layer):
    """Inverted dropout whose mask is shared along chosen axes, optionally on some columns only.

    Active only when `training=True`: dropped values become 0 and kept values are scaled by
    `1 / (1 - rate)`; otherwise the layer is the identity. Mask modes, as noise shapes of a
    sequence input `[batch, tokens, features]` (vector inputs `[batch, features]` drop the
    tokens axis):

    - `"element"`: `(batch, tokens, features)`, every value independently.
    - `"feature"`: `(batch, 1, features)`, per sample the same features on every token (as
      `SpatialDropout1D`). Sequence inputs only.
    - `"token"`: `(batch, tokens, 1)`, whole token vectors. Sequence inputs only.
    - `"sample"`: `(batch, 1, 1)`, whole examples.
    - `"batch_shared"`: `(1, 1, features)`, one mask for the whole batch.

    The input dtype is kept (no autocast to the layer's dtype), and a Keras mask passes through.

    Args:
        rate: fraction of values (or of mask units) to drop, in `[0, 1)`. 0 is the identity.
        mask: one of `MASK_MODES`.
        columns: feature indices to drop from; `None` means all. Other columns pass through
            unchanged and unscaled, and each named column is dropped with probability `rate`.
        seed: op-level seed for `tf.random.uniform`, for reproducible masks.
        **kwargs: base `Layer` arguments such as `name`.

    Example:

    ```python
    states = tf.ones([2, 5, 8])
    layer = StructuredDropout(0.3, mask="token", columns=[0, 5, 7])
    dropped = layer(states, training=True)
    # Columns 0, 5, 7 of about 30% of tokens are 0, of the rest 1/0.7; other columns stay 1.
    ```
    """

    def __init__(
        self,
        rate: float,
        mask: str = "element",
        columns: Sequence[int] | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        # A dropout layer has nothing to compute in its own dtype; casting bfloat16 states to
        # float32 would only double the memory of everything after it.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.rate = self._checked_rate(rate)
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
        self.mask = mask
        self.columns = None if columns is None else self._checked_columns(columns)
        self.seed = seed
        self.supports_masking = True
        self._selected_columns: tuple[bool, ...] | None = None

    @staticmethod
    def _checked_rate(rate: float) -> float:
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        return float(rate)

    @staticmethod
    def _checked_columns(columns: Sequence[int]) -> tuple[int, ...]:
        indices = tuple(columns)
        if not indices:
            raise ValueError("columns must name at least one feature index, or be None for all")
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
            raise ValueError(f"columns must be integer feature indices, got {list(indices)}")
        negative = sorted({int(i) for i in indices if i < 0})
        if negative:
            raise ValueError(f"columns must be non-negative feature indices, got {negative}")
        duplicated = sorted({int(i) for i in indices if indices.count(i) > 1})
        if duplicated:
            raise ValueError(f"columns must not repeat an index, got {duplicated} more than once")
        return tuple(int(i) for i in indices)

    @staticmethod
    def _varying_axes(mask: str, rank: int | None) -> tuple[bool, ...]:
        if rank not in (2, 3):
            raise ValueError(
                "StructuredDropout inputs must be [batch, tokens, features] or [batch, features], "
                f"got rank {rank}"
            )
        if rank == 2 and mask in _NEEDS_TOKENS:
            raise ValueError(
                f"mask={mask!r} needs a token axis: inputs of shape [batch, tokens, features], "
                "got a vector input [batch, features]"
            )
        batch, tokens, features = _VARYING_AXES[mask]
        return (batch, tokens, features) if rank == 3 else (batch, features)

    def build(self, input_shape: tf.TensorShape) -> None:
        input_shape = tf.TensorShape(input_shape)
        self._varying_axes(self.mask, input_shape.rank)
        if self.columns is not None:
            size = input_shape[-1]
            if size is None:
                raise ValueError("columns needs a known feature size (last input axis), got None")
            out_of_range = [i for i in self.columns if i >= size]
            if out_of_range:
                raise ValueError(f"columns {out_of_range} are out of range for feature size {size}")
            named = set(self.columns)
            self._selected_columns = tuple(i in named for i in range(size))
        super().build(input_shape)

    def noise_shape_for(self, inputs: tf.Tensor) -> tf.Tensor:
        """The mask's shape for `inputs` (1-D int32), from the dynamic batch and token counts."""
        varying = self._varying_axes(self.mask, inputs.shape.rank)
        return tf.where(tf.constant(varying), tf.shape(inputs), 1)

    def call(self, inputs: tf.Tensor, training: bool | tf.Tensor | None = None) -> tf.Tensor:
        if self.rate == 0:
            return tf.identity(inputs)
        return tf_keras.backend.in_train_phase(
            lambda: self._dropped(inputs), lambda: tf.identity(inputs), training=training
        )

    def _dropped(self, inputs: tf.Tensor) -> tf.Tensor:
        # Drawn in float32: a bfloat16 uniform has 1/128 steps, which would bias the drop rate.
        keep = tf.random.uniform(self.noise_shape_for(inputs), seed=self.seed) >= self.rate
        # Scaling in at least float32 rounds x / (1 - rate) once; in 16-bit floats the factor
        # itself would be rounded before the product.
        wide = tf.float32 if inputs.dtype.size < 4 else inputs.dtype
        factor = tf.constant(1.0 / (1.0 - self.rate), wide)
        if self._selected_columns is not None:
            selected = tf.constant(self._selected_columns)
            keep = tf.logical_or(keep, tf.logical_not(selected))
            factor = tf.where(selected, factor, tf.ones_like(factor))
        dropped = tf.where(keep, tf.cast(inputs, wide) * factor, tf.zeros_like(factor))
        return tf.cast(dropped, inputs.dtype)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rate": self.rate,
            "mask": self.mask,
            "columns": None if self.columns is None else list(self.columns),
            "seed": self.seed,
        }
