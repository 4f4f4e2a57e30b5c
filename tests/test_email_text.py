"""Tests for penultimate.email_text: raw RFC 822 messages to classifier-ready text.

Small messages are built in each test; the last tests run the whole shared SpamAssassin corpus.
"""

import base64
import re
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from penultimate.email_text import EmailText, email_to_text

# A 1x1 transparent GIF: real image bytes for image attachments.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _bytes_message(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode("ascii") + b"\r\n" + body


# --- Subject --------------------------------------------------------------------------------


def test_subject_utf8_base64_encoded_word() -> None:
    encoded = base64.b64encode("Grüße aus München ✓".encode()).decode("ascii")
    result = email_to_text(f"Subject: =?utf-8?b?{encoded}?=\n\nHallo.\n")
    assert result.text == "Grüße aus München ✓\n\nHallo."
    assert result.replaced_chars == 0


def test_subject_latin1_q_encoded_word_and_plain_text_around_it() -> None:
    raw = "Subject: Re: =?iso-8859-1?q?Caf=E9_cr=E8me?= tonight\n\nSee you.\n"
    assert email_to_text(raw).text == "Re: Café crème tonight\n\nSee you."


def test_subject_multibyte_character_split_across_adjacent_encoded_words() -> None:
    # "é" is C3 A9 in UTF-8; a mailer may split it between two words separated by folding.
    raw = "Subject: =?UTF-8?Q?caf=C3?=\n =?UTF-8?Q?=A9_ouvert?=\n\nbody\n"
    assert email_to_text(raw).text == "café ouvert\n\nbody"


def test_subject_encoded_word_in_unknown_charset_falls_back() -> None:
    raw = "Subject: =?x-made-up?q?na=EFve?=\n\nbody\n"
    assert email_to_text(raw).text.startswith("naïve\n\n")


def test_unencoded_8bit_subject_uses_the_body_charset() -> None:
    headers = "Subject: \xd6\xd0\xce\xc4\nContent-Type: text/plain; charset=gb2312\n"
    raw = headers.encode("latin-1") + b"\n" + "中文正文".encode("gb2312")
    assert email_to_text(raw).text == "中文\n\n中文正文"


def test_other_headers_are_dropped() -> None:
    raw = (
        "From user@example.com  Thu Aug 22 12:36:23 2002\n"
        "Received: from mx.example.com by mail.example.org; Thu, 22 Aug 2002\n"
        "From: Someone <user@example.com>\n"
        "To: other@example.org\n"
        "Subject: hello\n"
        "X-Mailer: Thing 1.0\n"
        "\n"
        "Just the body.\n"
    )
    assert email_to_text(raw).text == "hello\n\nJust the body."


# --- Transfer encodings and charsets ---------------------------------------------------------


def test_quoted_printable_body_with_soft_breaks() -> None:
    raw = (
        "Subject: qp\n"
        "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Le caf=E9 est tr=E8s bon et cette ligne est coup=\n"
        "=E9e en deux.\n"
    )
    assert (
        email_to_text(raw).text == "qp\n\nLe café est très bon et cette ligne est coupée en deux."
    )


def test_base64_body_utf8() -> None:
    msg = EmailMessage()
    msg["Subject"] = "b64"
    msg.set_content("Ünïcödé body \u2013 with a dash\n", charset="utf-8", cte="base64")
    assert "Content-Transfer-Encoding: base64" in msg.as_string()
    for raw in (msg.as_string(), msg.as_bytes()):
        assert email_to_text(raw).text == "b64\n\nÜnïcödé body \u2013 with a dash"


def test_base64_body_followed_by_a_mailing_list_footer() -> None:
    payload = base64.encodebytes(b"The real message text.").decode("ascii")
    raw = (
        "Content-Type: text/plain; charset=us-ascii\n"
        "Content-Transfer-Encoding: base64\n"
        "\n" + payload + "\n"
        "_______________________________________________\n"
        "List mailing list: unsubscribe at http://example.com/list\n"
    )
    assert email_to_text(raw).text == "The real message text."


