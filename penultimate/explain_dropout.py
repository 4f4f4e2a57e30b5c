"""What a classifier's dropout really does, measured on the model itself with one real batch: the
masks each dropout layer draws, which layers' gradients, weights and outputs it touches, and how
far it moves the served embedding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from penultimate.artifacts import ArtifactRef
from penultimate.classifier import POOLER, TRANSFORMER_BLOCK, TextClassifier, classifier_inputs
from penultimate.dropout import StructuredDropout

# Texts in the batch the report is computed on: enough mask units for a tight binomial bound on
# vectors (samples x features) and few enough that one gradient step through the encoder is fast.
REPORT_BATCH = 16
# Observed drop fractions further than this many binomial standard deviations from `rate` are
# flagged (plus one unit, for the granularity of a fraction of few units).
BOUND_SIGMAS = 4.0
_SEQUENCE_AXES = ("samples", "tokens", "features")
_VECTOR_AXES = ("samples", "features")


# The realised mask as pictured and stored: per input value, dropped, kept, or unknown (an input
# of exactly 0 is 0 whether it was dropped or not: a ReLU's zeros, or an earlier dropout's).
DROPPED, KEPT, UNKNOWN = 0, 1, 2


def _constant_along(kept: np.ndarray, known: np.ndarray, axis: int) -> bool:
    """Whether every line along `axis` has one keep value over its known entries."""
    highest = np.where(known, kept, False).any(axis=axis)
    lowest = np.where(known, kept, True).all(axis=axis)
    return not bool(np.any(known.any(axis=axis) & (highest != lowest)))


def mask_statistics(
    layer: StructuredDropout, inputs: np.ndarray, outputs: np.ndarray
) -> dict[str, Any]:
    """What one dropout layer did to `inputs` ([batch, tokens, features] or [batch, features]),
    read from its `outputs` with `training=True`: the realised mask (`DROPPED`, `KEPT`,
    `UNKNOWN` per value), the drop fraction over its independent mask units against `rate`
    (with the binomial bound), the scale of kept values and the axes along which one draw was
    shared. Units whose every input value is 0 are left out: they cannot show their draw."""
    names = _SEQUENCE_AXES if inputs.ndim == 3 else _VECTOR_AXES
    columns = np.ones(inputs.shape[-1], bool)
    if layer.columns is not None:
        columns[:] = False
        columns[list(layer.columns)] = True
    known, kept = inputs != 0, outputs != 0
    known_named, kept_named = known[..., columns], kept[..., columns] & known[..., columns]
    noise_shape = np.asarray(layer.noise_shape_for(tf.constant(inputs)))
    # A mask unit is one draw: the values along the broadcast axes (noise-shape 1) share it.
    broadcast = tuple(axis for axis, n in enumerate(noise_shape) if n == 1)
    unit_known = known_named.any(axis=broadcast)
    unit_kept = kept_named.any(axis=broadcast)
    units = int(unit_known.sum())
    observed = 1.0 - float(unit_kept[unit_known].mean()) if units else None
    bound = (
        BOUND_SIGMAS * np.sqrt(layer.rate * (1 - layer.rate) / units) + 1 / units if units else None
    )
    sized = [axis for axis in range(inputs.ndim) if kept_named.shape[axis] > 1]
    shared = [names[a] for a in sized if _constant_along(kept_named, known_named, a)]
    scale = outputs[..., columns][kept_named] / inputs[..., columns][kept_named]
    untouched = np.abs(outputs[..., ~columns] - inputs[..., ~columns])
    return {
        "layer": layer.name,
        "rate": layer.rate,
        "mask": layer.mask,
        "columns": None if layer.columns is None else list(layer.columns),
        "input_shape": list(inputs.shape),
        "axes": list(names),
        "noise_shape": [int(n) for n in noise_shape],
        "mask_units": units,
        "observed_drop_fraction": observed,
        "binomial_bound": None if bound is None else float(bound),
        "within_bound": bound is not None and bool(abs(observed - layer.rate) <= bound),
        "kept_scale_expected": 1.0 / (1.0 - layer.rate),
        "kept_scale_mean": float(scale.mean()) if scale.size else None,
        "kept_scale_max_error": float(np.abs(scale - 1 / (1 - layer.rate)).max())
        if scale.size
        else None,
        "other_columns_max_change": float(untouched.max()) if untouched.size else None,
        "shared_along": shared,
        "shared_along_expected": [names[a] for a in sized if noise_shape[a] == 1],
        "realised": np.where(known, np.where(kept, KEPT, DROPPED), UNKNOWN).astype(np.int8),
    }


def _masked(value: np.ndarray, token_mask: np.ndarray) -> np.ndarray:
    """Token states with padding positions zeroed (vectors as they are)."""
    return value * token_mask[..., None] if value.ndim == 3 else value


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine of two [batch, ...] tensors (flattened per sample)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)


def output_changes(
    train: Mapping[str, tf.Tensor], infer: Mapping[str, tf.Tensor], token_mask: np.ndarray
) -> list[dict[str, Any]]:
    """Per tapped layer output (see `TextClassifier.tapped_forward`), how much it moves between
    `training=True` and `training=False`: relative L2 change and per-sample cosine, over real
    tokens only."""
    rows = []
    for name, value in infer.items():
        if name.endswith(":input"):
            continue
        on, off = _masked(train[name].numpy(), token_mask), _masked(value.numpy(), token_mask)
        norm = float(np.linalg.norm(off))
        cosines = _cosines(on, off)
        rows.append(
            {
                "output": name,
                "relative_change": float(np.linalg.norm(on - off)) / max(norm, 1e-30),
                "cosine_mean": float(cosines.mean()),
                "changed": bool(np.any(on != off)),
            }
        )
    return rows


def variable_group(variable: tf.Variable, encoder_ids: set[int]) -> str:
    """The layer a weight belongs to, as the report names it: `encoder_block_<i>`,
    `encoder_pooler`, `encoder_embeddings`, or the Keras layer of a head weight."""
    name = variable.name
    if id(variable) in encoder_ids:
        if block := TRANSFORMER_BLOCK.search(name):
            return f"encoder_block_{block.group(1)}"
        return "encoder_pooler" if POOLER.search(name) else "encoder_embeddings"
    return name.split("/")[-2] if "/" in name else name


def weight_effects(
    model: TextClassifier,
    inputs: Mapping[str, tf.Tensor],
    labels: np.ndarray,
    compile_for_one_step: Callable[[TextClassifier], None],
) -> list[dict[str, Any]]:
    """Per layer, whether its weights get a non-zero gradient from one training batch (dropout
    on) and whether one real training step (`compile_for_one_step` sets the optimisers training
    uses) changes them. The model's weights are put back afterwards."""
    encoder_ids = {id(v) for v in model.encoder.weights}
    variables = [v for v in model.weights if v.dtype.is_floating]
    groups = [variable_group(v, encoder_ids) for v in variables]
    x, y = dict(inputs), tf.constant(labels)
    compile_for_one_step(model)
    # Every weight watched, frozen ones too: they get a gradient, their optimiser ignores it.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for variable in variables:
            tape.watch(variable)
        loss = model.compute_loss(x, y, model(x, training=True))
    gradients = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    before = [v.numpy().copy() for v in variables]
    try:
        model.train_step((x, y))
        after = [v.numpy() for v in variables]
    finally:
        for variable, old in zip(variables, before, strict=True):
            variable.assign(old)
    table: dict[str, dict[str, Any]] = {}
    for group, gradient, old, new in zip(groups, gradients, before, after, strict=True):
        row = table.setdefault(
            group,
            {"layer": group, "weights": 0, "gradient_norm": 0.0, "max_weight_change": 0.0},
        )
        row["weights"] += int(old.size)
        row["gradient_norm"] = float(np.hypot(row["gradient_norm"], tf.norm(gradient).numpy()))
        row["max_weight_change"] = max(row["max_weight_change"], float(np.abs(new - old).max()))
    for row in table.values():
        row["gradient_nonzero"] = row["gradient_norm"] > 0
        row["changed"] = row["max_weight_change"] > 0
    return list(table.values())


