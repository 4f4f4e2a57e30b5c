"""The TF-Hub-format preprocessor against the reference fast tokenizer: ids on hard text, packing,
padding, and the SavedModel through tf.saved_model.load, hub.KerasLayer and a fresh process."""

# The hard cases deliberately contain look-alike characters (full width, Greek, dotless i).
# ruff: noqa: RUF001

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from conftest import FIXTURES
from penultimate.encoders.pair import EncoderPair
from penultimate.encoders.preprocessor import (
    BertPreprocessor,
    normalize_like_bert_reference,
)
from penultimate.encoders.sources import resolve_weights_folder
from penultimate.features import pack_to_longest

REFERENCE = json.loads((FIXTURES / "minilm_reference.json").read_text())
SEQ_LENGTH = REFERENCE["max_seq_length"]
VOCAB = resolve_weights_folder("minilm-l6") / "vocab.txt"
CLS, SEP = 101, 102

# (case, text, ids without [CLS]/[SEP]) from the reference: tokenizers 0.23.3,
# Tokenizer.from_file(<all-MiniLM-L6-v2>/tokenizer.json).encode(text).ids[1:-1].
# fmt: off
HARD_CASES: list[tuple[str, str, list[int]]] = [
    (
        "sharp s",
        "Die Straße, GROSSE STRASSE und ẞ.",
        [3280, 2358, 27807, 1010, 7977, 2063, 2358, 8180, 3366, 6151, 1096, 1012],
    ),
    (
        "ligatures",
        "ﬁnance ﬂow in the oﬃce: ﬀ ﬆ",
        [1984, 7229, 3401, 1985, 5004, 1999, 1996, 100, 1024, 100, 100],
    ),
    (
        "full width",
        "ＦＵＬＬ\u3000ｗｉｄｔｈ\u3000１２３！？（ok）",
        [100, 100, 100, 1986, 1994, 1987, 7929, 1988],
    ),
    (
        "super- and subscripts",
        "x² + y³ = z⁴, H₂O, ½ ™ ℃ № ⅻ",
        [1060, 10701, 1009, 1061, 18107, 1027, 1062, 30073, 1010, 24833, 1010, 1092, 1580, 100,
         1578, 100],
    ),
    (
        "final sigma",
        "ΟΔΥΣΣΕΥΣ ΣΊΣΥΦΟΣ, ὁ λόγος, ς σ Σ",
        [1169, 29722, 29735, 29733, 29733, 29723, 29735, 29733, 1173, 18199, 29733, 29735,
         29736, 29730, 29733, 1010, 1169, 1165, 29730, 29721, 15297, 1010, 1172, 1173, 1173],
    ),
    (
        "dotted and dotless i",
        "İstanbul DİYARBAKIR ışık IĞDIR i\u0307",
        [9960, 4487, 13380, 3676, 23630, 1104, 2015, 11722, 2243, 1045, 2290, 4305, 2099, 1045],
    ),
    (
        "accents",
        "Café naïve ÅNGSTRÖM résumé Ñoño Tiếng Việt",
        [7668, 15743, 17076, 15687, 13746, 2512, 2080, 5495, 3070, 19710],
    ),
    ("compatibility letters", "Ω K Å ǅ ﬀ ℌ", [1179, 1047, 1037, 100, 100, 100]),
    (
        "CJK",
        "中文字符测试，日本語のテキスト。한국어 豈",
        [1746, 1861, 100, 100, 100, 100, 1989, 1864, 1876, 1950, 1671, 30239, 30227, 30233,
         30240, 1636, 1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008, 100],
    ),
    (
        # The reference's ideograph ranges skip U+2B820..U+2B91F, so those stay inside words.
        "CJK extension E edge",
        "a\U0002b81fb a\U0002b820b a\U0002b91fb a\U0002b920b",
        [1037, 100, 1038, 100, 100, 1037, 100, 1038],
    ),
    (
        "emoji",
        "I ❤️ pizza 🍕 👨\u200d👩\u200d👧 🏳️\u200d🌈 👍🏽 🥲 🫠",
        [1045, 100, 10733, 100, 100, 100, 100, 100, 100],
    ),
    (
        "controls",
        "null\x00byte zero\u200bwidth bom\ufeffmark soft\u00adhyphen bell\x07 del\x7f",
        [19701, 3762, 2618, 5717, 9148, 11927, 2232, 8945, 14760, 8024, 3730, 10536, 8458,
         2368, 4330, 3972],
    ),
    (
        "whitespace that is a control",
        "nel\x85line vt\x0bff\x0cfs\x1cus\x1f rtl\u202emark \ufffdrepl",
        [20970, 3170, 28879, 4246, 10343, 2271, 19387, 19145, 8024, 16360, 2140],
    ),
    (
        "unicode spaces",
        "a\u00a0b\u2003c\u3000d\u2028e\u2029f\u180eg\u205fh",
        [1037, 1038, 1039, 1040, 1041, 1042, 2290, 1044],
    ),
    ("tabs and newlines", "tab\tsep\nnew\r\nline", [21628, 19802, 2047, 2240]),
    (
        "combining marks",
        "e\u0301 cafe\u0301 n\u0303 a\u030a\u0323 q\u0307\u0323 Z\u0335 a\u20dd",
        [1041, 7668, 1050, 1037, 1053, 1062, 100],
    ),
    (
        # The reference's categories are Unicode 8.0's: newer marks stay, U+1734 was Mn.
        "marks newer than Unicode 8",
        "\u0628\u08d4\u062a a\u1df6b a\u1abfb \u1734x",
        [100, 100, 100, 1060],
    ),
    (
        "punctuation newer than Unicode 8",
        "x\u2e52y x\u2e43y x\u166dy",
        [100, 100, 1060, 100, 1061],
    ),
    ("format characters newer than Unicode 8", "x\u0890y x\u08e2y", [100, 100]),
    ("100 characters", "ab" * 50, [19557, *[3676] * 48, 2497]),
    ("101 characters", "ab" * 50 + "c", [100]),
    ("60 characters of 2 bytes", "ж" * 60, [1186, *[29743] * 59]),
    ("101 characters after stripping accents", "é" * 101, [100]),
    ("60 characters after stripping accents", "e\u0301" * 60, [25212, *[4402] * 29]),
    (
        "punctuation",
        "¿¡Hola!? «quote» „x“ — – … @#$%^&*()_+{}|:\"<>?~`-=[]\\;',./ ₹€£¥ §¶•·",
        [1094, 1067, 7570, 2721, 999, 1029, 1077, 14686, 1090, 1525, 1060, 1523, 1517, 1516,
         1529, 1030, 1001, 1002, 1003, 1034, 1004, 1008, 1006, 1007, 1035, 1009, 1063, 1065,
         1064, 1024, 1000, 1026, 1028, 1029, 1066, 1036, 1011, 1027, 1031, 1033, 1032, 1025,
         1005, 1010, 1012, 1013, 1576, 30102, 29646, 29648, 1073, 1086, 1528, 1087],
    ),
    (
        "contractions and abbreviations",
        "Don't STOP-believin' #1 U.S.A. e-mail 3.14",
        [2123, 1005, 1056, 2644, 1011, 19337, 2666, 6371, 1005, 1001, 1015, 1057, 1012, 1055,
         1012, 1037, 1012, 1041, 1011, 5653, 1017, 1012, 2403],
    ),
    ("whitespace only", " \t\n ", []),
    ("empty", "", []),
]
# fmt: on

