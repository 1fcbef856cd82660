"""Emergency state in Redis: the store behind the emergency service.

:class:`RedisEmergencyStore` implements :class:`~tradeflow.ports.EmergencyStore`;
:class:`RedisEmergencyController` is the one
:class:`~tradeflow.engine.emergency.EmergencyController` on it, plus
what a ``WatchState`` stream needs (:meth:`~RedisEmergencyController.changed`, :meth:`~RedisEmergencyController.wake`).
:class:`RedisRequestLog` keeps the service's answers to mutating requests.

Layout (``{p}`` is ``{prefix:emergency}``, a hash tag keeping every key in one
cluster slot so one script may touch them all):

- ``{p}:halts`` hash ``"<scope>:<target>"`` (:func:`halt_field`) -> JSON
  ``[reason, actor, state, cancel_orders]`` (a value of the seed's, ``[reason,
  actor]``, reads as ``halted`` without cancel), and ``{p}:halt_since`` hash, same
  fields -> ``since`` (kept apart so a re-halt keeps it with a plain ``HSETNX``);
  :func:`halt_keys` names both for the state store, whose write script reads them;
- ``{p}:limits`` hash :attr:`RiskLimit.key <tradeflow.domain.records.RiskLimit.key>` (the
  type for a global limit) -> JSON of the limit's fields after ``limit_type``:
  ``[threshold, direction, auto_halt, updated_at, updated_by, scope, target, window,
  state, consecutive, timezone, reset_time, lift_on_reset, cancel_orders]`` (a value of
  version 5's, the first five only, reads as a global limit without options);
- ``{p}:trigger_progress`` hash limit key -> JSON object of a
  :class:`~tradeflow.domain.risk.TriggerProgress` (``version`` included), written only by a
  compare-and-set script that also requires the limit to exist (plus the ``nonce`` of the
  write, which makes a repeated write recognisable), removed with the limit;
  not part of the state (its changes bump no version and wake no watcher);
- ``{p}:audit`` stream, approximately capped, entry ids ``<n>-0`` from the
  ``{p}:audit_id`` counter, field ``entry`` -> JSON;
- ``{p}:version`` counter, incremented by every change of halts or limits,
  which is then published on the channel ``<prefix>:emergency:changed``.

Every change is one Lua script (atomic, one round trip) that also returns the
whole new state, so the local view is current when the call returns. Other
writers are followed by a :class:`~tradeflow.engine.emergency.WatchedView`: it
re-reads on each published change and at least every ``poll_interval`` seconds
(0.1 s), and fails closed when Redis is unreachable or the state was not confirmed for
``max_staleness`` seconds (0.25 s: with the executors' own bound, a service cut off
from Redis leaves them at most a second of doubt).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from typing import Any, Final, TypeVar, cast

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import Message
from redis.exceptions import RedisError

from tradeflow.adapters.redis.connection import reconnecting
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.codec import from_json, to_json_bytes
from tradeflow.domain.emergency import EmergencySnapshot, HaltCondition, InFlightAction
from tradeflow.domain.errors import ConfigurationError, UnavailableError, describe
from tradeflow.domain.limits import check_id
from tradeflow.domain.ownership import Fence
from tradeflow.domain.principals import attributed, current_caller
from tradeflow.domain.records import (
    AuditEntry,
    Event,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
)
from tradeflow.domain.risk import TriggerProgress
from tradeflow.domain.trading import TradingState
from tradeflow.engine.emergency import EmergencyController, WatchedView
from tradeflow.observability.metrics import Metrics

__all__ = [
    "RedisEmergencyController",
    "RedisEmergencyStore",
    "RedisRequestLog",
    "RedisResumeRequests",
    "ResumeStep",
    "halt_field",
    "halt_keys",
    "limit_of",
    "stored_halt",
    "stored_limit",
]

M = TypeVar("M", bound=Message)

_StreamRows = list[tuple[bytes, dict[bytes, bytes]]]
"""What ``XRANGE``/``XREVRANGE`` return on a bytes client."""

_RECONNECT_BACKOFF: Final = (0.1, 5.0)
_RUNNING: Final = b"running"
_ANSWER: Final = b"="
"""Prefix of a stored answer (a serialized answer may be empty, so it needs one)."""
_CLAIM_SECONDS: Final = 60.0
_RELAY_IDLE_SECONDS: Final = 1.0
"""How long the acknowledgement relay waits for a message before it pings its link."""
"""How long a claimed id stays blocked if its service dies before answering."""

# KEYS: 1 halts, 2 halt_since, 3 limits, 4 version, 5 audit, 6 audit_id, 7 trigger_progress.
# ARGV: 1 audit entry JSON, 2 audit cap, 3 change channel, 4.. per script.
_PRELUDE: Final = """
local function audit()
  local id = redis.call('INCR', KEYS[6])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], string.format('%d-0', id), 'entry', ARGV[1])
