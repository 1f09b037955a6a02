"""Letter messages: rendering once, personalising per recipient, and equivalence with EmailMessage.

The reference for every comparison is a message built wholly by ``email.message.EmailMessage`` for
the same recipient (:func:`reference`). Both are parsed with ``BytesParser(policy=default)`` and
compared header by header (decoded values) and body by body (decoded content).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, default
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailman.services.smtp.message import (
    LetterTemplate,
    RecipientError,
    TemplateError,
    message_id,
    normalize_display_name,
)

DATE = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
URL = "https://news.example.com/unsubscribe/{token}?s={subscription_id}&l={letter_id}"
TEXT = "Hello {{ name }},\n\nThis week's news.\nYour address: {{email}}\nLeave: {{ unsubscribe_url }}\n"
HTML = '<p>Hello {{ name }},</p>\n<p>This week\'s news.</p>\n<a href="{{ unsubscribe_url }}">Leave</a>\n'
LETTER: dict[str, Any] = {
    "subject": "This week's news",
    "text_body": TEXT,
    "html_body": HTML,
    "from_address": "news@example.com",
    "from_name": "Example News",
    "reply_to": "editor@example.com",
    "message_domain": "example.com",
    "unsubscribe_url": URL,
}
RECIPIENT: dict[str, Any] = {
    "email": "ada@example.org",
    "name": "Ada Lovelace",
    "subscription_id": 7,
    "letter_id": 42,
    "unsubscribe_token": "tok-123",
}
FIELD = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render(**changes: Any) -> LetterTemplate:
    return LetterTemplate.render(**{**LETTER, **changes})


def personalize(template: LetterTemplate, **changes: Any) -> bytes:
    return template.personalize(**{**RECIPIENT, **changes}, date=DATE)


def reference(
    letter: dict[str, Any], recipient: dict[str, Any], template: LetterTemplate | None = None
) -> bytes:
    """The slow path: the same message built wholly by EmailMessage (``template`` only fills the URL)."""
    letter, recipient = {**LETTER, **letter}, {**RECIPIENT, **recipient}
    template = template or LetterTemplate.render(**letter)
    url = template.unsubscribe_url(
        unsubscribe_token=recipient["unsubscribe_token"],
        subscription_id=recipient["subscription_id"],
        letter_id=recipient["letter_id"],
    )
    name = normalize_display_name(recipient["name"])
    values = {"name": name, "email": recipient["email"], "unsubscribe_url": url}
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(normalize_display_name(letter["from_name"]), addr_spec=letter["from_address"])
    if letter["reply_to"] is not None:
        msg["Reply-To"] = Address(addr_spec=letter["reply_to"])
    msg["Subject"] = letter["subject"]
    msg["To"] = Address(name, addr_spec=recipient["email"])
    msg["Date"] = format_datetime(DATE)
    msg["Message-ID"] = f"<letter-{recipient['letter_id']}.sub-{recipient['subscription_id']}@example.com>"
    msg["List-Unsubscribe"] = f"<{url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Precedence"] = "bulk"
    msg.set_content(FIELD.sub(lambda m: values[m.group(1)], letter["text_body"]))
    if letter["html_body"] is not None:
        escaped = {key: _html_escape(value) for key, value in values.items()}
        msg.add_alternative(FIELD.sub(lambda m: escaped[m.group(1)], letter["html_body"]), subtype="html")
    return msg.as_bytes()


def _html_escape(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def summary(raw: bytes, *, to: bool = True) -> dict[str, Any]:
    """What a reader sees: decoded headers (transfer details aside), content types, decoded bodies."""
    message = parse(raw)
    skip = {"content-type", "content-transfer-encoding"} | (set() if to else {"to"})
    headers = sorted(
        (name.lower(), str(value)) for name, value in message.items() if name.lower() not in skip
    )
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    return {
        "headers": headers,
        "type": message.get_content_type(),
        "text": text.get_content(),
        "text_charset": text.get_content_charset(),
        "html": None if html is None else html.get_content(),
        "html_type": None if html is None else (html.get_content_type(), html.get_content_charset()),
        "defects": [part.defects for part in message.walk()],
    }


def assert_same_as_reference(letter: dict[str, Any], recipient: dict[str, Any]) -> None:
    fast = personalize(render(**letter), **recipient)
    assert summary(fast) == summary(reference(letter, recipient))


def assert_wire_safe(raw: bytes) -> None:
    """7-bit, CRLF only, no line over 998 octets (RFC 5322), headers folded."""
    assert raw.isascii()
    bare = raw.replace(b"\r\n", b"")
    assert b"\n" not in bare
    assert b"\r" not in bare
    lines = raw.split(b"\r\n")
    assert max(map(len, lines)) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert all(len(line) <= 998 for line in head)


# ---------------------------------------------------------------- rendering


class TestRender:
    def test_cannot_be_constructed_directly(self) -> None:
        """Templates come from render(), which checks the letter."""
        with pytest.raises(TypeError, match="render"):
            LetterTemplate()

    @pytest.mark.parametrize(
        "body",
        [
            "Hi {{ nam }}",
            "Hi {{ name.upper }}",
            "Hi {{ name|upper }}",
            "{{ __class__ }}",
            "{{ name() }}",
            "{{}}",
            "{{{ name }}}",
        ],
    )
    def test_unknown_or_unsafe_fields_are_refused(self, body: str) -> None:
        """Only the three known names are fields: no expressions, attributes, filters or calls."""
        with pytest.raises(TemplateError, match="unknown merge field") as caught:
            render(text_body=f"first line\n{body}\n")
        assert "line 2" in str(caught.value)
        assert caught.value.field == "text_body"

    def test_html_fields_are_checked_too(self) -> None:
        """The HTML body is checked like the text body."""
        with pytest.raises(TemplateError, match="html body, line 1"):
            render(html_body="<p>{{ secret }}</p>")

    def test_field_names_allow_spaces_or_none(self) -> None:
        """``{{name}}`` and ``{{  name  }}`` are the same field."""
        template = render(text_body="{{name}}/{{  name  }}", html_body=None)
        assert "Ada Lovelace/Ada Lovelace" in parse(personalize(template)).get_content()

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"subject": "Hello {{ name }}"}, "subject"),
            ({"subject": "two\nlines"}, "subject"),
            ({"from_name": "Evil\r\nBcc: x@y.z"}, "from_name"),
            ({"from_address": "not an address"}, "from_address"),
            ({"from_address": "né@example.com"}, "from_address"),
            ({"reply_to": "a@@b"}, "reply_to"),
            ({"message_domain": "exa mple.com"}, "message_domain"),
            ({"message_domain": "-bad.example"}, "message_domain"),
            ({"unsubscribe_url": "https://example.com/unsubscribe"}, "unsubscribe_url"),
            ({"unsubscribe_url": "https://example.com/{token}/{secret}"}, "unsubscribe_url"),
            ({"unsubscribe_url": "mailto:leave@example.com?subject={token}"}, "unsubscribe_url"),
            ({"unsubscribe_url": "https://example.com/{token} x"}, "unsubscribe_url"),
            ({"unsubscribe_url": "https://example.com/{token}/{"}, "unsubscribe_url"),
            ({"unsubscribe_url": "https:///{token}"}, "unsubscribe_url"),
        ],
    )
    def test_bad_letters_are_refused_naming_the_field(self, changes: dict[str, str], field: str) -> None:
        """Every invalid input raises a TemplateError (a ValueError) that names it."""
        with pytest.raises(TemplateError) as caught:
            render(**changes)
        assert caught.value.field == field
        assert isinstance(caught.value, ValueError)

    def test_text_only_is_a_single_part(self) -> None:
        """Without an HTML body the message is text/plain, not multipart."""
        message = parse(personalize(render(html_body=None)))
        assert (message.get_content_type(), message.is_multipart()) == ("text/plain", False)

    def test_text_and_html_are_alternatives(self) -> None:
        """With both bodies the message is multipart/alternative, text first."""
        message = parse(personalize(render()))
        assert message.get_content_type() == "multipart/alternative"
        assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]

    @pytest.mark.parametrize(
        ("body", "encoding"),
        [
            ("Plain English news {{ name }}.\n" * 5, "quoted-printable"),
            ("Café crème à la française, {{ name }}.\n" * 5, "quoted-printable"),
            ("Новости недели для вас, {{ name }}.\n" * 5, "base64"),
            ("今週のニュースをお届けします {{ name }}\n" * 5, "base64"),
        ],
    )
    def test_transfer_encoding_follows_the_text(self, body: str, encoding: str) -> None:
        """Mostly ASCII text goes quoted-printable; mostly non-ASCII text, base64."""
        message = parse(personalize(render(text_body=body, html_body=None)))
        assert message["Content-Transfer-Encoding"] == encoding

    def test_rendering_is_deterministic(self) -> None:
        """The same letter renders to the same bytes (the multipart boundary included)."""
        assert personalize(render()) == personalize(render())


# ---------------------------------------------------------------- personalising


class TestPersonalize:
    def test_message_id_is_derived_from_letter_and_subscription(self) -> None:
        """Message-ID is <letter-L.sub-S@domain>, the same on every attempt."""
        template = render()
        first = parse(personalize(template))["Message-ID"]
        again = parse(template.personalize(**RECIPIENT, date=datetime(2030, 1, 1, tzinfo=UTC)))["Message-ID"]
        assert first == again == "<letter-42.sub-7@example.com>"
        assert template.message_id(letter_id=42, subscription_id=7) == first
        assert message_id(42, 7, "example.com") == first

    def test_message_id_differs_per_subscription(self) -> None:
        """Two subscriptions never share a Message-ID."""
        template = render()
        ids = {parse(personalize(template, subscription_id=n))["Message-ID"] for n in range(3)}
        assert len(ids) == 3

    def test_list_unsubscribe_headers(self) -> None:
        """RFC 8058: List-Unsubscribe with the recipient's URL, List-Unsubscribe-Post one-click; bulk."""
        message = parse(personalize(render()))
        assert message["List-Unsubscribe"] == "<https://news.example.com/unsubscribe/tok-123?s=7&l=42>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Precedence"] == "bulk"

    def test_token_is_percent_encoded(self) -> None:
        """A token with URL specials cannot break out of its place in the URL."""
        message = parse(personalize(render(), unsubscribe_token="a b/c?d&e>"))
        assert (
            message["List-Unsubscribe"]
            == "<https://news.example.com/unsubscribe/a%20b%2Fc%3Fd%26e%3E?s=7&l=42>"
        )

    def test_fields_in_the_text_body(self) -> None:
        """Name, address and unsubscribe URL are substituted as they are in the text body."""
        text = parse(personalize(render(html_body=None))).get_content()
        assert "Hello Ada Lovelace," in text
        assert "Your address: ada@example.org" in text
        assert "Leave: https://news.example.com/unsubscribe/tok-123?s=7&l=42" in text

    def test_values_are_html_escaped_in_html(self) -> None:
        """In the HTML body a value cannot inject markup; in the text body it stays as typed."""
        message = parse(personalize(render(), name='<script>alert("x")</script> & Co'))
        html = message.get_body(("html",))
        text = message.get_body(("plain",))
        assert html is not None
        assert text is not None
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in html.get_content()
        assert "<script>" not in html.get_content()
        assert '<script>alert("x")</script> & Co' in text.get_content()
        assert 'href="https://news.example.com/unsubscribe/tok-123?s=7&amp;l=42"' in html.get_content()

    def test_values_are_not_rendered_again(self) -> None:
        """A name that looks like a field stays literal: substitution happens once."""
        text = parse(personalize(render(html_body=None), name="{{ email }}")).get_content()
        assert "Hello {{ email }}," in text

    def test_non_ascii_name_is_rfc2047_encoded(self) -> None:
        """A non-ASCII name goes out as encoded words and comes back intact."""
        raw = personalize(render(), name="Zoë Ångström")
        to_line = next(line for line in raw.split(b"\r\n") if line.startswith(b"To:"))
        assert b"=?utf-8?b?" in to_line
        assert parse(raw)["To"].addresses[0].display_name == "Zoë Ångström"

    def test_names_cannot_inject_headers(self) -> None:
        """Line breaks in a name become spaces: no header can be smuggled in."""
        message = parse(personalize(render(), name="Ada\r\nBcc: all@example.com"))
        assert message["Bcc"] is None
        assert message["To"].addresses[0].display_name == "Ada Bcc: all@example.com"

    def test_a_name_that_looks_encoded_stays_as_typed(self) -> None:
        """A name written like an encoded word is itself encoded, so readers show it as typed.

        (EmailMessage writes it raw, and its own parser then decodes it to "not encoded".)
        """
        raw = personalize(render(), name="=?utf-8?q?not_encoded?=")
        assert parse(raw)["To"].addresses[0].display_name == "=?utf-8?q?not_encoded?="

    def test_no_name(self) -> None:
        """Without a name, To is the bare address."""
        assert parse(personalize(render(), name=None))["To"] == "ada@example.org"

    @pytest.mark.parametrize("address", ["jöhn@example.org", "a b@example.org", "a@b@c", "<a@b.c>", ""])
    def test_bad_addresses_are_refused(self, address: str) -> None:
        """An address that cannot be sent without SMTPUTF8 or quoting raises RecipientError."""
        with pytest.raises(RecipientError) as caught:
            personalize(render(), email=address)
        assert caught.value.field == "email"

    def test_naive_date_is_refused(self) -> None:
        """A date without a timezone would be ambiguous."""
        with pytest.raises(RecipientError, match="timezone"):
            render().personalize(**RECIPIENT, date=datetime(2025, 1, 1))

    def test_date_defaults_to_now(self) -> None:
        """Without a date, the message is dated now."""
        raw = render().personalize(**RECIPIENT)
        sent = parse(raw)["Date"].datetime
        assert abs((datetime.now(UTC) - sent).total_seconds()) < 60

    @pytest.mark.parametrize("field", ["subscription_id", "letter_id"])
    @pytest.mark.parametrize("value", [-1, "7", 1.5, True])
    def test_ids_must_be_non_negative_ints(self, field: str, value: object) -> None:
        """Ids go into the Message-ID: they must be plain non-negative integers."""
        with pytest.raises(RecipientError, match=field):
            personalize(render(), **{field: value})

    def test_output_is_wire_safe(self) -> None:
        """7-bit, CRLF, short lines even for a long line of non-ASCII text and a long name."""
        raw = personalize(
            render(text_body="ü" * 3000 + " {{ name }}\n" + "x" * 5000 + "\n", html_body="<p>" + "é" * 4000),
            name="Ørjan " * 30,
        )
        assert_wire_safe(raw)


