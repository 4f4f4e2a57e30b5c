"""`long_text: chunk`: windows that cover every token, a text's vector as the token-weighted
mean of its windows' vectors from the real encoder, batches sized in windows, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from penultimate.config import EmbeddingChoice
from penultimate.embed import EncoderEmbedder
from penultimate.encoders.pair import EncoderPair
from penultimate.errors import InputError
from penultimate.features import (
    ChoiceEncoder,
    LoadedEncoder,
    length_sorted_batches,
    load_encoder,
    token_windows,
)
from penultimate.shard_features import EncoderPass, long_text_counts, window_counts

CHUNK = EncoderPass(long_text="chunk")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def loaded(minilm_pair: Path) -> LoadedEncoder:
    return load_encoder(EncoderPair(minilm_pair))  # the process's one copy, as tasks share it


@pytest.mark.parametrize(("window", "stride"), [(4, 4), (4, 2), (5, 3)])
def test_windows_cover_every_token_in_order_and_match_the_counts(window: int, stride: int) -> None:
    lengths = [0, 1, 4, 5, 9, 13]
    rows = [list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)]
    windows, owner = token_windows(tf.ragged.constant(rows, tf.int64), window, stride)
    windows, owner = windows.to_list(), owner.numpy()
    # Token counts with [CLS] and [SEP] at seq_length = window + 2, as the encoder sees them.
    counts = window_counts(np.array(lengths) + 2, window + 2, stride)
    assert np.bincount(owner, minlength=len(rows)).tolist() == counts.tolist()
    for text, tokens in enumerate(rows):
        mine = [w for w, o in zip(windows, owner, strict=True) if o == text]
        assert all(len(w) <= window for w in mine)
        assert [w[0] for w in mine if w] == tokens[::stride][: len(mine)]
        assert sorted({t for w in mine for t in w}) == tokens  # nothing skipped, nothing added
        assert not mine[-1] or mine[-1][-1] == tokens[-1]


def test_batches_hold_at_most_batch_size_windows() -> None:
    lengths = [900, 20, 300, 600, 10, 10]
    rows = window_counts(np.array(lengths), 128, 126)
    batches = length_sorted_batches(lengths, 8, rows)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for batch in batches:
        assert rows[batch].sum() <= 8 or len(batch) == 1
    assert [b.tolist() for b in batches] == [[0], [3, 2], [1, 4, 5]]


def test_a_chunked_text_is_the_token_weighted_mean_of_its_windows(loaded: LoadedEncoder) -> None:
    names = ("layer_5_mean", "layer_2_cls")
    # "hello" is one wordpiece: 300 of them are windows of 126, 126 and 48 at seq_length 128.
    long, short = "hello " * 300, "A short text that fits in one window."
    vectors, tokens = ChoiceEncoder(loaded, names, CHUNK).encode([short, long], batch_size=2)
    cut, cut_tokens = ChoiceEncoder(loaded, names).encode(
        [short, "hello " * 126, "hello " * 48], batch_size=2
    )
    assert tokens.tolist() == [cut_tokens[0], 302]
    for name in names:
        np.testing.assert_allclose(vectors[name][0], cut[name][0], atol=1e-5)
        expected = (128 * 2 * cut[name][1] + 50 * cut[name][2]) / (128 * 2 + 50)
        np.testing.assert_allclose(vectors[name][1], expected, atol=1e-5)
        assert np.abs(vectors[name][1] - cut[name][1]).max() > 1e-3  # not just the first window


def test_overlapping_windows_and_the_counts_the_manifest_states(loaded: LoadedEncoder) -> None:
    choice = EmbeddingChoice(long_text="chunk", chunk_stride=63)
    embedder = EncoderEmbedder(loaded, choice, batch_size=4)
    texts = ["hello " * 300, "world " * 10, "again " * 200]
    vectors, tokens = embedder.embed_with_tokens(texts)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    counts = long_text_counts(tokens, 128, EncoderPass.of(choice))
    # 302 tokens: windows start every 63 until one reaches the end: 0, 63, 126, 189 -> 4.
    assert counts == {"truncated": 0, "chunked": 2, "windows": 4 + 1 + 3}
    assert long_text_counts(tokens, 128, EncoderPass()) == {"truncated": 2}


def test_bad_chunk_settings_are_one_line_errors(loaded: LoadedEncoder) -> None:
    with pytest.raises(ValueError, match="chunk_stride goes with long_text: chunk"):
        EmbeddingChoice(chunk_stride=64)
    with pytest.raises(ValueError, match="long_text: chunk embeds encoder layers"):
        EmbeddingChoice(source="penultimate", long_text="chunk")
    too_far = EmbeddingChoice(long_text="chunk", chunk_stride=200)
    with pytest.raises(InputError, match=r"chunk_stride: 200 is more than a window \(126 tokens"):
        EncoderEmbedder(loaded, too_far)