end
local function changed()
  redis.call('PUBLISH', ARGV[3], redis.call('INCR', KEYS[4]))
end
local function state(result)
  return {result, redis.call('GET', KEYS[4]) or '0', redis.call('HGETALL', KEYS[1]),
          redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
end
"""
_LOAD: Final = _PRELUDE + "return state(0)"
# The condition on the standing halt of a field (HaltCondition): ARGV[c] the rank the
# written state must exceed ('' for none), ARGV[c + 1] the actor it must have (''),
# ARGV[c + 2] the time it must have stood since ('').
_STANDING: Final = """
local RANKS = {active = 0, reduce_only = 1, cancel_only = 2, halted = 3}
local function admitted(field, c)
  if ARGV[c] == '' and ARGV[c + 1] == '' and ARGV[c + 2] == '' then return true end
  local stored = redis.call('HGET', KEYS[1], field)
  if not stored then return ARGV[c + 1] == '' and ARGV[c + 2] == '' end
  local halt = cjson.decode(stored)
  if ARGV[c + 1] ~= '' and halt[2] ~= ARGV[c + 1] then return false end
  if ARGV[c + 2] ~= '' and
     tonumber(redis.call('HGET', KEYS[2], field)) ~= tonumber(ARGV[c + 2]) then
    return false
  end
  -- A halt stored before halts had states is a halt.
  return ARGV[c] == '' or (RANKS[halt[3] or 'halted'] or 3) < tonumber(ARGV[c])
end
"""
# ARGV 4 halt field, 5 since, 6 halt JSON, 7-9 the condition; returns the stored since,
# or -1 (nothing written) when the condition does not hold.
_SAVE_HALT: Final = (
    _PRELUDE
    + _STANDING
    + """
if not admitted(ARGV[4], 7) then return state(-1) end
redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[1], ARGV[4], ARGV[6])
audit()
changed()
return state(redis.call('HGET', KEYS[2], ARGV[4]))
"""
)
# ARGV 4 halt field, 5-7 the condition; returns 1 if a halt was removed.
_DELETE_HALT: Final = (
    _PRELUDE
    + _STANDING
    + """
if not admitted(ARGV[4], 5) then return state(0) end
if redis.call('HDEL', KEYS[1], ARGV[4]) == 0 then return state(0) end
redis.call('HDEL', KEYS[2], ARGV[4])
audit()
changed()
return state(1)
"""
)
# ARGV 4 limit key, 5 limit JSON. A trigger's progress stays (replacing keeps it).
_SAVE_LIMIT: Final = (
    _PRELUDE
    + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
audit()
changed()
return state(1)
"""
)
# ARGV 4 limit key; returns 1 if a limit was removed (its progress goes with it).
_DELETE_LIMIT: Final = (
    _PRELUDE
    + """
if redis.call('HDEL', KEYS[3], ARGV[4]) == 0 then return state(0) end
redis.call('HDEL', KEYS[7], ARGV[4])
audit()
changed()
return state(1)
"""
)
# KEYS 1 limits, 2 trigger_progress; ARGV 1 limit key, 2 expected version, 3 progress JSON
# (its version is the expected one plus one, and a nonce of this write). Returns 1 if
# written. Finding exactly this value stored already is this very write repeated after a
# lost reply (the nonce tells it from another evaluator's equal progress): it counts as
# done, which makes the script safe to repeat.
_SAVE_PROGRESS: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local stored = redis.call('HGET', KEYS[2], ARGV[1])
local version = 0
if stored then
  if stored == ARGV[3] then return 1 end
  version = cjson.decode(stored)['version']
