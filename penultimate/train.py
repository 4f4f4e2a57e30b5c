"""Training: validate a TrainConfig against its dataset and encoder, train the classifier (on cached
per-shard encoder features when the encoder cannot change, else end to end), evaluate, and save.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import tensorflow as tf
import tf_keras

from penultimate.artifacts import ArtifactRef
from penultimate.classifier import (
    TEXT_INPUT,
    EncoderStructureError,
    HeadModel,
    TextClassifier,
    WarmupLinearDecay,
    classifier_inputs,
    encoder_variables_to_train,
)
from penultimate.config import ClassWeights, Pooling, TrainConfig
from penultimate.dropout_report import DROPOUT_REPORT_DIR, write_dropout_report
from penultimate.encoders.pair import EncoderInfo, EncoderPair
from penultimate.errors import InputError
from penultimate.evaluation import classification_metrics, plot_confusion_matrix
from penultimate.explain_dropout import REPORT_BATCH, explain_dropout
from penultimate.features import (
    LoadedEncoder,
    batched_inference,
    count_tokens,
    length_sorted_batches,
    load_encoder,
)
from penultimate.lexical import (
    MIN_DOCUMENT_FREQUENCY,
    LexicalVocabulary,
    fit_lexical_vocabulary,
    lexical_warm_start,
)
from penultimate.shard_features import read_features, side_by_side
from penultimate.stages import ENCODER_STAGE
from penultimate.training_log import (
    TENSORBOARD_DIR,
    EpochLog,
    run_name,
    still_improving,
    tensorboard_callback,
    write_run_summary,
)
from penultimate.uncertainty import (
    UNCERTAINTY_DIR,
    logits_to_probabilities,
    uncertainty_report,
    write_uncertainty_report,
)

CLASSIFIER_FILE = "classifier.json"
WEIGHTS = "weights/classifier"
FEATURE_SPLITS = ("train", "val", "test")
AUTO_WEIGHT_CAP = 10.0
# MC-dropout sample counts T the uncertainty report compares with the deterministic prediction.
MC_SAMPLES = (10, 30, 100)
# Batches are sorted by length within windows of this many batches: little padding, still shuffled.
_SORT_WINDOW_BATCHES = 20
_PREDICT_BATCH = 256


class TrainInputError(InputError):
    """The config does not fit the dataset or the encoder; the message names the field."""


@dataclass(frozen=True)
class LabelSpace:
    names: list[str]

    def encode(self, labels: pl.Series) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.names)}
        return np.array([index[label] for label in labels], np.int32)


def validate_training_inputs(
    config: TrainConfig,
    dataset: ArtifactRef,
    label_counts: Mapping[str, Mapping[str, int]] | None,
    encoder: EncoderInfo,
) -> LabelSpace:
    """Check the config against the data (its manifest's `label_counts_per_split`, None for an
    unlabelled dataset) and the encoder before any compute."""
    if label_counts is None:
        raise TrainInputError(f"dataset {dataset.uri} has no label column; training needs labels")
    for split in ("train", "val"):
        if not sum(label_counts.get(split, {}).values()):
            raise TrainInputError(f"dataset {dataset.uri} has no rows in the {split!r} split")
    classes = sorted(label_counts["train"])
    if len(classes) < 2:
        raise TrainInputError(
            f"dataset {dataset.uri}: the train split has a single class {classes}; need >= 2"
        )
    unseen = {label for counts in label_counts.values() for label in counts} - set(classes)
    if unseen:
        raise TrainInputError(f"dataset {dataset.uri}: labels {sorted(unseen)} are not in train")
    if not -encoder.num_layers <= config.layer < encoder.num_layers:
        raise TrainInputError(
            f"layer: {config.layer} does not exist; the encoder has {encoder.num_layers} layers"
        )
    if config.trained_top_blocks and config.trained_top_blocks > encoder.num_layers:
        raise TrainInputError(
            f"freeze: {config.freeze} but the encoder has {encoder.num_layers} blocks"
        )
    try:
        encoder_variables_to_train(
            encoder.trainable_variables, encoder.num_layers, config.trained_top_blocks
        )
    except EncoderStructureError as error:
        raise TrainInputError(f"{error}; encoder {encoder.origin}") from None
    for index, spec in enumerate(config.dropout):
        width = _width_at(spec.at, config, encoder)
        if spec.columns and max(spec.columns) >= width:
            raise TrainInputError(
                f"dropout[{index}].columns: {sorted(c for c in spec.columns if c >= width)} out of "
                f"range for {width} features at {spec.at}"
            )
    return LabelSpace(classes)


def _width_at(at: str, config: TrainConfig, encoder: EncoderInfo) -> int:
    if at.startswith("hidden:"):
        return config.hidden[int(at.split(":")[1])].units
    if at == "head" and config.hidden:
        return config.hidden[-1].units
    if at != "sequence" and config.pooling == Pooling.mean_max:
        return 2 * encoder.hidden_size  # mean and max side by side
    return encoder.hidden_size


def split_features(
    frame: pl.DataFrame, features: Sequence[ArtifactRef], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The `names` vectors (side by side) of a dataset's features artifacts (one per shard) as
    [rows, dim] per split, in the frame's row order within each split."""
    ids, matrices = [], []
    for ref in features:
        shard = read_features(ref, names)
        ids.extend(shard.ids)
        matrices.append(side_by_side(shard.vectors, names))
    matrix = np.concatenate(matrices) if matrices else np.zeros((0, 0), np.float32)
    position = {row_id: i for i, row_id in enumerate(ids)}
    result = {}
    for split in FEATURE_SPLITS:
        split_ids = frame.filter(pl.col("split") == split)["id"].to_list()
        if split_ids:
            result[split] = matrix[[position[i] for i in split_ids]]
    return result


