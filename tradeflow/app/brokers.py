"""Who may do what on the brokers: the NATS users' subject permissions and the Redis ACL
users' keys, channels and commands, from one table each.

``deploy/k8s/nats.yaml`` and ``deploy/k8s/redis.yaml`` hold the text rendered here for
the default stream and key prefix (``tests/unit/test_broker_config.py`` checks it, and
that every Redis command the adapters send is granted to the users that run them); the
integration tests start real servers on the same text (``test_broker_acls.py``).

NATS (:func:`nats_authorization`): only ``executor`` publishes workflow events
(``tradeflow.v1.events.>``, and their batches ``tradeflow.v1.batches.>``), only
``emergency`` publishes emergency changes (``tradeflow.v1.emergency.>``); ``operator``
reads. Each user reaches only the JetStream
API of the one event stream, and only what it uses of it: none of them may create,
change, delete or purge the stream, nor delete a consumer (another's replay). Only
``provisioner`` creates and updates the stream (:func:`provision_stream`, deploy's Job
``nats-stream``); the others' buses find it set up when they connect. Each user's
replies come on its own inbox subjects, ``_INBOX_<user>.>``
(:func:`~tradeflow.adapters.nats.bus.inbox_prefix`), which no other user may subscribe
to. The event bus also drops any message not on the subject its type and ids give, so
an executor cannot pass an emergency event off on a workflow subject. The state service
uses no NATS.

Redis (:func:`redis_acl`): ``state`` (the state service) owns the executions, their
indexes, events and leases and reads the halts its writes are guarded by; ``emergency``
owns ``{<prefix>:emergency}:*`` and its request log and channels, revokes leases (the
halt barrier) and reads the scope books its loss triggers judge: read-only (``%R~``), with
the ledger's scope book script run as ``EVALSHA_RO``; ``executor`` owns the
paper ledger; ``probe`` may only ``PING`` (the readiness probe); ``default`` is off.
Each user gets only the commands of the adapters it runs. A script's declared
``KEYS`` count as written under ``EVALSHA`` (Redis cannot tell) and as read under
``EVALSHA_RO`` (which refuses writes inside), so a user that only reads keys through a
script runs it read-only; keys read inside a script by name are checked per command and
may be read-only (``%R~``). Any user that may load and run scripts can keep Redis busy
with an endless one: ``busy-reply-threshold`` (deploy: 5 s) makes Redis answer the others
``BUSY`` meanwhile, and ``SCRIPT KILL`` (not granted to these users) stops it.

Passwords are never part of this text: NATS reads ``$NATS_<USER>_PASSWORD`` from its
environment (a Kubernetes Secret), and :data:`REDIS_ACL_SCRIPT` writes each Redis user's
password, hashed, into the ACL file Redis loads. Passwords are hex (``openssl rand -hex
32``): they travel in URLs and in the NATS configuration unquoted.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tradeflow.adapters.nats.bus import (
    BATCHES_PREFIX,
    DEFAULT_STREAM,
    EMERGENCY_PREFIX,
    EVENTS_PREFIX,
    NatsEventBus,
    NatsOptions,
    inbox_prefix,
)
from tradeflow.adapters.tls import client_ssl_context
from tradeflow.app.settings import TlsFiles
from tradeflow.domain.errors import ConfigurationError, TradeflowError

__all__ = [
    "REDIS_ACL_SCRIPT",
    "REDIS_COMMANDS",
    "NatsUser",
    "RedisUser",
    "nats_authorization",
    "nats_password_variable",
    "nats_users",
    "provision_stream",
    "redis_acl",
    "redis_users",
]

_ALL_EVENTS: Final = "tradeflow.v1.>"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """A NATS user and the subjects it may publish and subscribe to."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def nats_users(stream: str = DEFAULT_STREAM) -> tuple[NatsUser, ...]:
    """The NATS users, for the JetStream stream ``stream``."""
    api = f"$JS.API.STREAM.{{}}.{stream}"
    # Every bus reads the stream's configuration when it connects.
    info = api.format("INFO")
    # An ordered consumer (a replay): created, recreated after a gap, flow-controlled; the
    # server deletes it once its subscriber is gone. "$JS.API.INFO" is the bus's check
    # that the server has its subscriptions.
    read_stream = (
        "$JS.API.INFO",
        info,
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.FC.{stream}.>",
    )

    def inbox(user: str) -> str:
        return f"{inbox_prefix(user)}.>"

    return (
        NatsUser(
            "provisioner",
            publish=(info, api.format("CREATE"), api.format("UPDATE")),
            subscribe=(inbox("provisioner"),),
        ),
        NatsUser(
            "executor",
            publish=(EVENTS_PREFIX + ">", BATCHES_PREFIX + ">", *read_stream),
            subscribe=(_ALL_EVENTS, inbox("executor")),
        ),
        NatsUser(
            "emergency", publish=(EMERGENCY_PREFIX + ">", info), subscribe=(inbox("emergency"),)
        ),
        NatsUser(
            "operator",
            publish=(*read_stream, f"$JS.API.STREAM.MSG.GET.{stream}"),
            subscribe=(_ALL_EVENTS, inbox("operator")),
        ),
    )


