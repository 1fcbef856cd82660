"""What an ``api_call`` may send out of the process, and where to: pure rules.

- **Addresses** (:func:`refusal`): loopback, private, link-local, cloud metadata,
  unspecified, multicast, reserved and carrier-grade NAT addresses (and IPv6 addresses
  embedding one of those: IPv4-mapped, 6to4, NAT64) are refused unless the host is in
  the allow-list (:class:`AllowList`). A host written as a number in any of the legacy
  forms resolvers accept (``2130706433``, ``0x7f000001``, ``127.1``, ``0177.0.0.1``) is
  read as the address it stands for (:func:`literal_address`).
- **Secrets**: a credential is given by reference, ``{"secret": "NAME"}``
  (:func:`is_secret_reference`, names matching :data:`SECRET_NAME`), never literally.
  :func:`credential_name` says which header and query parameter names carry
  credentials; :func:`credential_shape` recognises values that look like one whatever
  their name, :func:`path_credential` a credential in a URL's path. All are heuristics,
  deliberately simple (see each). A secret may only be sent to the hosts it is bound
  to (:class:`SecretHosts`, ``TRADEFLOW_SECRET_HOSTS``).
- **Headers** (:func:`forbidden_header`): a request may not set those that steer the
  connection or its routing (``Host``, ``Transfer-Encoding``, ``X-Forwarded-*``...).
- **Redaction**: errors and logs show URLs without credentials or query string
  (:func:`redacted_url`) and texts without the secrets a request carried, in their
  plain, URL-encoded and JSON-escaped forms (:func:`redacted`, :func:`masked`,
  :func:`masked_json`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Final, TypeGuard
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from tradeflow.domain.errors import ConfigurationError

__all__ = [
    "METADATA_NAMES",
    "SECRET_NAME",
    "AllowList",
    "IPAddress",
    "SecretHosts",
    "credential_name",
    "credential_shape",
    "forbidden_header",
    "is_secret_reference",
    "literal_address",
    "masked",
    "masked_json",
    "path_credential",
    "redacted",
    "redacted_url",
    "refusal",
    "secret_name_for",
]

IPAddress = IPv4Address | IPv6Address

METADATA_NAMES: Final = frozenset({"metadata.google.internal", "metadata.goog"})
"""Host names of cloud metadata services refused by name, whatever they resolve to."""

_METADATA_ADDRESSES: Final = frozenset(
    ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
"""AWS/GCP/Azure (IPv4), AWS (IPv6) and Alibaba Cloud metadata endpoints."""

_SHARED: Final = IPv4Network("100.64.0.0/10")
_NAT64: Final = IPv6Network("64:ff9b::/96")


def refusal(address: IPAddress) -> str | None:
    """Why the egress policy refuses ``address`` (e.g. ``"loopback address"``), or
    ``None`` for a public address.

    An IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
    ``2002::/16``, NAT64 ``64:ff9b::/96``) is judged by the IPv4 address it reaches.
    Anything the ``ipaddress`` module does not call global is refused."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = refusal(embedded)
        return None if reason is None else f"{reason} (embeds {embedded})"
    return next((reason for reason, applies in _RULES if applies(address)), None)


_RULES: Final[tuple[tuple[str, Callable[[Any], bool]], ...]] = (
    ("cloud metadata address", lambda a: a in _METADATA_ADDRESSES),
    ("loopback address", lambda a: a.is_loopback),
    ("unspecified address", lambda a: a.is_unspecified),
    ("link-local address", lambda a: a.is_link_local),
    ("multicast address", lambda a: a.is_multicast),
    ("reserved address", lambda a: a.is_reserved),
    ("carrier-grade NAT address", lambda a: isinstance(a, IPv4Address) and a in _SHARED),
    ("private address", lambda a: a.is_private),
    ("site-local address", lambda a: isinstance(a, IPv6Address) and a.is_site_local),
    ("non-global address", lambda a: not a.is_global),
)
"""``(reason, applies)``, the first that applies names the refusal (order matters:
``127.0.0.1`` is private too, but loopback says more)."""