def class_weights(counts: np.ndarray, mode: ClassWeights) -> dict[int, float] | None:
    """Loss weight per class id from its train rows `counts` [C]; each mode's weights have a
    row-weighted mean of 1, so the learning rate means the same with and without them.

    `balanced` is inverse frequency (sklearn's); `auto` is inverse square-root frequency with the
    largest weight at most AUTO_WEIGHT_CAP times the smallest: a class of 2 rows beside one of
    1,000 gets ~10x, not ~500x, the weight, so small classes are helped without being predicted
    everywhere. A class without train rows gets the largest weight (it never enters the loss).
    """
    if mode == ClassWeights.none:
        return None
    present = counts > 0
    raw = np.zeros(len(counts))
    if mode == ClassWeights.balanced:
        raw[present] = 1.0 / counts[present]
    else:
        raw[present] = 1.0 / np.sqrt(counts[present])
        raw = np.minimum(raw, AUTO_WEIGHT_CAP * raw[present].min())
    raw *= counts.sum() / (counts * raw).sum()
    raw[~present] = raw[present].max()
    return {c: float(weight) for c, weight in enumerate(raw)}


def _optimizer(
    peak: float, config: TrainConfig, total_steps: int | None
) -> tf_keras.optimizers.Optimizer:
    """AdamW at `peak` after warm-up and decaying to 0 at `total_steps`; constant at `peak` when
    `total_steps` is None (the warm-up's first step has rate 0: nothing would move)."""
    rate: float | WarmupLinearDecay = peak
    if total_steps is not None:
        rate = WarmupLinearDecay(peak, int(config.warmup_fraction * total_steps), total_steps)
    optimizer = tf_keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "layer_norm", "gamma", "beta"])
    return optimizer