def test_latin1_8bit_body_from_bytes() -> None:
    raw = _bytes_message(
        "Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: 8bit\n",
        "Déjà vu, señor.".encode("latin-1"),
    )
    result = email_to_text(raw)
    assert result.text == "Déjà vu, señor."
    assert result.replaced_chars == 0


def test_cp1252_body_from_bytes() -> None:
    raw = _bytes_message(
        "Content-Type: text/plain; charset=windows-1252\n",
        "“Smart quotes” cost 5 €.".encode("cp1252"),
    )
    assert email_to_text(raw).text == "“Smart quotes” cost 5 €."


def test_iso_8859_1_label_on_cp1252_text_is_read_as_cp1252() -> None:
    # Windows mailers label cp1252 text as iso-8859-1; 0x93/0x94 are C1 controls in latin-1.
    raw = _bytes_message(
        "Content-Type: text/plain; charset=iso-8859-1\n", "“quoted”".encode("cp1252")
    )
    assert email_to_text(raw).text == "“quoted”"


@pytest.mark.parametrize(
    ("body", "expected"),
    [("naïve café".encode(), "naïve café"), ("naïve café".encode("cp1252"), "naïve café")],
)
def test_unknown_charset_tries_utf8_then_cp1252(body: bytes, expected: str) -> None:
    raw = _bytes_message('Content-Type: text/plain; charset="x-bogus-charset"\n', body)
    result = email_to_text(raw)
    assert result.text == expected
    assert result.replaced_chars == 0


def test_bytes_to_bytes_codec_name_is_not_used_as_a_charset() -> None:
    raw = _bytes_message("Content-Type: text/plain; charset=base64\n", b"plain words")
    assert email_to_text(raw).text == "plain words"


def test_invalid_utf8_under_utf8_label_counts_replacements() -> None:
    raw = _bytes_message(
        "Subject: broken\nContent-Type: text/plain; charset=utf-8\n",
        b"ok \xc3\xa9 then bad \xff and \xc3 end",
    )
    result = email_to_text(raw)
    assert result.text == "broken\n\nok é then bad \ufffd and \ufffd end"
    assert result.replaced_chars == 2


def test_replacement_chars_already_in_the_input_are_not_counted() -> None:
    raw = "Subject: s\nContent-Type: text/plain; charset=utf-8\n\nalready lost: \ufffd\ufffd\n"
    result = email_to_text(raw)
    assert result.text == "s\n\nalready lost: \ufffd\ufffd"
    assert result.replaced_chars == 0


def test_str_input_keeps_already_decoded_non_ascii_text() -> None:
    # Corpora shipped as JSON hold messages whose 8-bit bodies were already decoded to str.
    raw = (
        "Subject: déjà\n"
        "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Zoë\u2019s 中文 résumé\n"
    )
    assert email_to_text(raw).text == "déjà\n\nZoë\u2019s 中文 résumé"


def test_str_input_quoted_printable_mixing_escapes_and_decoded_text() -> None:
    raw = (
        "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "caf=E9 and café =\nsame\n"
    )
    assert email_to_text(raw).text == "café and café same"


def test_uuencoded_body() -> None:
    raw = (
        "Content-Type: text/plain\n"
        "Content-Transfer-Encoding: x-uuencode\n"
        "\n"
        "begin 644 note.txt\n"
        "/:&5L;&\\@=75E;F-O9&4*\n"
        "`\n"
        "end\n"
    )
    assert email_to_text(raw).text == "hello uuencode"


def test_inline_uuencoded_attachment_in_plain_text_is_dropped() -> None:
    raw = "Subject: s\n\nSee attached.\n\nbegin 644 note.txt\n/:&5L;&\\@=75E;F-O9&4*\n`\nend\n"
    result = email_to_text(raw)
    assert result.text == "s\n\nSee attached."
    assert result.dropped_attachments == 1


