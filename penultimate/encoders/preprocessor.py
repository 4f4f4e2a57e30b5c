"""BERT preprocessor with TF Hub's interface whose ids equal the reference fast tokenizer's.

Normalising, splitting and WordPiece are TensorFlow ops, so loading needs only TF and tf-text.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import tensorflow_text as text

# The reference is the Rust `tokenizers` BertNormalizer + BertPreTokenizer + WordPiece. Its
# category tests come from the `unicode_categories` crate, frozen at Unicode 8.0, while RE2 (and
# so `\p{..}` here) knows Unicode 15+; the exception lists below undo that difference, they were
# derived by comparing both on every code point.

# clean_text deletes these (Cc except \t\n\r, Cf and Co as of Unicode 8.0, and U+FFFD).
_DROPPED = (
    r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{AD}\x{600}-\x{605}\x{61C}\x{6DD}\x{70F}"
    r"\x{180E}\x{200B}-\x{200F}\x{202A}-\x{202E}\x{2060}-\x{2064}\x{2066}-\x{206F}"
    r"\x{E000}-\x{F8FF}\x{FEFF}\x{FFF9}-\x{FFFB}\x{FFFD}\x{110BD}\x{1BCA0}-\x{1BCA3}"
    r"\x{1D173}-\x{1D17A}\x{E0001}\x{E0020}-\x{E007F}\x{F0000}-\x{FFFFD}\x{100000}-\x{10FFFD}]"
)
# Rust's char::is_whitespace, less the ones deleted above as controls (\v, \f, U+0085, ...).
_WHITESPACE = r"[\t\n\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
# BERT's CJK ideograph blocks as `tokenizers` spells them: Extension E starts at U+2B920 there, so
# U+2B820..U+2B91F stay inside words (tf-text's BasicTokenizer splits them off).
_CJK = (
    r"([\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2A6DF}"
    r"\x{2A700}-\x{2B81F}\x{2B920}-\x{2CEAF}\x{2F800}-\x{2FA1F}])"
)
# Nonspacing marks encoded after Unicode 8.0: the reference keeps them.
_NEWER_MARKS = (
    r"\x{7FD}\x{898}-\x{89F}\x{8CA}-\x{8E1}\x{9FE}\x{AFA}-\x{AFF}\x{B55}\x{C04}\x{C3C}\x{D00}"
    r"\x{D3B}\x{D3C}\x{D81}\x{EBA}\x{ECE}\x{180F}\x{1885}\x{1886}\x{1ABF}-\x{1ACE}"
    r"\x{1DF6}-\x{1DFB}\x{A82C}\x{A8C5}\x{A8FF}\x{A9BD}\x{10D24}-\x{10D27}\x{10EAB}\x{10EAC}"
    r"\x{10EFD}-\x{10EFF}\x{10F46}-\x{10F50}\x{10F82}-\x{10F85}\x{11070}\x{11073}\x{11074}"
    r"\x{110C2}\x{111C9}\x{111CF}\x{1123E}\x{11241}\x{1133B}\x{11438}-\x{1143F}"
    r"\x{11442}-\x{11444}\x{11446}\x{1145E}\x{1182F}-\x{11837}\x{11839}\x{1183A}\x{1193B}"
    r"\x{1193C}\x{1193E}\x{11943}\x{119D4}-\x{119D7}\x{119DA}\x{119DB}\x{119E0}"
    r"\x{11A01}-\x{11A0A}\x{11A33}-\x{11A38}\x{11A3B}-\x{11A3E}\x{11A47}\x{11A51}-\x{11A56}"
    r"\x{11A59}-\x{11A5B}\x{11A8A}-\x{11A96}\x{11A98}\x{11A99}\x{11C30}-\x{11C36}"
    r"\x{11C38}-\x{11C3D}\x{11C3F}\x{11C92}-\x{11CA7}\x{11CAA}-\x{11CB0}\x{11CB2}\x{11CB3}"
    r"\x{11CB5}\x{11CB6}\x{11D31}-\x{11D36}\x{11D3A}\x{11D3C}\x{11D3D}\x{11D3F}-\x{11D45}"
    r"\x{11D47}\x{11D90}\x{11D91}\x{11D95}\x{11D97}\x{11EF3}\x{11EF4}\x{11F00}\x{11F01}"
    r"\x{11F36}-\x{11F3A}\x{11F40}\x{11F42}\x{13440}\x{13447}-\x{13455}\x{16F4F}\x{16FE4}"
    r"\x{1CF00}-\x{1CF2D}\x{1CF30}-\x{1CF46}\x{1E000}-\x{1E006}\x{1E008}-\x{1E018}"
    r"\x{1E01B}-\x{1E021}\x{1E023}\x{1E024}\x{1E026}-\x{1E02A}\x{1E08F}\x{1E130}-\x{1E136}"
    r"\x{1E2AE}\x{1E2EC}-\x{1E2EF}\x{1E4EC}-\x{1E4EF}\x{1E944}-\x{1E94A}"
)
# U+1734 was Mn in Unicode 8.0 (Mc now).
_MARKS = rf"[^\P{{Mn}}{_NEWER_MARKS}]|\x{{1734}}"
# Punctuation encoded after Unicode 8.0: the reference does not split on it.
_NEWER_PUNCTUATION = (
    r"\x{61D}\x{9FD}\x{A76}\x{C77}\x{C84}\x{1B7D}\x{1B7E}\x{2E43}-\x{2E4F}\x{2E52}-\x{2E5D}"
    r"\x{10EAD}\x{10F55}-\x{10F59}\x{10F86}-\x{10F89}\x{1144B}-\x{1144F}\x{1145A}\x{1145B}"
    r"\x{1145D}\x{11660}-\x{1166C}\x{116B9}\x{1183B}\x{11944}-\x{11946}\x{119E2}"
    r"\x{11A3F}-\x{11A46}\x{11A9A}-\x{11A9C}\x{11A9E}-\x{11AA2}\x{11B00}-\x{11B09}"
    r"\x{11C41}-\x{11C45}\x{11C70}\x{11C71}\x{11EF7}\x{11EF8}\x{11F43}-\x{11F4F}\x{11FFF}"
    r"\x{12FF1}\x{12FF2}\x{16E97}-\x{16E9A}\x{16FE2}\x{1E95E}\x{1E95F}"
)
# ASCII punctuation (`$`, `+`, `^`, ... are symbols to Unicode) and P* as of Unicode 8.0, when
# U+166D and U+111C9 still were punctuation.
_PUNCTUATION = rf"[!-/:-@\[-`{{-~]|[^\P{{P}}{_NEWER_PUNCTUATION}]|[\x{{166D}}\x{{111C9}}]"

_MAX_CHARS_PER_WORD = 100
_UNKNOWN = "[UNK]"
_SEGMENTS_SUPPORTED = (1, 2)


def normalize_like_bert_reference(texts: tf.Tensor) -> tf.Tensor:
    """Normalise UTF-8 strings as the reference `BertNormalizer(lowercase=True)` does.

    The reference's steps, in its order:
    1. clean_text: delete U+0000, U+FFFD and control, format and private-use characters (but not
       tab, LF, CR), then turn every whitespace character into a plain space;
    2. handle_chinese_chars: put a space on each side of every CJK ideograph;
    3. strip_accents (implied by lowercase): NFD, then delete nonspacing marks (Mn);
    4. lowercase each character on its own: capital sigma never takes its word-final form, and
       U+0130 (dotted I) was split by NFD already.
    Invalid UTF-8 is decoded first with U+FFFD as replacement, which step 1 then deletes.

    Over all 1,112,064 code points the output equals the reference's except for 116 letters of
    scripts encoded in Unicode 13-17 (newer case/NFD tables on either side), none of which is
    in a BERT vocabulary in either form, so token ids are unaffected.
    """
    texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")
    texts = tf.strings.regex_replace(texts, _DROPPED, "")
    texts = tf.strings.regex_replace(texts, _WHITESPACE, " ")
    texts = tf.strings.regex_replace(texts, _CJK, r" \1 ")
    texts = text.normalize_utf8(texts, "NFD")
    texts = tf.strings.regex_replace(texts, _MARKS, "")
    # ICU lowercases a word-final Σ to ς; Rust's char::to_lowercase has no such context.
    texts = tf.strings.regex_replace(texts, "\u03a3", "\u03c3")
    # tf.strings.lower cuts a string at U+0000, which is why clean_text has to run first.
    return tf.strings.lower(texts, encoding="utf-8")


def _keep_first(tokens: tf.RaggedTensor, counts: tf.Tensor) -> tf.RaggedTensor:
    """The first `counts[i]` tokens of each row i of a [batch, (tokens)] tensor."""
    positions = tf.ragged.range(tokens.row_lengths())
    return tf.ragged.boolean_mask(tokens, positions < counts[:, tf.newaxis])


def _truncate_longest_first(
    segments: list[tf.RaggedTensor], budget: tf.Tensor
) -> list[tf.RaggedTensor]:
    """Fit each row's segments into `budget` tokens as Hugging Face's `longest_first` does.

    For a pair, the shorter segment keeps min(its length, budget // 2) tokens and the longer gets
    the rest, the second segment winning a tie; tf-text's trimmers split differently.
    """
    budget = tf.cast(budget, tf.int64)
    if len(segments) == 1:
        (tokens,) = segments
        return [_keep_first(tokens, tf.minimum(tokens.row_lengths(), budget))]
    first, second = segments
    n1, n2 = first.row_lengths(), second.row_lengths()
    shorter = tf.minimum(n1, n2)
    half = budget // 2
    short_keeps = tf.minimum(shorter, half)
    long_keeps = tf.where(shorter > half, half + budget % 2, budget - shorter)
    fits = n1 + n2 <= budget
    first_shorter = n1 <= n2
    keep1 = tf.where(fits, n1, tf.where(first_shorter, short_keeps, long_keeps))
    keep2 = tf.where(fits, n2, tf.where(first_shorter, long_keeps, short_keeps))
    return [_keep_first(first, keep1), _keep_first(second, keep2)]


class WordpieceTokenizer(tf.Module):
    """The preprocessor's `tokenize`: strings to wordpiece ids, plus the special token ids.

    Args:
        vocab: the WordPiece vocabulary, the list index being the id.
        ids: token -> id for the same vocabulary.
    """

    def __init__(self, vocab: list[str], ids: dict[str, int]) -> None:
        super().__init__(name="tokenize")
        self._special = {
            "vocab_size": len(vocab),
            "start_of_sequence_id": ids["[CLS]"],
            "end_of_segment_id": ids["[SEP]"],
            "padding_id": ids["[PAD]"],
            "mask_id": ids.get("[MASK]", -1),
        }
        # The model is a flatbuffer constant in the graph, so no lookup table file is involved.
        # It counts bytes, the reference characters: allow 4 bytes each, cap characters below.
        self._wordpiece = text.FastWordpieceTokenizer(
            vocab=vocab,
            max_bytes_per_word=4 * _MAX_CHARS_PER_WORD,
            token_out_type=tf.int32,
            unknown_token=_UNKNOWN,
            no_pretokenization=True,
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def __call__(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[batch] strings to int32 wordpiece ids [batch, (words), (wordpieces)]."""
        normalized = normalize_like_bert_reference(texts)
        words = text.regex_split(normalized, f" +|{_PUNCTUATION}", _PUNCTUATION)
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > _MAX_CHARS_PER_WORD
        # "[UNK]" is a vocabulary entry, so WordPiece turns this word into exactly that id;
        # text cannot produce it, as "[" and "]" were split off above.
        words = words.with_flat_values(tf.where(too_long, _UNKNOWN, words.flat_values))
        return self._wordpiece.tokenize(words)

    @tf.function(input_signature=[])
    def get_special_tokens_dict(self) -> dict[str, tf.Tensor]:
        """`vocab_size` and the ids of [CLS], [SEP], [PAD] and [MASK] (-1 if absent), as TF Hub
        BERT preprocessors name them."""
        return {name: tf.constant(value, tf.int32) for name, value in self._special.items()}


class BertPreprocessor(tf.Module):
    """Text to BERT encoder inputs, with the interface of TF Hub's `bert_en_uncased_preprocess`:
    `__call__`, `tokenize` (with `get_special_tokens_dict`) and `bert_pack_inputs`.

    Token ids equal those of the Hugging Face fast tokenizer defined by the same uncased
    vocabulary (BertNormalizer with lowercase, BertPreTokenizer, WordPiece), except that special
    token strings such as "[CLS]" in the text are plain text, never control tokens.

    Args:
        vocab_path: WordPiece vocabulary, one token per line, the line number being the id.
        seq_length: length of `__call__`'s outputs and the default of `bert_pack_inputs`.

    Example:
        >>> pre = BertPreprocessor("vocab.txt", seq_length=128)
        >>> pre(tf.constant(["Hello world"]))["input_word_ids"][0, :4]  # [101, 7592, 2088, 102]
    """

    def __init__(self, vocab_path: str | Path, seq_length: int = 128) -> None:
        super().__init__(name="bert_preprocessor")
        if seq_length < 3:
            raise ValueError(f"seq_length must leave room for tokens, got {seq_length}")
        vocab = Path(vocab_path).read_text(encoding="utf-8").split("\n")
        if vocab and not vocab[-1]:
            vocab.pop()
        ids = {token: i for i, token in enumerate(vocab)}
        missing = {"[PAD]", "[CLS]", "[SEP]", _UNKNOWN} - ids.keys()
        if missing:
            raise ValueError(f"{vocab_path} lacks the special tokens {sorted(missing)}")
        self.seq_length = seq_length
        self._pad_id = ids["[PAD]"]
        self._cls_id = ids["[CLS]"]
        self._sep_id = ids["[SEP]"]
        # Kept with the SavedModel for consumers that need the vocabulary (e.g. to decode ids).
        self.vocab_file = tf.saved_model.Asset(str(vocab_path))
        self.tokenize = WordpieceTokenizer(vocab, ids)

        # A function of this instance, not a method: `seq_length`'s default is this preprocessor's
        # own, a Python int that a loaded SavedModel converts to the traced tensor argument, so
        # one traced form serves calls with and without `seq_length` (as in Model Garden's).
        def bert_pack_inputs(
            segments: list[tf.RaggedTensor], seq_length: tf.Tensor | int = seq_length
        ) -> dict[str, tf.Tensor]:
            """`tokenize` outputs (1 or 2 segments, ragged rank 1 or 2) to encoder inputs
            [batch, seq_length].

            Pairs are `[CLS] a [SEP] b [SEP]` with type id 1 on `b [SEP]`; `seq_length` defaults
            to the preprocessor's.
            """
            return self._pack(list(segments), seq_length)

        self.bert_pack_inputs = tf.function(bert_pack_inputs, autograph=False)

    def _pack(
        self, segments: list[tf.RaggedTensor], seq_length: tf.Tensor | int
    ) -> dict[str, tf.Tensor]:
        if len(segments) not in _SEGMENTS_SUPPORTED:
            raise ValueError(f"1 or 2 segments are supported, got {len(segments)}")
        tokens = [
            segment.merge_dims(1, -1) if segment.ragged_rank > 1 else segment
            for segment in segments
        ]
        # One [CLS] plus one [SEP] per segment.
        tokens = _truncate_longest_first(tokens, seq_length - 1 - len(tokens))
        ids, type_ids = text.combine_segments(tokens, self._cls_id, self._sep_id)
        word_ids, mask = text.pad_model_inputs(ids, seq_length, pad_value=self._pad_id)
        type_ids, _ = text.pad_model_inputs(type_ids, seq_length)
        return {
            "input_word_ids": tf.cast(word_ids, tf.int32),
            "input_mask": tf.cast(mask, tf.int32),
            "input_type_ids": tf.cast(type_ids, tf.int32),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def __call__(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """[batch] strings to `input_word_ids`/`input_mask`/`input_type_ids` [batch, seq_length]."""
        return self._pack([self.tokenize(texts)], tf.constant(self.seq_length))

    def _trace_for_export(self) -> None:
        """Trace `bert_pack_inputs` for the call forms a loaded SavedModel must accept."""
        for tokens in (
            tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2),
            tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
        ):
            for count in _SEGMENTS_SUPPORTED:
                # Named as `tf.saved_model.save` names it, or it traces this form again.
                self.bert_pack_inputs.get_concrete_function(
                    [tokens] * count, tf.TensorSpec([], tf.int32, name="seq_length")
                )


def save_preprocessor(
    vocab_path: str | Path, export_dir: str | Path, seq_length: int = 128
) -> None:
    """Save a relocatable `BertPreprocessor` for `tf.saved_model.load` and `hub.KerasLayer`.

    `serving_default` is `__call__`; the vocabulary is copied into the SavedModel's assets.
    """
    preprocessor = BertPreprocessor(vocab_path, seq_length=seq_length)
    preprocessor._trace_for_export()
    tf.saved_model.save(
        preprocessor, str(export_dir), signatures={"serving_default": preprocessor.__call__}
    )