# ---------------------------------------------------------------- equivalence with EmailMessage


class TestSameAsEmailMessage:
    @pytest.mark.parametrize(
        ("letter", "recipient"),
        [
            ({}, {}),
            ({"html_body": None}, {}),
            ({"reply_to": None, "from_name": None}, {"name": None}),
            ({"subject": "Ünïcödé news — 週刊ニュース 🎉"}, {"name": "Zoë Ångström"}),
            ({"from_name": "Équipe Ñews 📰"}, {"name": 'O\'Brien, "Bob" (the builder)'}),
            ({"subject": "A very long subject line " * 12}, {"name": "Jean-Luc Picard"}),
            ({"text_body": "x" * 2000 + " {{ name }} " + "y" * 1500 + "\n"}, {}),
            ({"text_body": "Ça va, {{ name }} ? " * 200 + "\n", "html_body": "<p>" + "ä" * 1200}, {}),
            ({"text_body": "Новости недели, {{ name }}!\n" * 30}, {"name": "Фёдор Достоевский"}),
            ({"text_body": "trailing spaces   \n\ttabs\t\n.leading dot\nFrom here\n= sign =3D\n"}, {}),
            ({"text_body": "no final newline {{ name }}"}, {}),
            ({"text_body": "windows\r\nline\r\nendings {{ name }}\r\n"}, {}),
            ({}, {"name": "A very long plain ASCII name that needs folding to fit the header width"}),
            ({}, {"email": "first.last+tag@sub.domain.example.co.uk"}),
        ],
    )
    def test_examples(self, letter: dict[str, Any], recipient: dict[str, Any]) -> None:
        """Headers and bodies, decoded, are those of the message EmailMessage builds."""
        assert_same_as_reference(letter, recipient)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.text(max_size=45), email=st.emails())
    @example(name="", email="a@b.co")
    @example(name="\x00\x7f\u2028\u0085", email="a@b.co")
    @example(name=" \t spaced \t out ", email="a@b.co")
    def test_generated_recipients(self, name: str, email: str) -> None:
        """For generated names and addresses the fast path equals EmailMessage, To included.

        Names are up to 45 characters here: longer non-ASCII names need several encoded words,
        which the email package's own parser does not join as RFC 2047 says (see below).
        """
        recipient = {"name": name, "email": email}
        fast = personalize(render(), **recipient)
        assert_wire_safe(fast)
        if len(normalize_display_name(name).encode("utf-8")) <= 45 or normalize_display_name(name).isascii():
            assert summary(fast) == summary(reference({}, recipient))
        else:
            assert summary(fast, to=False) == summary(reference({}, recipient), to=False)
        assert parse(fast)["To"].addresses[0].addr_spec == email

    @settings(max_examples=200, deadline=None)
    @given(name=st.text(min_size=1, max_size=300))
    def test_any_name_decodes_per_rfc_2047(self, name: str) -> None:
        """Any name, however long, decodes back (by RFC 2047 rules) to the normalised name."""
        fast = personalize(render(), name=name)
        assert_wire_safe(fast)
        assert rfc2047_display_name(fast) == normalize_display_name(name)

    @settings(max_examples=100, deadline=None)
    @given(
        text=st.text(st.characters(exclude_categories=("Cs",)), max_size=400),
        html=st.text(max_size=400),
    )
    def test_generated_bodies(self, text: str, html: str) -> None:
        """Arbitrary body text (control characters, long lines, any script) survives encoding."""
        text = text.replace("{{", "{ {")  # merge fields are tested above; here the text is literal
        html = html.replace("{{", "{ {")
        letter = {"text_body": text + "\n{{ name }}", "html_body": html}
        fast = personalize(render(**letter))
        assert_wire_safe(fast)
        assert summary(fast) == summary(reference(letter, {}))


