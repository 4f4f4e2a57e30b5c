"""The lexical branch: its TF-IDF is sklearn's sublinear TF-IDF to float precision, its vocabulary
is deterministic and kept in the classifier artifact, and its logits add to the deep ones in
training, in the head on cached features and in every served prediction."""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tensorflow as tf

from penultimate.classifier import TEXT_INPUT, HeadModel, TextClassifier, classifier_inputs
from penultimate.config import LexicalConfig, TrainConfig
from penultimate.encoders.pair import EncoderPair
from penultimate.export import ClassifierServing
from penultimate.features import load_encoder
from penultimate.lexical import (
    MIN_DOCUMENT_FREQUENCY,
    LexicalFeatures,
    LexicalVocabulary,
    fit_lexical_vocabulary,
    lexical_warm_start,
    tfidf_matrix,
)
from penultimate.train import LabelSpace, TrainedClassifier, TrainInputError, fit_classifier


@pytest.fixture(scope="module")
def mails(corpus_slice: Path) -> list[str]:
    """ASCII mails of the real corpus (Python and ICU may lower-case rare letters differently)."""
    return [t for t in pl.read_parquet(corpus_slice)["raw"].to_list() if t.isascii()]


def sklearn_tfidf(train: list[str], terms: list[str], ngrams: int) -> object:
    from sklearn.feature_extraction.text import TfidfVectorizer

    # `words_of`: lower case, each run of ASCII punctuation a space, split on whitespace.
    punctuation = re.compile(f"[{re.escape(string.punctuation)}]+")
    return TfidfVectorizer(
        vocabulary=terms,
        ngram_range=(1, ngrams),
        sublinear_tf=True,
        lowercase=False,
        preprocessor=lambda text: punctuation.sub(" ", text.lower()),
        tokenizer=str.split,
        token_pattern=None,
    ).fit(train)


def test_features_are_sklearns_sublinear_tfidf(mails: list[str]) -> None:
    train, held_out = mails[:200], mails[200:]
    vocabulary = fit_lexical_vocabulary(train, LexicalConfig(max_tokens=3_000, ngrams=2))
    assert len(vocabulary.terms) == 3_000 and any(" " in term for term in vocabulary.terms)
    layer = LexicalFeatures(vocabulary.terms, vocabulary.idf, vocabulary.ngrams)
    reference = sklearn_tfidf(train, vocabulary.terms, 2)
    np.testing.assert_allclose(vocabulary.idf, reference.idf_, rtol=1e-6)
    for texts in (train[:50], held_out):
        ours = tf.sparse.to_dense(layer(tf.constant(texts))).numpy()
        np.testing.assert_allclose(ours, reference.transform(texts).toarray(), atol=2e-6)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_vocabulary_is_frequent_terms_in_a_fixed_order(mails: list[str]) -> None:
    vocabulary = fit_lexical_vocabulary(mails, LexicalConfig(max_tokens=500, ngrams=1))
    assert len(vocabulary.terms) == 500 and not any(" " in t for t in vocabulary.terms)
    # The same texts in another order: the same terms, in the same order.
    again = fit_lexical_vocabulary(mails[::-1], LexicalConfig(max_tokens=500, ngrams=1))
    assert again == vocabulary
    # Every term in at least MIN_DOCUMENT_FREQUENCY texts; ordered by that count (idf rises).
    everything = fit_lexical_vocabulary(mails, LexicalConfig(max_tokens=200_000, ngrams=1))
    counted = sklearn_tfidf(mails, everything.terms, 1).transform(mails)
    assert (np.asarray((counted > 0).sum(axis=0)).ravel() >= MIN_DOCUMENT_FREQUENCY).all()
    assert np.all(np.diff(everything.idf) >= 0)


