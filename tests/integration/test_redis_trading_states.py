"""Trading states in the Redis state store's write script, and its lease registry, against
a real redis-server: a guarded intent commits only if the halts stored by the emergency
store (same Redis, same prefix) admit its effect, decided in the same script as the commit;
``live_leases`` and ``revoke_lease`` are what the halt barrier fences with."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final, cast

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import (
    DEADLINE_SECONDS,
    checkpoint,
    event,
    eventually,
    execution,
    refusal_fields,
    refusal_of,
)
from servers import ServerProcess
from test_sqlite_trading_states import CONDITIONAL_CASES

from tradeflow.adapters.redis.emergency import (
    RedisAckRelay,
    RedisEmergencyController,
    RedisEmergencyStore,
    halt_field,
    halt_keys,
)
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import HaltCondition, HaltKey, InFlightAction, ScopeIds
from tradeflow.domain.errors import EmergencyHalted, ExecutionNotFound, LeaseLost
from tradeflow.domain.ownership import Fence, OwnerInfo
from tradeflow.domain.records import (
    ActionGuard,
    AuditEntry,
    ExecutionStatus,
    HaltState,
    Scope,
    StateBatch,
)
from tradeflow.domain.trading import OrderEffect, TradingState
from tradeflow.engine.barrier import HaltBarrier

pytestmark = pytest.mark.integration

IDS: Final = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")
TARGETS: Final = {
    Scope.GLOBAL: None,
    Scope.STRATEGY: IDS.strategy_id,
    Scope.BOT: IDS.bot_id,
    Scope.WORKFLOW: IDS.workflow_id,
}
"""The target of each scope that covers ``IDS``."""
RESTRICTED: Final = (TradingState.REDUCE_ONLY, TradingState.CANCEL_ONLY, TradingState.HALTED)
LEASE_SECONDS: Final = 30.0
CROWD_TRIALS: Final = 100
CROWD_WRITERS: Final = 8


@pytest.fixture
def store(client: aioredis.Redis, prefix: str) -> RedisStateStore:
    return RedisStateStore(client, prefix=prefix)


@pytest_asyncio.fixture
async def emergency(redis_server: ServerProcess, prefix: str) -> AsyncIterator[RedisEmergencyStore]:
    """The emergency store of the same prefix, on a client of its own (another writer)."""
    connection = aioredis.from_url(redis_server.url)
    emergency_store = RedisEmergencyStore(connection, prefix=prefix, clock=SystemClock())
    await emergency_store.start()
    yield emergency_store
    await emergency_store.close()
    await connection.aclose()


@pytest_asyncio.fixture
async def controller(
    redis_server: ServerProcess, prefix: str
) -> AsyncIterator[RedisEmergencyController]:
    """The emergency controller of the same prefix, on a client of its own."""
    connection = aioredis.from_url(redis_server.url)
    emergency_controller = RedisEmergencyController(
        connection, prefix=prefix, clock=SystemClock(), id_factory=new_id
    )
    await emergency_controller.start()
    yield emergency_controller
    await emergency_controller.close()
    await connection.aclose()


def owner(name: str) -> OwnerInfo:
    return OwnerInfo(name, "executor", "host", 1)


def guard(ids: ScopeIds, effect: OrderEffect) -> ActionGuard:
    return ActionGuard(ids.workflow_id, ids.bot_id, ids.strategy_id, effect)


def intent(
    execution_id: str, action: ActionGuard, fence: Fence | None = None, **fields: Any
) -> StateBatch:
    """A new execution's first batch carrying an action's intent: its record (claiming a
    request id), a checkpoint and an event, guarded by ``action``."""
    return StateBatch(
        execution=execution(execution_id, request_id=f"req-{execution_id}", **fields),
        checkpoints=(checkpoint(execution_id, "order"),),
        events=(event(execution_id, 1),),
        fence=fence,
        guard=action,
    )


async def save_halt(
    emergency: RedisEmergencyStore, scope: Scope, target: str | None, state: TradingState
) -> HaltState:
    """Store a halt of ``state`` through the emergency store (reason ``"<scope>:<target>"``)."""
    reason = f"{scope.value}:{target}"
    return await emergency.save_halt(
        HaltState(scope, target, reason, "test", 1.0, state),
        AuditEntry(0, 1.0, "test", "halt", scope, target, reason),
    )


async def nothing_written(store: RedisStateStore, execution_id: str) -> bool:
    """No trace of ``execution_id``: no record, request id, checkpoint or event."""
    with contextlib.suppress(ExecutionNotFound):
        await store.get_execution(execution_id)
        return False
    return (
        await store.find_by_request_id(f"req-{execution_id}") is None
        and await store.get_checkpoints(execution_id) == {}
        and await store.read_events(execution_id=execution_id) == []
    )


@pytest.mark.parametrize("state", RESTRICTED)
@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.asyncio
async def test_each_state_at_each_scope_admits_exactly_its_effects(
    store: RedisStateStore,
    controller: RedisEmergencyController,
    scope: Scope,
    state: TradingState,
) -> None:
    """A halt of ``state`` set through the controller refuses, in the write script, every
    effect the state does not allow for the ids it covers (naming reason, scope, target and
    state, writing nothing) and admits the rest; ids outside the scope are not refused."""
    target = TARGETS[scope]
    await controller.halt(scope, target, reason="wind down", actor="ops", state=state)
    outside = ScopeIds(workflow_id="wf-2", bot_id="bot-2", strategy_id="strat-2")

    for n, effect in enumerate(OrderEffect):
        covered, free = f"in-{n}", f"out-{n}"
        if state.allows(effect):
            await store.write(intent(covered, guard(IDS, effect)))
            assert (await store.get_execution(covered)).status is ExecutionStatus.RUNNING
        else:
            with pytest.raises(EmergencyHalted) as refused:
                await store.write(intent(covered, guard(IDS, effect)))
            assert refusal_fields(refused.value) == ("wind down", scope.value, target, state.value)
            assert await nothing_written(store, covered)
        if scope is not Scope.GLOBAL:
            await store.write(intent(free, guard(outside, effect)))
            assert (await store.get_execution(free)).status is ExecutionStatus.RUNNING


keys_strategy = st.just((Scope.GLOBAL, None)) | st.tuples(
    st.sampled_from((Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW)), st.sampled_from(("a", "b"))
)
halts_strategy = st.dictionaries(keys_strategy, st.sampled_from(TradingState), max_size=7)
"""Halts as ``(scope, target) -> state``, few targets so that they often cover the ids
(``ACTIVE`` included: a stored state that restricts nothing)."""
ids_strategy = st.builds(
    ScopeIds,
    workflow_id=st.none() | st.sampled_from(("a", "b")),
    bot_id=st.none() | st.sampled_from(("a", "b")),
    strategy_id=st.none() | st.sampled_from(("a", "b")),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(halts=halts_strategy, ids=ids_strategy, effect=st.sampled_from(OrderEffect))
@pytest.mark.asyncio
async def test_the_script_decides_as_ensure_allowed_does(
    store: RedisStateStore,
    client: aioredis.Redis,
    emergency: RedisEmergencyStore,
    prefix: str,
    halts: dict[HaltKey, TradingState],
    ids: ScopeIds,
    effect: OrderEffect,
) -> None:
    """For any halts over the four scopes, any ids and any effect, the write script refuses
    a guarded intent exactly when ``EmergencySnapshot.ensure_allowed`` of the same halts
    does, with the same reason, scope, target and state (and then writes nothing)."""
    await client.delete(*halt_keys(prefix))
    for (scope, target), state in halts.items():
        await save_halt(emergency, scope, target, state)
    expected = refusal_of(await emergency.refresh(), ids, effect)
    execution_id = new_id()

    try:
        await store.write(intent(execution_id, guard(ids, effect)))
    except EmergencyHalted as exc:
        refused: EmergencyHalted | None = exc
    else:
        refused = None

    assert refusal_fields(refused) == refusal_fields(expected)
    assert await nothing_written(store, execution_id) == (expected is not None)


@pytest.mark.asyncio
async def test_a_refused_batch_of_a_live_execution_writes_nothing(
    store: RedisStateStore, client: aioredis.Redis, emergency: RedisEmergencyStore, prefix: str
) -> None:
    """A fenced, guarded batch of a running execution (its state, a checkpoint, an event)
    refused by a bot halt leaves the record, checkpoints, events and the event cursor as
    they were."""
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    opens = guard(IDS, OrderEffect.OPENS)
    await store.write(intent("e1", opens, lease.fence, bot_id=IDS.bot_id))
    await save_halt(emergency, Scope.BOT, IDS.bot_id, TradingState.CANCEL_ONLY)
    cursor = await client.get(f"{prefix}:event_cursor")

    with pytest.raises(EmergencyHalted, match="cancel_only"):
        await store.write(
            StateBatch(
                execution=execution("e1", status=ExecutionStatus.FAILED, bot_id=IDS.bot_id),
                checkpoints=(checkpoint("e1", "second"),),
                events=(event("e1", 2),),
                fence=lease.fence,
                guard=opens,
            )
        )

    assert (await store.get_execution("e1")).status is ExecutionStatus.RUNNING
    assert set(await store.get_checkpoints("e1")) == {"order"}
    assert [e.sequence for _, e in await store.read_events(execution_id="e1")] == [1]
    assert await client.get(f"{prefix}:event_cursor") == cursor
    # The same batch as a cancel passes: the execution is still the writer's.
    await store.write(
        StateBatch(
            events=(event("e1", 2),), fence=lease.fence, guard=guard(IDS, OrderEffect.CANCELS)
        )
    )


@pytest.mark.asyncio
async def test_a_lost_lease_is_reported_before_the_trading_state(
    store: RedisStateStore, emergency: RedisEmergencyStore
) -> None:
    """Under a global halt, a guarded write whose fence is no longer live, or that carries
    no fence for an owned execution, is refused with LeaseLost, not EmergencyHalted."""
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    await store.write(intent("e1", guard(IDS, OrderEffect.OPENS), lease.fence))
    await save_halt(emergency, Scope.GLOBAL, None, TradingState.HALTED)
    opens = guard(IDS, OrderEffect.OPENS)

    with pytest.raises(LeaseLost, match="carries no fence"):
        await store.write(StateBatch(events=(event("e1", 2),), guard=opens))
    await store.release_lease(lease)
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.write(StateBatch(events=(event("e1", 2),), fence=lease.fence, guard=opens))


@pytest.mark.asyncio
async def test_a_seed_halt_value_still_reads_as_halted(
    store: RedisStateStore, client: aioredis.Redis, emergency: RedisEmergencyStore, prefix: str
) -> None:
    """A halt stored in the seed's format (``[reason, actor]``) reads as HALTED without
    cancel-on-halt, in the emergency store's snapshot and in the write script alike."""
    halts, since = halt_keys(prefix)
    field = halt_field(Scope.BOT, IDS.bot_id)
    await client.hset(halts, field, '["old halt","ops"]')
    await client.hset(since, field, "12.5")

    snapshot = await emergency.refresh()

    assert snapshot.halt_list() == [
        HaltState(Scope.BOT, IDS.bot_id, "old halt", "ops", 12.5, TradingState.HALTED, False)
    ]
    for effect in (OrderEffect.OPENS, OrderEffect.REDUCES):
        with pytest.raises(EmergencyHalted) as refused:
            await store.write(intent(f"e-{effect.value}", guard(IDS, effect)))
        assert refusal_fields(refused.value) == ("old halt", "bot", IDS.bot_id, "halted")
    await store.write(intent("e-cancel", guard(IDS, OrderEffect.CANCELS)))