def rfc2047_display_name(raw: bytes) -> str:
    """The To display name as an RFC 2047 decoder (email.header) reads it."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    value = re.search(r"^To: (.*?)\r\n(?! )", head + "\r\n", re.M | re.S)
    assert value is not None
    unfolded = value.group(1).replace("\r\n", "")
    phrase = unfolded.rsplit(" <", 1)[0] if unfolded.endswith(">") else ""
    if phrase.startswith("=?"):
        return str(make_header(decode_header(phrase)))
    if phrase.startswith('"'):
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return phrase


class TestRfc2047Folding:
    def test_long_non_ascii_name_is_split_into_short_encoded_words(self) -> None:
        """Each encoded word is at most 75 characters and each header line at most 78."""
        raw = personalize(render(), name="Ölçü Şükrü Çağlayan-Üstündağ " * 4)
        head = raw.split(b"\r\n\r\n")[0].decode("ascii")
        to = re.search(r"^To: .*?\r\n(?! )", head + "\r\n", re.M | re.S)
        assert to is not None
        assert all(len(word) <= 75 for word in re.findall(r"=\?utf-8\?b\?[^?]*\?=", to.group(0)))
        assert all(len(line) <= 78 for line in to.group(0).split("\r\n"))
        assert rfc2047_display_name(raw) == normalize_display_name("Ölçü Şükrü Çağlayan-Üstündağ " * 4)


class TestNormalizeDisplayName:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            (None, ""),
            ("", ""),
            ("  Ada   Lovelace ", "Ada Lovelace"),
            ("Ada\r\nLovelace", "Ada Lovelace"),
            ("Ada\x00\x1b[31mLovelace", "Ada [31mLovelace"),
            ("a\u2028b\u2029c", "a b c"),
            ("x" * 300, "x" * 200),
        ],
    )
    def test_cleans(self, name: str | None, expected: str) -> None:
        """Control characters and separators become spaces; whitespace collapses; length is capped."""
        assert normalize_display_name(name) == expected
