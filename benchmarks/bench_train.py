"""Training benchmark on the SpamAssassin corpus with the built-in encoder: quality per dropout
mode and freezing, and what the frozen-encoder feature cache saves. Writes a RESULTS.md section.

Run with `make bench-train` (or `make bench`); takes ~30-40 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from benchmarks.results import write_section
from penultimate.artifacts import ArtifactStore
from penultimate.config import IngestConfig, TrainConfig
from penultimate.encoders.bert_convert import build_encoder_pair
from penultimate.encoders.sources import resolve_weights_folder
from penultimate.features import ChoiceEncoder, LoadedEncoder
from penultimate.ingest import label_counts_per_split, prepare_dataset, write_dataset
from penultimate.shard_features import choice_name
from penultimate.stages import DATASET_STAGE
from penultimate.train import FEATURE_SPLITS, fit_classifier, validate_training_inputs

HEAD_RUNS: dict[str, list[dict[str, Any]]] = {
    "no dropout": [{"at": "head", "rate": 0.0}],
    "head element 0.1 (default)": [{"at": "head", "rate": 0.1}],
    "pooled element 0.3": [{"at": "pooled", "rate": 0.3}],
    "pooled sample 0.3": [{"at": "pooled", "rate": 0.3, "mask": "sample"}],
    "pooled batch_shared 0.3": [{"at": "pooled", "rate": 0.3, "mask": "batch_shared"}],
    "pooled columns 0-191 0.5": [{"at": "pooled", "rate": 0.5, "columns": list(range(192))}],
    "hidden 256 + hidden:0 element 0.3, lr 3e-3": [{"at": "hidden:0", "rate": 0.3}],
}
# Extra TrainConfig fields per run, beyond its dropout.
RUN_OPTIONS: dict[str, dict[str, Any]] = {
    "hidden 256 + hidden:0 element 0.3, lr 3e-3": {
        "hidden": [{"units": 256}],
        "learning_rate": 3e-3,
    },
}
SEQUENCE_RUNS: dict[str, list[dict[str, Any]]] = {
    "sequence feature 0.1 (SpatialDropout1D)": [{"at": "sequence", "rate": 0.1, "mask": "feature"}],
    "sequence token 0.1": [{"at": "sequence", "rate": 0.1, "mask": "token"}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default="../shared/data/spamassassin.parquet")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of head-only runs")
    parser.add_argument(
        "--full-epochs", type=int, default=2, help="epochs of runs through the encoder"
    )
    parser.add_argument("--skip-full", action="store_true", help="only the head-only runs")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    store = ArtifactStore(work)
    ingest = IngestConfig(
        source=args.corpus, text_format="email", text_column="raw", passthrough_columns=["group"]
    )
    frame, counts = prepare_dataset(ingest)
    dataset = store.publish(
        DATASET_STAGE, ingest, lambda out: write_dataset(frame, counts, out, 2000)
    ).ref
    pair = build_encoder_pair(resolve_weights_folder("minilm-l6"), work / "encoder", seq_length=128)
    loaded = LoadedEncoder.load(pair)
    train_rows = frame.filter(pl.col("split") == "train").height

    rows = []
    name = choice_name(-1, "mean", loaded.info.num_layers)
    started = time.perf_counter()
    matrix = ChoiceEncoder(loaded, [name]).encode(frame["text"].to_list())[0][name]
    cached = {s: matrix[(frame["split"] == s).to_numpy()] for s in FEATURE_SPLITS}
    encode_all_s = time.perf_counter() - started
    encode_train_s = encode_all_s * train_rows / frame.height

    def run(name: str, overrides: dict[str, Any]) -> None:
        # Dropout and freezing compared on the embedding's logits alone, as first measured.
        config = TrainConfig.model_validate({"lexical": None, **overrides})
        labels = validate_training_inputs(
            config, dataset, label_counts_per_split(frame), loaded.info
        )
        out = Path(tempfile.mkdtemp(dir=work))
        began = time.perf_counter()
        features = cached if config.uses_feature_cache else None
        metrics = fit_classifier(config, frame, labels, pair, loaded, out, features, print)
        seconds = time.perf_counter() - began
        test = metrics["test"]
        rows.append(
            f"| {name} | {config.freeze} | {metrics['epochs_run']} | {test['accuracy']:.4f} | "
            f"{test['precision']:.4f} | {test['recall']:.4f} | {test['f1']:.4f} | "
            f"{test['roc_auc']:.4f} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)

    head_seconds = []
    for name, dropout in HEAD_RUNS.items():
        began = time.perf_counter()
        run(name, {"dropout": dropout, "epochs": args.epochs, **RUN_OPTIONS.get(name, {})})
        head_seconds.append(time.perf_counter() - began)
    if not args.skip_full:
        for name, dropout in SEQUENCE_RUNS.items():
            run(name, {"dropout": dropout, "epochs": args.full_epochs})
        run("fine-tune top:2", {"freeze": "top:2", "epochs": args.full_epochs})

    default_head_s = head_seconds[1]
    lines = [
        f"Corpus: {args.corpus} ({frame.height} messages; train {train_rows}), built-in encoder "
        "`minilm-l6`, mean pooling of the last layer, seq_length 128, batch 32, seed 0.",
        "",
        f"**Feature cache (freeze: all).** One encoder pass over all splits: {encode_all_s:.0f} s "
        f"({frame.height / encode_all_s:.1f} texts/s), so ~{encode_train_s:.0f} s for the train "
        f"split. Training the default head for {args.epochs} epochs on the cached features: "
        f"{default_head_s:.1f} s. {args.epochs} epochs cost "
        f"{(encode_train_s + default_head_s) / encode_train_s:.3f}x one encoder pass over the "
        "train split (goal <= 1.3x); without the cache every epoch would be a full encoder pass.",
        "",
        "| run | freeze | epochs | accuracy | precision | recall | F1 | ROC-AUC | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Test split, spam = positive class. Head-only runs train on cached features; `sequence` "
        "dropout and fine-tuning run the encoder every step (dynamic padding).",
    ]
    write_section(
        "Training: dropout modes, freezing, feature cache",
        lines,
        command="make bench-train",
    )


if __name__ == "__main__":
    main()