def _loss_and_metrics(num_classes: int) -> dict[str, Any]:
    if num_classes == 2:
        return {
            "loss": tf_keras.losses.BinaryCrossentropy(from_logits=True),
            "metrics": [tf_keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
        }
    return {
        "loss": tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "metrics": [tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    }


def compile_end_to_end(model: TextClassifier, total_steps: int | None) -> None:
    """Compile `model` as end-to-end training does: one optimiser for the head, one (at the
    encoder's smaller rate) for the encoder blocks `freeze` trains."""
    config = model.train_config
    encoder_optimizer = (
        _optimizer(config.encoder_learning_rate, config, total_steps)
        if config.trained_top_blocks != 0
        else None
    )
    model.compile_with_optimizers(
        _optimizer(config.learning_rate, config, total_steps),
        encoder_optimizer,
        **_loss_and_metrics(model.num_classes),
    )


def token_batches(
    loaded: LoadedEncoder,
    texts: Sequence[str],
    labels: np.ndarray,
    batch_size: int,
    seed: int | None,
) -> tf.data.Dataset:
    """Batches of classifier inputs (`classifier_inputs`) padded to their own longest text;
    shuffled per epoch if seeded."""
    lengths = count_tokens(loaded.preprocessor, texts)
    epoch = [0]

    def generate() -> Iterator[tuple[dict[str, tf.Tensor], np.ndarray]]:
        if seed is None:
            batches = length_sorted_batches(lengths, batch_size)
        else:
            rng = np.random.default_rng(seed + epoch[0])
            epoch[0] += 1
            order = rng.permutation(len(texts))
            window = batch_size * _SORT_WINDOW_BATCHES
            batches = []
            for start in range(0, len(order), window):
                chunk = order[start : start + window]
                chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
                batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            rng.shuffle(batches)
        for index in batches:
            yield classifier_inputs(loaded, [texts[i] for i in index]), labels[index]

    spec = tf.TensorSpec([None, None], tf.int32)
    return tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            {
                "input_word_ids": spec,
                "input_mask": spec,
                "input_type_ids": spec,
                TEXT_INPUT: tf.TensorSpec([None], tf.string),
            },
            tf.TensorSpec([None], tf.int32),
        ),
    )


def build_classifier(
    pair: EncoderPair,
    config: TrainConfig,
    labels: LabelSpace,
    loaded: LoadedEncoder,
    vocabulary: LexicalVocabulary | None,
) -> TextClassifier:
    """A classifier with all weights created (by one call on a probe input)."""
    model = TextClassifier(
        str(pair.encoder), config, len(labels.names), loaded.info.num_layers, vocabulary=vocabulary
    )
    model(classifier_inputs(loaded, ["probe"]), training=False)
    return model