def test_inline_pgp_signature_is_dropped_but_signed_text_kept() -> None:
    raw = (
        "Subject: signed\n\n"
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA1\n\n"
        "I wrote this.\n\n"
        "-----BEGIN PGP SIGNATURE-----\nVersion: GnuPG v1.0.6\n\n"
        "iD8DBQE9bEcKD5jX03fqNxQRAmTfAKDM6BDsePbg8fb9Ore0XuS5jB4t1wCfbTcw\n"
        "=abcd\n-----END PGP SIGNATURE-----\n"
    )
    result = email_to_text(raw)
    assert result.text == "signed\n\nI wrote this."
    assert result.dropped_attachments == 1


# --- MIME structure --------------------------------------------------------------------------


def _alternative(plain: str, html: str) -> MIMEMultipart:
    msg = MIMEMultipart("alternative")
    msg["Subject"] = "alt"
    msg.attach(MIMEText(plain, "plain", "utf-8"))
    msg.attach(MIMEText(html, "html", "utf-8"))
    return msg


def test_multipart_alternative_prefers_text_plain() -> None:
    msg = _alternative("Plain version.", "<html><body><p>HTML version.</p></body></html>")
    assert email_to_text(msg.as_string()).text == "alt\n\nPlain version."


def test_multipart_alternative_falls_back_to_html_when_plain_is_empty() -> None:
    msg = _alternative("  \n\n ", "<html><body><p>HTML version.</p></body></html>")
    assert email_to_text(msg.as_string()).text == "alt\n\nHTML version."


def test_html_only_body_is_converted_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p { color: red; }</style>\n"
        "<script type='text/javascript'>document.write('<b>hidden</b>');</script></head>\n"
        "<body><!-- a comment --><h1>Big &amp; Bold</h1>\n"
        "<p>Caf&#233; au&nbsp;lait,\n  five   dollars<br>per cup</p>"
        "<table><tr><td>cell one</td><td>cell two</td></tr></table>"
        "<div><a href=\"http://example.com/?a=1&amp;b=2\" title='x > y'>click</a></div>"
        "</body></html>"
    )
    msg = MIMEText(html, "html", "utf-8")
    msg["Subject"] = "html"
    text = email_to_text(msg.as_string()).text
    assert text == (
        "html\n\nT\n\nBig & Bold\n\nCafé au lait, five dollars\nper cup\n\ncell one cell two\n\n"
        "click"
    )


def test_html_labelled_text_plain_is_converted() -> None:
    raw = "Content-Type: text/plain\n\n<HTML><BODY><FONT size=2>Buy <B>now</B>!</FONT></BODY>\n"
    assert email_to_text(raw).text == "Buy now!"


def test_broken_html_does_not_swallow_text() -> None:
    raw = "Content-Type: text/html\n\n<p><font size=2<b>Visible</b> text<!--#rotate> more\n"
    assert email_to_text(raw).text == "Visible text more"


def test_attachments_are_dropped_and_counted() -> None:
    msg = MIMEMultipart("mixed")
    msg["Subject"] = "files"
    msg.attach(MIMEText("See the attachments.", "plain", "us-ascii"))
    binary = MIMEApplication(bytes(range(256)) * 4, "octet-stream")
    binary.add_header("Content-Disposition", "attachment", filename="data.bin")
    msg.attach(binary)
    msg.attach(MIMEImage(GIF, "gif"))
    attached_text = MIMEText("secret notes", "plain", "us-ascii")
    attached_text.add_header("Content-Disposition", "attachment", filename="notes.txt")
    msg.attach(attached_text)
    result = email_to_text(msg.as_string())
    assert result.text == "files\n\nSee the attachments."
    assert result.dropped_attachments == 3


def test_nested_multiparts() -> None:
    related = MIMEMultipart("related")
    related.attach(MIMEText("<p>Rich <i>body</i></p>", "html", "utf-8"))
    related.attach(MIMEImage(GIF, "gif"))
    alternative = MIMEMultipart("alternative")
    alternative.attach(MIMEText("", "plain", "utf-8"))
    alternative.attach(related)
    forwarded = MIMEText("Forwarded body.", "plain", "utf-8")
    forwarded["Subject"] = "inner subject is not kept"
    forwarded_part = MIMEMultipart("mixed")
    forwarded_part.attach(forwarded)
    outer = MIMEMultipart("mixed")
    outer["Subject"] = "nested"
    outer.attach(alternative)
    outer.attach(MIMEText("Second inline part.", "plain", "iso-8859-1"))
    outer.attach(MIMEApplication(b"%PDF-1.4 binary", "pdf"))
    outer.attach(forwarded_part)
    result = email_to_text(outer.as_bytes())
    assert result.text == "nested\n\nRich body\n\nSecond inline part.\n\nForwarded body."
    assert result.dropped_attachments == 2


