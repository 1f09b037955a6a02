"""Letter messages: the MIME of a letter is built once, then personalised per recipient in microseconds.

Building a message with :class:`email.message.EmailMessage` costs about 1.8 ms of CPU, several times
the SMTP exchange itself. A letter goes to thousands of recipients with the same subject, sender and
bodies, so :meth:`LetterTemplate.render` does the expensive work once (header encoding and folding,
choosing each body's transfer encoding, pre-encoding every body line without a merge field) and
:meth:`LetterTemplate.personalize` only fills in what differs per recipient::

    template = LetterTemplate.render(
        subject="Our news",
        text_body="Hello {{ name }},\\n...\\nUnsubscribe: {{ unsubscribe_url }}\\n",
        html_body="<p>Hello {{ name }}</p>",
        from_address="news@example.com",
        from_name="Example News",
        message_domain="example.com",
        unsubscribe_url="https://example.com/unsubscribe/{token}",
    )
    data = template.personalize(
        email="ada@example.org", name="Ada", subscription_id=7, letter_id=42, unsubscribe_token="t0k"
    )

Per recipient, ``personalize`` writes:

- ``To``: the name and address; a non-ASCII name is RFC 2047 encoded, a long one folded.
- ``Message-ID``: ``<letter-42.sub-7@example.com>``, derived from the letter and the subscription
  only, so that a resend carries the same id and a receiver (or a reconciliation) can recognise it.
- ``Date``, ``List-Unsubscribe: <url>`` (the URL template filled in) and, fixed per letter,
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058) and ``Precedence: bulk``.
- The merge fields of the bodies: ``{{ name }}``, ``{{ email }}``, ``{{ unsubscribe_url }}``. The
  renderer only substitutes these names: no expressions, no attribute access, no code. Any other
  ``{{ ... }}`` is refused when the template is rendered, with the line it is on. Values are
  HTML-escaped in the HTML body.

How substitution respects the transfer encoding: a body is sent as quoted-printable (mostly ASCII
text) or base64 (mostly non-ASCII text), never as raw 8-bit data. Quoted-printable encodes each line
on its own (its soft line breaks never cross a hard one), so lines without a merge field are encoded
once at render time, and only a line holding a field is substituted and encoded again, with
``binascii.b2a_qp`` (C). Base64 has no line structure, so a base64 body is substituted whole and
encoded again (``binascii.b2a_base64``, also C). Either way the substituted values go through the
encoder: nothing is pasted raw into encoded data.

The result is what :class:`~email.message.EmailMessage` would give for the same recipient: the tests
parse both with ``BytesParser(policy=email.policy.default)`` and compare headers and decoded bodies.
One difference is deliberate: a non-ASCII name too long for one RFC 2047 encoded word is split into
several, and RFC 2047 decoders (mail clients, ``email.header.decode_header``) join them without a
space, whereas the ``email`` package's own address parser inserts one (and its folder splits words,
so ``EmailMessage`` itself does not round-trip such names). mailman follows the RFC.

Limits: addresses must be ASCII (no SMTPUTF8 yet); a display name is normalised with
:func:`normalize_display_name` (control characters and line breaks become spaces, runs of
whitespace collapse, at most 200 characters).
"""

from __future__ import annotations

import binascii
import hashlib
import html
import re
import time
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Final, Literal
from urllib.parse import quote, urlsplit

from mailman.services.errors import MailmanError

__all__ = [
    "MERGE_FIELDS",
    "LetterTemplate",
    "RecipientError",
    "TemplateError",
    "message_id",
    "normalize_display_name",
]

MERGE_FIELDS: Final = frozenset({"name", "email", "unsubscribe_url"})
"""The merge fields a body may use, written ``{{ name }}``."""

URL_FIELDS: Final = frozenset({"token", "subscription_id", "letter_id"})
"""The placeholders of the unsubscribe URL template, written ``{token}``."""

MAX_NAME_LENGTH: Final = 200

_CRLF: Final = b"\r\n"
_BRACES = re.compile(r"\{\{(.*?)\}\}")
_FIELD_NAME = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*")
_URL_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BARE_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
# An encoded word is at most 75 characters (RFC 2047 section 2): 12 of them are "=?utf-8?b?" and
# "?=", which leaves 60 base64 characters, 45 bytes of UTF-8.
_EW_BYTES: Final = 45
_HEADER_WIDTH: Final = 78
_BASE64_WIDTH: Final = 76


