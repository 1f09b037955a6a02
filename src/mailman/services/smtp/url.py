"""Where the relay is and how to reach it: ``smtp://``, ``smtp+starttls://`` and ``smtps://`` URLs.

A pure parser, apart from the pool that uses it, so that reading the settings (``mailman.config``)
needs no SMTP machinery::

    >>> parse_smtp_url("smtp+starttls://mailman:secret@relay.example.com")
    SmtpUrl(host='relay.example.com', port=587, security=<Security.STARTTLS: 'starttls'>, username='mailman')
    >>> str(parse_smtp_url("smtps://relay.example.com"))
    'smtps://relay.example.com:465'

Errors name what is wrong and never echo the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final
from urllib.parse import unquote, urlsplit

from mailman.services.errors import MailmanError

__all__ = ["Security", "SmtpUrl", "SmtpUrlError", "parse_smtp_url"]


class SmtpUrlError(MailmanError, ValueError):
    """An SMTP URL cannot be used; the message says why and what a good one looks like."""


class Security(Enum):
    """How a connection is protected."""

    NONE = "none"
    """``smtp://``: plain text (a local relay)."""
    STARTTLS = "starttls"
    """``smtp+starttls://``: plain connection upgraded with STARTTLS, which the server must offer."""
    TLS = "tls"
    """``smtps://``: TLS from the first byte (implicit TLS, port 465)."""


_SCHEMES: Final = {
    "smtp": (Security.NONE, 25),
    "smtp+starttls": (Security.STARTTLS, 587),
    "smtps": (Security.TLS, 465),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpUrl:
    """Where and how to reach the relay, parsed from a URL by :func:`parse_smtp_url`."""

    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        scheme = {Security.NONE: "smtp", Security.STARTTLS: "smtp+starttls", Security.TLS: "smtps"}
        user = "" if self.username is None else f"{self.username}:***@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme[self.security]}://{user}{host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpUrl:
    """Parse ``smtp://[user[:password]@]host[:port]``; also ``smtp+starttls://`` and ``smtps://``.

    Default ports: 25, 587 and 465. User and password are percent-decoded (write ``@`` as ``%40``).
    Raises :class:`SmtpUrlError` (a ``ValueError``) for anything else, never echoing the password.
    """
    if not isinstance(url, str):
        raise TypeError(f"expected the SMTP URL as a str, got {type(url).__name__}")
    split = urlsplit(url.strip())
    shown = url if split.password is None else url.replace(f":{split.password}@", ":***@", 1)
    example = "such as smtp://relay:25, smtp+starttls://user:password@relay:587 or smtps://relay"

    def fail(why: str) -> SmtpUrlError:
        return SmtpUrlError(f"invalid SMTP URL {shown!r}: {why}; expected a URL {example}")

    if split.scheme not in _SCHEMES:
        raise fail(f"unknown scheme {split.scheme!r}")
    security, default_port = _SCHEMES[split.scheme]
    if not split.hostname:
        raise fail("no host")
    try:
        port = split.port
    except ValueError:
        raise fail("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise fail("the port must be a number from 1 to 65535")
    if split.path not in ("", "/") or split.query or split.fragment:
        raise fail("it takes no path, query or fragment")
    username = None if split.username is None else unquote(split.username)
    password = None if split.password is None else unquote(split.password)
    if password is not None and not username:
        raise fail("a password needs a user name")
    return SmtpUrl(
        host=split.hostname,
        port=default_port if port is None else port,
        security=security,
        username=username or None,
        password=password,
    )
