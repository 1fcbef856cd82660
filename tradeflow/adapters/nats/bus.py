"""The production :class:`~tradeflow.ports.EventBus`: NATS, captured by JetStream.

Subjects
    Workflow events travel in batches: each run of events of one bot, strategy and
    workflow that the publisher sends together (what one execution emitted since the last
    send: in practice one message per journal flush) goes in one message, in publishing
    order, on
    ``tradeflow.v1.batches.<bot_id>.<strategy_id>.<workflow_id>.batch`` (as many tokens as
    an event's subject, so one filter, ``tradeflow.v1.*.<ids>.*``, selects both trees, even
    on a server without multi-subject consumers), whose payload is
    ``{"schema_version": 1, "events": [event, ...]}``. With
    ``NatsOptions(event_subjects=True)`` (``TRADEFLOW_NATS_EVENT_SUBJECTS=true``) each
    event goes instead to the contract's own subject,
    ``tradeflow.v1.events.<bot_id>.<strategy_id>.<workflow_id>.<type>``, for consumers that
    filter by type on the server; subscribers and replays of this bus read both.
    An emergency state change (``emergency_halted``, ``emergency_resumed``,
    ``risk_limit_exceeded``) goes to ``tradeflow.v1.emergency.halted`` / ``.resumed`` /
    ``.risk_limit_exceeded`` (one subject per event, so JetStream stores it once).
    An event is the contract JSON (:meth:`Event.to_dict`), UTF-8.

Ids in subjects
    Ids are encoded reversibly (:func:`encode_token` / :func:`decode_token`): a missing
    or empty id becomes the placeholder token ``_``; an id made only of ASCII letters,
    digits and ``-_:~@+=`` is used as is, except the id ``_`` itself, which becomes
    ``%5F``; in any other id every other character (``.``, ``*``, ``>``, whitespace,
    ``%``, non-ASCII ...) becomes ``%XX`` per UTF-8 byte, upper-case hex. So
    ``bot.1`` is published as ``bot%2E1`` and ``subject_filter(bot_id="bot.1")``
    matches it. A token that would be longer than ``ID_MAX_LENGTH`` (128) characters
    becomes ``#`` and the 32 hex digits of its id's BLAKE2b-128 digest instead (one way:
    :func:`decode_token` gives it back as is; ``#`` never appears in the other tokens).
    So every subject stays under 540 bytes, far below the server's 4 KiB control line,
    which a longer one would exceed, and the server would close the connection. Nothing
    is rejected: a well-formed id (``tradeflow.domain.limits.ID_PATTERN``) other than
    ``_`` is its own token, and filters by any id match, since they encode it the same way.

Publishing
    :meth:`NatsEventBus.publish` appends to a bounded queue and returns; a background
    task sends batches with a ``Nats-Msg-Id: <encoded event_id>`` header (JetStream drops
    duplicates within the stream's ``duplicate_window``), then waits for one
    acknowledgement per batch. A batch not acknowledged (NATS down, JetStream not
    ready) goes back to the front of the queue and is sent again once reconnected;
    when the queue is full the oldest events are dropped and counted. Delivery is
    therefore at least once: live subscribers may see a resent event twice (dedupe
    by ``event_id``); the stream holds a message once (within the duplicate window; a
    batch's id is its first event's id and its length, so a batch resent with other
    boundaries after a reconnect may store an event twice: dedupe by ``event_id``).
    Every failed attempt is counted in ``tradeflow_events_publish_failures_total{reason}``;
    an event that can never be sent (``unserialisable``, ``too_large``, ``refused``) is
    dropped and logged; while batches go unacknowledged the bus logs it once and
    :meth:`NatsEventBus.healthy` is False (the executor's gRPC health follows it).

Subscribing and replay
    :meth:`~NatsEventBus.subscribe` listens on core NATS (low latency, no history) and
    hands each decoded dict to the handler through a per-subscriber bounded buffer
    (the shared :class:`~tradeflow.engine.fanout.Fanout`), so subscribers see events from
    every process. :meth:`~NatsEventBus.replay` reads the stream from a sequence
    number onwards and then follows it live, for resumable streams. Both drop (log
    ``events.discarded`` and count ``tradeflow_events_discarded_total{reason}``) a
    message that is no JSON object or did not come on the subject its type and ids give
    (:func:`subject_for`, or for a batch the batch subject of its ids): the server's
    publish permissions are per subject, so an emergency event on a workflow subject is
    a forgery.

Positions
    A replay yields each event with its position: the stream sequence of its message
    times :data:`POSITION_SLOTS` (1024) plus its index in the message (0 for a message of
    one event). Positions grow with every event, so a consumer that stopped in the
    middle of a batch resumes after the last event it saw, not after the whole message.

The stream
    Connecting reads the stream's configuration and creates or updates it only when it
    is missing or differs (in what the bus sets, or in anything that would let one
    publisher drop, move or copy others' events: rollups, message limits, republishing,
    sources). With least-privilege users (:mod:`tradeflow.app.brokers`) only the
    ``provisioner`` may do that; the runtime users find it set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import re
import ssl
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import nats.errors
import orjson
import stamina
import structlog
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from tradeflow.adapters.tls import redact_url
from tradeflow.domain.errors import ConfigurationError, InvalidRequest, UnavailableError, describe
from tradeflow.domain.limits import ID_CHARACTERS, ID_MAX_LENGTH, shown
from tradeflow.domain.records import Event
from tradeflow.engine.fanout import (
    SCOPE_EVENTS,
    WORKFLOW_EVENTS,
    Fanout,
    LocalSubscription,
    check_after_sequence,
)
from tradeflow.observability.metrics import Metrics
from tradeflow.ports import EventHandler, Subscription

__all__ = [
    "ALL_SUBJECTS",
    "BATCHES_PREFIX",
    "DEFAULT_STREAM",
    "EMERGENCY_PREFIX",
    "EVENTS_PREFIX",
    "MISSING_TOKEN",
    "POSITION_SLOTS",
    "WORKFLOW_EVENTS",
    "NatsEventBus",
    "NatsOptions",
    "batch_subject",
    "decode_token",
    "encode_token",
    "inbox_prefix",
    "subject_filter",
    "subject_for",
]

EVENTS_PREFIX: Final = "tradeflow.v1.events."
"""Prefix of workflow event subjects; four tokens follow."""
EMERGENCY_PREFIX: Final = "tradeflow.v1.emergency."
"""Prefix of emergency state change subjects; one token follows."""
BATCHES_PREFIX: Final = "tradeflow.v1.batches."
"""Prefix of workflow event batch subjects; four tokens (bot, strategy, workflow, ``batch``)
follow."""
_BATCH_TOKEN: Final = "batch"
POSITION_SLOTS: Final = 1024
"""Positions per stream message: a replayed event's position is its message's stream
sequence times this, plus its index in the message (a batch holds fewer events)."""
_BATCH_MAX_EVENTS: Final = POSITION_SLOTS - 1
ALL_SUBJECTS: Final = "tradeflow.v1.>"
"""Matches every subject this bus publishes."""
MISSING_TOKEN: Final = "_"
"""Subject token standing for a missing id."""
DEFAULT_STREAM: Final = "TRADEFLOW_EVENTS"
"""Name of the JetStream stream capturing both subject trees."""

# emergency_halted -> tradeflow.v1.emergency.halted; risk_limit_exceeded keeps its name.
_EMERGENCY_SUBJECTS: Final[dict[str, str]] = {
    kind: EMERGENCY_PREFIX + kind.removeprefix("emergency_") for kind in SCOPE_EVENTS
}
_PLAIN_TOKEN: Final = re.compile(f"[{ID_CHARACTERS}]+")
_INBOX: Final = "_INBOX"
_MSG_ID: Final = api.Header.MSG_ID.value
_STATUS: Final = api.Header.STATUS.value
_DIGEST_MARK: Final = "#"
_HEADER_ALLOWANCE: Final = 512
"""Bytes kept free of max_payload for the headers (the server counts them, the client not;
ours are under 200: the message id is an encoded token)."""
_STREAM_NAME_IN_USE: Final = 10058
"""JetStream error code: a stream by that name exists with another configuration."""
_STREAM_FIELDS: Final = (
    "subjects", "retention", "discard", "storage", "max_age", "max_bytes", "duplicate_window",
    # Anything else that would let one publisher drop, move or copy others' events.
    "max_msgs", "max_msgs_per_subject", "allow_rollup_hdrs", "sealed", "no_ack",
    "mirror", "sources", "republish", "subject_transform",
)  # fmt: skip
"""What a stream must have as the bus configures it for the bus to use it unchanged."""
_FIELD_UNSET: Final[dict[str, object]] = {
    "max_msgs": -1,
    "max_msgs_per_subject": -1,
    "allow_rollup_hdrs": False,
    "sealed": False,
    "no_ack": False,
}
"""What the server's answer leaves out (None) means for these fields."""