end
if version ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""
_PROGRESS_FIELDS: Final = frozenset(f.name for f in fields(TriggerProgress))
_APPEND_AUDIT: Final = _PRELUDE + "audit()\nreturn state(1)"
_REPEATABLE: Final = frozenset((_LOAD, _SAVE_HALT, _SAVE_LIMIT))
"""Scripts whose second run changes no state (at most it repeats an audit entry)."""

_log = structlog.get_logger(__name__)


class RedisEmergencyStore:
    """Halts, risk limits and the audit log in Redis, with a local, push-updated view.

    ``client`` must return bytes (the default, ``decode_responses=False``) and
    stays its owner's to close. Call :meth:`start` before use. ``audit_cap``
    bounds the audit stream (approximately); ``poll_interval`` and
    ``max_staleness`` are in seconds (``max_staleness=None`` never expires the view).
    """

    __slots__ = (
        "_audit_cap",
        "_channel",
        "_client",
        "_keys",
        "_lock",
        "_poll_interval",
        "_save_progress",
        "_scripts",
        "_view",
    )

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "tradeflow",
        clock: Clock,
        audit_cap: int = 100_000,
        poll_interval: float = 0.1,
        max_staleness: float | None = 0.25,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "redis client for the emergency store: expected decode_responses=False, found True"
            )
        self._client = client
        self._audit_cap = audit_cap
        self._poll_interval = poll_interval
        self._view = WatchedView(
            "redis emergency store",
            clock=clock,
            max_staleness=max_staleness,
            backoff=_RECONNECT_BACKOFF,
        )
        self._keys = _keys(prefix)
        self._channel = f"{prefix}:emergency:changed"
        self._scripts = {
            script: client.register_script(script)
            for script in (
                _LOAD,
                _SAVE_HALT,
                _DELETE_HALT,
                _SAVE_LIMIT,
                _DELETE_LIMIT,
                _APPEND_AUDIT,
            )
        }
        self._save_progress = client.register_script(_SAVE_PROGRESS)
        # One script at a time: replies are installed in the order Redis applied them.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the state (``UnavailableError`` if Redis cannot be reached), then follow it."""
        await self.refresh()
        self._view.start(self._follow, name="emergency:redis-watcher")

    def snapshot(self) -> EmergencySnapshot:
        """The last state read from Redis; ``UnavailableError`` unless it is confirmed current."""
        return self._view.current()

    async def wait_for_change(self, after_version: int) -> EmergencySnapshot:
        """The first confirmed snapshot whose version differs from ``after_version`` (waits
        for one). Raises ``UnavailableError`` once the store is closed."""
        return await self._view.wait_until(lambda snapshot: snapshot.version != after_version)

    async def changed(self) -> None:
        """Return at the next change of the view (see
        :meth:`~tradeflow.engine.emergency.WatchedView.changed`)."""
        await self._view.changed()

    def wake(self) -> None:
        """Wake every :meth:`changed` waiter now."""
        self._view.wake()

    async def refresh(self) -> EmergencySnapshot:
        """Re-read the whole state from Redis now."""
        await self._run(_LOAD)
        return self._view.current()

    async def save_halt(
        self, halt: HaltState, audit: AuditEntry, condition: HaltCondition | None = None
    ) -> HaltState | None:
        """See the port: the condition is checked by the script that writes."""
        since = await self._run(
            _SAVE_HALT,
            audit,
            halt_field(halt.scope, halt.target),
            repr(halt.since),
            to_json_bytes([halt.reason, halt.actor, halt.state.value, halt.cancel_orders]),
            *_condition_args(condition, halt.state),
        )
        if since == -1:
            return None
        return replace(halt, since=float(since))

    async def delete_halt(
        self,
        scope: Scope,
        target: str | None,
        audit: AuditEntry,
        condition: HaltCondition | None = None,
    ) -> bool:
        """See the port: the condition is checked by the script that deletes."""
        return bool(
            await self._run(
                _DELETE_HALT, audit, halt_field(scope, target), *_condition_args(condition, None)
            )
        )

    async def save_risk_limit(self, limit: RiskLimit, audit: AuditEntry) -> None:
        await self._run(_SAVE_LIMIT, audit, limit.key, stored_limit(limit))

    async def delete_risk_limit(self, key: str, audit: AuditEntry) -> bool:
        return bool(await self._run(_DELETE_LIMIT, audit, key))

    async def trigger_progress(self, keys: Sequence[str]) -> dict[str, TriggerProgress]:
        """See the port: one ``HMGET`` (``UnavailableError`` if Redis cannot be reached or
        holds a value tradeflow did not write)."""
        if not keys:
            return {}
        try:
            values = cast(
                list[bytes | None],
                await reconnecting(self._client.hmget, self._keys[6], list(keys)),
            )
            return {
                key: _progress(value)
                for key, value in zip(keys, values, strict=True)
                if value is not None
            }
        except RedisError as exc:
            raise UnavailableError(f"redis emergency store: {describe(exc)}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise UnavailableError(f"unreadable trigger progress: {describe(exc)}") from exc

    async def save_trigger_progress(
        self, key: str, progress: TriggerProgress, expected_version: int
    ) -> bool:
        """See the port: one script checks the limit and the stored version and writes."""
        stored = {**asdict(progress), "version": expected_version + 1}
        stored["nonce"] = secrets.token_hex(8)
        try:
            written = await reconnecting(
                self._save_progress,
                keys=(self._keys[2], self._keys[6]),
                args=(key, str(expected_version), to_json_bytes(stored)),
            )
        except RedisError as exc:
            raise UnavailableError(f"redis emergency store: {describe(exc)}") from exc
        return bool(written)

    async def append_audit(self, audit: AuditEntry) -> None:
        await self._run(_APPEND_AUDIT, audit)

    async def audit_entries(self, limit: int) -> list[AuditEntry]:
        try:
            rows = cast(_StreamRows, await self._client.xrevrange(self._keys[4], count=limit))
            return [_audit_entry(entry_id, fields[b"entry"]) for entry_id, fields in rows]
        except RedisError as exc:
            raise UnavailableError(f"redis emergency store: {describe(exc)}") from exc

    async def close(self) -> None:
        """Stop following Redis; later snapshots fail closed. The client stays open."""
        await self._view.close("emergency store closed")

    async def _run(self, script: str, audit: AuditEntry | None = None, *args: str | bytes) -> Any:
        """Run one script; install the state it returns; return its own result."""
        if self._view.closed:
            raise UnavailableError("emergency store closed")
        # An audit entry travels as its fields after the id (the store assigns that).
        head: tuple[str | bytes, str] = (
            ("", "")
            if audit is None
            else (to_json_bytes(astuple(attributed(audit))[1:]), str(self._audit_cap))
        )
        call = self._scripts[script]
        argv = (*head, self._channel, *args)
        async with self._lock:
            try:
                if script in _REPEATABLE:
                    reply = await reconnecting(call, keys=self._keys, args=argv)
                else:
                    reply = await call(keys=self._keys, args=argv)
                result, snapshot = _parse_state(reply)
            except RedisError as exc:
                error = f"redis emergency store: {describe(exc)}"
                self._view.lose(error)
                raise UnavailableError(error) from exc
            except (ValueError, KeyError, TypeError) as exc:
                # Data no tradeflow wrote: refuse trading rather than guess.
                self._view.lose(f"unreadable emergency state in redis: {describe(exc)}")
                raise UnavailableError(f"unreadable emergency state: {describe(exc)}") from exc
            self._view.confirm(snapshot)
        return result

    async def _follow(self) -> None:
        """One link for the view: re-read on each published change until Redis fails."""
        try:
            async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(self._channel)
                # Subscribed before reading: a change made in between still wakes us.
                await self.refresh()
                while not self._view.closed:
                    # Silence re-reads too: a lost message or a half-dead link
                    # then costs at most one interval.
                    await pubsub.get_message(timeout=self._poll_interval)
                    await self.refresh()
        except RedisError as exc:
            raise UnavailableError(f"redis emergency store: {describe(exc)}") from exc


class RedisEmergencyController(EmergencyController):
    """The emergency controller on a :class:`RedisEmergencyStore` (what the emergency
    service runs). Call :meth:`start` before use; ``client`` stays the caller's to close."""

    __slots__ = ("_redis",)

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "tradeflow",
        publish: Callable[[Event], None] | None = None,
        metrics: Metrics | None = None,
        clock: Clock,
        id_factory: IdFactory,
        poll_interval: float = 0.1,
        max_staleness: float | None = 0.25,
    ) -> None:
        store = RedisEmergencyStore(
            client,
            prefix=prefix,
            clock=clock,
            poll_interval=poll_interval,
            max_staleness=max_staleness,
        )
        super().__init__(
            store, publish=publish, metrics=metrics, clock=clock, id_factory=id_factory
        )
        self._redis = store

    async def start(self) -> None:
        """Load the state and follow changes made by other writers."""
        await self._redis.start()

    async def refresh(self) -> EmergencySnapshot:
        """Re-read the state from Redis now (``UnavailableError`` if unreachable)."""
        return await self._redis.refresh()

    async def changed(self) -> None:
        """Return at the next change of the state as this replica sees it: a new version
        (whoever wrote it), lost, back or closed, or :meth:`wake`. For ``WatchState``:
        then send the :meth:`snapshot`, which raises once it cannot be confirmed."""
        await self._redis.changed()

    def wake(self) -> None:
        """Wake every :meth:`changed` waiter now (a server draining its streams)."""
        self._redis.wake()

    async def wait_for_change(self, after_version: int) -> EmergencySnapshot:
        """The first state whose version differs from ``after_version``; waits for a change
        by any writer (``WatchState`` waits with :meth:`changed` instead, which also wakes
        on a lost or regained view and on a drain)."""
        return await self._redis.wait_for_change(after_version)