async def provision_stream(url: str, *, tls: ssl.SSLContext | None = None) -> None:
    """Create the event stream as the services configure it, or update it to that, as the
    user of ``url`` (the ``provisioner``: the services' users may not); nothing if it is
    already so.

    Raises ``UnavailableError`` (NATS unreachable) or ``ConfigurationError``."""
    bus = await NatsEventBus.connect(url, NatsOptions(name="tradeflow-provisioner"), tls=tls)
    await bus.close()


def main(environ: Mapping[str, str] = os.environ) -> int:
    """``python -m tradeflow.app.brokers``: :func:`provision_stream` with
    ``TRADEFLOW_NATS_URL`` and, for TLS, ``TRADEFLOW_TLS_CA``/``_CERT``/``_KEY`` (deploy's
    Job ``nats-stream``); 0 once the stream is set up, 1 with the reason on stderr."""
    try:
        url = environ.get("TRADEFLOW_NATS_URL")
        if not url:
            raise ConfigurationError(
                "TRADEFLOW_NATS_URL: expected the provisioner's NATS URL, found none"
            )
        files = TlsFiles.from_env(environ)
        tls = None if files is None else client_ssl_context(files.ca, files.cert, files.key)
        asyncio.run(provision_stream(url, tls=tls))
    except TradeflowError as exc:
        print(f"tradeflow.app.brokers: {exc}", file=sys.stderr)
        return 1
    return 0


def nats_password_variable(user: str) -> str:
    """The environment variable NATS reads ``user``'s password from."""
    return f"NATS_{user.upper()}_PASSWORD"


def nats_authorization(stream: str = DEFAULT_STREAM) -> str:
    """The ``authorization`` block of ``nats.conf``: no anonymous client, and each user's
    permissions (an allow-list: anything else is refused)."""

    def subjects(names: tuple[str, ...]) -> str:
        return ", ".join(f'"{name}"' for name in names)

    lines = ["authorization {", "  users = ["]
    for user in nats_users(stream):
        lines += [
            "    {",
            f"      user: {user.name}",
            f"      password: ${nats_password_variable(user.name)}",
            "      permissions: {",
            f"        publish: {{ allow: [{subjects(user.publish)}] }}",
            f"        subscribe: {{ allow: [{subjects(user.subscribe)}] }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


REDIS_COMMANDS: Final[dict[str, tuple[str, ...]]] = {
    # Every adapter's scripts are registered: EVALSHA, loaded again after a server restart.
    "scripts": ("evalsha", "script|load"),
    "state": (
        "append", "del", "exists", "get", "getrange", "hdel", "hget", "hgetall", "hincrby",
        "hmget", "hset", "incr", "incrby", "pexpire", "pexpireat", "pttl", "sadd", "set",
        "smembers", "strlen", "time", "xadd", "xdel", "xrange", "zadd", "zcard", "zrange",
        "zrangebylex", "zrem", "zremrangebyscore", "zrevrangebylex",
    ),
    "emergency": (
        "del", "get", "hdel", "hexists", "hget", "hgetall", "hmget", "hset", "hsetnx",
        "incr", "pttl", "publish", "set", "xadd", "xrevrange", "subscribe", "ping",
    ),
    "ledger": (
        "evalsha_ro", "exists", "hget", "hgetall", "hmget", "hset", "rpush", "sadd",
        "smembers", "srem",
    ),
    # The ledger's scope book script, read-only (the emergency service's loss triggers).
    "books": ("evalsha_ro", "hget", "hgetall", "hmget"),
    "leases": ("del", "hget", "time", "zrange", "zrem", "zremrangebyscore"),
    "probe": ("ping",),
}  # fmt: skip
"""The commands each adapter sends, by what it is: ``state``, ``emergency`` and
``ledger`` (the modules of :mod:`tradeflow.adapters.redis`), ``leases`` (what the halt
barrier runs of the state store: list and revoke leases), ``books`` (what reading a scope's
books runs of the ledger), ``scripts`` (all of them)."""

_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:-]+")