# Special-token strings are plain text here, unlike in the reference: the ids it gives for
# "[ CLS ]" with spaces, i.e. "[", "cl", "##s", "]".
PLAIN_SPECIAL_TOKENS: list[tuple[str, list[int]]] = [
    ("hello [CLS] world", [7592, 1031, 18856, 2015, 1033, 2088]),
    ("[MASK] me", [1031, 7308, 1033, 2033]),
    ("[SEP]", [1031, 19802, 1033]),
    ("[unused1] x", [1031, 15171, 2487, 1033, 1060]),
    ("[PAD][UNK]", [1031, 11687, 1033, 1031, 4895, 2243, 1033]),
]

# The reference normalizer's output (`tokenizer.normalizer.normalize_str`).
NORMALIZED: list[tuple[str, str]] = [
    ("ΟΔΥΣΣΕΥΣ", "οδυσσευσ"),
    ("İstanbul", "istanbul"),
    ("Straße ẞ", "straße ß"),
    ("ﬁ x² ＡＢ", "ﬁ x² ａｂ"),
    ("中文", " 中  文 "),
    ("e\u0301", "e"),
    ("a\u200bb\x00c", "abc"),
    ("a\u00a0b\tc", "a b c"),
    ("\u0628\u08d4 \u1734", "\u0628\u08d4 "),
    ("ab\ufffd", "ab"),
]

