"""Turn raw RFC 822 e-mail messages into classifier-ready text.

Keeps the decoded Subject and the readable body parts; drops other headers and attachments.
"""

import binascii
import codecs
import email
import html
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from functools import lru_cache
from typing import NamedTuple


@dataclass(frozen=True)
class EmailText:
    """Classifier input extracted from one message."""

    text: str
    """``"subject\\n\\nbody"``; just the body if there is no subject, or just the subject."""
    replaced_chars: int
    """Characters of ``text`` that could not be decoded and became U+FFFD during our decoding."""
    dropped_attachments: int
    """Non-text parts (or parts marked as attachments) anywhere in the MIME tree."""


class _Body(NamedTuple):
    chunks: list[str]
    replaced: int
    dropped: int


_ONE_DROPPED = _Body([], 0, 1)

# Deeper nesting only happens in hostile input; it would otherwise risk RecursionError.
_MAX_DEPTH = 30

# Labels seen in real mail that Python does not know under that spelling.
_CHARSET_ALIASES = {
    "chinesebig5": "big5",
    "gb2312_charset": "gb2312",
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "x-sjis": "shift_jis",
    "x-euc-jp": "euc_jp",
    "x-gbk": "gbk",
}
# Mail labelled with the narrower charset routinely uses the wider one (as in the WHATWG
# Encoding Standard); ascii is treated like a missing label because it is so often wrong.
_SUPERSETS: dict[str, tuple[str, ...]] = {
    "ascii": (),
    "iso8859-1": ("cp1252", "latin-1"),
    "iso8859-9": ("cp1254", "iso8859-9"),
    "iso8859-11": ("cp874", "iso8859-11"),
    "tis-620": ("cp874", "tis-620"),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "big5": ("big5hkscs",),
    "euc_kr": ("cp949",),
    "shift_jis": ("cp932",),
}
# Python codecs that decode bytes to str but are not character sets.
_PSEUDO_CODECS = frozenset(
    {"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem"}
)
# Without a usable label, UTF-8 is tried strictly first because it almost never decodes
# non-UTF-8 text by accident; latin-1 last because it cannot fail.
_UNLABELLED = ("utf-8", "cp1252", "latin-1")

_CHARSET_TOKEN = re.compile(r"[a-z0-9._:+-]+")
_NON_ASCII_RUN = re.compile(r"([^\x00-\x7f]+)")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]+")
# Mailing-list software appends plain-text footers after base64 bodies; the encoded data is
# the leading run of whitespace-free lines.
_BASE64_LINES = re.compile(rb"\s*(?:[A-Za-z0-9+/]+=*[ \t]*(?:\r?\n|\Z))+")
_UU_BLOCK = re.compile(
    r"^begin[ \t]+[0-7]{3,4}[ \t]+\S[^\n]*\n(.*?)^end[ \t]*$", re.MULTILINE | re.DOTALL
)
# Inline PGP armour is cryptographic material, the counterpart of application/pgp-signature
# parts, so it is dropped like them; the cleartext it signs stays.
_PGP_ARMOUR = re.compile(
    r"^[> \t]*-----BEGIN PGP (?!SIGNED MESSAGE)([A-Z ]+)-----$.*?"
    r"^[> \t]*-----END PGP \1-----[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_PGP_SIGNED_MARKER = re.compile(
    r"^[> \t]*-----BEGIN PGP SIGNED MESSAGE-----[ \t]*\n(?:[> \t]*Hash:[^\n]*\n)?", re.MULTILINE
)
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")