class RedisAckRelay:
    """Halt barrier acknowledgements shared by every emergency service replica.

    An executor sends its acknowledgements to the one replica its channel reaches, while
    a halt may be served by another: each replica publishes the acknowledgements it
    receives on ``<prefix>:emergency:acks`` and :meth:`follow` delivers the others' to
    its barrier (``origin`` tells its own apart: its servicer delivered those). A message
    lost while a replica resubscribes costs at most that executor's fencing by that
    replica's next halt, the safe side.
    """

    __slots__ = ("_channel", "_client", "_origin")

    def __init__(self, client: aioredis.Redis, *, prefix: str = "tradeflow", origin: str) -> None:
        self._client = client
        self._channel = f"{prefix}:emergency:acks"
        self._origin = origin
        """This replica's id: what it published it has delivered already."""

    async def publish(
        self, fence: Fence, version: int, in_flight: Sequence[InFlightAction]
    ) -> None:
        """Tell every replica (``UnavailableError`` if Redis cannot be reached)."""
        message = to_json_bytes(
            [self._origin, fence.owner, fence.epoch, version, [astuple(a) for a in in_flight]]
        )
        try:
            await self._client.publish(self._channel, message)
        except RedisError as exc:
            raise UnavailableError(f"redis ack relay: {describe(exc)}") from exc

    async def follow(self, deliver: Callable[[Fence, int, Sequence[InFlightAction]], None]) -> None:
        """Deliver every acknowledgement another replica published, until cancelled; a
        broken link is re-opened after a pause, an unreadable message skipped."""
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    while True:
                        message = await pubsub.get_message(timeout=_RELAY_IDLE_SECONDS)
                        if message is not None:
                            # The answer to the ping below arrives here too, as a "pong".
                            if message["type"] == "message":
                                self._deliver(message["data"], deliver)
                            continue
                        # Quiet for a while: a link that died without a reset (the server
                        # moved) would stay quiet forever; a ping finds out.
                        async with asyncio.timeout(_RELAY_IDLE_SECONDS):
                            await pubsub.ping()
            except (RedisError, TimeoutError) as exc:
                _log.warning("emergency.ack_relay_lost", error=describe(exc))
                await asyncio.sleep(_RECONNECT_BACKOFF[0])

    def _deliver(
        self, data: bytes, deliver: Callable[[Fence, int, Sequence[InFlightAction]], None]
    ) -> None:
        try:
            origin, owner, epoch, version, in_flight = from_json(data)
            if origin == self._origin:
                return
            acknowledged = (
                Fence(owner, epoch),
                version,
                tuple(InFlightAction(*action) for action in in_flight),
            )
        except (ValueError, TypeError) as exc:
            _log.warning("emergency.ack_relay_unreadable", error=describe(exc))
            return
        try:
            deliver(*acknowledged)
        except Exception:  # the relay must outlive whatever one message does
            _log.exception("emergency.ack_relay_delivery_failed")


