"""Is MC dropout worth it here? The demo classifier trained on spam/ham and on the 5-class `group`
label of the shared SpamAssassin corpus; each classifier artifact's own uncertainty report
(calibration before and after temperature scaling, mistake detection by max-softmax against MC
dropout at T = 10, 30, 100, with its cost) and dropout report, side by side; and each, with the
lexical branch added too and beside a default-config classifier, against a TF-IDF +
logistic-regression baseline on the same splits.

Run with `make bench-uncertainty`; writes a RESULTS.md section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.results import write_section

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "spamassassin.parquet"
TRAIN_CONFIG = REPO / "configs/demo/pipeline.yaml"
LABELS = ("label", "group")


def penultimate(store: Path, *args: str) -> str:
    """One `penultimate` command in its own process (as a user runs it); its last line."""
    result = subprocess.run(
        [sys.executable, "-m", "penultimate.cli", "--store", str(store), *args],
        capture_output=True, text=True, cwd=REPO, env=os.environ.copy(),
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"penultimate {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def train_on(label: str, store: Path, work: Path) -> tuple[str, Path]:
    """The demo pipeline's classifier (hidden 256, dropout 0.3 after it) trained on `label`;
    returns the dataset's URI and the classifier's folder."""
    demo = yaml.safe_load(TRAIN_CONFIG.read_text())
    ingest = {**demo["ingest"], "source": str(CORPUS), "label_column": label}
    ingest["passthrough_columns"] = [c for c in ("group",) if c != label]
    (work / f"ingest-{label}.yaml").write_text(yaml.safe_dump(ingest))
    dataset = penultimate(store, "ingest", "--config", str(work / f"ingest-{label}.yaml"))
    return dataset, train_with(demo["train"], dataset, store, work)


def train_with(config: dict[str, Any], dataset: str, store: Path, work: Path) -> Path:
    """A classifier of `config` on `dataset` (the encoder features are cached by then)."""
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return Path(penultimate(store, "train", "--config", str(path), "--dataset", dataset))


def rows_for(label: str, classifier: Path) -> list[list[Any]]:
    uncertainty = json.loads((classifier / "uncertainty" / "report.json").read_text())
    base, scaled = uncertainty["max_softmax"], uncertainty["temperature_scaled"]
    detection = uncertainty["detection"]
    rows = [
        [label, "max-softmax", base["accuracy"], base["ece"], base["nll"], base["brier"],
         detection["max_softmax"]["auroc"], detection["max_softmax"]["aupr"], "-"],
        [label, f"temperature scaled (T={uncertainty['temperature']:.3f})", scaled["accuracy"],
         scaled["ece"], scaled["nll"], scaled["brier"], "-", "-", "-"],
    ]  # fmt: skip
    for samples, mc in uncertainty["mc"].items():
        for measure in ("entropy", "mutual_information"):
            scores = detection[f"mc_{samples}_{measure}"]
            rows.append(
                [label, f"MC dropout T={samples}, {measure.replace('_', ' ')}", mc["accuracy"],
                 mc["ece"], mc["nll"], mc["brier"], scores["auroc"], scores["aupr"],
                 f"{mc['seconds']:.2f}"]
            )  # fmt: skip
    return rows


def tfidf_baseline(classifier: Path) -> dict[str, float]:
    """TF-IDF (words and word pairs, sublinear) + logistic regression on the classifier's own
    dataset: fitted on its train split, scored on its test split, the texts it saw."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    from penultimate.artifacts import ArtifactStore
    from penultimate.ingest import read_dataset
    from penultimate.stages import CLASSIFIER_STAGE, DATASET_STAGE

    store = ArtifactStore(classifier.parent.parent)
    ref = store.ref(CLASSIFIER_STAGE.name, classifier.name)
    dataset = store.input_of(ref, DATASET_STAGE)
    assert dataset is not None
    train, test = read_dataset(dataset, "train"), read_dataset(dataset, "test")
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    model.fit(train["text"].to_list(), train["label"].to_list())
    predicted = model.predict(test["text"].to_list())
    truth = test["label"].to_list()
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
    }


def cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", help="artifact store to train in (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or Path(tmp) / "store")
        datasets, classifiers = {}, {}
        for label in LABELS:
            datasets[label], classifiers[label] = train_on(label, store, Path(tmp))
        header = ["label", "method", "accuracy", "ECE", "NLL", "Brier", "error AUROC",
                  "error AUPR", "seconds"]  # fmt: skip
        lines = [
            "The demo classifier (frozen MiniLM, mean pooling, Dense 256, dropout 0.3 after it) "
            "on the shared SpamAssassin corpus, once per label, on its test split. ECE over 15 "
            "bins; error AUROC/AUPR: how well each score ranks the mistakes first; MC dropout "
            "keeps the classifier's own dropout on (the encoder's stays off, as `predict_mc` "
            "serves it) and its seconds are the draws alone, on cached features.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for label, classifier in classifiers.items():
            lines += [
                "| " + " | ".join(map(cell, row)) + " |" for row in rows_for(label, classifier)
            ]
        lines.append("")
        for label, classifier in classifiers.items():
            verdict = json.loads((classifier / "uncertainty" / "report.json").read_text())
            lines.append(f"- {label}: {verdict['verdict']}")
            dropout = json.loads((classifier / "dropout_report" / "report.json").read_text())
            for mask in dropout["masks"]:
                lines.append(
                    f"- {label}: {mask['layer']} dropped {mask['observed_drop_fraction']:.4f} "
                    f"of {mask['mask_units']} mask units at rate {mask['rate']} (bound "
                    f"±{mask['binomial_bound']:.4f})"
                )
        lines.append("")
        write_section("Uncertainty: is MC dropout worth it?", lines, "make bench-uncertainty")
        print("\n".join(lines))
        demo = yaml.safe_load(TRAIN_CONFIG.read_text())["train"]
        variants = {
            "demo classifier (`lexical: null`)": lambda label: classifiers[label],
            "the same + lexical branch": lambda label: train_with(
                {**demo, "lexical": {}}, datasets[label], store, Path(tmp)
            ),
            "defaults (`{}`)": lambda label: train_with({}, datasets[label], store, Path(tmp)),
        }
        baseline = [
            "The demo classifier (no lexical branch), the same with it (as by default), and a "
            "classifier of the default config (linear head + lexical branch), against TF-IDF "
            "(words and word pairs, sublinear tf, min_df 2) + logistic regression (C=10) fitted "
            "on the same train split and scored on the same test split of the same texts: "
            "accuracy (macro-F1).",
            "",
            "| label | " + " | ".join(variants) + " | TF-IDF + LR |",
            "|---|" + "---|" * (len(variants) + 1),
        ]
        for label, classifier in classifiers.items():
            cells = []
            for train in variants.values():
                test = json.loads((train(label) / "metrics.json").read_text())["test"]
                cells.append(f"{test['accuracy']:.4f} ({test['macro_f1']:.4f})")
            tfidf = tfidf_baseline(classifier)
            cells.append(f"{tfidf['accuracy']:.4f} ({tfidf['macro_f1']:.4f})")
            baseline.append(f"| {label} | " + " | ".join(cells) + " |")
        write_section("Classifier against a TF-IDF baseline", baseline, "make bench-uncertainty")
        print("\n".join(baseline))


if __name__ == "__main__":
    main()
