"""What a training run tells people: one log line per epoch with its time, and TensorBoard logs
under a run name that says what the classifier is, with an hparams summary, so TensorBoard's
HPARAMS tab compares runs by their dropout, freezing, pooling and rates.

A classifier artifact's `tensorboard/` holds one run, `<name>/`: `train/` and `validation/`
(Keras' TensorBoard callback, `epoch_loss`, `epoch_accuracy`, ...) and, in `<name>/` itself, the
hparams plugin's session (`hparams_of`) and the test scores (`test/accuracy`, ...). Point
`tensorboard --logdir` at one artifact's `tensorboard/`, or at the store's `classifier/` to
compare every classifier in it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras
from tensorboard.plugins.hparams import api as hparams_api
from tqdm import tqdm

from penultimate.artifacts import canonical_json
from penultimate.config import DropoutSpec, MaskMode, TrainConfig
from penultimate.console import progress_bar

TENSORBOARD_DIR = "tensorboard"
TEST_SCORES = ("accuracy", "precision", "recall", "f1", "roc_auc")
# Where a dropout layer can sit; every `hidden:<i>` counts as `hidden`.
_PLACEMENTS = ("sequence", "pooled", "hidden", "head")


class EpochLog(tf_keras.callbacks.Callback):
    """One line per epoch through `log`, e.g. `epoch 3/10: loss 0.1234, accuracy 0.9600,
    val_loss 0.2345, val_accuracy 0.9500 (4.2 s)`: training values, then validation ones, each
    loss first, and the epoch's wall time (its validation pass included); on a terminal, a
    progress bar over each epoch's batches in between (a fine-tuning epoch takes minutes).

    Args:
        log: where the epoch lines go.
        epochs: the most epochs the run may take.
        steps_per_epoch: batches per epoch, for a bar with an ETA when Keras cannot know them
            (a generator); Keras' own count wins when it has one.
    """

    def __init__(
        self, log: Callable[[str], None], epochs: int, steps_per_epoch: int | None = None
    ) -> None:
        super().__init__()
        self._log, self._epochs, self._steps = log, epochs, steps_per_epoch
        self._started = time.perf_counter()
        self._bar: tqdm | None = None

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self._started = time.perf_counter()
        steps = self.params.get("steps") or self._steps
        self._bar = progress_bar(steps, f"epoch {epoch + 1}/{self._epochs}", "batch")

    def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        if self._bar is not None:
            self._bar.update()

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        self.close()

    def close(self) -> None:
        """Take the bar off the terminal (Keras skips `on_train_end` when `fit` raises)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.close()
        seconds = time.perf_counter() - self._started
        values = {name: float(v) for name, v in (logs or {}).items() if name != "lr"}
        order = sorted(
            values,
            key=lambda name: (
                name.startswith("val_"),
                name.removeprefix("val_") != "loss",
                name,
            ),
        )
        shown = ", ".join(f"{name} {values[name]:.4f}" for name in order)
        # A head on cached features can take a few milliseconds an epoch: `0.0 s` would hide it.
        took = f"{seconds:.1f} s" if seconds >= 0.1 else f"{1000 * seconds:.0f} ms"
        self._log(f"epoch {epoch + 1}/{self._epochs}: {shown} ({took})")


def still_improving(history: Mapping[str, Sequence[float]], epochs: int) -> str | None:
    """A warning when training used every epoch and the last one set a new best validation
    loss: more epochs would likely help. None otherwise (or without validation rows)."""
    val_loss = list(history.get("val_loss", []))
    if len(val_loss) < max(epochs, 2) or val_loss[-1] >= min(val_loss[:-1]):
        return None
    return (
        f"validation loss still falling at the last of {epochs} epochs "
        f"({val_loss[-2]:.4f} -> {val_loss[-1]:.4f}): more epochs would likely help"
    )


def _dropout_name(spec: DropoutSpec) -> str:
    name = f"{spec.at.replace(':', '')}{spec.rate:g}"
    if spec.mask != MaskMode.element:
        name += f"-{spec.mask}"
    if spec.columns:
        name += f"-cols{len(spec.columns)}"
    return name


def dropout_summary(config: TrainConfig) -> str:
    """Every dropout layer as placement, rate, non-default mask and column count, e.g.
    `pooled0.2-batch_shared+head0.5-cols4`; `none` without dropout."""
    return "+".join(_dropout_name(spec) for spec in config.dropout) or "none"


def _hidden_summary(config: TrainConfig) -> str:
    return "x".join(str(layer.units) for layer in config.hidden) or "none"


def run_name(config: TrainConfig) -> str:
    """The TensorBoard run of a config, e.g. `freeze-all_pool-mean_drop-head0.1_1a2b3c4d`
    (`layer<i>` when it is not the last, `hidden-<units>x<units>` with hidden layers). The
    suffix is a digest of the whole config, so runs that differ only in what the name leaves
    out (rates, epochs, seed, encoder) still have different names."""
    parts = [f"freeze-{config.freeze.replace(':', '')}", f"pool-{config.pooling}"]
    if config.layer != -1:
        parts.append(f"layer{config.layer}")
    if config.hidden:
        parts.append(f"hidden-{_hidden_summary(config)}")
    parts.append(f"drop-{dropout_summary(config)}")
    digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()[:8]
    return "_".join([*parts, digest])


def hparams_of(config: TrainConfig) -> dict[str, bool | int | float | str]:
    """The values TensorBoard compares runs by. `dropout_<placement>` is the rate of the
    dropout at that placement (several combine to 1 - the product of their keep
    probabilities; 0 = none), so runs sort by it; `dropout` spells out every layer."""
    values: dict[str, bool | int | float | str] = {
        "freeze": config.freeze,
        "pooling": str(config.pooling),
        "layer": config.layer,
        "hidden": _hidden_summary(config),
        "dropout": dropout_summary(config),
    }
    for placement in _PLACEMENTS:
        keep = math.prod(1 - s.rate for s in config.dropout if s.at.split(":")[0] == placement)
        values[f"dropout_{placement}"] = round(1 - keep, 6)  # 1 - (1 - 0.1) is 0.0999...98
    values.update(
        learning_rate=config.learning_rate,
        encoder_learning_rate=config.encoder_learning_rate,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        epochs=config.epochs,
        class_weights=str(config.class_weights),
    )
    return values


def tensorboard_callback(run_dir: Path) -> tf_keras.callbacks.Callback:
    """Keras' TensorBoard callback writing the run's `train/` and `validation/`."""
    return tf_keras.callbacks.TensorBoard(log_dir=str(run_dir), profile_batch=0)


def write_run_summary(
    run_dir: Path, config: TrainConfig, test: Mapping[str, Any] | None, epochs_run: int
) -> None:
    """The hparams plugin's session of this run (its `hparams_of`, named after the run's
    folder) and the test scores at the last epoch's step.

    No experiment config (`hparams_config`) is written: TensorBoard reads a single one however
    many runs it is shown, while without one it derives the experiment from all the sessions it
    finds, with each hparam's type, its values and whether it differs between runs, and every
    scalar of the runs (the `train/` and `validation/` ones, `test/*`) as a metric.
    """
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        hparams_api.hparams(hparams_of(config), trial_id=run_dir.name)
        for score in TEST_SCORES:
            if test and test.get(score) is not None:
                tf.summary.scalar(f"test/{score}", test[score], step=epochs_run - 1)
    writer.close()