class RedisRequestLog:
    """The answers to mutating requests, by method, caller (the authenticated principal)
    and ``request_id``, kept ``ttl`` seconds.

    The first request with an id claims it (``SET NX``, expiring after a minute
    in case the service dies mid-call) and then stores its serialized answer for
    ``ttl`` seconds; a repeat within that time gets the stored answer and does
    not act again. A repeat while the first is still running is refused with
    ``UnavailableError`` (retry it); a request that fails releases its id.
    Bounded by the TTL: Redis forgets each id on its own. ``""`` is no id (the
    request is not deduplicated); any other ``request_id`` must be a well-formed id.
    """

    __slots__ = ("_client", "_prefix", "_ttl_ms")

    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl: float) -> None:
        self._client = client
        self._prefix = f"{prefix}:emergency:request:"
        self._ttl_ms = max(1, round(ttl * 1000))

    async def once(
        self,
        method: str,
        request_id: str,
        run: Callable[[], Awaitable[M]],
        response_type: type[M],
    ) -> M:
        if not request_id:
            return await run()
        check_id("request_id", request_id)
        # Each caller's ids are its own: another principal's cannot be replayed to read its
        # answer, nor claimed first to make its request a no-op ("|" is in no name or id).
        key = f"{self._prefix}{method}:{current_caller().principal}|{request_id}"
        try:
            claimed = await self._client.set(
                key, _RUNNING, nx=True, px=round(_CLAIM_SECONDS * 1000)
            )
            stored = None if claimed else await self._client.get(key)
        except RedisError as exc:
            raise UnavailableError(f"request log in redis: {describe(exc)}") from exc
        if not claimed:
            if isinstance(stored, bytes) and stored.startswith(_ANSWER):
                return response_type.FromString(stored[len(_ANSWER) :])
            raise UnavailableError(
                f"{method} request {request_id!r} is still being processed; retry it"
            )
        try:
            response = await run()
        except BaseException:
            with contextlib.suppress(RedisError):
                await self._client.delete(key)
            raise
        try:
            await self._client.set(key, _ANSWER + response.SerializeToString(), px=self._ttl_ms)
        except RedisError as exc:
            # The change is made and audited; only a retry of it could act twice.
            _log.warning("emergency.request_log_failed", request_id=request_id, error=describe(exc))
        return response