def test_message_rfc822_body_is_included_without_its_headers() -> None:
    inner = MIMEText("Inner words.", "plain", "utf-8")
    inner["Received"] = "from somewhere by elsewhere"
    inner["Subject"] = "inner"
    outer = EmailMessage()
    outer["Subject"] = "outer"
    outer.set_content("See below.")
    outer.add_attachment(inner, disposition="inline")
    assert email_to_text(outer.as_string()).text == "outer\n\nSee below.\n\nInner words."


def test_mime_body_with_missing_top_level_content_type_is_recovered() -> None:
    raw = (
        "Subject: lost headers\n"
        "MIME-Version: 1.0\n"
        "\n"
        "This is a multipart MIME message.\n"
        "\n"
        "--= Multipart Boundary 0626010800\n"
        'Content-Type: text/plain; charset="iso-8859-1"\n'
        "\n"
        "Real text.\n"
        "--= Multipart Boundary 0626010800\n"
        "Content-Type: application/octet-stream\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        + base64.encodebytes(bytes(range(200))).decode("ascii")
        + "--= Multipart Boundary 0626010800--\n"
    )
    result = email_to_text(raw)
    # The preamble before the first boundary is not part of any MIME part.
    assert result.text == "lost headers\n\nReal text."
    assert result.dropped_attachments == 1


def _nested(depth: int) -> str:
    opening = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth)
    )
    closing = "".join(f"\n--b{i}--\n" for i in reversed(range(depth)))
    return "Subject: deep\n" + opening + "Content-Type: text/plain\n\ndeep text" + closing


def test_nesting_within_the_limit_is_walked() -> None:
    assert email_to_text(_nested(20)).text == "deep\n\ndeep text"


def test_nesting_beyond_the_limit_is_dropped_not_raised() -> None:
    result = email_to_text(_nested(200))
    assert result.text == "deep"
    assert result.dropped_attachments == 1


def test_nesting_that_breaks_the_parser_falls_back_to_plain_text() -> None:
    # The email package itself recurses once per level and gives up long before 2000.
    result = email_to_text(_nested(2000))
    assert "deep text" in result.text
    assert result.dropped_attachments == 0


# --- Degenerate input ------------------------------------------------------------------------


def test_message_with_no_body() -> None:
    assert email_to_text("Subject: only a subject\nFrom: a@example.com\n\n").text == (
        "only a subject"
    )
    assert email_to_text("From: a@example.com\n").text == ""


def test_message_with_no_subject_is_just_the_body() -> None:
    assert email_to_text("From: a@example.com\n\nBody only.\n").text == "Body only."


@pytest.mark.parametrize(
    "raw",
    [
        "",
        b"",
        "this is not an e-mail at all, just a sentence\nand another line\n",
        "<<<>>> ===?? \x00\x01 =?utf-8?b?!!!?= --\n\n--",
        b"\x00\xff\xfe garbage \x80\x81\x9d bytes \r\r\n\n\xc3",
        "Content-Type: multipart/mixed; boundary=\n\n--\n--\n",
        'Content-Type: text/plain; charset="\xe9\xe9"\nContent-Transfer-Encoding: base64\n\n@@@',
        "Subject: lone surrogate \udcff\n\nbody \ud800\n",
    ],
)
def test_garbage_input_never_raises(raw: str | bytes) -> None:
    result = email_to_text(raw)
    assert isinstance(result.text, str)
    result.text.encode("utf-8")  # no lone surrogates leak out
    assert result.replaced_chars >= 0
    assert result.dropped_attachments >= 0