@dataclass(frozen=True, slots=True)
class RedisUser:
    """A Redis ACL user: read-write and read-only key patterns, channels, commands."""

    name: str
    keys: tuple[str, ...] = ()
    read_keys: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    @property
    def rules(self) -> str:
        """Its ACL rules, after ``user <name>`` and before any password."""
        granted = sorted({command for group in self.commands for command in REDIS_COMMANDS[group]})
        return " ".join(
            [
                "on",
                "resetkeys",
                *(f"~{key}" for key in self.keys),
                *(f"%R~{key}" for key in self.read_keys),
                "resetchannels",
                *(f"&{channel}" for channel in self.channels),
                "-@all",
                *(f"+{command}" for command in granted),
            ]
        )


def redis_users(prefix: str = "tradeflow") -> tuple[RedisUser, ...]:
    """The Redis users of the services on ``prefix`` (``TRADEFLOW_REDIS_PREFIX``: letters,
    digits and ``_.:-``, so that it is no pattern itself)."""
    if not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            f"TRADEFLOW_REDIS_PREFIX: expected letters, digits and '_.:-' for Redis ACL "
            f"key patterns, found {prefix!r}"
        )
    p = f"{prefix}:"
    emergency = f"{{{prefix}:emergency}}"
    leases = (f"{p}lease:*", f"{p}lease_cancels:*", f"{p}leases")
    # What the emergency service's loss triggers read (the keys of the scope book script).
    books = tuple(
        f"{p}paper:{name}" for name in ("realized", "resting", "buckets", "books:*", "marks")
    )
    return (
        RedisUser(
            "state",
            keys=(
                *(f"{p}{name}:*" for name in ("execution", "data", "definition")),
                f"{p}definitions",
                f"{p}events",
                f"{p}event_cursor",
                f"{p}layout",
                f"{p}index:*",
                f"{p}request:*",
                *leases,
                f"{p}lease_epoch",
            ),
            read_keys=(f"{emergency}:halts", f"{emergency}:halt_since"),
            commands=("scripts", "state"),
        ),
        RedisUser(
            "emergency",
            keys=(f"{emergency}:*", f"{p}emergency:request:*", *leases),
            read_keys=books,
            channels=(f"{p}emergency:changed", f"{p}emergency:acks"),
            commands=("scripts", "emergency", "leases", "books"),
        ),
        RedisUser("executor", keys=(f"{p}paper:*",), commands=("scripts", "ledger")),
        RedisUser("probe", commands=("probe",)),
    )


def redis_acl(prefix: str = "tradeflow") -> str:
    """The rules of Redis's ACL file, one ``user`` line each, without passwords
    (:data:`REDIS_ACL_SCRIPT` adds them); ``probe`` needs none, ``default`` is off."""
    lines = [
        f"user {user.name} {'nopass ' if user.name == 'probe' else ''}{user.rules}"
        for user in redis_users(prefix)
    ]
    lines.append("user default off resetkeys resetchannels -@all")
    return "\n".join(lines) + "\n"


REDIS_ACL_SCRIPT: Final = r"""set -eu
rules="$1" passwords="$2" out="$3"
umask 077
: > "$out"
while read -r keyword name rest; do
  [ "$keyword" = user ] || continue
  if [ -f "$passwords/redis-$name" ]; then
    hash=$(tr -d '\r\n' < "$passwords/redis-$name" | sha256sum | cut -d ' ' -f 1)
    echo "user $name #$hash $rest" >> "$out"
  else
    echo "user $name $rest" >> "$out"
  fi
done < "$rules"
"""
"""``sh -c REDIS_ACL_SCRIPT render <rules> <passwords dir> <acl file>``: the ACL file
Redis loads, from the rules (:func:`redis_acl`) and the password files
``redis-<user>`` of a mounted Secret, each stored as its SHA-256 (``#<hex>``), never as
text. A user without a password file keeps no password (it cannot log in, except
``probe``, which needs none)."""


if __name__ == "__main__":
    sys.exit(main())