_RESUME_STEP: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local found = cjson.decode(current)
  if found['halt'] ~= ARGV[4] then
    current = false
  elseif found['by'] == ARGV[1] then
    return {'pending', current, redis.call('PTTL', KEYS[1])}
  else
    redis.call('DEL', KEYS[1])
    return {'confirmed', current, 0}
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {'requested', ARGV[2], tonumber(ARGV[3])}
"""
"""KEYS: the scope's request. ARGV: 1 the caller, 2 a new request (JSON), 3 its window
(ms), 4 the halt it is about. No request about this halt (none, or one about an earlier
halt of the scope): this one is recorded. One by the caller: it still waits. One by
someone else: it is consumed (exactly one confirmation wins it)."""


@dataclass(frozen=True, slots=True)
class ResumeStep:
    """Where a two-step resume stands after a call."""

    outcome: str
    """``requested`` (recorded now), ``pending`` (the caller's own request still waits)
    or ``confirmed`` (someone else's request, consumed by this call)."""
    requested_by: str
    reason: str
    expires_at: float
    """When the request lapses (for ``confirmed``: when the confirmation came)."""


class RedisResumeRequests:
    """Resume requests awaiting a second operator, one per scope, in Redis (so any
    replica of the emergency service can take the confirmation), each expiring after
    ``window`` seconds."""

    __slots__ = ("_client", "_clock", "_prefix", "_script", "_window_ms")

    def __init__(self, client: aioredis.Redis, *, prefix: str, window: float, clock: Clock) -> None:
        self._client = client
        self._clock = clock
        self._prefix = f"{{{prefix}:emergency}}:resume_request:"
        self._script = client.register_script(_RESUME_STEP)
        self._window_ms = max(1, round(window * 1000))

    async def step(self, halt: HaltState, *, caller: str, reason: str) -> ResumeStep:
        """Record a request by ``caller`` to resume ``halt``, or consume another operator's
        request about that same halt (atomically). A request about an earlier halt of the
        scope (left by a confirmation that lost a race, or by a halt lifted since) never
        confirms this one."""
        key = self._prefix + halt_field(halt.scope, halt.target)
        # The halt as the caller saw it: re-issued since (another state, reason or actor),
        # it is another decision, which takes requests of its own.
        about = to_json_bytes([halt.since, halt.state.value, halt.actor, halt.reason]).decode()
        request = to_json_bytes({"by": caller, "reason": reason, "halt": about})
        try:
            outcome, stored, ttl_ms = await self._script(
                keys=[key], args=[caller, request, self._window_ms, about]
            )
        except RedisError as exc:
            raise UnavailableError(f"resume requests in redis: {describe(exc)}") from exc
        found = from_json(stored)
        return ResumeStep(
            outcome.decode() if isinstance(outcome, bytes) else str(outcome),
            str(found["by"]),
            str(found["reason"]),
            self._clock.time() + int(ttl_ms) / 1000,
        )


def _keys(prefix: str) -> tuple[str, ...]:
    """The store's keys, in the order its scripts' ``KEYS`` take them."""
    base = f"{{{prefix}:emergency}}"
    return tuple(
        f"{base}:{name}"
        for name in (
            "halts",
            "halt_since",
            "limits",
            "version",
            "audit",
            "audit_id",
            "trigger_progress",
        )
    )


def halt_keys(prefix: str) -> tuple[str, str]:
    """The halts hash and the halt_since hash of the emergency state under ``prefix``
    (fields: :func:`halt_field`; values: see :func:`stored_halt`)."""
    halts, since = _keys(prefix)[:2]
    return halts, since


def halt_field(scope: Scope, target: str | None) -> str:
    """The field of the halt of ``scope``/``target`` in both halt hashes (a global
    halt's is ``"global:"``)."""
    return f"{scope.value}:{target or ''}"


def stored_halt(field: bytes, payload: bytes, since: bytes) -> HaltState:
    """The halt stored under ``field`` with JSON ``payload`` and ``since``; a seed's
    two-element payload is a ``HALTED`` halt that cancels nothing. Raises ``ValueError``
    (or ``KeyError``, ``TypeError``) for a value tradeflow did not write."""
    scope_name, _, target = field.decode().partition(":")
    scope = Scope(scope_name)
    reason, actor, *rest = from_json(payload)
    state, cancel_orders = rest or (TradingState.HALTED.value, False)
    return HaltState(
        scope,
        None if scope is Scope.GLOBAL else target,
        reason,
        actor,
        float(since),
        TradingState(state),
        bool(cancel_orders),
    )


def stored_limit(limit: RiskLimit) -> bytes:
    """The ``{p}:limits`` value of ``limit`` (see the module docstring)."""
    return to_json_bytes(
        [
            limit.threshold,
            limit.direction.value,
            limit.auto_halt,
            limit.updated_at,
            limit.updated_by,
            limit.scope.value,
            limit.target,
            limit.window,
            None if limit.state is None else limit.state.value,
            limit.consecutive,
            limit.timezone,
            limit.reset_time,
            limit.lift_on_reset,
            limit.cancel_orders,
        ]
    )


def limit_of(field: bytes, payload: bytes) -> RiskLimit:
    """The limit stored under ``field`` (its key) with JSON ``payload``; a value of
    version 5 (five fields, a global limit keyed by type) reads with the default options.
    Raises ``ValueError`` (or ``TypeError``) for a value tradeflow did not write."""
    key = field.decode()
    threshold, direction, auto_halt, at, by, *rest = from_json(payload)
    limit = RiskLimit(key, threshold, LimitDirection(direction), auto_halt, at, by)
    if rest:
        scope_name, target, window, state, consecutive, timezone, reset, lift, cancel = rest
        scope = Scope(scope_name)
        # The type is the key less its scope's suffix (see limit_key).
        suffix = "" if scope is Scope.GLOBAL else f"@{scope.value}:{target}"
        limit = replace(
            limit,
            limit_type=key[: len(key) - len(suffix)],
            scope=scope,
            target=None if scope is Scope.GLOBAL else target,
            window=window,
            state=None if state is None else TradingState(state),
            consecutive=int(consecutive),
            timezone=timezone,
            reset_time=reset,
            lift_on_reset=bool(lift),
            cancel_orders=bool(cancel),
        )
    if limit.key != key:
        raise ValueError(f"risk limit field {key!r} holds the limit {limit.key!r}")
    return limit


def _condition_args(
    condition: HaltCondition | None, state: TradingState | None
) -> tuple[str, str, str]:
    """``condition`` as the scripts' three arguments (see ``_STANDING``)."""
    if condition is None:
        return "", "", ""
    rank = ""
    if state is not None and condition.stricter:
        rank = str(state.rank)
    elif state is not None and condition.no_looser:
        rank = str(state.rank + 1)  # ranks are integers: "not looser" is "above one below"
    since = "" if condition.since is None else repr(condition.since)
    return rank, condition.over or "", since


def _progress(payload: bytes) -> TriggerProgress:
    """Progress as stored: fields this code does not know (a newer writer's) are ignored."""
    stored = from_json(payload)
    if not isinstance(stored, dict):
        raise ValueError("trigger progress is not a JSON object")
    return TriggerProgress(**{k: v for k, v in stored.items() if k in _PROGRESS_FIELDS})


def _audit_entry(entry_id: bytes, payload: bytes) -> AuditEntry:
    at, actor, action, scope, target, reason, details = from_json(payload)
    return AuditEntry(
        entry_id=int(entry_id.partition(b"-")[0]),
        at=at,
        actor=actor,
        action=action,
        scope=None if scope is None else Scope(scope),
        target=target,
        reason=reason,
        details=details or {},
    )


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _parse_state(reply: list[Any]) -> tuple[Any, EmergencySnapshot]:
    """``(script result, snapshot)`` from a script's ``state(result)`` reply."""
    result, version, halt_rows, since_rows, limit_rows = reply
    since = _pairs(since_rows)
    halts = [
        stored_halt(field, payload, since[field]) for field, payload in _pairs(halt_rows).items()
    ]
    limits = [limit_of(field, payload) for field, payload in _pairs(limit_rows).items()]
    return result, EmergencySnapshot.of(int(version), halts, limits)