def embedding_effects(
    model: TextClassifier,
    inputs: Mapping[str, tf.Tensor],
    first: Mapping[str, tf.Tensor],
    infer: Mapping[str, tf.Tensor],
) -> list[dict[str, Any]]:
    """The served embedding (the penultimate layer at inference) against what dropout makes of
    it: the same layer in the `first` training-mode pass, after the head dropout, and that pass
    against a second draw; cosines per sample."""
    served = model.embed(dict(inputs)).numpy()
    second = model.tapped_forward(inputs, training=True)
    rows = [
        ("served embedding, computed twice at inference", served, infer["penultimate"].numpy()),
        (
            "penultimate layer with training=True vs served",
            first["penultimate"].numpy(),
            served,
        ),
        (
            "penultimate layer: two training=True draws",
            first["penultimate"].numpy(),
            second["penultimate"].numpy(),
        ),
    ]
    for layer in model.dropouts.get("head", []):
        label = f"after {layer.name} (training=True) vs served"
        rows.append((label, first[layer.name].numpy(), served))
    result = []
    for label, a, b in rows:
        cosines = _cosines(a, b)
        result.append(
            {
                "comparison": label,
                "cosine_mean": float(cosines.mean()),
                "cosine_min": float(cosines.min()),
            }
        )
    return result