# (first, second, seq_length, ids, type ids) from the reference's `longest_first` truncation.
PAIRS: list[tuple[str, str, int, list[int], list[int]]] = [
    (
        "hello big world how are you",
        "short one",
        10,
        [101, 7592, 2502, 2088, 2129, 2024, 102, 2460, 2028, 102],
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
    ),
    (
        "a b c d e f g",
        "h i j k l m n",
        10,
        [101, 1037, 1038, 1039, 102, 1044, 1045, 1046, 1047, 102],
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    ),
    ("one", "two three", 16, [101, 2028, 102, 2048, 2093, 102], [0, 0, 0, 1, 1, 1]),
]


@pytest.fixture(scope="session")
def saved_preprocessor(minilm_pair: Path) -> Path:
    """The built-in encoder's preprocessor: `save_preprocessor(VOCAB, ...)` at SEQ_LENGTH (checked
    here), as `build_encoder_pair` makes it, so the session builds it once."""
    pair = EncoderPair(minilm_pair)
    assert pair.read_info().seq_length == SEQ_LENGTH
    return pair.preprocessor


@pytest.fixture(scope="module")
def preprocessor(saved_preprocessor: Path) -> Any:
    return tf.saved_model.load(str(saved_preprocessor))


def wordpiece_ids(preprocessor: Any, texts: list[str]) -> list[list[int]]:
    tokens = preprocessor.tokenize(tf.constant(texts))
    assert tokens.dtype == tf.int32
    assert tokens.ragged_rank == 2  # [batch, (words), (wordpieces)]
    return tokens.merge_dims(1, -1).to_list()


def test_fixture_sentences_match_reference(preprocessor: Any) -> None:
    sentences = REFERENCE["sentences"]
    outputs = preprocessor(tf.constant(sentences))
    ids, mask = outputs["input_word_ids"].numpy(), outputs["input_mask"].numpy()
    for row, expected in enumerate(REFERENCE["token_ids"]):
        assert ids[row][mask[row] == 1].tolist() == expected, repr(sentences[row])
    untruncated = [len(row) + 2 for row in wordpiece_ids(preprocessor, sentences)]
    assert untruncated == REFERENCE["untruncated_token_counts"]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in HARD_CASES], ids=[c[0] for c in HARD_CASES]
)
def test_hard_text_matches_reference(preprocessor: Any, text: str, expected: list[int]) -> None:
    assert wordpiece_ids(preprocessor, [text]) == [expected]


def test_invalid_utf8_reads_as_replaced_characters(preprocessor: Any) -> None:
    # The reference only sees str; decoding with errors="replace" yields U+FFFD, which it drops.
    raw = [b"caf\xc3\xa9 stra\xffsse", b"\xe2\x82 \xc3(ok)"]
    decoded = [r.decode("utf-8", errors="replace") for r in raw]
    ours = preprocessor.tokenize(tf.constant(raw)).merge_dims(1, -1).to_list()
    assert ours == wordpiece_ids(preprocessor, decoded)
    assert ours[0] == wordpiece_ids(preprocessor, ["café strasse"])[0]