# Browsers hide everything after an unclosed "<!--"; spam uses such openers as junk
# markup ('<!--#rotate>'), so an unclosed one is dropped only up to its ">" as a bogus tag.
_HTML_INVISIBLE = re.compile(
    r"<!--.*?-->|<(script|style)\b[^>]*>(?:.*?</\1\s*>|.*)", re.IGNORECASE | re.DOTALL
)
# A tag ends at ">" outside quotes; a "<" or the end of input also ends it, so that broken
# markup like '<font size=2<b>' cannot swallow the visible text that follows.
_TAG_REST = r"(?:[^<>\"']|\"[^\"<]*\"|'[^'<]*'|[\"'])*(?:>|(?=<)|\Z)"
_HTML_PARAGRAPH = re.compile(
    r"</?(?:p|h[1-6]|table|blockquote|pre|ul|ol|dl|hr)\b" + _TAG_REST, re.IGNORECASE
)
_HTML_LINE = re.compile(
    r"<(?:br|/?(?:div|li|dt|dd|tr|center|form|title|address|section|article|header|footer"
    r"|caption|fieldset|legend|body|html|head|option|select|textarea|frame|iframe|noscript))\b"
    + _TAG_REST,
    re.IGNORECASE,
)
_HTML_CELL = re.compile(r"</?(?:td|th)\b" + _TAG_REST, re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z]" + _TAG_REST + r"|<[!?][^>]*(?:>|\Z)")
# Spam often sends HTML labelled text/plain (or with no Content-Type at all) ...
_STARTS_AS_HTML = re.compile(
    r"\s*<(?:!doctype|!--|(?:html|head|body|meta|title|style|table|center|div|p|font|img|a|b|br)"
    r"[\s/>])",
    re.IGNORECASE,
)
# ... and people paste or forward whole HTML documents into plain-text mail; the closing tag
# is required so that prose merely mentioning "<html>" is left alone.
_EMBEDDED_HTML = re.compile(r"<(?:!doctype\s+html|html)\b.*?</html\s*>", re.IGNORECASE | re.DOTALL)
# A body that is really MIME content whose top-level headers were lost or cut short by a
# stray blank line: either the remaining headers (with a Content-Type) come first ...
_HEADER_LINE = r"[!-9;-~]+:[^\n]*\n(?:[ \t][^\n]*\n)*"
_STRAY_HEADERS = re.compile(
    rf"(?:\n|[ \t][^\n]*\n)*((?:{_HEADER_LINE})*?Content-Type:)", re.IGNORECASE
)
# ... or a boundary line followed by part headers.
_STRAY_BOUNDARY = re.compile(
    rf"^--([^\n\"]{{0,199}}[^\s\"])[ \t]*\n(?:{_HEADER_LINE})*?Content-(?:Type|Transfer-Encoding):",
    re.IGNORECASE | re.MULTILINE,
)

_BLANK_LINES = re.compile(r"\n\n\n+")


def email_to_text(raw: str | bytes) -> EmailText:
    """Extract the decoded Subject and readable body of a raw message; never raises."""
    as_bytes = isinstance(raw, bytes)
    replaced = 0
    if as_bytes:
        # latin-1 maps each byte to one character, so the original bytes of every header and
        # payload can be recovered exactly with .encode("latin-1") for our own decoding.
        source = raw.decode("latin-1")
    else:
        source, replaced = (raw, 0) if raw.isascii() else _LONE_SURROGATE.subn("\ufffd", raw)
    try:
        msg = email.message_from_string(source, policy=policy.compat32)
        subject, subject_replaced = _subject(msg, as_bytes)
        body = _walk(msg, as_bytes, 0)
    except Exception:
        # The email package raises a wide, undocumented range of exceptions on hostile
        # input; such a message is still worth classifying as plain text.
        if as_bytes:
            text, fallback_replaced = _decode(raw, _UNLABELLED)
        else:
            text, fallback_replaced = source, 0
        return EmailText(_normalise(text), replaced + fallback_replaced, 0)
    pieces = [subject, *body.chunks]
    text = _normalise("\n\n".join(piece for piece in pieces if piece and not piece.isspace()))
    return EmailText(text, replaced + subject_replaced + body.replaced, body.dropped)


def _walk(part: Message, as_bytes: bool, depth: int) -> _Body:
    if depth > _MAX_DEPTH or part.get_content_disposition() == "attachment":
        return _ONE_DROPPED
    maintype, subtype = _content_type(part)
    payload = part.get_payload()
    if isinstance(payload, list):
        children = [child for child in payload if isinstance(child, Message)]
        if maintype == "message" and subtype not in ("rfc822", "news", "global"):
            return _ONE_DROPPED
        if maintype == "multipart" and subtype == "alternative":
            return _alternative(children, as_bytes, depth + 1)
        return _merge([_walk(child, as_bytes, depth + 1) for child in children])
    if not isinstance(payload, str):
        return _ONE_DROPPED
    if maintype == "multipart" or "content-type" not in part:
        recovered = _recover_mime(payload)
        if recovered is not None:
            return _walk(recovered, as_bytes, depth + 1)
        # A multipart whose boundary never appears: the body is all the email package has.
        maintype, subtype = "text", "plain"
    if maintype != "text" or subtype == "rfc822-headers":
        return _ONE_DROPPED
    text, replaced = _payload_text(part, payload, as_bytes)
    # The substring tests skip whole-text regex scans for the vast majority of parts.
    uu_blocks = pgp_blocks = 0
    if "begin" in text:
        text, uu_blocks = _UU_BLOCK.subn("", text)
    if "-----BEGIN PGP" in text:
        text, pgp_blocks = _PGP_ARMOUR.subn("", text)
        text = _PGP_SIGNED_MARKER.sub("", text)
    if subtype == "html" or (subtype == "plain" and _STARTS_AS_HTML.match(text)):
        text = _html_to_text(text)
    elif subtype == "plain":
        text = _EMBEDDED_HTML.sub(lambda document: _html_to_text(document[0]), text)
    elif subtype in ("enriched", "richtext"):
        text = _HTML_TAG.sub("", text)
    # HTML conversion may have dropped some of the characters we replaced.
    return _Body([text], min(replaced, text.count("\ufffd")), uu_blocks + pgp_blocks)