class _Unacknowledged(Exception):
    """A batch went back to the queue unacknowledged."""


_RESEND_WAIT_MAX: Final = 2.0
_RESEND: Final = stamina.AsyncRetryingCaller(
    attempts=None, timeout=None, wait_initial=0.05, wait_max=_RESEND_WAIT_MAX, wait_jitter=0.05
).on(_Unacknowledged)
"""Back-off while JetStream does not acknowledge: forever, at most about 2 s apart."""

_ServerChooser = Callable[[list[Server], dict[str, Any]], tuple[Server | None, float]]

_log = structlog.get_logger(__name__)


def encode_token(value: str | None) -> str:
    """One subject token for an id (see the module docstring for the scheme)."""
    if value is not None and len(value) > ID_MAX_LENGTH:
        # Its token would be too long too; and not cached, so a huge id is not kept.
        return _digest(value)
    return _encode_short(value)


@lru_cache(maxsize=1024)
def _encode_short(value: str | None) -> str:
    if not value:
        return MISSING_TOKEN
    if value == MISSING_TOKEN:
        return "%5F"
    if _PLAIN_TOKEN.fullmatch(value):
        return value
    token = "".join(
        ch if _PLAIN_TOKEN.fullmatch(ch) else "".join(f"%{b:02X}" for b in _utf8(ch))
        for ch in value
    )
    return token if len(token) <= ID_MAX_LENGTH else _digest(value)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (which UTF-8 cannot carry) still gets a token.
    return text.encode("utf-8", "surrogatepass")


