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

from penultimate.config import LexicalConfig

LEXICAL_FILE = "lexical.json"
# Texts per TextVectorization call while fitting: [batch, max_tokens] counts stay a few MB.
_FIT_BATCH = 256
# A term in fewer train texts than this is noise to a linear model (sklearn's `min_df` of the
# TF-IDF baseline in RESULTS.md).
MIN_DOCUMENT_FREQUENCY = 2
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
        target = folder / LEXICAL_FILE
        staging = target.with_name(f".{LEXICAL_FILE}.{os.getpid()}")
        staging.write_text(json.dumps(asdict(self)))
        staging.replace(target)

    @classmethod
    def read(cls, folder: Path) -> LexicalVocabulary:
        return cls(**json.loads((folder / LEXICAL_FILE).read_text()))


def words_of(text: tf.Tensor) -> tf.Tensor:
    """Text standardised for counting: lower-cased (Unicode) with each run of ASCII punctuation
    a space, so `exmh-workers@redhat.com` gives the words `exmh workers redhat com` (Keras'
    default would strip the punctuation and count one word `exmhworkersredhatcom`)."""
    return tf.strings.regex_replace(tf.strings.lower(text, encoding="utf-8"), r"[[:punct:]]+", " ")


def _term_counter(
    ngrams: int, terms: Sequence[str] | None = None, max_tokens: int | None = None
) -> tf_keras.layers.Layer:
    """Per text, how often each term occurs: [batch] strings -> [batch, 1 + terms], column 0
    counting the terms outside the vocabulary (`adapt` picks at most `max_tokens - 1` terms)."""
    return tf_keras.layers.TextVectorization(
        standardize=words_of,
        max_tokens=max_tokens,
        ngrams=ngrams,
        output_mode="count",
        vocabulary=None if terms is None else list(terms),
    )


def fit_lexical_vocabulary(texts: Sequence[str], config: LexicalConfig) -> LexicalVocabulary:
    """The `config.max_tokens` terms of `texts` (the train split) that occur in the most texts,
    each in at least MIN_DOCUMENT_FREQUENCY, ordered by that count then alphabetically (the same
    texts give the same vocabulary on every machine), with their idf.

    Candidates are the `_CANDIDATES_PER_TERM * max_tokens` most frequent terms by occurrences,
    so the counts of a pass stay [batch, candidates] however large the corpus's vocabulary."""
    counter = _term_counter(config.ngrams, max_tokens=_CANDIDATES_PER_TERM * config.max_tokens + 1)
    batches = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))
    counter.adapt(batches.batch(_FIT_BATCH))
    candidates = counter.get_vocabulary()[1:]
    document_frequency = np.zeros(len(candidates), np.int64)
    for batch in batches.batch(_FIT_BATCH):
        document_frequency += (counter(batch).numpy()[:, 1:] > 0).sum(axis=0)
    kept = sorted(
        (
            (int(df), str(term))
            for df, term in zip(document_frequency, candidates, strict=True)
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
    [batch] -> [batch, len(terms)], each row (1 + ln tf) * idf / its norm, as sklearn's
    `TfidfVectorizer(sublinear_tf=True)` computes it (terms outside the vocabulary count for
    nothing; a text without any known term is all zeros).

    Args:
        terms: the vocabulary (see `LexicalVocabulary`).
        idf: one inverse document frequency per term.
        ngrams: terms are word n-grams of 1..ngrams words.

    Example:
        >>> vocabulary = fit_lexical_vocabulary(train_texts, LexicalConfig())
        >>> layer = LexicalFeatures(vocabulary.terms, vocabulary.idf, vocabulary.ngrams)
        >>> layer(tf.constant(["Fellow citizens of the Senate"])).shape  # [1, len(terms)]
    """

    def __init__(
        self, terms: Sequence[str], idf: Sequence[float], ngrams: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.terms = list(terms)
        self.ngrams = ngrams
        self.counter = _term_counter(ngrams, self.terms)
        # Column 0 counts out-of-vocabulary terms: weight 0, so they do not count.
        self.idf = tf.constant(np.concatenate([[0.0], idf]).astype(np.float32))

    @property
    def width(self) -> int:
        return len(self.terms)

    def call(self, text: tf.Tensor) -> tf.Tensor:
        counts = self.counter(text)
        # 1 + ln(count) where a term occurs, 0 where it does not.
        term_frequency = tf.math.log(tf.maximum(counts, 1.0)) + tf.cast(counts > 0, tf.float32)
        weighted = (term_frequency * self.idf)[:, 1:]
        return tf.math.l2_normalize(weighted, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "terms": self.terms,
            "idf": self.idf.numpy()[1:].tolist(),
            "ngrams": self.ngrams,
        }