def _recover_mime(payload: str) -> Message | None:
    """Re-parse a body that is really MIME content whose own headers were lost or broken."""
    headers = _STRAY_HEADERS.match(payload)
    if headers:
        return email.message_from_string(payload[headers.start(1) :], policy=policy.compat32)
    boundary = _STRAY_BOUNDARY.search(payload, 0, 16384)
    if boundary:
        header = f'Content-Type: multipart/mixed; boundary="{boundary[1]}"\n\n'
        return email.message_from_string(header + payload, policy=policy.compat32)
    return None


def _alternative(children: list[Message], as_bytes: bool, depth: int) -> _Body:
    """Keep one alternative: plain text if it has any, else HTML, else the last non-empty."""
    results = [(_content_type(child), _walk(child, as_bytes, depth)) for child in children]
    dropped = sum(body.dropped for _, body in results)
    readable = [(ctype, body) for ctype, body in results if _has_text(body)]
    for wanted in (("text", "plain"), ("text", "html")):
        for ctype, body in readable:
            if ctype == wanted:
                return _Body(body.chunks, body.replaced, dropped)
    if readable:
        body = readable[-1][1]
        return _Body(body.chunks, body.replaced, dropped)
    return _Body([], 0, dropped)


def _merge(bodies: list[_Body]) -> _Body:
    return _Body(
        [chunk for body in bodies for chunk in body.chunks],
        sum(body.replaced for body in bodies),
        sum(body.dropped for body in bodies),
    )


def _has_text(body: _Body) -> bool:
    return any(chunk and not chunk.isspace() for chunk in body.chunks)


def _content_type(part: Message) -> tuple[str, str]:
    # get_content_type() passes through junk such as 'text/plain charset=us-ascii'.
    maintype, _, subtype = part.get_content_type().partition("/")
    token = _CHARSET_TOKEN.match(subtype)
    return maintype, token[0] if token else ""


def _transfer_encoding(part: Message) -> str:
    token = _CHARSET_TOKEN.match(str(part.get("content-transfer-encoding", "")).strip().lower())
    return token[0] if token else ""


def _payload_text(part: Message, payload: str, as_bytes: bool) -> tuple[str, int]:
    """Undo the transfer encoding and charset of a leaf part's payload."""
    cte = _transfer_encoding(part)
    charsets = _charsets(part.get_content_charset())
    if as_bytes or payload.isascii():
        data = payload.encode("latin-1" if as_bytes else "ascii")
        return _decode(_undo_transfer_encoding(data, cte), charsets)
    if cte in ("base64", "x-uuencode", "uuencode", "x-uue", "uue"):
        # Text characters cannot be part of the encoded data.
        data = payload.encode("ascii", "ignore")
        return _decode(_undo_transfer_encoding(data, cte), charsets)
    # A str message whose body was already decoded (as in corpora shipped as JSON): the
    # non-ASCII characters are text already and only the ASCII runs around them still
    # carry quoted-printable escapes or 7-bit charset sequences.
    pieces = _NON_ASCII_RUN.split(payload)
    replaced = 0
    for i in range(0, len(pieces), 2):
        data = _undo_transfer_encoding(pieces[i].encode("ascii"), cte)
        pieces[i], piece_replaced = _decode(data, charsets)
        replaced += piece_replaced
    return "".join(pieces), replaced


def _undo_transfer_encoding(data: bytes, cte: str) -> bytes:
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    if cte == "base64":
        match = _BASE64_LINES.match(data)
        return _base64(match[0] if match else b"")
    if cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
        block = _UU_BLOCK.search(data.decode("ascii", "replace"))
        return _uudecode(block[1] if block else "")
    return data