def _digest(value: str) -> str:
    return _DIGEST_MARK + hashlib.blake2b(_utf8(value), digest_size=16).hexdigest()


def decode_token(token: str) -> str | None:
    """Inverse of :func:`encode_token` (a missing id comes back as ``None``, a digest
    token as it is)."""
    return None if token == MISSING_TOKEN else unquote(token, errors="strict")


def subject_for(event: Event) -> str:
    """The subject ``event`` is published on by itself (emergency events always are;
    workflow events with ``event_subjects``)."""
    return _subject(event.type, event.bot_id, event.strategy_id, event.workflow_id)


def batch_subject(bot_id: str | None, strategy_id: str | None, workflow_id: str | None) -> str:
    """The subject of a batch of workflow events with these ids."""
    return (
        f"{BATCHES_PREFIX}{encode_token(bot_id)}.{encode_token(strategy_id)}."
        f"{encode_token(workflow_id)}.{_BATCH_TOKEN}"
    )


def _subject(
    type: str, bot_id: str | None, strategy_id: str | None, workflow_id: str | None
) -> str:
    emergency = _EMERGENCY_SUBJECTS.get(type)
    if emergency is not None:
        return emergency
    return (
        f"{EVENTS_PREFIX}{encode_token(bot_id)}.{encode_token(strategy_id)}."
        f"{encode_token(workflow_id)}.{encode_token(type)}"
    )


def subject_filter(
    *,
    bot_id: str | None = None,
    strategy_id: str | None = None,
    workflow_id: str | None = None,
    type: str | None = None,
) -> str:
    """A subject filter matching the events with these ids and type (``None``: any).

    An emergency ``type`` gives its ``tradeflow.v1.emergency.*`` subject; its
    subject carries no ids, so combining it with an id raises ``InvalidRequest``.
    """
    emergency = _EMERGENCY_SUBJECTS.get(type) if type is not None else None
    if emergency is not None:
        if bot_id is not None or strategy_id is not None or workflow_id is not None:
            raise InvalidRequest(
                "type",
                "a workflow event type when filtering by bot, strategy or workflow id "
                "(emergency subjects carry no ids)",
                type,
            )
        return emergency
    tokens = (
        "*" if v is None else encode_token(v) for v in (bot_id, strategy_id, workflow_id, type)
    )
    return EVENTS_PREFIX + ".".join(tokens)


def inbox_prefix(user: str | None) -> str:
    """Where the replies to a client logged in as ``user`` come: ``_INBOX_<user>``, so
    that each user may be let subscribe to its own replies only
    (:mod:`tradeflow.app.brokers`); ``_INBOX`` without a user."""
    return _INBOX if user is None else f"{_INBOX}_{user}"


def _url_user(url: str) -> str | None:
    """The user the (first) URL logs in as; None without one, or for a token (userinfo
    without a password: a secret, never part of a subject)."""
    parts = urlsplit(url.split(",", 1)[0].strip())
    user = parts.username
    if user and parts.password is not None and _PLAIN_TOKEN.fullmatch(user):
        return user
    return None