def _embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


_NUMBER_PART: Final = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, or ``None`` for a name.

    Accepts IPv6 (with or without brackets) and every IPv4 form ``inet_aton`` does: one
    to four dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``),
    the last filling the remaining bytes (``127.1`` is ``127.0.0.1``, ``2130706433`` and
    ``0x7f000001`` too). Resolvers read these forms, so the policy must as well."""
    text = host.strip("[]")
    if ":" in text:
        try:
            return IPv6Address(text)
        except ValueError:
            return None
    parts = text.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER_PART.fullmatch(p) for p in parts):
        return None
    numbers = [_part_value(p) for p in parts]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return IPv4Address(value)


def _part_value(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if part.startswith("0"):
        return int(part, 8)
    return int(part)


def _normal_host(host: str) -> str:
    """One spelling per host: the canonical address for a literal, else the lower-case
    name without a trailing dot."""
    address = literal_address(host)
    return str(address) if address is not None else host.lower().removesuffix(".")


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts an ``api_call`` may reach even at a refused address
    (``TRADEFLOW_EGRESS_ALLOW``): ``host`` (any port) or ``host:port``; an IPv6 address
    with a port is bracketed (``[::1]:8080``). Names match the URL's host as written
    (case and a trailing dot aside), not what it resolves to; no wildcards."""

    entries: frozenset[tuple[str, int | None]] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Raises ``ConfigurationError`` naming a malformed entry."""
        return cls(frozenset(_allow_entry(entry) for entry in entries))

    def permits(self, host: str, port: int) -> bool:
        """Whether a connection to ``host:port`` is allowed whatever its address."""
        name = _normal_host(host)
        return (name, None) in self.entries or (name, port) in self.entries


def _allow_entry(entry: str) -> tuple[str, int | None]:
    text = entry.strip()
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if rest else None
        if (rest and not rest.startswith(":")) or not isinstance(
            literal_address(host), IPv6Address
        ):
            host = ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not _valid_host(host) or (
        port is not None and not (port.isdecimal() and 0 < int(port) < 65536)
    ):
        raise ConfigurationError(
            "TRADEFLOW_EGRESS_ALLOW: expected comma-separated host or host:port entries "
            f"(a name or an address, no wildcard; port 1-65535, IPv6 as [addr]:port), "
            f"found {entry!r}"
        )
    return _normal_host(host), None if port is None else int(port)


_HOST_NAME: Final = re.compile(
    r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?"
)
"""A host name: dot-separated labels of letters, digits, ``-`` (not at either end) and
``_`` (container names), one trailing dot at most. No wildcard, no port, no path."""


def _valid_host(host: str) -> bool:
    """Whether ``host`` is a host name (:data:`_HOST_NAME`) or an IP address (IPv6 with or
    without brackets), as configuration may name one."""
    return literal_address(host) is not None or (
        ":" not in host and bool(_HOST_NAME.fullmatch(host))
    )


@dataclass(frozen=True, slots=True)
class SecretHosts:
    """The hosts each secret may be sent to (``TRADEFLOW_SECRET_HOSTS``): entries
    ``NAME=host|host`` separated by commas, e.g.
    ``BINANCE_KEY=api.binance.com|testnet.binance.vision``. A secret with no entry may be
    sent nowhere: a workflow that can reference a secret cannot carry it to a host of
    its choosing. Hosts match the URL's host as written (case and a trailing dot aside)."""

    bindings: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> SecretHosts:
        """Raises ``ConfigurationError`` naming a malformed or repeated entry."""
        bindings: dict[str, frozenset[str]] = {}
        for entry in entries:
            name, _, hosts = entry.strip().partition("=")
            name = name.strip()
            found = [host.strip() for host in hosts.split("|")]
            if not SECRET_NAME.fullmatch(name) or not all(_valid_host(h) for h in found):
                # The entry holds names and hosts, never a secret's value: safe to show.
                raise ConfigurationError(
                    "TRADEFLOW_SECRET_HOSTS: expected comma-separated NAME=host|host entries "
                    f"(NAME matching {SECRET_NAME.pattern}, hosts without scheme, port or "
                    f"wildcard), found {entry.strip()!r}"
                )
            if name in bindings:
                raise ConfigurationError(
                    f"TRADEFLOW_SECRET_HOSTS: expected each secret once, found {name} twice "
                    "(list all its hosts in one entry, separated by |)"
                )
            bindings[name] = frozenset(_normal_host(host) for host in found)
        return cls(bindings)

    def refusal(self, name: str, host: str) -> str | None:
        """Why the secret ``name`` may not be sent to ``host`` (a sentence naming the
        secret, the host and the setting), or ``None`` when it is bound to it."""
        hosts = self.bindings.get(name)
        if hosts is None:
            return (
                f"secret {name!r} is bound to no host: expected an entry {name}=<host> in "
                "TRADEFLOW_SECRET_HOSTS before any request may carry it"
            )
        if _normal_host(host) not in hosts:
            return (
                f"secret {name!r} may not be sent to {host!r}: TRADEFLOW_SECRET_HOSTS binds "
                f"it to {'|'.join(sorted(hosts))} only"
            )
        return None