def test_non_email_text_falls_back_to_the_text_itself() -> None:
    result = email_to_text("hello world, this is not an e-mail\nsecond line\n")
    assert result.text == "hello world, this is not an e-mail\nsecond line"


def test_whitespace_is_normalised_but_case_and_punctuation_are_kept() -> None:
    raw = "Subject:  Mixed   CASE\t subject\n\n  Line\tone  \r\n\r\n\r\n\r\nLine  TWO!!\n\n\n"
    assert email_to_text(raw).text == "Mixed CASE subject\n\nLine one\n\nLine TWO!!"


# --- The real corpus -------------------------------------------------------------------------

# Tags as they would appear if HTML escaped conversion, e.g. "<html>" or "<td width=...".
HTML_TAG = re.compile(r"<(?:html|td)[\s>/]", re.IGNORECASE)
# Base64 data, as an attachment or encoded body leaves it: consecutive full lines of mixed-case
# alphabet. A single long run is not enough: long URLs, "+++" rulers and spam hash-buster tokens
# are one-line runs of the same alphabet and are legitimate text.
BASE64_BLOCK = re.compile(
    r"^(?=[^\n]*[a-z])(?=[^\n]*[A-Z])(?=[^\n]*[0-9])[A-Za-z0-9+/]{60,}={0,2}\n"
    r"[A-Za-z0-9+/]{60,}={0,2}$",
    re.MULTILINE,
)
RECEIVED = re.compile(r"^Received:[^\n]*", re.MULTILINE)


@pytest.fixture(scope="module")
def corpus(corpus_path: Path) -> list[tuple[str, str, str]]:
    import polars as pl

    frame = pl.read_parquet(corpus_path, columns=["id", "label", "raw"])
    return list(zip(frame["id"], frame["label"], frame["raw"], strict=True))


@pytest.fixture(scope="module")
def corpus_texts(corpus: list[tuple[str, str, str]]) -> dict[str, EmailText]:
    return {message_id: email_to_text(raw) for message_id, _, raw in corpus}


def test_corpus_messages_yield_text(
    corpus: list[tuple[str, str, str]], corpus_texts: dict[str, EmailText]
) -> None:
    # Every corpus message has a Subject, so none is empty today; a body can legitimately be
    # empty (image-only or script-generated HTML spam), so allow at most 0.1% empty texts.
    empty = [message_id for message_id, result in corpus_texts.items() if not result.text]
    assert len(empty) <= len(corpus) // 1000, empty


def test_corpus_texts_contain_no_html_markup(
    corpus: list[tuple[str, str, str]], corpus_texts: dict[str, EmailText]
) -> None:
    labels = {message_id: label for message_id, label, _ in corpus}
    tagged = [mid for mid, result in corpus_texts.items() if HTML_TAG.search(result.text)]
    # The only exceptions allowed are ham posts that discuss HTML in prose (spam-filter token
    # lists, a CSS question quoting markup); spam must never leak markup.
    assert len(tagged) <= len(corpus) // 1000, tagged
    assert all(labels[mid] == "ham" for mid in tagged), tagged


def test_corpus_texts_contain_no_base64_blocks(corpus_texts: dict[str, EmailText]) -> None:
    leaked = {
        mid: match[0][:80]
        for mid, result in corpus_texts.items()
        if (match := BASE64_BLOCK.search(result.text))
    }
    assert not leaked


def test_corpus_texts_contain_no_own_received_headers(
    corpus: list[tuple[str, str, str]], corpus_texts: dict[str, EmailText]
) -> None:
    # Bodies may quote other messages' headers (bounces, spam reports), so the check is that
    # the message's own first Received line never survives.
    leaked = []
    for message_id, _, raw in corpus:
        received = RECEIVED.search(raw.partition("\n\n")[0])
        if received and received[0] in corpus_texts[message_id].text:
            leaked.append(message_id)
    assert not leaked


def test_corpus_as_bytes_never_raises(corpus: list[tuple[str, str, str]]) -> None:
    empty = [mid for mid, _, raw in corpus if not email_to_text(raw.encode()).text]
    assert len(empty) <= len(corpus) // 1000, empty