def fit_classifier(
    config: TrainConfig,
    frame: pl.DataFrame,
    labels: LabelSpace,
    pair: EncoderPair,
    loaded: LoadedEncoder,
    out: Path,
    features: Mapping[str, np.ndarray] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train, evaluate on the test split, and write weights, history, metrics, plots and the
    TensorBoard run to `out`; `log` gets a line per epoch."""
    tf_keras.utils.set_random_seed(config.seed)
    splits = {s: frame.filter(pl.col("split") == s) for s in FEATURE_SPLITS}
    y = {s: labels.encode(part["label"]) for s, part in splits.items()}
    texts = {s: part["text"].to_list() for s, part in splits.items()}
    vocabulary = None
    if config.lexical is not None:
        vocabulary = fit_lexical_vocabulary(texts["train"], config.lexical)
        if not vocabulary.terms:
            raise TrainInputError(
                f"lexical: no word occurs in {MIN_DOCUMENT_FREQUENCY} or more of the "
                f"{len(texts['train'])} train texts; set lexical: null"
            )
        log(f"lexical branch: {len(vocabulary.terms):,} terms from {len(texts['train']):,} texts")
    model = build_classifier(pair, config, labels, loaded, vocabulary)
    if model.lexical_features is not None and model.lexical_layer is not None:
        started = time.perf_counter()
        model.lexical_layer.kernel.assign(
            lexical_warm_start(model.lexical_features, texts["train"], y["train"])
        )
        log(
            "lexical branch: starts from a logistic regression on its TF-IDF "
            f"({time.perf_counter() - started:.1f} s)"
        )
    steps_per_epoch = -(-len(y["train"]) // config.batch_size)
    steps = steps_per_epoch * config.epochs
    run_dir = out / TENSORBOARD_DIR / run_name(config)
    epoch_log = EpochLog(log, config.epochs, steps_per_epoch)
    callbacks: list[tf_keras.callbacks.Callback] = [epoch_log, tensorboard_callback(run_dir)]
    if config.early_stopping_patience:
        callbacks.append(
            tf_keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    fit_options = {
        "epochs": config.epochs,
        "class_weight": class_weights(
            np.bincount(y["train"], minlength=len(labels.names)), config.class_weights
        ),
        "callbacks": callbacks,
        "verbose": 0,
    }
    # closing: a fit that raises leaves no progress bar on the terminal above the error line.
    with contextlib.closing(epoch_log):
        if features is not None:
            log("training the head on cached encoder features")
            x = {
                s: {"features": features[s], TEXT_INPUT: np.array(texts[s], dtype=object)}
                for s in features
            }
            head = HeadModel(model)
            head.compile(
                optimizer=_optimizer(config.learning_rate, config, steps),
                **_loss_and_metrics(len(labels.names)),
            )
            history = head.fit(
                x["train"],
                y["train"],
                batch_size=config.batch_size,
                shuffle=True,
                validation_data=(x["val"], y["val"]),
                **fit_options,
            )

            def predict(split: str, samples: Sequence[int]) -> Predictions:
                return head_predictions(head, x[split], samples)

        else:
            log(f"fine-tuning end to end (freeze: {config.freeze})")
            compile_end_to_end(model, steps)
            history = model.fit(
                token_batches(loaded, texts["train"], y["train"], config.batch_size, config.seed),
                validation_data=token_batches(loaded, texts["val"], y["val"], 64, None),
                **fit_options,
            )

            def predict(split: str, samples: Sequence[int]) -> Predictions:
                return text_predictions(model, loaded, texts[split], samples)

    model.save_weights(str(out / WEIGHTS))
    if vocabulary is not None:
        vocabulary.write(out)
    metrics: dict[str, Any] = {
        "epochs_run": len(history.history.get("loss", [])),
        "lexical_terms": None if vocabulary is None else len(vocabulary.terms),
        "tensorboard_run": run_dir.name,
        "still_improving": still_improving(history.history, config.epochs),
    }
    if metrics["still_improving"]:
        log(f"warning: {metrics['still_improving']}")
    if len(y["test"]):
        test = predict("test", MC_SAMPLES)
        test_logits = test.logits
        probabilities = logits_to_probabilities(test_logits)
        metrics["test"] = classification_metrics(y["test"], probabilities, labels.names)
        plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], labels.names, out / "confusion_matrix.png"
        )
        val_logits = predict("val", ()).logits if len(y["val"]) else test_logits[:0]
        report = uncertainty_report(
            y["test"],
            test_logits,
            y["val"],
            val_logits,
            test.probability_draws(),
            labels.names,
            test.seconds,
        )
        metrics["uncertainty"] = write_uncertainty_report(
            report,
            [layer.name for stack in model.dropouts.values() for layer in stack],
            out / UNCERTAINTY_DIR,
        )
        log(f"uncertainty: {metrics['uncertainty']['verdict']}")
    batch = splits["train"].head(REPORT_BATCH)
    metrics["dropout"] = write_dropout_report(
        explain_dropout(
            model,
            classifier_inputs(loaded, batch["text"].to_list()),
            y["train"][:REPORT_BATCH],
            lambda classifier: compile_end_to_end(classifier, None),
        ),
        out / DROPOUT_REPORT_DIR,
    )
    write_run_summary(run_dir, config, metrics.get("test"), metrics["epochs_run"])
    (out / "history.json").write_text(json.dumps(_plain_history(history.history), indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


class Predictions(NamedTuple):
    """A split's logits at inference [n, C'] and the seconds they took; per MC-dropout sample
    count T, the logits of T draws with the classifier's own dropout on [T, n, C'] and the
    seconds the draws took."""

    logits: np.ndarray
    seconds: float
    draws: dict[int, tuple[np.ndarray, float]]

    def probability_draws(self) -> dict[int, tuple[np.ndarray, float]]:
        """The draws as class probabilities [T, n, C]."""
        return {
            count: (np.stack([logits_to_probabilities(one) for one in logits]), seconds)
            for count, (logits, seconds) in self.draws.items()
        }


def head_predictions(
    head: HeadModel, inputs: Mapping[str, np.ndarray], samples: Sequence[int]
) -> Predictions:
    """A head trained on cached features: its logits for `inputs` (`features` [n, F] and
    `text` [n]) and `samples` MC draws (no encoder pass: the features do not change; the
    lexical term, which has no dropout, is computed once)."""
    start = time.perf_counter()
    texts = inputs[TEXT_INPUT]
    parts = [
        head.classifier.lexical_logits({TEXT_INPUT: tf.constant(texts[i : i + _PREDICT_BATCH])})
        for i in range(0, len(texts), _PREDICT_BATCH)
    ]
    lexical_logits = tf.concat(parts, axis=0) if parts and parts[0] is not None else None
    logits = head.logits(inputs["features"], False, lexical_logits).numpy()
    seconds = time.perf_counter() - start
    draws = {}
    for count in samples:
        start = time.perf_counter()
        stack = np.stack(
            [head.logits(inputs["features"], True, lexical_logits).numpy() for _ in range(count)]
        )
        draws[count] = (stack, time.perf_counter() - start)
    return Predictions(logits, seconds, draws)


def text_predictions(
    model: TextClassifier, loaded: LoadedEncoder, texts: Sequence[str], samples: Sequence[int]
) -> Predictions:
    """Inference logits of `texts` in input order (length-sorted batches) and `samples` MC
    draws of the classifier's dropout from the same deterministic encoder pass, as
    `predict_mc` serves them; the seconds count the draws only."""
    seconds = dict.fromkeys(samples, 0.0)

    def run_batch(index: np.ndarray) -> dict[str, tf.Tensor]:
        inputs = classifier_inputs(loaded, [texts[i] for i in index])
        outputs = model.run_encoder(inputs, False)
        mask, lexical_logits = inputs["input_mask"], model.lexical_logits(inputs)
        named = {"logits": model.logits_from_encoder_outputs(outputs, mask, False, lexical_logits)}
        for count in samples:
            start = time.perf_counter()
            named[f"mc_{count}"] = tf.stack(
                [
                    model.logits_from_encoder_outputs(outputs, mask, True, lexical_logits)
                    for _ in range(count)
                ],
                axis=1,
            )
            seconds[count] += time.perf_counter() - start
        return named

    start = time.perf_counter()
    result = batched_inference(
        texts, run_batch, 64, "predicting", count_tokens(loaded.preprocessor, texts)
    )
    elapsed = time.perf_counter() - start - sum(seconds.values())
    draws = {n: (np.moveaxis(result[f"mc_{n}"], 1, 0), seconds[n]) for n in samples}
    return Predictions(result["logits"], elapsed, draws)


def _plain_history(history: Mapping[str, list[Any]]) -> dict[str, list[float]]:
    return {k: [float(v) for v in values] for k, values in history.items()}


def write_classifier_info(
    out: Path, config: TrainConfig, labels: LabelSpace, encoder: ArtifactRef
) -> None:
    info = {
        "train_config": config.model_dump(mode="json"),
        "labels": labels.names,
        # By key, not path: the classifier artifact finds its encoder in its own store, wherever the
        # store is mounted (and whatever became of a TF-Hub pair's original folder).
        "encoder_key": encoder.key,
    }
    (out / CLASSIFIER_FILE).write_text(json.dumps(info, indent=2))


@dataclass
class TrainedClassifier:
    """A classifier artifact loaded back: the Keras classifier, its weights, what it needs."""

    model: TextClassifier
    loaded: LoadedEncoder
    labels: LabelSpace
    config: TrainConfig

    @classmethod
    def load(cls, model_dir: Path) -> TrainedClassifier:
        info = json.loads((model_dir / CLASSIFIER_FILE).read_text())
        # Classifiers of stage 6 and before had no lexical branch and no `lexical` key.
        config = TrainConfig.model_validate({"lexical": None, **info["train_config"]})
        store_root = model_dir.parent.parent
        pair = EncoderPair(store_root / ENCODER_STAGE.name / info["encoder_key"])
        loaded = load_encoder(pair)
        labels = LabelSpace(info["labels"])
        vocabulary = LexicalVocabulary.read(model_dir) if config.lexical is not None else None
        model = build_classifier(pair, config, labels, loaded, vocabulary)
        model.load_weights(str(model_dir / WEIGHTS)).expect_partial()
        return cls(model, loaded, labels, config)