def test_text_without_known_terms_is_all_zeros_and_vocabulary_round_trips(
    tmp_path: Path,
) -> None:
    vocabulary = LexicalVocabulary(["senate", "the senate", "école"], [1.5, 2.0, 1.0], 2)
    layer = LexicalFeatures(vocabulary.terms, vocabulary.idf, vocabulary.ngrams)
    texts = ["Nothing known here.", "THE Senate!", "", "École: the-senate?école"]
    rows = tf.sparse.to_dense(layer(tf.constant(texts))).numpy()
    np.testing.assert_array_equal(rows[0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(rows[2], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(rows[1], np.array([1.5, 2.0, 0]) / np.hypot(1.5, 2.0), rtol=1e-6)
    # Unicode lower-cased; punctuation splits words ("the-senate" is "the senate"): école
    # twice (1 + ln 2), senate and "the senate" once.
    expected = np.array([1.5, 2.0, 1 + np.log(2)])
    np.testing.assert_allclose(rows[3], expected / np.linalg.norm(expected), rtol=1e-6)
    vocabulary.write(tmp_path)
    assert LexicalVocabulary.read(tmp_path) == vocabulary
    assert [p.name for p in tmp_path.iterdir()] == ["lexical.json"]
    rebuilt = LexicalFeatures.from_config(layer.get_config())
    np.testing.assert_array_equal(
        tf.sparse.to_dense(rebuilt(tf.constant(["the senate"]))),
        tf.sparse.to_dense(layer(tf.constant(["the senate"]))),
    )


def test_lexical_logits_add_to_the_deep_logits(tiny_bert_pair: Path) -> None:
    """Same token ids, different raw text: the logits move by exactly the lexical Dense weights
    of the text's (normalised) TF-IDF; with no known term they are the deep logits alone."""
    loaded = load_encoder(EncoderPair(tiny_bert_pair))
    vocabulary = LexicalVocabulary(["senate", "house"], [1.0, 1.0], 1)
    model = TextClassifier(
        str(EncoderPair(tiny_bert_pair).encoder), TrainConfig(), 3, loaded.info.num_layers,
        vocabulary=vocabulary,
    )  # fmt: skip
    inputs = classifier_inputs(loaded, ["a text about the senate"])
    model(inputs)
    kernel = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], np.float32)
    assert model.lexical_layer is not None
    model.lexical_layer.kernel.assign(kernel)
    deep = model.head(model.embed(inputs), False, None).numpy()
    np.testing.assert_allclose(model(inputs).numpy(), deep + kernel[0], atol=1e-6)
    unknown = {**inputs, TEXT_INPUT: tf.constant(["nothing known"])}
    np.testing.assert_allclose(model(unknown).numpy(), deep, atol=1e-6)
    both = {**inputs, TEXT_INPUT: tf.constant(["senate house"])}
    np.testing.assert_allclose(
        model(both).numpy(), deep + (kernel[0] + kernel[1]) / np.sqrt(2), atol=1e-6
    )
    # The head trained on cached features gives the same logits from the pooled features.
    pooled = model.encoder_features(both, False, False)
    np.testing.assert_allclose(
        HeadModel(model)({"features": pooled, TEXT_INPUT: both[TEXT_INPUT]}).numpy(),
        model(both).numpy(),
        atol=1e-6,
    )


def test_a_train_split_without_a_repeated_word_is_a_named_error(
    tiny_bert_pair: Path, tmp_path: Path
) -> None:
    frame = pl.DataFrame(
        {
            "id": ["1", "2", "3", "4"],
            "text": ["alpha one", "beta two", "alpha gamma", "beta delta"],
            "label": ["a", "b", "a", "b"],
            "split": ["train", "train", "val", "test"],
        }
    )
    pair = EncoderPair(tiny_bert_pair)
    with pytest.raises(TrainInputError, match=r"no word occurs in 2 or more of the 2 train texts"):
        fit_classifier(
            TrainConfig(), frame, LabelSpace(["a", "b"]), pair, load_encoder(pair), tmp_path,
            None, print,
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_every_served_prediction_includes_the_lexical_term(tiny_bert_pair: Path) -> None:
    """The export's `serving_default` and `predict_mc` (dropout at rate 0, so every draw is the
    deterministic prediction) give the Keras model's probabilities, lexical term included."""
    pair = EncoderPair(tiny_bert_pair)
    loaded = load_encoder(pair)
    config = TrainConfig.model_validate({"dropout": [{"rate": 0.0}]})
    vocabulary = LexicalVocabulary(["senate", "house"], [1.0, 1.0], 1)
    model = TextClassifier(
        str(pair.encoder), config, 3, loaded.info.num_layers, vocabulary=vocabulary
    )
    texts = ["the senate", "the house and the senate", "nothing known"]
    model(classifier_inputs(loaded, texts))
    assert model.lexical_layer is not None
    model.lexical_layer.kernel.assign([[4.0, -4.0, 0.0], [-2.0, 0.0, 3.0]])
    serving = ClassifierServing(
        TrainedClassifier(model, loaded, LabelSpace(["a", "b", "c"]), config)
    )
    expected = tf.nn.softmax(model(classifier_inputs(loaded, texts))).numpy()
    served = serving.serve(tf.constant(texts))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-6)
    mc = serving.predict_mc(tf.constant(texts), tf.constant(3))["mean"].numpy()
    np.testing.assert_allclose(mc, expected, atol=1e-6)
    # The term matters: without it the first text's prediction would differ.
    deep = tf.nn.softmax(model.head(model.embed(classifier_inputs(loaded, texts)), False, None))
    assert np.abs(deep.numpy()[0] - expected[0]).max() > 0.1


def test_the_branch_starts_from_the_logistic_regression_of_its_tfidf(corpus_slice: Path) -> None:
    frame = pl.read_parquet(corpus_slice)
    texts = frame["raw"].to_list()
    vocabulary = fit_lexical_vocabulary(texts, LexicalConfig(max_tokens=2_000))
    layer = LexicalFeatures(vocabulary.terms, vocabulary.idf, vocabulary.ngrams)
    matrix = tfidf_matrix(layer, texts)
    np.testing.assert_allclose(
        matrix[:10].toarray(),
        tf.sparse.to_dense(layer(tf.constant(texts[:10]))).numpy(),
        atol=1e-7,
    )
    for column, width in (("label", 1), ("group", 5)):
        names = sorted(frame[column].unique().to_list())
        y = LabelSpace(names).encode(frame[column])
        kernel = lexical_warm_start(layer, texts, y)
        assert kernel.shape == (len(vocabulary.terms), width)
        # Fitted to convergence at C = 10: it separates the texts it was fitted on.
        scores = matrix @ kernel
        predicted = scores.argmax(axis=1) if width > 1 else (scores[:, 0] > 0).astype(int)
        assert (predicted == y).mean() > 0.95