def _reconnect_backoff(base: float, cap: float) -> _ServerChooser:
    """A nats-py server chooser that waits exponentially longer (with jitter) per failure.

    nats-py runs the reconnect loop itself (it restores subscriptions and flushes what
    was written meanwhile) and only asks for the delay; stamina drives loops and has no
    delay to hand out, hence this one formula of its own.
    """

    def choose(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        attempts = min(servers[0].reconnects, 30)
        return None, min(cap, base * 2**attempts) * random.uniform(0.5, 1.0)

    return choose


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """Tuning of a :class:`NatsEventBus`; every number must be > 0."""

    stream: str = DEFAULT_STREAM
    """The JetStream stream (file storage, both subject trees)."""
    buffer_size: int = 10_000
    """Bound of the publish queue and of each subscriber's backlog."""
    batch_size: int = 256
    """Events sent per acknowledgement round trip."""
    max_age: float = 7 * 24 * 3600.0
    """Seconds the stream keeps an event (the oldest are dropped first)."""
    max_bytes: int = 1 << 30
    """Bytes the stream keeps at most (the oldest are dropped first)."""
    duplicate_window: float = 120.0
    """Seconds within which the stream ignores a repeated ``event_id``."""
    connect_timeout: float = 5.0
    """How long the first connection may take before ``UnavailableError``."""
    ack_timeout: float = 5.0
    """How long a batch waits for its acknowledgement before it is sent again."""
    close_timeout: float = 5.0
    """How long :meth:`NatsEventBus.close` waits for the queue to drain."""
    reconnect_backoff: tuple[float, float] = (0.05, 5.0)
    """First and longest wait between reconnection attempts (it reconnects forever)."""
    replay_heartbeat: float = 2.0
    """Idle heartbeat of a replay's consumer."""
    name: str = "tradeflow"
    """Client name shown by the NATS server."""
    event_subjects: bool = False
    """Publish each workflow event on its own contract subject instead of in batches."""

    def __post_init__(self) -> None:
        for setting in (
            "batch_size",
            "max_bytes",
            "max_age",
            "duplicate_window",
            "ack_timeout",
            "close_timeout",
            "replay_heartbeat",
        ):
            value = getattr(self, setting)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(
                    f"invalid NATS event bus {setting}: expected a number > 0, found {value!r}"
                )


class NatsEventBus:
    """An :class:`~tradeflow.ports.EventBus` on NATS and JetStream.

    Build it with :meth:`connect`. ``publish`` must be called from the event loop
    the bus was connected on.
    """

    __slots__ = (
        "_ack_prefix",
        "_closed",
        "_connected",
        "_dropping",
        "_event_subs",
        "_failure",
        "_in_flight",
        "_js",
        "_local",
        "_metrics",
        "_nc",
        "_options",
        "_pending_ack",
        "_progress",
        "_publisher",
        "_queue",
        "_stream_config",
        "_stream_missing",
        "_subscribe_lock",
        "_tokens",
        "_wakeup",
        "dropped",
    )

    def __init__(
        self,
        nc: Client,
        stream_config: api.StreamConfig,
        local: Fanout,
        options: NatsOptions,
        metrics: Metrics | None,
    ) -> None:
        self.dropped = 0
        """Events lost before reaching NATS (queue full, unserializable, rejected, closed)."""
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._stream_config = stream_config
        self._local = local
        self._metrics = metrics
        self._options = options
        self._queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._connected = asyncio.Event()
        self._connected.set()
        self._in_flight = 0
        self._failure: str | None = None
        """Why the last batch went back to the queue; None once one is acknowledged."""
        self._dropping = False
        self._closed = False
        # Each batch gets a fresh reply subject, so a late ack of an abandoned batch
        # cannot be taken for the current one's.
        self._ack_prefix = nc.new_inbox() + "."
        self._tokens = itertools.count()
        self._pending_ack: tuple[str, asyncio.Future[Msg]] | None = None
        self._stream_missing = False
        self._event_subs: tuple[NatsSubscription, ...] = ()
        self._subscribe_lock = asyncio.Lock()
        self._publisher: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        options: NatsOptions = NatsOptions(),
        *,
        metrics: Metrics | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> NatsEventBus:
        """Connect to NATS at ``url`` and make sure the stream exists as ``options``
        configure it (created, or an existing one updated, only if it is missing or
        differs: a user without that grant needs it set up already).

        The user and password, if any, are the URL's (``tls://executor:PASSWORD@nats:4222``),
        and replies come on that user's inbox subjects (:func:`inbox_prefix`);
        the connection uses TLS when the scheme is ``tls://`` or the server requires it,
        with ``tls`` (the process's CA and client certificate,
        :func:`~tradeflow.adapters.tls.client_ssl_context`) when given. Logs and errors
        show the URL with its password masked.

        Raises ``UnavailableError`` if NATS cannot be reached within
        ``options.connect_timeout`` seconds, ``ConfigurationError`` for a stream that
        cannot take this configuration, or that is missing or differs and this user may
        not create or update it.
        """
        local = Fanout(buffer_size=options.buffer_size, metrics=metrics)
        stream_config = api.StreamConfig(
            name=options.stream,
            # Every tree (events, batches, emergency): a replay's filter across the first
            # two must be a subset of the stream's subjects on servers before 2.10.
            subjects=[ALL_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            storage=api.StorageType.FILE,
            max_age=options.max_age,
            max_bytes=options.max_bytes,
            duplicate_window=options.duplicate_window,
        )
        bus: NatsEventBus | None = None
        shown_url = redact_url(url)

        async def disconnected() -> None:
            if bus is not None:
                if bus._closed:
                    return
                bus._connected.clear()
            _log.warning("events.nats_disconnected", url=shown_url)

        async def reconnected() -> None:
            if bus is not None:
                bus._connected.set()
            _log.info("events.nats_reconnected", url=shown_url)

        async def error(exc: Exception) -> None:
            _log.warning("events.nats_error", url=shown_url, error=describe(exc))

        nc = Client()
        try:
            async with asyncio.timeout(options.connect_timeout):
                await nc.connect(
                    url,
                    name=options.name,
                    max_reconnect_attempts=-1,
                    reconnect_to_server_handler=_reconnect_backoff(*options.reconnect_backoff),
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    drain_timeout=max(1, round(options.close_timeout)),
                    tls=tls,
                    inbox_prefix=inbox_prefix(_url_user(url)),
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await nc.close()
            raise UnavailableError(f"cannot reach NATS at {shown_url}: {describe(exc)}") from exc
        bus = cls(nc, stream_config, local, options, metrics)
        try:
            await bus._ensure_stream()
            await nc.subscribe(bus._ack_prefix + "*", cb=bus._on_ack)
        except BaseException:
            await nc.close()
            raise
        bus._publisher = asyncio.create_task(bus._run_publisher(), name="events:nats-publisher")
        return bus

    async def _ensure_stream(self) -> None:
        """Make sure the stream exists as configured: read it, and create or update it
        only when it is missing or differs.

        A user without the grant to create or update it (deploy's runtime users: the
        ``provisioner`` sets the stream up) is refused those requests; the server answers
        a refused request with nothing, so it is reported once JetStream's timeout passes.
        """
        config = self._stream_config
        name = str(config.name)
        try:
            try:
                differences = _stream_differences((await self._js.stream_info(name)).config, config)
            except NotFoundError:
                differences = None
            if differences == []:
                return
            try:
                if differences is None:
                    try:
                        await self._js.add_stream(config)
                    except BadRequestError as exc:  # created meanwhile, another way
                        if exc.err_code != _STREAM_NAME_IN_USE:
                            raise
                        await self._js.update_stream(config)
                else:
                    await self._js.update_stream(config)
            except TimeoutError as exc:
                state = "is missing" if differences is None else f"differs in {differences}"
                raise ConfigurationError(
                    f"JetStream stream {name!r} {state} and creating or updating it was not "
                    "answered (the server drops the request of a user without that grant): "
                    "set the stream up as the provisioner user (docs/SECURITY.md)"
                ) from exc
        except nats.js.errors.APIError as exc:
            raise ConfigurationError(
                f"cannot create or update JetStream stream {name!r}: {exc.description}"
            ) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(
                f"cannot set up JetStream stream {name!r} (is JetStream enabled on the "
                f"server?): {describe(exc)}"
            ) from exc

    async def last_sequence(self) -> int:
        """The position of the last event of the stream's last message (replaying after it
        gives only what comes next); raises ``UnavailableError``."""
        try:
            info = await self._js.stream_info(str(self._stream_config.name))
        except (TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(f"cannot read the event stream: {describe(exc)}") from exc
        last = int(info.state.last_seq)
        return last * POSITION_SLOTS + _BATCH_MAX_EVENTS if last else 0

    def healthy(self) -> bool:
        """Whether events reach JetStream right now: connected, and the last batch sent
        was acknowledged (for health checks)."""
        return bool(self._nc.is_connected) and self._failure is None

    # -- publishing ---------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue ``event`` for NATS; never blocks, never raises (drops the oldest when full)."""
        if self._closed:
            self._lose(1)
            return
        queue = self._queue
        if len(queue) >= self._options.buffer_size:
            queue.popleft()
            self._lose(1)
            if not self._dropping:
                self._dropping = True
                _log.warning("events.publish_buffer_full", buffer_size=self._options.buffer_size)
        queue.append(event)
        self._wakeup.set()

    def _lose(self, count: int) -> None:
        self.dropped += count
        if self._metrics is not None:
            self._metrics.events_dropped.inc(count)

    # The bound is part of the call (close() always wants one), hence ASYNC109.
    async def flush(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Wait until every queued event is acknowledged by JetStream (or given up on);
        False if that did not happen within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self._queue or self._in_flight:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def _run_publisher(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._dropping = False
                self._progress.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._send_next()
            except _Unacknowledged:
                # Connected but not acknowledged (JetStream still recovering after a
                # restart, say): back off. If stamina gives up (switched off, or capped in
                # its test mode), wait its longest before the loop goes round again.
                try:
                    await _RESEND(self._send_next)
                except _Unacknowledged:
                    await asyncio.sleep(_RESEND_WAIT_MAX)

    async def _send_next(self) -> None:
        """Send the next batch once connected; raises ``_Unacknowledged`` if it went back
        to the queue."""
        queue = self._queue
        # A disconnect is waited out here, not backed off from.
        while not self._nc.is_connected:
            self._connected.clear()
            await self._connected.wait()
        batch = [queue.popleft() for _ in range(min(len(queue), self._options.batch_size))]
        self._in_flight = len(batch)
        try:
            retry = await self._send(batch)
        except Exception as exc:  # the publisher must outlive any surprise
            _log.error("events.publish_failed", error=describe(exc), events=len(batch))
            retry = self._unsent(batch, "error")
        finally:
            self._in_flight = 0
        self._progress.set()
        if not retry:
            return
        self._requeue(retry)
        if self._stream_missing:
            self._stream_missing = False
            with contextlib.suppress(ConfigurationError, UnavailableError):
                await self._ensure_stream()
        raise _Unacknowledged

    async def _send(self, batch: Sequence[Event]) -> list[Event]:
        """Publish ``batch`` and wait for JetStream's answer; returns the events to retry.

        Only the last message asks for an acknowledgement: the stream handles one
        connection's messages in order, so its ack vouches for the whole batch, at
        the cost of one reply per batch instead of one per event.
        """
        nc = self._nc
        encoded = self._encode(batch)
        if not encoded:
            return []
        everything = [event for message in encoded for event in message.events]
        reply = self._ack_prefix + str(next(self._tokens))
        answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending_ack = (reply, answer)
        last = len(encoded) - 1
        try:
            for index, message in enumerate(encoded):
                await nc.publish(
                    message.subject,
                    message.payload,
                    reply=reply if index == last else "",
                    headers={_MSG_ID: message.msg_id},
                )
            async with asyncio.timeout(self._options.ack_timeout):
                msg = await answer
        except (TimeoutError, nats.errors.Error):
            # Connection lost or no answer: resend all; the stream drops duplicates.
            return self._unsent(everything, "unacknowledged")
        finally:
            self._pending_ack = None
        if msg.headers and msg.headers.get(_STATUS) == "503":
            # No responders: no stream captures the subjects (deleted, or JetStream
            # not up yet after a restart).
            self._stream_missing = True
            return self._unsent(everything, "no_stream")
        if b'"error"' in msg.data:
            error = orjson.loads(msg.data).get("error") or {}
            if int(error.get("code", 500)) >= 500:
                return self._unsent(everything, "server_error")
            # A refusal of this message itself (not of the stream): retrying cannot help.
            for event in encoded[last].events:
                self._reject(event, "refused", str(error.get("description", error)))
        if self._failure is not None:
            _log.info("events.publish_recovered", failure=self._failure)
            self._failure = None
        return []

    def _encode(self, batch: Sequence[Event]) -> list[_Message]:
        """The messages that send ``batch``, in its order: one per event on its own
        subject (emergency events; every event with ``event_subjects``), and each run of
        workflow events of one bot, strategy and workflow in one batch, within the
        server's payload limit. Drops (and reports) an event that cannot be sent."""
        limit = self._nc.max_payload - _HEADER_ALLOWANCE
        alone = self._options.event_subjects
        messages: list[_Message] = []
        group: _Group | None = None
        key: tuple[str | None, str | None, str | None] | None = None
        for event in batch:
            try:
                payload = orjson.dumps(event.to_dict())
            except (TypeError, ValueError) as exc:
                self._reject(event, "unserialisable", f"data is not JSON: {describe(exc)}")
                continue
            if alone or event.type in _EMERGENCY_SUBJECTS:
                if len(payload) > limit:
                    self._reject(event, "too_large", f"{len(payload)} bytes exceed {limit}")
                    continue
                if group is not None:
                    messages.append(group.message())
                    group = None
                messages.append(
                    _Message([event], subject_for(event), payload, encode_token(event.event_id))
                )
                continue
            if len(payload) + len(_BATCH_HEAD) + len(_BATCH_TAIL) > limit:
                self._reject(event, "too_large", f"{len(payload)} bytes exceed {limit}")
                continue
            ids = (event.bot_id, event.strategy_id, event.workflow_id)
            if group is not None and (ids != key or not group.fits(payload, limit)):
                messages.append(group.message())
                group = None
            if group is None:
                group, key = _Group(batch_subject(*ids)), ids
            group.add(event, payload)
        if group is not None:
            messages.append(group.message())
        return messages

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._pending_ack
        # A late answer to an abandoned batch matches no pending reply subject.
        if pending is not None and msg.subject == pending[0] and not pending[1].done():
            pending[1].set_result(msg)

    def _count_failure(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.events_publish_failures.labels(reason).inc()

    def _reject(self, event: Event, reason: str, detail: str) -> None:
        """Drop an event that can never be sent."""
        self._count_failure(reason)
        self._lose(1)
        _log.error(
            "events.publish_rejected",
            event_id=shown(event.event_id),
            event_type=shown(event.type),
            execution_id=shown(event.execution_id),
            reason=reason,
            detail=detail,
        )

    def _unsent(self, batch: list[Event], reason: str) -> list[Event]:
        """Record that ``batch`` goes back to the queue; logged once until one gets through."""
        self._count_failure(reason)
        if self._failure is None:
            _log.warning("events.publish_failing", reason=reason, events=len(batch))
        self._failure = reason
        return batch

    def _requeue(self, events: list[Event]) -> None:
        # Unacknowledged events are older than anything queued, so they go first;
        # if they no longer all fit, the oldest of them are the ones dropped.
        room = self._options.buffer_size - len(self._queue)
        if len(events) > room:
            self._lose(len(events) - room)
            events = events[len(events) - room :]
        self._queue.extendleft(reversed(events))

    # -- live subscriptions -------------------------------------------------------

    async def subscribe(self, topic: str, handler: EventHandler) -> LocalSubscription:
        """See :meth:`tradeflow.ports.EventBus.subscribe`; also raises ``UnavailableError``
        when NATS does not take the subscription."""
        subscription = await self._local.subscribe(topic, handler)
        async with self._subscribe_lock:
            if not self._event_subs:
                try:
                    self._event_subs = (
                        await self._nc.subscribe(EVENTS_PREFIX + ">", cb=self._on_event),
                        await self._nc.subscribe(BATCHES_PREFIX + ">", cb=self._on_event),
                        await self._nc.subscribe(EMERGENCY_PREFIX + ">", cb=self._on_event),
                    )
                    # Return only once the server has the interest. nats-py's flush()
                    # writes its PING ahead of queued SUBs, so it proves nothing here;
                    # a request is queued behind them, so its reply does.
                    await self._js.account_info()
                except (TimeoutError, nats.errors.Error) as exc:
                    await self._local.unsubscribe(subscription)
                    raise UnavailableError(f"cannot subscribe on NATS: {describe(exc)}") from exc
        return subscription

    async def _on_event(self, msg: Msg) -> None:
        if not self._local.has_subscribers:
            return
        for item in self._decode(msg):
            self._local.deliver(item)

    def _decode(self, msg: Msg) -> list[dict[str, Any]]:
        """The events ``msg`` carries (live or replayed), in order; none, logged and
        counted, when it is no JSON object, or an event in it did not come on the subject
        its type and ids give (a batch: on the batch subject of its ids, and no emergency
        type).

        The server lets only the emergency service publish on ``tradeflow.v1.emergency.>``
        but every executor on any workflow subject: an emergency type there is a forgery,
        and a workflow event on another workflow's subject would defeat the subject
        filters. Checking the subject makes the server's permissions hold for the payload.
        """
        try:
            item = orjson.loads(msg.data)
        except ValueError as exc:
            self._discard(msg, "undecodable", describe(exc))
            return []
        batch = msg.subject.startswith(BATCHES_PREFIX)
        items = item.get("events") if batch and isinstance(item, dict) else [item]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            self._discard(msg, "undecodable", "not a JSON object" + (" of events" if batch else ""))
            return []
        if not 0 < len(items) <= _BATCH_MAX_EVENTS:
            # More would overlap the next message's positions (a forged batch: the
            # publisher never sends one), and a consumer resuming there would skip events.
            self._discard(msg, "undecodable", f"a batch of {len(items)} events")
            return []
        subject_of = _batch_subject_of if batch else _subject_of
        for event in items:
            if subject_of(event) != msg.subject:
                type_ = shown(event.get("type"))
                self._discard(msg, "wrong_subject", f"not the subject of type {type_} and its ids")
                return []
        return items

    def _discard(self, msg: Msg, reason: str, error: str) -> None:
        if self._metrics is not None:
            self._metrics.events_discarded.labels(reason).inc()
        _log.error("events.discarded", subject=shown(msg.subject), reason=reason, error=error)

    async def unsubscribe(self, subscription: Subscription) -> None:
        await self._local.unsubscribe(subscription)

    # -- replay -------------------------------------------------------------------

    def replay(
        self,
        *,
        after_sequence: int = 0,
        bot_id: str | None = None,
        strategy_id: str | None = None,
        workflow_id: str | None = None,
        execution_id: str | None = None,
    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        """See :meth:`tradeflow.ports.EventBus.replay`. Bot, strategy and workflow ids filter
        on the server (by subject), ``execution_id`` here."""
        check_after_sequence(after_sequence)
        if bot_id is None and strategy_id is None and workflow_id is None:
            subject = ALL_SUBJECTS
        else:
            # Events and batches alike: tradeflow.v1.<events|batches>.<ids>.<type|batch>.
            ids = (bot_id, strategy_id, workflow_id)
            tokens = ".".join("*" if v is None else encode_token(v) for v in ids)
            subject = f"tradeflow.v1.*.{tokens}.*"
        return self._replay(subject, after_sequence, execution_id)

    async def _replay(
        self, subject: str, after: int, execution_id: str | None
    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        # After position (message m, index i): message m's events past i, then m + 1 on.
        message, seen = divmod(after, POSITION_SLOTS)
        start = max(1, message if seen < _BATCH_MAX_EVENTS else message + 1)
        try:
            sub = await self._js.subscribe(
                subject,
                stream=self._stream_config.name,
                ordered_consumer=True,
                idle_heartbeat=self._options.replay_heartbeat,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                config=api.ConsumerConfig(opt_start_seq=start),
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(
                f"cannot replay stream {self._stream_config.name!r} from sequence {start}: "
                f"{describe(exc)}"
            ) from exc
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=None)
                except nats.errors.ConnectionClosedError:
                    return
                sequence = msg.metadata.sequence.stream
                for index, item in enumerate(self._decode(msg)):
                    if sequence == message and index <= seen:
                        continue  # seen before the replay began
                    if execution_id is not None and item.get("execution_id") != execution_id:
                        continue
                    yield sequence * POSITION_SLOTS + index, item
        finally:
            # Best effort: the server drops the ephemeral consumer once interest is gone.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- shutdown -----------------------------------------------------------------

    async def close(self) -> None:
        """Send what is queued (bounded wait), deliver what arrived, then disconnect."""
        if self._closed:
            return
        self._closed = True
        if not await self.flush(self._options.close_timeout):
            _log.warning("events.close_unflushed", events=len(self._queue) + self._in_flight)
            self._lose(len(self._queue) + self._in_flight)
            self._queue.clear()
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.wait((self._publisher,))
        try:
            # Drain hands every message already received to the subscribers' buffers.
            await self._nc.drain()
        except (TimeoutError, nats.errors.Error) as exc:
            _log.warning("events.nats_drain_failed", error=describe(exc))
            await self._nc.close()
        await self._local.close()


def _stream_differences(found: api.StreamConfig, wanted: api.StreamConfig) -> list[str]:
    """The fields of :data:`_STREAM_FIELDS` in which the stream ``found`` differs."""

    def value(config: api.StreamConfig, field: str) -> object:
        v = getattr(config, field)
        if v is None:
            return _FIELD_UNSET.get(field)
        return sorted(v) if field == "subjects" else v

    return [field for field in _STREAM_FIELDS if value(found, field) != value(wanted, field)]


def _batch_subject_of(item: dict[str, Any]) -> str | None:
    """The batch subject of a workflow event with ``item``'s ids; None for an emergency
    type (never in a batch), a type that is no string or an id neither string nor null."""
    type_, *ids = (item.get(name) for name in ("type", "bot_id", "strategy_id", "workflow_id"))
    if not isinstance(type_, str) or type_ in _EMERGENCY_SUBJECTS:
        return None
    if not all(v is None or isinstance(v, str) for v in ids):
        return None
    return batch_subject(*ids)


@dataclass(slots=True)
class _Message:
    """One NATS message of the publisher: the events it carries, where and how."""

    events: list[Event]
    subject: str
    payload: bytes
    msg_id: str
    """Its ``Nats-Msg-Id``: the event's id, or a batch's first event id and length."""


_BATCH_HEAD: Final = b'{"schema_version":1,"events":['
_BATCH_TAIL: Final = b"]}"


@dataclass(slots=True)
class _Group:
    """Workflow events of one bot, strategy and workflow being gathered into one batch."""

    subject: str
    events: list[Event] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    size: int = len(_BATCH_HEAD) + len(_BATCH_TAIL)

    def fits(self, payload: bytes, limit: int) -> bool:
        return len(self.events) < _BATCH_MAX_EVENTS and self.size + len(payload) + 1 <= limit

    def add(self, event: Event, payload: bytes) -> None:
        self.events.append(event)
        self.payloads.append(payload)
        self.size += len(payload) + 1

    def message(self) -> _Message:
        first = self.events[0].event_id
        return _Message(
            self.events,
            self.subject,
            _BATCH_HEAD + b",".join(self.payloads) + _BATCH_TAIL,
            encode_token(f"{first}+{len(self.events)}"),
        )


def _subject_of(item: dict[str, Any]) -> str | None:
    """The subject an event with ``item``'s type and ids is published on; None when its
    type is no string or an id is neither a string nor null."""
    type_, *ids = (item.get(name) for name in ("type", "bot_id", "strategy_id", "workflow_id"))
    if not isinstance(type_, str) or not all(v is None or isinstance(v, str) for v in ids):
        return None
    return _subject(type_, *ids)