class TemplateError(MailmanError, ValueError):
    """A letter cannot be made into a message: ``field`` names the offending input."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class RecipientError(MailmanError, ValueError):
    """A recipient's data cannot go into a message: ``field`` names it (``"email"``...)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- pure helpers


def message_id(letter_id: int, subscription_id: int, domain: str) -> str:
    """The Message-ID of a letter's message to one subscription: ``<letter-42.sub-7@domain>``.

    The same on every attempt, so that a resend is recognisable.
    """
    _check_id(letter_id, "letter_id")
    _check_id(subscription_id, "subscription_id")
    return f"<letter-{letter_id}.sub-{subscription_id}@{domain}>"


def normalize_display_name(name: str | None) -> str:
    """The display name as it goes into ``To`` and ``{{ name }}``.

    Control characters, line and paragraph separators become spaces, runs of whitespace one space,
    and the result is stripped and cut to 200 characters: a name can never break a header line.
    """
    if not name:
        return ""
    if name.isascii() and name.isprintable():
        cleaned = name  # the common case: no control characters (the only ones of these in ASCII)
    else:
        cleaned = "".join(
            " " if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") else char for char in name
        )
    return " ".join(cleaned.split())[:MAX_NAME_LENGTH].rstrip()


# The Date header of "now", formatted once per second rather than once per recipient: (second, text).
_date_cache: tuple[int, str] = (-1, "")


def _date_now() -> str:
    global _date_cache
    second = int(time.time())
    cached_second, text = _date_cache
    if second != cached_second:
        text = format_datetime(datetime.fromtimestamp(second, UTC))
        _date_cache = (second, text)
    return text


def _check_id(value: int, field: str) -> None:
    if type(value) is not int or value < 0:
        raise RecipientError(f"expected {field} to be a non-negative int, got {value!r}", field=field)


def _check_address(address: str, field: str, error: type[TemplateError] | type[RecipientError]) -> None:
    local, at, domain = address.rpartition("@")
    if not (
        address.isascii()
        and at
        and len(address) <= 254
        and len(local) <= 64
        and _LOCAL_PART.fullmatch(local)
        and _DOMAIN.fullmatch(domain)
    ):
        raise error(
            f"expected {field} to be an ASCII address like user@example.com (dot-atom local part, "
            f"host name domain), got {address!r}",
            field=field,
        )


def _normalize_body(text: str) -> str:
    text = _LINE_BREAKS.sub("\n", text)
    return text if text.endswith("\n") else text + "\n"


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 base64 encoded words of at most 75 characters, none splitting a character."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _EW_BYTES:
            words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode('ascii')}?=")
            chunk.clear()
        chunk += encoded
    if chunk:
        words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode('ascii')}?=")
    return words


def _fold(name: str, tokens: list[str]) -> str:
    """Join ``tokens`` after ``name:`` with spaces, breaking lines (CRLF SP) before 78 characters."""
    line = f"{name}:"
    lines: list[str] = []
    for token in tokens:
        if len(line) + 1 + len(token) > _HEADER_WIDTH and len(line) > len(name) + 1:
            lines.append(line)
            line = ""
        line = f"{line} {token}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _to_header(display_name: str, address: str) -> bytes:
    """The ``To`` header line(s) for one recipient, folded, with an RFC 2047 name if need be."""
    angle = f"<{address}>"
    if not display_name:
        return f"To: {address}\r\n".encode("ascii")
    if display_name.isascii() and "=?" not in display_name:
        if _BARE_PHRASE.fullmatch(display_name):
            phrase = display_name
        else:
            phrase = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(phrase) + len(angle) + 5 <= _HEADER_WIDTH:
            return f"To: {phrase} {angle}\r\n".encode("ascii")
        # A fold replaces a space of the name with CRLF SP: unfolding gives the same name back.
        return _fold("To", [*phrase.split(" "), angle]).encode("ascii")
    return _fold("To", [*_encoded_words(display_name), angle]).encode("ascii")