@pytest.mark.asyncio
async def test_a_rehalt_replaces_state_and_cancel_but_keeps_since(
    emergency: RedisEmergencyStore, redis_server: ServerProcess, prefix: str
) -> None:
    """Saving a halt again replaces its reason, actor, state and cancel-on-halt and keeps its
    start; another store reading the same Redis sees the same."""
    first = await emergency.save_halt(
        HaltState(Scope.BOT, "bot-1", "first", "alice", 10.0, TradingState.REDUCE_ONLY, True),
        AuditEntry(0, 10.0, "alice", "halt", Scope.BOT, "bot-1", "first"),
    )
    again = await emergency.save_halt(
        HaltState(Scope.BOT, "bot-1", "second", "bob", 20.0, TradingState.CANCEL_ONLY, False),
        AuditEntry(0, 20.0, "bob", "halt", Scope.BOT, "bot-1", "second"),
    )
    stored = HaltState(Scope.BOT, "bot-1", "second", "bob", 10.0, TradingState.CANCEL_ONLY, False)
    connection = aioredis.from_url(redis_server.url)
    other = RedisEmergencyStore(connection, prefix=prefix, clock=SystemClock())
    try:
        assert (await other.refresh()).halt_list() == [stored]
    finally:
        await other.close()
        await connection.aclose()

    assert first.cancel_orders and first.state is TradingState.REDUCE_ONLY
    assert again == stored
    assert emergency.snapshot().halt_list() == [stored]


