"""Linear probes over every embedding choice (encoder layer x pooling, pooler, penultimate): which
one carries the labels, checked against a shuffled-label control task and by k-means agreement.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import polars as pl
import pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
)
from sklearn.preprocessing import StandardScaler

from penultimate.cluster import EmbeddingShards
from penultimate.console import progress_bar
from penultimate.errors import InputError

SPLITS = ("train", "test")
MAX_ITERATIONS = 2000
SCORE_COLUMNS = ("accuracy", "macro_f1", "control_accuracy", "selectivity", "ari", "nmi")


class ProbeInputError(InputError):
    """Embeddings the probes cannot use; the message names the artifact or shard file."""


@dataclass(frozen=True)
class ProbeRows:
    """The sampled train and test rows: integer labels and every choice side by side."""

    label_names: list[str]
    train_labels: np.ndarray
    train_vectors: np.ndarray
    test_labels: np.ndarray
    test_vectors: np.ndarray


@dataclass(frozen=True)
class Choice:
    """One block of an `all_choices` vector: where it sits and what it is."""

    name: str
    start: int
    dim: int
    layer: int | None  # None for the penultimate features, which sit after every layer
    pooling: str

    @property
    def label(self) -> str:
        return "penultimate" if self.layer is None else f"layer {self.layer} {self.pooling}"


def parse_choices(blocks: list[dict[str, Any]]) -> list[Choice]:
    """`choice_blocks` of an embeddings manifest -> Choices with their column ranges.

    `pooled` is the pooler over the last layer's [CLS], so it is placed at the last layer."""
    last_layer = max(int(b["name"].split("_")[1]) for b in blocks if b["name"].startswith("layer_"))
    choices, start = [], 0
    for block in blocks:
        name, dim = block["name"], int(block["dim"])
        if name.startswith("layer_"):
            _, layer, pooling = name.split("_")
            choices.append(Choice(name, start, dim, int(layer), pooling))
        elif name == "pooled":
            choices.append(Choice(name, start, dim, last_layer, "pooled"))
        else:
            choices.append(Choice(name, start, dim, None, name))
        start += dim
    return choices