def test_normalizer_output_equals_reference_normalizer() -> None:
    texts, expected = zip(*NORMALIZED, strict=True)
    got = normalize_like_bert_reference(tf.constant(texts)).numpy()
    assert [g.decode("utf-8") for g in got] == list(expected)


def test_special_token_strings_are_plain_text(preprocessor: Any) -> None:
    ours = wordpiece_ids(preprocessor, [text for text, _ in PLAIN_SPECIAL_TOKENS])
    assert ours == [ids for _, ids in PLAIN_SPECIAL_TOKENS]
    # No [PAD], [unused1], [UNK], [CLS], [SEP] or [MASK] id can come from the text itself.
    assert not {0, 2, 100, CLS, SEP, 103} & {i for row in ours for i in row}
    # Where the reference, by contrast, reads "[CLS]" in text as the control token.
    special = REFERENCE["special_token_strings"]
    reference = dict(zip(special["sentences"], special["reference_token_ids"], strict=True))
    assert reference["hello [CLS] world"] == [CLS, 7592, CLS, 2088, SEP]


def test_fixed_length_outputs_truncate_and_pad(preprocessor: Any) -> None:
    outputs = preprocessor(tf.constant(["", "hello world", "word " * 300]))
    assert set(outputs) == {"input_word_ids", "input_mask", "input_type_ids"}
    for tensor in outputs.values():
        assert tensor.dtype == tf.int32
        assert tensor.shape == (3, SEQ_LENGTH)
    ids, mask = outputs["input_word_ids"].numpy(), outputs["input_mask"].numpy()
    np.testing.assert_array_equal(ids[0], [CLS, SEP] + [0] * (SEQ_LENGTH - 2))
    np.testing.assert_array_equal(ids[1, :5], [CLS, 7592, 2088, SEP, 0])
    np.testing.assert_array_equal(ids[2], [CLS] + [2773] * (SEQ_LENGTH - 2) + [SEP])
    np.testing.assert_array_equal(mask.sum(axis=1), [2, 4, SEQ_LENGTH])
    np.testing.assert_array_equal(mask, (ids != 0).astype(np.int32))
    assert not outputs["input_type_ids"].numpy().any()


def test_dynamic_padding_pads_to_the_longest_row(preprocessor: Any) -> None:
    # Built on the standard interface only (tokenize + bert_pack_inputs), like for any TF-Hub pair.
    short = pack_to_longest(preprocessor, tf.constant(["a", "hello big world", ""]), SEQ_LENGTH)
    assert short["input_word_ids"].shape == (3, 5)
    np.testing.assert_array_equal(
        short["input_word_ids"].numpy(),
        [[CLS, 1037, SEP, 0, 0], [CLS, 7592, 2502, 2088, SEP], [CLS, SEP, 0, 0, 0]],
    )
    np.testing.assert_array_equal(short["input_mask"].numpy().sum(axis=1), [3, 5, 2])
    texts = tf.constant(["word " * 300, "hello"])
    capped = pack_to_longest(preprocessor, texts, SEQ_LENGTH)
    fixed = preprocessor(texts)
    for name, tensor in capped.items():
        assert tensor.dtype == tf.int32
        np.testing.assert_array_equal(tensor.numpy(), fixed[name].numpy())


@pytest.mark.parametrize(("first", "second", "seq_length", "ids", "type_ids"), PAIRS)
def test_pairs_truncate_like_reference(
    preprocessor: Any,
    first: str,
    second: str,
    seq_length: int,
    ids: list[int],
    type_ids: list[int],
) -> None:
    segments = [
        preprocessor.tokenize(tf.constant([first])),
        preprocessor.tokenize(tf.constant([second])),
    ]
    packed = preprocessor.bert_pack_inputs(segments, seq_length=seq_length)
    padding = [0] * (seq_length - len(ids))
    assert packed["input_word_ids"].numpy().tolist() == [ids + padding]
    assert packed["input_type_ids"].numpy().tolist() == [type_ids + padding]
    assert packed["input_mask"].numpy().tolist() == [[1] * len(ids) + padding]