def _encode_qp(lines: str) -> bytes:
    """Quoted-printable for ``lines`` (LF-separated, no final LF), with CRLF line ends and a final CRLF.

    Each line is encoded independently of the others (soft breaks never cross a hard one), which is
    what lets a body be encoded in runs of lines.
    """
    return binascii.b2a_qp(lines.encode("utf-8"), istext=True).replace(b"\n", _CRLF) + _CRLF


def _encode_base64(data: bytes) -> bytes:
    encoded = binascii.b2a_base64(data, newline=False)
    return b"".join(encoded[i : i + _BASE64_WIDTH] + _CRLF for i in range(0, len(encoded), _BASE64_WIDTH))


# ---------------------------------------------------------------- bodies

# A body line as a run of literal text and merge fields, a field being a 1-tuple of its name:
# "Hello {{ name }}," is ("Hello ", ("name",), ","). Values never pass through the parser, so a value
# that looks like a field stays literal.
_Segments = tuple[str | tuple[str], ...]


def _parse_line(line: str, part: str, number: int) -> _Segments:
    segments: list[str | tuple[str]] = []
    position = 0
    for match in _BRACES.finditer(line):
        field = _FIELD_NAME.fullmatch(match.group(1))
        if field is None or field.group(1) not in MERGE_FIELDS:
            allowed = ", ".join(f"{{{{ {name} }}}}" for name in sorted(MERGE_FIELDS))
            raise TemplateError(
                f"unknown merge field {match.group(0)!r} in the {part} body, line {number}: "
                f"expected one of {allowed} (no expressions or attributes)",
                field=f"{part}_body",
            )
        if match.start() > position:
            segments.append(line[position : match.start()])
        segments.append((field.group(1),))
        position = match.end()
    if position < len(line):
        segments.append(line[position:])
    return tuple(segments)


def _join_lines(lines: list[_Segments]) -> _Segments:
    joined: list[str | tuple[str]] = []
    for number, segments in enumerate(lines):
        if number:
            joined.append("\n")
        joined.extend(segments)
    return tuple(joined)


def _substitute(segments: _Segments, values: Mapping[str, str]) -> str:
    return "".join(segment if type(segment) is str else values[segment[0]] for segment in segments)


class _Body:
    """One text part: its part headers, and its content ready for per-recipient substitution."""

    __slots__ = ("_chunks", "_segments", "encoding", "headers")

    def __init__(self, text: str, *, subtype: Literal["plain", "html"]) -> None:
        part = "html" if subtype == "html" else "text"
        text = _normalize_body(text)
        lines = text[:-1].split("\n")
        parsed = [_parse_line(line, part, number) for number, line in enumerate(lines, start=1)]
        raw = text.encode("utf-8")
        # Quoted-printable keeps mostly-ASCII text readable; base64 wins only when it is clearly
        # shorter, as for Cyrillic or CJK text (QP spends 6 or 9 characters per letter there).
        qp_length = len(binascii.b2a_qp(raw, istext=True))
        base64_length = (len(raw) + 2) // 3 * 4
        self.encoding: Literal["quoted-printable", "base64"] = (
            "quoted-printable" if qp_length * 4 <= base64_length * 5 else "base64"
        )
        self.headers = (
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {self.encoding}\r\n".encode("ascii")
        )
        self._segments: _Segments = ()
        self._chunks: list[bytes | _Segments] = []
        if self.encoding == "base64":
            # No line structure: keep the whole text as segments, with the CRLF line breaks of
            # canonical text (RFC 2046 section 4.1.1) encoded inside.
            joined: list[str | tuple[str]] = []
            for segments in parsed:
                joined.extend(segments)
                joined.append("\r\n")
            self._segments = tuple(joined)
            return
        # Runs of lines without a field are encoded now; runs of lines with fields per recipient.
        static: list[str] = []
        dynamic: list[_Segments] = []
        for segments in parsed:
            if all(type(segment) is str for segment in segments):
                if dynamic:
                    self._chunks.append(_join_lines(dynamic))
                    dynamic = []
                static.append("".join(segments))  # type: ignore[arg-type]
            else:
                if static:
                    self._chunks.append(_encode_qp("\n".join(static)))
                    static = []
                dynamic.append(segments)
        if static:
            self._chunks.append(_encode_qp("\n".join(static)))
        if dynamic:
            self._chunks.append(_join_lines(dynamic))

    def encode(self, values: Mapping[str, str]) -> bytes:
        """The encoded content for one recipient (CRLF line endings, ending with CRLF)."""
        if self.encoding == "base64":
            return _encode_base64(_substitute(self._segments, values).encode("utf-8"))
        return b"".join(
            chunk if type(chunk) is bytes else _encode_qp(_substitute(chunk, values))  # type: ignore[arg-type]
            for chunk in self._chunks
        )