def _base64(data: bytes) -> bytes:
    """Decode base64 leniently: ignore stray characters and fix missing padding."""
    data = _NOT_BASE64.sub(b"", data)
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data
    try:
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        return b""


def _uudecode(block: str) -> bytes:
    out = []
    for line in block.splitlines():
        if not line:
            continue
        # Trust the length character: some encoders pad lines with extra garbage.
        nchars = (((ord(line[0]) - 32) & 63) * 4 + 5) // 3
        try:
            out.append(binascii.a2b_uu(line[:nchars]))
        except binascii.Error:
            continue
    return b"".join(out)


@lru_cache(maxsize=512)
def _charsets(label: str | None) -> tuple[str, ...]:
    """Codecs to try, in order, for a MIME charset label (the last one with replacement)."""
    token = _CHARSET_TOKEN.search(label.lower()) if label else None
    if token is None:
        return _UNLABELLED
    name = _CHARSET_ALIASES.get(token[0], token[0])
    try:
        name = codecs.lookup(name).name
        # Rejects bytes-to-bytes codecs such as base64 or zlib (b"" would skip the check).
        b"\0\0\0\0".decode(name)
    except LookupError:
        return _UNLABELLED
    except UnicodeError:
        pass
    if name in _PSEUDO_CODECS:
        return _UNLABELLED
    return _SUPERSETS.get(name, (name,)) or _UNLABELLED


def _decode(data: bytes, charsets: tuple[str, ...]) -> tuple[str, int]:
    """Decode with the first codec that fits, else the last one, counting U+FFFD we add."""
    for name in charsets:
        try:
            return data.decode(name), 0
        except UnicodeError:
            continue
    last = charsets[-1]
    text = data.decode(last, "replace")
    # 'replace' and 'ignore' see the same error spans, so the length difference is exactly
    # the number of replacement characters introduced (genuine U+FFFD in the data cancel out).
    return text, len(text) - len(data.decode(last, "ignore"))


def _subject(msg: Message, as_bytes: bool) -> tuple[str, int]:
    value = msg.get("subject")
    if not isinstance(value, str):
        return "", 0
    value = value.replace("\r", "").replace("\n", "")
    # Plain runs stay str; encoded words become (charset label, bytes).
    pieces: list[str | tuple[str, bytes]] = []
    pos = 0
    for word in _ENCODED_WORD.finditer(value):
        between = value[pos : word.start()]
        pos = word.end()
        # RFC 2047: whitespace between adjacent encoded words is not part of the text.
        if between and not (pieces and isinstance(pieces[-1], tuple) and between.isspace()):
            pieces.append(between)
        label = word[1].partition("*")[0].lower()
        encoded = word[3].encode("ascii", "ignore")
        data = _base64(encoded) if word[2] in "bB" else binascii.a2b_qp(encoded, header=True)
        last = pieces[-1] if pieces else None
        # Multi-byte characters may be split across words, so same-charset words are joined
        # as bytes before decoding.
        if isinstance(last, tuple) and last[0] == label:
            pieces[-1] = (label, last[1] + data)
        else:
            pieces.append((label, data))
    pieces.append(value[pos:])
    texts: list[str] = []
    replaced = 0
    for piece in pieces:
        if isinstance(piece, tuple):
            text, n = _decode(piece[1], _charsets(piece[0]))
        elif as_bytes and not piece.isascii():
            # Unencoded 8-bit subjects are nearly always in the charset of the body.
            text, n = _decode(piece.encode("latin-1"), _charsets(_first_charset(msg)))
        else:
            text, n = piece, 0
        texts.append(text)
        replaced += n
    return "".join(texts), replaced


def _first_charset(msg: Message) -> str | None:
    return next((c for part in msg.walk() if (c := part.get_content_charset())), None)


def _html_to_text(markup: str) -> str:
    markup = _HTML_INVISIBLE.sub("", markup)
    # Source line breaks are not rendered; only the block elements below start new lines.
    markup = " ".join(markup.split())
    markup = _HTML_PARAGRAPH.sub("\n\n", markup)
    markup = _HTML_LINE.sub("\n", markup)
    markup = _HTML_CELL.sub(" ", markup)
    return html.unescape(_HTML_TAG.sub("", markup))


def _normalise(text: str) -> str:
    # str.split() collapses every Unicode space (tabs, NBSP, ...) in C, far faster than re.
    text = "\n".join([" ".join(line.split()) for line in text.splitlines()])
    return _BLANK_LINES.sub("\n\n", text).strip()