def test_standard_interface_special_tokens_and_ragged_rank_1(preprocessor: Any) -> None:
    special = {k: int(v) for k, v in preprocessor.tokenize.get_special_tokens_dict().items()}
    assert special == {
        "vocab_size": 30522,
        "start_of_sequence_id": CLS,
        "end_of_segment_id": SEP,
        "padding_id": 0,
        "mask_id": 103,
    }
    texts = tf.constant(["Hello world!", "a"])
    words = preprocessor.tokenize(texts)
    # Segments of ragged rank 1 (what wordpiece-free tokenizers give) pack the same.
    flat = preprocessor.bert_pack_inputs([words.merge_dims(1, -1)], seq_length=tf.constant(8))
    nested = preprocessor.bert_pack_inputs([words], seq_length=tf.constant(8))
    for name, tensor in nested.items():
        assert tensor.shape == (2, 8)
        np.testing.assert_array_equal(flat[name].numpy(), tensor.numpy())


def test_single_segment_packing_equals_call(preprocessor: Any) -> None:
    texts = tf.constant(["Hello world!", "word " * 300])
    packed = preprocessor.bert_pack_inputs([preprocessor.tokenize(texts)])
    called = preprocessor(texts)
    for name, tensor in called.items():
        np.testing.assert_array_equal(packed[name].numpy(), tensor.numpy())


def test_hub_keras_layer_in_a_functional_model(saved_preprocessor: Path, preprocessor: Any) -> None:
    layer = hub.KerasLayer(str(saved_preprocessor))
    text = tf_keras.layers.Input(shape=(), dtype=tf.string)
    model = tf_keras.Model(text, layer(text))
    batch = tf.constant(["ΟΔΥΣΣΕΥΣ went to Straße", "ｆｕｌｌ width"])
    expected = preprocessor(batch)
    for outputs in (model(batch), layer(batch)):
        for name, tensor in expected.items():
            assert outputs[name].dtype == tf.int32
            np.testing.assert_array_equal(outputs[name].numpy(), tensor.numpy())
    # TF Hub's two-layer form, `seq_length` given as a Python int (the saved form takes a tensor).
    tokenize = hub.KerasLayer(preprocessor.tokenize)
    pack = hub.KerasLayer(preprocessor.bert_pack_inputs, arguments={"seq_length": 8})
    packed = tf_keras.Model(text, pack([tokenize(text)]))(batch)
    assert packed["input_word_ids"].shape == (2, 8)
    for name, tensor in expected.items():
        np.testing.assert_array_equal(packed[name].numpy()[:, :7], tensor.numpy()[:, :7])


def test_relocated_model_needs_only_tensorflow_and_tf_text(
    saved_preprocessor: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(saved_preprocessor, moved)
    script = (
        "import json, sys\n"
        "import tensorflow as tf\n"
        "import tensorflow_text  # registers the ops the graph uses\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "serve = model.signatures['serving_default']\n"
        "ids = serve(tf.constant(['hello world']))['input_word_ids'].numpy()[0, :5]\n"
        "print(json.dumps({'ids': ids.tolist(), 'asset': model.vocab_file.asset_path.numpy()"
        ".decode(), 'project_imported': 'penultimate' in sys.modules}))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(moved)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "ids": [CLS, 7592, 2088, SEP, 0],
        "asset": str(moved / "assets" / "vocab.txt"),
        "project_imported": False,
    }
    assert (moved / "assets" / "vocab.txt").read_bytes() == VOCAB.read_bytes()


def test_vocab_without_special_tokens_is_refused(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['\[CLS\]', '\[SEP\]'\]"):
        BertPreprocessor(vocab)