def explain_dropout(
    model: TextClassifier,
    inputs: Mapping[str, tf.Tensor],
    labels: np.ndarray,
    compile_for_one_step: Callable[[TextClassifier], None],
) -> dict[str, Any]:
    """The dropout report of `model` on one batch of encoder `inputs` with class ids `labels`:
    `masks` (per dropout layer, `mask_statistics` with its `realised` array), `outputs`
    (`output_changes`), `weights` (`weight_effects`) and `embeddings` (`embedding_effects`).

    Example:
        >>> report = explain_dropout(model, classifier_inputs(loaded, texts[:16]), y[:16], fn)
        >>> report["masks"][0]["observed_drop_fraction"], report["masks"][0]["shared_along"]
        (0.2986, ['tokens'])
    """
    token_mask = inputs["input_mask"].numpy().astype(np.float32)
    train = model.tapped_forward(inputs, training=True)
    infer = model.tapped_forward(inputs, training=False)
    layers: Sequence[StructuredDropout] = [
        layer for stack in model.dropouts.values() for layer in stack
    ]
    masks = [
        mask_statistics(layer, train[f"{layer.name}:input"].numpy(), train[layer.name].numpy())
        for layer in layers
    ]
    # Every forward pass before the training step, which changes the weights until it puts
    # them back.
    embeddings = embedding_effects(model, inputs, train, infer)
    return {
        "batch": int(token_mask.shape[0]),
        "tokens": int(token_mask.shape[1]),
        "real_tokens": int(token_mask.sum()),
        "freeze": model.train_config.freeze,
        "masks": masks,
        "outputs": output_changes(train, infer, token_mask),
        "embeddings": embeddings,
        "weights": weight_effects(model, inputs, labels, compile_for_one_step),
    }


def explain_classifier_artifact(
    classifier: ArtifactRef, dataset: ArtifactRef, out: Path | None = None
) -> Path:
    """`penultimate explain-dropout`: the dropout report of a classifier artifact, on the first
    `REPORT_BATCH` texts of its dataset's train split (`dropout_report.explained_artifacts` finds
    both from a classifier or export URI), written to `out` (default
    `./dropout-report-<key>`); returns `out`."""
    from penultimate.dropout_report import (
        MARKDOWN_FILE,
        dropout_report_markdown,
        write_dropout_report,
    )
    from penultimate.ingest import read_dataset
    from penultimate.train import TrainedClassifier, compile_end_to_end

    trained = TrainedClassifier.load(classifier.path)
    rows = read_dataset(dataset, "train").head(REPORT_BATCH)
    report = explain_dropout(
        trained.model,
        classifier_inputs(trained.loaded, rows["text"].to_list()),
        trained.labels.encode(rows["label"]),
        lambda model: compile_end_to_end(model, None),
    )
    folder = (out or Path(f"dropout-report-{classifier.key[:12]}")).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a killed run leaves the old report or
    # none, never half of one.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_dropout_report(report, staging)
        (staging / MARKDOWN_FILE).write_text(dropout_report_markdown(staging, staging, folder.name))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
