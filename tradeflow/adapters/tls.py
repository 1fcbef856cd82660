"""What the NATS and Redis clients share for a secured connection: the TLS context built
from this process's certificate files, and URLs fit to be shown.

Credentials travel in the brokers' URLs (``tls://executor:PASSWORD@nats:4222``,
``rediss://executor:PASSWORD@redis:6379/0``), so a URL is never logged or put in an error
as it is: :func:`redact_url` masks its password first.
"""

from __future__ import annotations

import re
import ssl
from typing import Final

from tradeflow.domain.errors import ConfigurationError, describe

__all__ = ["client_ssl_context", "redact_url"]

_USERINFO: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s,]*)@")
"""``scheme://userinfo@``; greedy, so a password with an unencoded ``@`` is masked whole."""
_MASK: Final = "***"


def client_ssl_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A client context that verifies the server against the CA file ``ca`` (and its
    host name) and presents the certificate ``cert`` with its key ``key`` (PEM files), for
    servers that ask for a client certificate. A file that cannot be read is a
    ``ConfigurationError`` naming the ``TRADEFLOW_TLS_*`` setting."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"TRADEFLOW_TLS_CA: expected a readable PEM CA file, found {ca!r} ({describe(exc)})"
        ) from None
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            "TRADEFLOW_TLS_CERT/TRADEFLOW_TLS_KEY: expected a readable PEM certificate and "
            f"its key, found {cert!r} and {key!r} ({describe(exc)})"
        ) from None
    return context


def redact_url(url: str) -> str:
    """``url`` with every password masked: ``tls://executor:s3cret@nats:4222`` ->
    ``tls://executor:***@nats:4222``. Userinfo without a colon is a token (NATS takes
    ``nats://TOKEN@host``), masked whole. Works on a list of URLs and on malformed ones."""

    def mask(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{_MASK}@" if colon else f"{match['scheme']}{_MASK}@"

    return _USERINFO.sub(mask, url)