@pytest.mark.asyncio
async def test_live_leases_lists_exactly_the_live_ones(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Leases acquired, renewed, released, expired, replaced and deleted behind the store's
    back: only the live ones are listed, each with its current epoch, and the registry is
    pruned of the others as it lists."""
    a = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    b = await store.acquire_lease(owner("b"), LEASE_SECONDS)
    c = await store.acquire_lease(owner("c"), LEASE_SECONDS)
    await store.acquire_lease(owner("short"), 0.05)
    await store.acquire_lease(owner("gone"), LEASE_SECONDS)
    a_again = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    await store.renew_lease(b)
    await store.release_lease(c)
    await client.delete(f"{prefix}:lease:gone")
    expected = {a_again.fence, b.fence}

    await eventually(
        lambda: _listed(store, expected), "the short lease is no longer listed", poll=0.01
    )
    assert a.fence not in await store.live_leases()
    assert await client.zcard(f"{prefix}:leases") == len(expected)


async def _listed(store: RedisStateStore, expected: set[Fence]) -> bool:
    listed = await store.live_leases()
    assert len(listed) == len(set(listed))
    return set(listed) == expected


@pytest.mark.asyncio
async def test_a_revoked_lease_is_lost_and_its_executions_are_orphans(
    store: RedisStateStore,
) -> None:
    """revoke_lease of another epoch changes nothing; of the live one it ends the lease at
    once: no longer listed, its running execution an orphan another owner may claim, its
    next write and renewal LeaseLost, a second revoke False."""
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    other = await store.acquire_lease(owner("b"), LEASE_SECONDS)
    opens = guard(IDS, OrderEffect.OPENS)
    await store.write(intent("e1", opens, lease.fence))

    assert not await store.revoke_lease(Fence("a", other.epoch))
    assert await store.orphans(10) == []
    assert await store.revoke_lease(lease.fence)

    assert await store.live_leases() == [other.fence]
    assert [r.execution_id for r in await store.orphans(10)] == ["e1"]
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.write(StateBatch(events=(event("e1", 2),), fence=lease.fence, guard=opens))
    with pytest.raises(LeaseLost):
        await store.renew_lease(lease)
    assert not await store.revoke_lease(lease.fence)
    assert (await store.claim("e1", other)).previous_owner == "a"


@pytest.mark.asyncio
async def test_no_guarded_intent_commits_after_save_halt_returned(
    store: RedisStateStore, client: aioredis.Redis, emergency: RedisEmergencyStore, prefix: str
) -> None:
    """Trials of writers committing guarded opening intents of one scope back to back while
    another client halts the scope (strategy, bot or workflow; reduce-only, cancel-only or
    halted) through the emergency store: no write begun after save_halt returned commits,
    and the event stream holds nothing past the cursor read after it returned."""
    kinds = (Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW)
    for trial in range(CROWD_TRIALS):
        ids = ScopeIds(f"wf-{trial}", f"bot-{trial}", f"strat-{trial}")
        scope = kinds[trial % len(kinds)]
        target = {
            Scope.STRATEGY: ids.strategy_id,
            Scope.BOT: ids.bot_id,
            Scope.WORKFLOW: ids.workflow_id,
        }[scope]
        state = RESTRICTED[trial // len(kinds) % len(RESTRICTED)]
        halt = partial(save_halt, emergency, scope, target, state)
        async with asyncio.timeout(DEADLINE_SECONDS):
            cursor, late = await _crowd(store, client, prefix, trial, ids, halt)

        assert late == [], f"trial {trial}: committed after the halt returned"
        assert await store.read_events(after=cursor) == [], f"trial {trial}"


async def _crowd(
    store: RedisStateStore,
    client: aioredis.Redis,
    prefix: str,
    trial: int,
    ids: ScopeIds,
    halt: Callable[[], Awaitable[HaltState]],
) -> tuple[int, list[str]]:
    """One trial: ``CROWD_WRITERS`` writers of guarded intents for ``ids``, each until a
    write it began after ``halt()`` returned was refused (or committed), while ``halt()``
    runs once they have committed some. Returns the event cursor read after ``halt()`` returned and the
    executions whose write began after it and committed."""
    returned, warm = asyncio.Event(), asyncio.Event()
    committed = 0
    late: list[str] = []
    action = guard(ids, OrderEffect.OPENS)

    async def writer(w: int) -> None:
        nonlocal committed
        for n in itertools.count():
            execution_id = f"t{trial}-w{w}-{n}"
            begun_after = returned.is_set()
            batch = StateBatch(
                execution=execution(
                    execution_id,
                    ids.workflow_id or "wf",
                    bot_id=ids.bot_id,
                    strategy_id=ids.strategy_id,
                ),
                events=(event(execution_id, 1),),
                guard=action,
            )
            try:
                await store.write(batch)
            except EmergencyHalted:
                if begun_after:
                    return
                continue
            if begun_after:
                late.append(execution_id)
                return
            committed += 1
            if committed >= CROWD_WRITERS:
                warm.set()

    async with asyncio.TaskGroup() as writers:
        for w in range(CROWD_WRITERS):
            writers.create_task(writer(w))
        await warm.wait()
        await halt()
        cursor = int(cast(bytes, await client.get(f"{prefix}:event_cursor")))
        returned.set()
    return cursor, late


# -- acknowledgements across emergency service replicas ----------------------------------


@pytest.mark.asyncio
async def test_a_barrier_hears_acknowledgements_another_replica_received(
    client: aioredis.Redis, prefix: str, store: RedisStateStore
) -> None:
    """Two replicas' barriers on one Redis: an executor acknowledges to replica A only,
    and a halt served by replica B counts it (relayed on Redis) instead of fencing it; an
    older acknowledgement relayed late does not undo a newer one; an unreadable message is
    skipped; an executor nobody heard from is fenced and its lease revoked."""
    heard = await store.acquire_lease(OwnerInfo("exec-a", "executor", "host", 1), 60.0)
    silent = await store.acquire_lease(OwnerInfo("exec-b", "executor", "host", 2), 60.0)
    relay_a = RedisAckRelay(client, prefix=prefix, origin="replica-a")
    relay_b = RedisAckRelay(client, prefix=prefix, origin="replica-b")
    barrier_a = HaltBarrier(store, timeout=DEADLINE_SECONDS)
    barrier_b = HaltBarrier(store, timeout=0.5)
    delivered: list[tuple[str, int]] = []

    def deliver_to_b(fence: Fence, version: int, in_flight: Sequence[InFlightAction]) -> None:
        delivered.append((fence.owner, version))
        barrier_b.acknowledge(fence, version, in_flight)

    following = [
        asyncio.create_task(relay_a.follow(barrier_a.acknowledge)),
        asyncio.create_task(relay_b.follow(deliver_to_b)),
    ]
    channel = f"{prefix}:emergency:acks"
    try:

        async def both_subscribed() -> bool:
            [(_, subscribers)] = await client.pubsub_numsub(channel)
            return bool(subscribers == 2)

        await eventually(both_subscribed, "both replicas follow the acknowledgements")
        await client.publish(channel, b"[not an acknowledgement")  # skipped, link kept
        action = InFlightAction("exec-a", "e1", "buy", "e1:buy")
        for version, in_flight in ((7, (action,)), (2, ())):  # the older one relayed late
            barrier_a.acknowledge(heard.fence, version, in_flight)  # what A's servicer does
            await relay_a.publish(heard.fence, version, in_flight)
        await eventually(lambda: ("exec-a", 2) in delivered, "replica B heard both")
        report = await barrier_b.wait(7)
        assert report.acknowledged == ("exec-a",)
        assert report.in_flight == (action,)
        assert report.fenced == ("exec-b",)
        assert await store.live_leases() == [heard.fence]
        assert not await store.revoke_lease(silent.fence)  # already revoked by the barrier
    finally:
        for task in following:
            task.cancel()
        await asyncio.wait(following)


@pytest.mark.parametrize(("standing", "condition", "state", "expected"), CONDITIONAL_CASES)
@pytest.mark.asyncio
async def test_a_conditional_halt_write_decides_in_the_script_as_the_domain_rule(
    emergency: RedisEmergencyStore,
    standing: tuple[TradingState, str] | None,
    condition: HaltCondition,
    state: TradingState | None,
    expected: bool,
) -> None:
    """The Redis scripts check a trigger's halt (only stricter) and lift or restore (only
    over its own halt) against the halt stored now, as the domain rule does: refused,
    nothing is written and nothing audited."""
    before = None
    if standing is not None:
        before = await emergency.save_halt(
            HaltState(Scope.BOT, "b1", "standing", standing[1], 1.0, standing[0]),
            AuditEntry(0, 1.0, standing[1], "halt", Scope.BOT, "b1", "standing"),
        )
    entries = len(await emergency.audit_entries(100))
    admitted = condition.admits(before, state)
    assert admitted is expected
    if state is None:
        audit = AuditEntry(0, 2.0, "writer", "resume", Scope.BOT, "b1", "lift")
        assert await emergency.delete_halt(Scope.BOT, "b1", audit, condition) is admitted
        expected = None if admitted else before
    else:
        written = await emergency.save_halt(
            HaltState(Scope.BOT, "b1", "new", "writer", 2.0, state),
            AuditEntry(0, 2.0, "writer", "halt", Scope.BOT, "b1", "new"),
            condition,
        )
        assert (written is not None) is admitted
        expected = written if admitted else before
    assert emergency.snapshot().halts.get((Scope.BOT, "b1")) == expected
    assert len(await emergency.audit_entries(100)) == entries + (1 if admitted else 0)