SECRET_NAME: Final = re.compile(r"[A-Z][A-Z0-9_]{0,127}")
"""A secret's name: an environment-variable-like upper-case word (so it is a valid file
name in the secrets directory and can never walk out of it)."""


def is_secret_reference(value: object) -> TypeGuard[dict[str, object]]:
    """Whether ``value`` is a secret reference, ``{"secret": NAME}``: an object whose only
    key is ``secret`` (its name still has to match :data:`SECRET_NAME`)."""
    return isinstance(value, dict) and len(value) == 1 and "secret" in value


def secret_name_for(name: str) -> str:
    """A secret name to suggest for a header or parameter (``X-MBX-APIKEY`` ->
    ``X_MBX_APIKEY``)."""
    word = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
    word = word if word[:1].isalpha() else f"SECRET_{word}".rstrip("_")
    return word[:128]


_CREDENTIAL_NAMES: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_CREDENTIAL_WORDS: Final = (
    "key",
    "token",
    "secret",
    "signature",
    "passphrase",
    "password",
    "passwd",
    "auth",
    "session",
    "credential",
    "cookie",
)


def credential_name(name: str) -> bool:
    """Whether a header or query parameter called ``name`` carries a credential:
    ``Authorization``, ``Proxy-Authorization``, ``Cookie``, or any name containing one
    of key, token, secret, signature, passphrase, password, passwd, auth, session,
    credential, cookie (case-insensitive: ``X-MBX-APIKEY``, ``apiKey``, ``X-Auth``...).
    Errs on the side of refusing: a harmless value under such a name can be referenced
    as a secret too."""
    lowered = name.lower()
    return lowered in _CREDENTIAL_NAMES or any(word in lowered for word in _CREDENTIAL_WORDS)


_FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host",
        "transfer-encoding",
        "content-length",
        "connection",
        "forwarded",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
    }
)
_FORBIDDEN_HEADER_PREFIXES: Final = ("x-forwarded-", "proxy-")


def forbidden_header(name: str) -> bool:
    """Whether a request may not set the header ``name`` (case-insensitive): those that
    steer the connection, the framing or the routing of a request (``Host``,
    ``Transfer-Encoding``, ``Content-Length``, ``Connection``, ``Upgrade``, ``TE``,
    ``Trailer``, ``Keep-Alive``, ``Forwarded``, ``X-Forwarded-*``, ``Proxy-*``). The HTTP
    client sets the ones a request needs; a workflow setting them could smuggle a request
    or impersonate a proxy to a server behind the allow-list."""
    lowered = name.strip().lower()
    return lowered in _FORBIDDEN_HEADERS or lowered.startswith(_FORBIDDEN_HEADER_PREFIXES)