# ---------------------------------------------------------------- the template


class LetterTemplate:
    """A letter's message, built once, from which :meth:`personalize` makes each recipient's bytes.

    Create it with :meth:`render`; it is immutable and safe to share between recipient tasks.
    """

    __slots__ = ("_body", "_head", "_html", "_text", "_url_parts", "from_address", "message_domain")

    from_address: str
    """The sender's address: the natural envelope sender (``MAIL FROM``) for this letter."""
    message_domain: str
    """The right-hand side of every Message-ID."""
    _head: bytes
    _text: _Body
    _html: _Body | None
    # The body around the encoded parts: (before text, between text and html, after html).
    _body: tuple[bytes, bytes, bytes]
    _url_parts: tuple[str | tuple[str], ...]

    def __init__(self) -> None:
        raise TypeError("create a LetterTemplate with LetterTemplate.render(...)")

    @classmethod
    def render(
        cls,
        *,
        subject: str,
        text_body: str,
        html_body: str | None = None,
        from_address: str,
        from_name: str | None = None,
        reply_to: str | None = None,
        message_domain: str,
        unsubscribe_url: str,
    ) -> LetterTemplate:
        """Check a letter and build everything about its message that does not depend on the recipient.

        ``unsubscribe_url`` is an ``http(s)`` URL template with ``{token}`` (the recipient's
        unsubscribe token, percent-encoded) and optionally ``{subscription_id}`` and ``{letter_id}``;
        it becomes the ``List-Unsubscribe`` header and the ``{{ unsubscribe_url }}`` merge field.
        RFC 8058 one-click unsubscription requires ``https`` in production.

        Raises :class:`TemplateError` (a ``ValueError``) naming the field at fault.
        """
        self = object.__new__(cls)
        for field, value in (("subject", subject), ("from_name", from_name or "")):
            if "\r" in value or "\n" in value:
                raise TemplateError(f"expected {field} on one line, got {value!r}", field=field)
        if _BRACES.search(subject):
            raise TemplateError(
                f"merge fields are only supported in the bodies, got subject {subject!r}", field="subject"
            )
        _check_address(from_address, "from_address", TemplateError)
        if reply_to is not None:
            _check_address(reply_to, "reply_to", TemplateError)
        if not _DOMAIN.fullmatch(message_domain):
            raise TemplateError(
                f"expected message_domain to be a host name like example.com, got {message_domain!r}",
                field="message_domain",
            )
        self._url_parts = _parse_url_template(unsubscribe_url)
        self.from_address = from_address
        self.message_domain = message_domain

        # The email package encodes and folds the fixed headers once; its output is RFC-correct.
        scratch = EmailMessage(policy=SMTP)
        scratch["From"] = Address(display_name=normalize_display_name(from_name), addr_spec=from_address)
        if reply_to is not None:
            scratch["Reply-To"] = Address(addr_spec=reply_to)
        scratch["Subject"] = subject
        head = "".join(SMTP.fold(name, value) for name, value in scratch.items())
        head += (
            "MIME-Version: 1.0\r\nPrecedence: bulk\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        )
        self._head = head.encode("ascii")

        self._text = _Body(text_body, subtype="plain")
        self._html = None if html_body is None else _Body(html_body, subtype="html")
        if self._html is None:
            self._body = (self._text.headers + _CRLF, b"", b"")
        else:
            digest = hashlib.sha256(
                "\0".join((subject, text_body, html_body or "")).encode("utf-8", "surrogatepass")
            )
            # "=_" never occurs in quoted-printable or base64 output, so the boundary cannot either.
            boundary = f"=_mailman_{digest.hexdigest()[:32]}".encode("ascii")
            self._body = (
                b'Content-Type: multipart/alternative; boundary="'
                + boundary
                + b'"\r\n\r\n--'
                + boundary
                + _CRLF
                + self._text.headers
                + _CRLF,
                _CRLF + b"--" + boundary + _CRLF + self._html.headers + _CRLF,
                _CRLF + b"--" + boundary + b"--" + _CRLF,
            )
        return self

    def message_id(self, *, letter_id: int, subscription_id: int) -> str:
        """The Message-ID :meth:`personalize` gives this letter's message to ``subscription_id``."""
        return message_id(letter_id, subscription_id, self.message_domain)

    def unsubscribe_url(self, *, unsubscribe_token: str, subscription_id: int, letter_id: int) -> str:
        """The URL of ``List-Unsubscribe`` and ``{{ unsubscribe_url }}`` for one recipient."""
        if not unsubscribe_token:
            raise RecipientError("expected a non-empty unsubscribe_token", field="unsubscribe_token")
        # Tokens are usually hex or alphanumeric (the database's default is 32 hex digits): nothing
        # to percent-encode, and checking that is much cheaper than quote().
        plain = unsubscribe_token.isascii() and unsubscribe_token.isalnum()
        values = {
            "token": unsubscribe_token if plain else quote(unsubscribe_token, safe=""),
            "subscription_id": str(subscription_id),
            "letter_id": str(letter_id),
        }
        url = "".join(part if type(part) is str else values[part[0]] for part in self._url_parts)
        if len(url) > 900:
            raise RecipientError(
                f"the unsubscribe URL is {len(url)} characters long", field="unsubscribe_token"
            )
        return url

    def personalize(
        self,
        *,
        email: str,
        name: str | None,
        subscription_id: int,
        letter_id: int,
        unsubscribe_token: str,
        date: datetime | None = None,
    ) -> bytes:
        """The complete message for one recipient, as bytes with CRLF line endings, ready for DATA.

        ``date`` (timezone-aware) defaults to now. Raises :class:`RecipientError` (a ``ValueError``)
        for an address that is not ASCII or not a plain ``local@domain``.
        """
        _check_address(email, "email", RecipientError)
        msgid = message_id(letter_id, subscription_id, self.message_domain)
        url = self.unsubscribe_url(
            unsubscribe_token=unsubscribe_token, subscription_id=subscription_id, letter_id=letter_id
        )
        if date is None:
            date_header = _date_now()
        elif date.tzinfo is None:
            raise RecipientError(f"expected a timezone-aware date, got {date!r}", field="date")
        else:
            date_header = format_datetime(date)
        display_name = normalize_display_name(name)
        values = {"name": display_name, "email": email, "unsubscribe_url": url}
        opening, middle, closing = self._body
        parts = [
            self._head,
            _to_header(display_name, email),
            f"Date: {date_header}\r\nMessage-ID: {msgid}\r\nList-Unsubscribe: <{url}>\r\n".encode("ascii"),
            opening,
            self._text.encode(values),
        ]
        if self._html is not None:
            escaped = {key: html.escape(value, quote=True) for key, value in values.items()}
            parts += (middle, self._html.encode(escaped), closing)
        return b"".join(parts)


def _parse_url_template(template: str) -> tuple[str | tuple[str], ...]:
    def fail(why: str) -> TemplateError:
        return TemplateError(
            f"expected unsubscribe_url to be an http(s) URL template with {{token}}, such as "
            f"'https://example.com/unsubscribe/{{token}}'; {why}: {template!r}",
            field="unsubscribe_url",
        )

    if not template.isascii() or any(char.isspace() or char in '<>"' for char in template):
        raise fail("it must be ASCII without spaces, quotes or angle brackets")
    parts: list[str | tuple[str]] = []
    position = 0
    names = set()
    for match in _URL_PLACEHOLDER.finditer(template):
        if match.group(1) not in URL_FIELDS:
            raise fail(f"unknown placeholder {match.group(0)!r} (known: {sorted(URL_FIELDS)})")
        parts += (template[position : match.start()], (match.group(1),))
        names.add(match.group(1))
        position = match.end()
    parts.append(template[position:])
    if "token" not in names:
        raise fail("it has no {token}")
    probe = "".join(part if type(part) is str else "x" for part in parts)
    if "{" in probe or "}" in probe:
        raise fail("it has unbalanced braces")
    split = urlsplit(probe)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise fail("the scheme must be http or https, with a host")
    return tuple(part for part in parts if part != "")
