"""The classifier's lexical branch: sublinear TF-IDF of words and word n-grams computed in the
graph from the raw text, so names, dates and headers reach logits that mean pooling averages away.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from scipy import sparse

from penultimate.config import LexicalConfig

LEXICAL_FILE = "lexical.json"
# Texts per TextVectorization call while fitting.
_FIT_BATCH = 256
# A term in fewer train texts than this is noise to a linear model (sklearn's `min_df` of the
# TF-IDF baseline in RESULTS.md).
MIN_DOCUMENT_FREQUENCY = 2
# The TF-IDF baseline's inverse regularisation (RESULTS.md): the branch's weights start at the
# logistic regression it fits, which AdamW alone, in a few epochs, does not reach.
WARM_START_C = 10.0
_CANDIDATES_PER_TERM = 2


@dataclass(frozen=True)
class LexicalVocabulary:
    """The terms (words and word n-grams, lower-cased, punctuation stripped) the lexical branch
    counts, with each term's inverse document frequency over the train split.

    Args:
        terms: the vocabulary, most frequent first.
        idf: ln((1 + n) / (1 + df)) + 1 per term (sklearn's smoothed idf), same order.
        ngrams: terms are word n-grams of 1..ngrams words.
    """

    terms: list[str]
    idf: list[float]
    ngrams: int

    def write(self, folder: Path) -> None:
        """Into `folder/lexical.json`, atomically (temp file + rename)."""
        target = folder / LEXICAL_FILE
        staging = target.with_name(f".{LEXICAL_FILE}.{os.getpid()}")
        staging.write_text(json.dumps(asdict(self)))
        staging.replace(target)

    @classmethod
    def read(cls, folder: Path) -> LexicalVocabulary:
        """From `folder/lexical.json` (see `write`)."""
        return cls(**json.loads((folder / LEXICAL_FILE).read_text()))


def words_of(text: tf.Tensor) -> tf.Tensor:
    """Text standardised for counting: lower-cased (Unicode) with each run of ASCII punctuation
    a space, so `exmh-workers@redhat.com` gives the words `exmh workers redhat com` (Keras'
    default would strip the punctuation and count one word `exmhworkersredhatcom`)."""
    return tf.strings.regex_replace(tf.strings.lower(text, encoding="utf-8"), r"[[:punct:]]+", " ")


def _term_counter(
    ngrams: int, terms: Sequence[str] | None = None, max_tokens: int | None = None
) -> tf_keras.layers.Layer:
    """Per text, how often each term occurs: [batch] strings -> a SparseTensor [batch, 1 + terms],
    column 0 counting the terms outside the vocabulary (`adapt` picks at most `max_tokens - 1`
    terms). Sparse: a text holds a few hundred of the 50,000 terms."""
    return tf_keras.layers.TextVectorization(
        standardize=words_of,
        max_tokens=max_tokens,
        ngrams=ngrams,
        output_mode="count",
        sparse=True,
        vocabulary=None if terms is None else list(terms),
    )


def fit_lexical_vocabulary(texts: Sequence[str], config: LexicalConfig) -> LexicalVocabulary:
    """About the `config.max_tokens` terms of `texts` (the train split) that occur in the most
    texts, each in at least MIN_DOCUMENT_FREQUENCY, ordered by that count then alphabetically (the
    same texts give the same vocabulary on every machine), with their idf.

    Two passes: Keras' `adapt` counts every distinct term (its memory grows with the corpus's
    n-grams) and keeps the `_CANDIDATES_PER_TERM * max_tokens` most frequent by occurrences;
    the second counts the texts each candidate occurs in."""
    counter = _term_counter(config.ngrams, max_tokens=_CANDIDATES_PER_TERM * config.max_tokens + 1)
    batches = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))
    counter.adapt(batches.batch(_FIT_BATCH))
    candidates = counter.get_vocabulary()[1:]
    document_frequency = np.zeros(len(candidates) + 1, np.int64)
    for batch in batches.batch(_FIT_BATCH):
        # One sparse entry per (text, term) that occurs: its column counts the text once.
        columns = counter(batch).indices[:, 1].numpy()
        document_frequency += np.bincount(columns, minlength=len(document_frequency))
    kept = sorted(
        (
            (int(df), str(term))
            for df, term in zip(document_frequency[1:], candidates, strict=True)
            if df >= MIN_DOCUMENT_FREQUENCY
        ),
        key=lambda pair: (-pair[0], pair[1]),
    )[: config.max_tokens]
    n = len(texts)
    return LexicalVocabulary(
        terms=[term for _, term in kept],
        idf=[float(np.log((1 + n) / (1 + df)) + 1) for df, _ in kept],
        ngrams=config.ngrams,
    )


class LexicalFeatures(tf_keras.layers.Layer):
    """Raw strings to sublinear, L2-normalised TF-IDF vectors over a fixed vocabulary:
    [batch] -> a SparseTensor [batch, len(terms)], each row (1 + ln tf) * idf / its norm, as
    sklearn's `TfidfVectorizer(sublinear_tf=True)` computes it (terms outside the vocabulary count
    for nothing; a text without any known term is an empty row). Sparse all the way into the
    Dense layer after it, so memory grows with the terms a batch holds, not batch x vocabulary.

    Args:
        terms: the vocabulary (see `LexicalVocabulary`).
        idf: one inverse document frequency per term.
        ngrams: terms are word n-grams of 1..ngrams words.

    Example:
        >>> vocabulary = fit_lexical_vocabulary(train_texts, LexicalConfig())
        >>> layer = LexicalFeatures(vocabulary.terms, vocabulary.idf, vocabulary.ngrams)
        >>> layer(tf.constant(["Fellow citizens of the Senate"])).dense_shape  # [1, len(terms)]
    """

    def __init__(
        self, terms: Sequence[str], idf: Sequence[float], ngrams: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.terms = list(terms)
        self.ngrams = ngrams
        self.counter = _term_counter(ngrams, self.terms)
        self.idf = tf.constant(np.asarray(idf, np.float32))

    def call(self, text: tf.Tensor) -> tf.SparseTensor:
        counts = self.counter(text)
        # Column 0 counts the terms outside the vocabulary: they do not count.
        known = tf.sparse.retain(counts, counts.indices[:, 1] > 0)
        rows, columns = known.indices[:, 0], known.indices[:, 1] - 1
        weights = (1.0 + tf.math.log(known.values)) * tf.gather(self.idf, columns)
        # tf.math.l2_normalize's rule: divide by sqrt(max(sum of squares, 1e-12)).
        squares = tf.math.unsorted_segment_sum(
            tf.square(weights), rows, num_segments=tf.shape(text, out_type=tf.int64)[0]
        )
        weights *= tf.gather(tf.math.rsqrt(tf.maximum(squares, 1e-12)), rows)
        return tf.SparseTensor(
            tf.stack([rows, columns], axis=1),
            weights,
            # The width as a constant: a static last dimension, which a Dense layer needs to build.
            tf.stack([known.dense_shape[0], tf.constant(len(self.terms), tf.int64)]),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "terms": self.terms,
            "idf": self.idf.numpy().tolist(),
            "ngrams": self.ngrams,
        }


def tfidf_matrix(layer: LexicalFeatures, texts: Sequence[str]) -> sparse.csr_matrix:
    """`layer`'s TF-IDF rows of `texts` as one SciPy sparse matrix [texts, terms]."""
    parts = []
    for start in range(0, len(texts), _FIT_BATCH):
        rows = layer(tf.constant(list(texts[start : start + _FIT_BATCH]), tf.string))
        index = rows.indices.numpy()
        shape = tuple(int(n) for n in rows.dense_shape.numpy())
        parts.append(sparse.csr_matrix((rows.values.numpy(), (index[:, 0], index[:, 1])), shape))
    return sparse.vstack(parts).tocsr()


def lexical_warm_start(
    layer: LexicalFeatures, texts: Sequence[str], labels: np.ndarray
) -> np.ndarray:
    """The kernel [terms, outputs] the lexical Dense layer starts from: the weights of a logistic
    regression (C = WARM_START_C, fitted to convergence) on the TF-IDF of `texts` with class ids
    `labels` (one sigmoid output for 2 classes, one softmax output per class otherwise)."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=WARM_START_C, max_iter=2000).fit(
        tfidf_matrix(layer, texts), labels
    )
    return fitted.coef_.T.astype(np.float32)
