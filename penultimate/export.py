"""Export a trained classifier as a SavedModel that takes raw strings and serves predictions,
pre-dropout embeddings, every encoder layer x pooling, and MC-dropout; then verify it elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from penultimate.classifier import TEXT_INPUT, classifier_inputs
from penultimate.console import progress_bar
from penultimate.export_check import STEPS as CHECK_STEPS
from penultimate.features import encoder_choices, pack_to_longest
from penultimate.stages import SAVED_MODEL_DIR
from penultimate.train import TrainedClassifier
from penultimate.uncertainty import logits_to_probabilities

VERIFY_BATCH_SIZES = (1, 7, 64)
TOLERANCE = 1e-5
_CHECKER = Path(__file__).with_name("export_check.py")
_TEXT = tf.TensorSpec([None], tf.string, name="text")


class ExportVerificationError(RuntimeError):
    """The reloaded SavedModel disagrees with the trained model; the export is not published."""


class ClassifierServing(tf.Module):
    """Strings in; preprocessing, the classifier and its encoder inside; dropout off by default."""

    def __init__(self, trained: TrainedClassifier) -> None:
        super().__init__(name="penultimate_classifier")
        self.preprocessor = trained.loaded.preprocessor
        self.classifier = trained.model
        self.binary = trained.model.num_classes == 2
        # Readable after loading (`model.seq_length.numpy()`): texts longer than this are cut.
        self.seq_length = tf.Variable(trained.loaded.info.seq_length, trainable=False)
        self._packed_length = trained.loaded.info.seq_length

    def _inputs(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = pack_to_longest(self.preprocessor, text, self._packed_length)
        inputs[TEXT_INPUT] = text
        return inputs

    def _probabilities(self, logits: tf.Tensor) -> tf.Tensor:
        if self.binary:
            positive = tf.sigmoid(logits)
            return tf.concat([1.0 - positive, positive], axis=1)
        return tf.nn.softmax(logits, axis=1)

    @tf.function(input_signature=[_TEXT])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = self.classifier(self._inputs(text), training=False)
        return {"probabilities": self._probabilities(logits), "logits": logits}

    @tf.function(input_signature=[_TEXT])
    def embed(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": self.classifier.embed(self._inputs(text))}

    @tf.function(input_signature=[_TEXT])
    def encode(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = self._inputs(text)
        outputs = self.classifier.run_encoder(inputs, False)
        choices = encoder_choices(outputs, inputs["input_mask"])
        pooled = self.classifier.pool(outputs, inputs["input_mask"], False)
        choices["penultimate"] = self.classifier.penultimate(pooled, False)
        return choices

    @tf.function(input_signature=[_TEXT, tf.TensorSpec([], tf.int32, name="samples")])
    def predict_mc(self, text: tf.Tensor, samples: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = self._inputs(text)
        # One deterministic encoder pass and lexical term; the classifier's own dropout is
        # sampled `samples` times.
        outputs = self.classifier.run_encoder(inputs, False)
        lexical_logits = self.classifier.lexical_logits(inputs)
        draws = tf.map_fn(
            lambda _: self._probabilities(
                self.classifier.logits_from_encoder_outputs(
                    outputs, inputs["input_mask"], True, lexical_logits
                )
            ),
            tf.range(samples),
            fn_output_signature=tf.float32,
        )
        mean = tf.reduce_mean(draws, axis=0)
        entropy = _entropy(mean)
        # Mutual information between prediction and dropout mask: the part of the entropy that
        # the draws disagree on (0 when every draw says the same).
        expected = tf.reduce_mean(_entropy(draws), axis=0)
        return {
            "mean": mean,
            "std": tf.math.reduce_std(draws, axis=0),
            "entropy": entropy,
            "mutual_information": tf.maximum(entropy - expected, 0.0),
        }


def _entropy(probabilities: tf.Tensor) -> tf.Tensor:
    """Entropy in nats over the last axis (0 log 0 = 0)."""
    return -tf.reduce_sum(tf.math.xlogy(probabilities, probabilities), axis=-1)


def write_export(trained: TrainedClassifier, out: Path, probe_texts: list[str]) -> dict[str, Any]:
    """Save into `out/saved_model`, verify in a fresh process, and return the report."""
    # The checker's interpreter imports TensorFlow (~3.5 s) while this process saves.
    with tempfile.TemporaryDirectory() as tmp, _started_checker(Path(tmp)) as checker:
        module = ClassifierServing(trained)
        signatures = {
            "serving_default": module.serve,
            "embed": module.embed,
            "encode": module.encode,
            "predict_mc": module.predict_mc,
        }
        saved = out / SAVED_MODEL_DIR
        tf.saved_model.save(module, str(saved), signatures=signatures)
        (out / "labels.json").write_text(json.dumps(trained.labels.names))
        report = verify_export(checker, trained, saved, probe_texts, Path(tmp))
    report["encoder"] = trained.loaded.info.summary()
    report["verified_texts"] = len(probe_texts)
    return report


def expected_outputs(trained: TrainedClassifier, texts: list[str]) -> dict[str, np.ndarray]:
    """What the Keras model itself says for `texts` (one batch), for comparison after reload."""
    inputs = classifier_inputs(trained.loaded, texts)
    logits = trained.model(inputs, training=False).numpy()
    return {
        "probabilities": logits_to_probabilities(logits).astype(np.float32),
        "embedding": trained.model.embed(inputs).numpy(),
    }


@contextmanager
def _started_checker(tmp: Path) -> Iterator[subprocess.Popen[str]]:
    """A fresh Python running export_check.py, waiting on stdin for what to check; killed if the
    export fails before it is asked."""
    with (tmp / "stderr.txt").open("w") as stderr:
        command = [sys.executable, str(_CHECKER)]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as checker:
            try:
                yield checker
            finally:
                if checker.poll() is None:
                    checker.kill()


def verify_export(
    checker: subprocess.Popen[str],
    trained: TrainedClassifier,
    saved: Path,
    texts: list[str],
    tmp: Path,
) -> dict[str, Any]:
    """Have `checker` (tensorflow + tensorflow_text only) reload `saved`, compare and describe the
    signatures (this process never loads the SavedModel); raise if off."""
    assert checker.stdin is not None and checker.stdout is not None
    expected, report_file = tmp / "expected.npz", tmp / "report.json"
    np.savez(expected, texts=np.array(texts, dtype=object), **expected_outputs(trained, texts))
    with progress_bar(len(CHECK_STEPS), "checking the export", "step") as bar:
        with suppress(BrokenPipeError):  # a checker that already died is reported below
            checker.stdin.write("\n".join(map(str, (saved, expected, report_file))) + "\n")
            checker.stdin.close()
        for line in checker.stdout:
            if line.startswith("step "):
                bar.update()
        returncode = checker.wait(timeout=900)
    if returncode != 0:
        stderr = (tmp / "stderr.txt").read_text()[-3000:]
        raise ExportVerificationError(f"export check crashed:\n{stderr}")
    report = json.loads(report_file.read_text())
    failures = {k: v for k, v in report["max_abs_diff"].items() if v > TOLERANCE}
    if failures:
        raise ExportVerificationError(
            f"reloaded SavedModel differs (tolerance {TOLERANCE}): {failures}"
        )
    return report