_SECRET_URLS: Final = (
    ("api.telegram.org", "/bot", "a Telegram bot token"),
    ("hooks.slack.com", "/services/", "a Slack webhook secret"),
    ("hooks.slack.com", "/workflows/", "a Slack webhook secret"),
    ("discord.com", "/api/webhooks/", "a Discord webhook token"),
    ("discordapp.com", "/api/webhooks/", "a Discord webhook token"),
)
"""``(host, path prefix, what)``: services whose URL path is itself the credential."""


def path_credential(host: str, path: str) -> str | None:
    """What a URL's path carries when it carries a credential, or ``None``: a path of a
    service whose URLs are credentials (Telegram bots, Slack and Discord webhooks), or a
    path segment, or a ``:``-separated part of one, that looks like a credential
    (:func:`credential_shape`)."""
    name = _normal_host(host)
    for secret_host, prefix, what in _SECRET_URLS:
        if name == secret_host and path.startswith(prefix) and len(path) > len(prefix):
            return what
    parts = (part for segment in path.split("/") for part in segment.split(":"))
    return next((shape for part in parts if (shape := credential_shape(part)) is not None), None)


_AUTH_SCHEME: Final = re.compile(r"(?i)(bearer|basic|digest|token|apikey)\s+\S")
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_TOKEN: Final = re.compile(r"[A-Za-z0-9+/=_.~-]{32,}")
_MIN_TOKEN_BITS_PER_CHAR: Final = 4.0


def credential_shape(value: Any) -> str | None:
    """What a string looks like when it looks like a credential whatever its name, or
    ``None``. Three shapes, on purpose no more:

    - an HTTP authorization value: ``Bearer``, ``Basic``, ``Digest``, ``Token`` or
      ``ApiKey`` followed by a word;
    - a JWT: three base64url segments separated by dots, the first starting ``eyJ``;
    - a long random token: 32 or more characters of the base64/URL-safe alphabets,
      mixing letters and digits, with a Shannon entropy of at least 4 bits per
      character (an exchange API key is; a UUID or a hex digest mostly is not)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _AUTH_SCHEME.match(text):
        return "an HTTP authorization credential"
    if _JWT.fullmatch(text):
        return "a JWT"
    if (
        _TOKEN.fullmatch(text)
        and any(c.isalpha() for c in text)
        and any(c.isdigit() for c in text)
        and _bits_per_char(text) >= _MIN_TOKEN_BITS_PER_CHAR
    ):
        return "a long random token"
    return None


def _bits_per_char(text: str) -> float:
    counts = Counter(text).values()
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts)


def redacted_url(url: str) -> str:
    """``url`` as errors, events and logs show it: no ``user:password@``, no query, no
    fragment (API keys often travel in either)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redacted(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, a response excerpt) with every URL in it redacted
    (:func:`redacted_url`) and every one of ``secrets`` masked (:func:`masked`)."""
    return _URL_IN_TEXT.sub(lambda match: redacted_url(match.group()), masked(text, secrets))


def masked(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``, in each form a server
    may echo it back: as sent, URL-encoded (``quote(s, safe="")``, ``quote_plus(s)``)
    and escaped inside a JSON string."""
    forms = {
        form
        for secret in secrets
        if secret
        for form in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1])
    }
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def masked_json(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (a decoded JSON value, or a text) with ``secrets`` masked in every string
    in it, object keys included (:func:`masked`): what a server echoes back of a request
    that carried secrets must not reach the workflow's outputs, events or storage."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return masked(value, secrets)
    if isinstance(value, dict):
        return {masked(str(k), secrets): masked_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_json(item, secrets) for item in value]
    return value
