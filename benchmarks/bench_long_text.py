"""What `long_text: chunk` changes on the demo mails: truncation at 128 and 512 tokens against
chunking, by linear-probe accuracy on spam/ham and the 5-class group, and by encoder cost.

Run with `make bench-long-text` (part of `make bench`); writes a RESULTS.md section.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from benchmarks.results import write_section
from penultimate.config import EmbeddingChoice
from penultimate.email_text import email_to_text
from penultimate.embed import EncoderEmbedder
from penultimate.encoders.bert_convert import build_encoder_pair
from penultimate.encoders.pair import EncoderPair
from penultimate.encoders.sources import resolve_weights_folder
from penultimate.features import LoadedEncoder
from penultimate.shard_features import EncoderPass, long_text_counts

MAX_TEXT_CHARS = 20000  # ingest's default max_text_chars
# (name, seq_length, embedding choice overrides)
SETTINGS = (
    ("truncate at 128", 128, {}),
    ("chunk 128, back to back", 128, {"long_text": "chunk"}),
    ("chunk 128, stride 63", 128, {"long_text": "chunk", "chunk_stride": 63}),
    ("truncate at 512", 512, {}),
)


def sample_mails(corpus: Path, per_group: int, seed: int) -> pl.DataFrame:
    """`per_group` mails of each SpamAssassin group, as ingest makes their text."""
    frame = pl.read_parquet(corpus, columns=["id", "group", "label", "raw"])
    frame = pl.concat(
        [g.sample(min(per_group, g.height), seed=seed) for g in frame.partition_by("group")]
    )
    texts = [email_to_text(raw).text[:MAX_TEXT_CHARS] for raw in frame["raw"]]
    return frame.drop("raw").with_columns(pl.Series("text", texts))


def probe_scores(vectors: np.ndarray, labels: list[str], seed: int) -> tuple[float, float]:
    """5-fold cross-validated accuracy and macro F1 of a standardised logistic regression."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    predicted = cross_val_predict(probe, vectors, labels, cv=folds)
    return accuracy_score(labels, predicted), f1_score(labels, predicted, average="macro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/spamassassin.parquet", type=Path)
    parser.add_argument("--per-group", type=int, default=60, help="mails per group (5 groups)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mails = sample_mails(args.corpus, args.per_group, args.seed)
    texts = mails["text"].to_list()
    pairs: dict[int, LoadedEncoder] = {}
    rows = []
    truncated_vectors = None
    with tempfile.TemporaryDirectory() as work:
        for name, seq_length, overrides in SETTINGS:
            if seq_length not in pairs:
                folder = Path(work) / f"minilm-{seq_length}"
                build_encoder_pair(
                    resolve_weights_folder("minilm-l6"), folder, seq_length=seq_length
                )
                pairs[seq_length] = LoadedEncoder.load(EncoderPair(folder))
            choice = EmbeddingChoice.model_validate(overrides)
            embedder = EncoderEmbedder(pairs[seq_length], choice)
            started = time.perf_counter()
            vectors, tokens = embedder.embed_with_tokens(texts)
            seconds = time.perf_counter() - started
            if truncated_vectors is None:
                truncated_vectors = vectors
            counts = long_text_counts(tokens, seq_length, EncoderPass.of(choice))
            longer = counts.get("chunked", counts["truncated"])
            spam = probe_scores(vectors, mails["label"].to_list(), args.seed)
            group = probe_scores(vectors, mails["group"].to_list(), args.seed)
            cosine = np.sum(vectors * truncated_vectors, axis=1)[tokens > 128]
            rows.append(
                f"| {name} | {longer} | {counts.get('windows', len(texts))} | {seconds:.0f} | "
                f"{spam[0]:.3f} / {spam[1]:.3f} | {group[0]:.3f} / {group[1]:.3f} | "
                f"{np.median(cosine):.3f} |"
            )
            print(rows[-1], flush=True)
    tokens_all = tokens  # counted before any cut: the same in every setting
    lines = [
        f"{len(texts)} SpamAssassin mails ({args.per_group} per group, seed {args.seed}), text as "
        f"ingest makes it (cut at {MAX_TEXT_CHARS} characters); median "
        f"{int(np.median(tokens_all))} tokens, {np.mean(tokens_all > 128):.0%} over 128. The "
        "built-in encoder's mean-pooled last layer, L2-normalised; probe: standardised logistic "
        "regression (C 0.1), 5-fold cross-validated. Rows: texts longer than the setting's "
        "seq_length (cut or chunked), encoder rows (texts or windows), seconds for the encoder "
        "pass (2 cores, one process), accuracy / macro F1, and the median cosine of a long "
        "text's vector to its truncated-at-128 one.",
        "",
        "| setting | long texts | encoder rows | seconds | spam/ham acc / F1 | group acc / F1 "
        "| cosine to truncate@128 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    write_section("Long texts: truncate or chunk", lines, "make bench-long-text")


if __name__ == "__main__":
    main()