def stratified_sample(
    rows: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """At most `size` of `rows` (sorted), each label keeping its share, rounded by largest
    remainder, and at least one row: a cap never removes a small class from the probe."""
    if len(rows) <= size:
        return rows
    names, counts = np.unique(labels[rows], return_counts=True)
    ideal = size * counts / counts.sum()
    quota = np.maximum(1, np.floor(ideal)).astype(int)
    for index in np.argsort(-(ideal - quota), kind="stable")[: max(0, size - quota.sum())]:
        quota[index] += 1
    picked = [
        rng.choice(rows[labels[rows] == name], size=min(n, count), replace=False)
        for name, n, count in zip(names, quota, counts, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def read_probe_rows(
    shards: EmbeddingShards, max_train_rows: int, max_test_rows: int, seed: int
) -> ProbeRows:
    """A seeded sample of at most `max_*_rows` train and test rows, stratified by label, read
    shard by shard so only the sample is ever held in memory; errors name the shard file."""
    splits, labels = [], []
    for file in shards.files:
        columns = pq.read_schema(file).names
        missing = [c for c in ("split", "label") if c not in columns]
        if missing:
            raise ProbeInputError(
                f"{file}: no {missing} column; the probes need a labelled dataset with splits"
            )
        table = pq.read_table(file, columns=["split", "label"])
        if table.column("label").null_count:
            raise ProbeInputError(f"{file}: a row has no label")
        splits.append(np.asarray(table.column("split").to_pylist(), dtype=object))
        labels.append(np.asarray([str(v) for v in table.column("label").to_pylist()], object))
    split, label = np.concatenate(splits), np.concatenate(labels)
    rng = np.random.default_rng(seed)
    chosen = {
        "train": stratified_sample(np.flatnonzero(split == "train"), label, max_train_rows, rng),
        "test": stratified_sample(np.flatnonzero(split == "test"), label, max_test_rows, rng),
    }
    for name, rows in chosen.items():
        if len(rows) < 2:
            raise ProbeInputError(f"{len(rows)} {name} row(s) in the embeddings; the probes need 2")
    names = sorted(set(label[chosen["train"]]))
    if len(names) < 2:
        raise ProbeInputError(f"the train rows have one label ({names}); a probe needs two")
    codes = {name: code for code, name in enumerate(names)}
    unseen = sorted(set(label[chosen["test"]]) - set(names))
    if unseen:
        raise ProbeInputError(f"test labels {unseen} never occur in the train rows")
    vectors = _gather(shards, np.concatenate([chosen["train"], chosen["test"]]))
    n_train = len(chosen["train"])
    as_codes = np.vectorize(codes.__getitem__, otypes=[np.int64])
    return ProbeRows(
        label_names=names,
        train_labels=as_codes(label[chosen["train"]]),
        train_vectors=vectors[:n_train],
        test_labels=as_codes(label[chosen["test"]]),
        test_vectors=vectors[n_train:],
    )


def _gather(shards: EmbeddingShards, rows: np.ndarray) -> np.ndarray:
    """Vectors of global row numbers `rows`, in that order, one shard in memory at a time."""
    starts = np.cumsum([0, *shards.rows])
    result = np.empty((len(rows), shards.dim), np.float32)
    for index in range(len(shards.files)):
        here = np.flatnonzero((rows >= starts[index]) & (rows < starts[index + 1]))
        if len(here):
            result[here] = shards.read(index)[1][rows[here] - starts[index]]
    return result


def control_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """The control task: the same labels shuffled, so class frequencies stay but any link between
    a text and its label is gone; a probe can only score above chance here by memorising."""
    return np.random.default_rng(seed).permutation(labels)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    regularization: float,
    max_iter: int = MAX_ITERATIONS,
) -> tuple[dict[str, float], int]:
    """Logistic regression on standardised `train_x`, scored on `test_x`: accuracy and macro F1,
    and the solver iterations it took (at most `max_iter`)."""
    probe = LogisticRegression(C=regularization, max_iter=max_iter, tol=1e-4)
    predicted = probe.fit(train_x, train_y).predict(test_x)
    scores = {
        "accuracy": float(accuracy_score(test_y, predicted)),
        "macro_f1": float(f1_score(test_y, predicted, average="macro")),
    }
    return scores, max(1, int(np.max(probe.n_iter_)))


def cluster_agreement(vectors: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """k-means with k = number of labels; how well its clusters match the labels (ARI, NMI)."""
    k = len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vectors)
    return {
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
    }


def chance_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy of always answering the train split's most frequent label."""
    return float(np.mean(test_labels == np.bincount(train_labels).argmax()))


def score_choice(
    rows: ProbeRows, columns: slice, regularization: float, cluster_rows: int, seed: int
) -> dict[str, float]:
    """Every score of one choice (the columns `columns` of the vectors)."""
    train_raw, test_raw = rows.train_vectors[:, columns], rows.test_vectors[:, columns]
    scaler = StandardScaler().fit(train_raw)
    train_x, test_x = scaler.transform(train_raw), scaler.transform(test_raw)
    real, iterations = fit_probe(
        train_x, rows.train_labels, test_x, rows.test_labels, regularization
    )
    # On shuffled labels the solver fits noise and may run to max_iter, while with no link
    # between text and label the test accuracy sits at chance however long it runs: the control
    # gets the real probe's iterations (at most twice its cost), and stopping there is expected,
    # not worth a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        control, _ = fit_probe(
            train_x,
            control_labels(rows.train_labels, seed),
            test_x,
            control_labels(rows.test_labels, seed + 1),
            regularization,
            max_iter=iterations,
        )
    every = np.concatenate([train_raw, test_raw])
    # Rows are in corpus order, whose head may be all one label: sample, don't slice.
    sample = np.random.default_rng(seed).permutation(len(every))[:cluster_rows]
    truth = np.concatenate([rows.train_labels, rows.test_labels])[sample]
    return {
        **real,
        "control_accuracy": control["accuracy"],
        "selectivity": real["accuracy"] - control["accuracy"],
        **cluster_agreement(every[sample], truth, seed),
    }


def _score_columns(
    rows: ProbeRows, choice: Choice, regularization: float, cluster_rows: int, seed: int
) -> tuple[Choice, dict[str, float], float]:
    start = time.perf_counter()
    columns = slice(choice.start, choice.start + choice.dim)
    scores = score_choice(rows, columns, regularization, cluster_rows, seed)
    return choice, scores, time.perf_counter() - start


def probe_table(
    rows: ProbeRows,
    choices: list[Choice],
    regularization: float,
    cluster_rows: int,
    seed: int,
    log: Callable[[str], None] = lambda line: None,
) -> pl.DataFrame:
    """One row per choice: where it sits, its dimension and every score. Choices are scored in
    parallel, one process per core; `log` gets a line per finished choice."""
    jobs = min(len(choices), joblib.cpu_count())
    # Each job gets only its own columns, not every choice's (20 choices x 12k rows is 370 MB).
    work = (
        joblib.delayed(_score_columns)(
            ProbeRows(
                rows.label_names,
                rows.train_labels,
                np.ascontiguousarray(rows.train_vectors[:, c.start : c.start + c.dim]),
                rows.test_labels,
                np.ascontiguousarray(rows.test_vectors[:, c.start : c.start + c.dim]),
            ),
            Choice(c.name, 0, c.dim, c.layer, c.pooling),
            regularization,
            cluster_rows,
            seed,
        )
        for c in choices
    )
    scored: dict[str, dict[str, float]] = {}
    runner = joblib.Parallel(n_jobs=jobs, return_as="generator_unordered")
    with progress_bar(len(choices), "scoring choices", "choice") as bar:
        for choice, scores, seconds in runner(work):
            bar.update()
            scored[choice.name] = scores
            log(
                f"probe {len(scored)}/{len(choices)}: {choice.label} accuracy "
                f"{scores['accuracy']:.3f}, control {scores['control_accuracy']:.3f} "
                f"({seconds:.1f} s)"
            )
    records = [
        {
            "choice": choice.label,
            "layer": choice.layer,
            "pooling": choice.pooling,
            "dim": choice.dim,
            **{name: round(scored[choice.name][name], 4) for name in SCORE_COLUMNS},
        }
        for choice in choices
    ]
    return pl.DataFrame(records, schema_overrides={"layer": pl.Int64})


def default_choice(table: pl.DataFrame) -> dict[str, Any]:
    """The last layer's [CLS] row."""
    last = table.filter(pl.col("pooling") == "cls")["layer"].max()
    return table.filter((pl.col("pooling") == "cls") & (pl.col("layer") == last)).row(0, named=True)


def recommend(table: pl.DataFrame, chance: float) -> dict[str, Any]:
    """The best choice by probe accuracy (ties: macro F1, then selectivity), and how far the
    default last-layer CLS and the best-clustering choice are from it."""
    ranked = table.sort(["accuracy", "macro_f1", "selectivity"], descending=True)
    best = ranked.row(0, named=True)
    default = default_choice(table)
    best_clusters = table.sort("ari", descending=True).row(0, named=True)
    return {
        "best": best["choice"],
        "best_accuracy": best["accuracy"],
        "best_selectivity": best["selectivity"],
        "default": default["choice"],
        "default_accuracy": default["accuracy"],
        "default_gap": round(best["accuracy"] - default["accuracy"], 4),
        "best_for_clustering": best_clusters["choice"],
        "best_ari": best_clusters["ari"],
        "chance_accuracy": round(chance, 4),
    }
