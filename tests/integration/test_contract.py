"""One contract for each port (StateStore, EmergencyControl, EventBus), run unchanged
against every adapter: embedded, Redis and the production clients.

The tests use only the port methods. The adapters come from ``contract_fixtures``;
the production ones share the session's service stack with other tests, so every
id a test writes starts with its own ``uid`` and assertions look at those ids only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Container
from contextlib import aclosing
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import kit
import pytest
from kit import DEADLINE_SECONDS, eventually

from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.errors import (
    EmergencyHalted,
    ExecutionNotFound,
    InvalidRequest,
    RiskLimitExceeded,
)
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    EventType,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    LimitDirection,
    Scope,
    StateBatch,
)
from tradeflow.ports import EmergencyControl, EventBus, StateStore

if TYPE_CHECKING:
    # Only for annotations: importing the plugin module here would keep pytest from
    # rewriting its asserts.
    from contract_fixtures import EmergencyKit

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BASE_TIME: Final = 1_767_225_600.25
"""An epoch time like the ones the executor writes (2026-01-01T00:00:00.25Z)."""
DEFINITION: Final[dict[str, Any]] = {
    "blocks": [
        {"id": "quote", "category": "providers", "type": "price", "properties": {"symbol": "BTC"}},
        {"id": "buy", "category": "actions", "type": "market_order", "properties": {"qty": 0.5}},
    ],
    "connections": [{"from": "quote", "to": "buy"}],
}
TOPIC: Final = "workflow_events"


# -- state store ------------------------------------------------------------------------


def execution(execution_id: str, workflow_id: str, **fields: Any) -> ExecutionRecord:
    """A running kit record of ``DEFINITION``, started at ``BASE_TIME`` unless told."""
    fields.setdefault("started_at", BASE_TIME)
    return kit.execution(execution_id, workflow_id, definition=DEFINITION, **fields)


def finished(record: ExecutionRecord, status: ExecutionStatus) -> ExecutionRecord:
    """``record`` after its run ended with ``status``."""
    return replace(
        record,
        status=status,
        finished_at=record.started_at + 1.5,
        error=None if status is ExecutionStatus.COMPLETED else "order rejected",
        result={
            "orders": [{"id": "o-1", "qty": 0.5}],
            "filled": status is ExecutionStatus.COMPLETED,
        },
    )


def event(record: ExecutionRecord, sequence: int, node_id: str | None = "quote") -> Event:
    """Event number ``sequence`` of ``record``'s run."""
    data = {"price": 101.25, "n": sequence, "tags": ["a", "b"], "none": None}
    return kit.run_event(record, sequence, node_id, data)


def checkpoint(
    record: ExecutionRecord, node_id: str, state: CheckpointState, *, attempt: int = 1
) -> Checkpoint:
    """A checkpoint of ``node_id`` in ``record``'s run."""
    return Checkpoint(
        execution_id=record.execution_id,
        node_id=node_id,
        state=state,
        updated_at=record.started_at + attempt,
        outputs={"price": 101.25} if state is CheckpointState.COMPLETED else None,
        error="timeout" if state is CheckpointState.FAILED else None,
        attempt=attempt,
    )


async def start(store: StateStore, record: ExecutionRecord) -> ExecutionRecord:
    """Write ``record`` as the first batch of its run."""
    await store.write(StateBatch(execution=record))
    return record


async def listed(store: StateStore, **filters: Any) -> list[str]:
    """Ids of every execution matching ``filters``, in the order one page lists them."""
    page = await store.list_executions(ExecutionQuery(**filters))
    return [record.execution_id for record in page.executions]


async def test_written_execution_reads_back_equal(state_store: StateStore, uid: str) -> None:
    """get_execution returns the record as last written, from first write to final state."""
    record = await start(
        state_store,
        execution(f"{uid}-e", f"{uid}-wf", bot_id=f"{uid}-bot", strategy_id=f"{uid}-st"),
    )
    assert await state_store.get_execution(record.execution_id) == record

    final = finished(record, ExecutionStatus.FAILED)
    await state_store.write(StateBatch(execution=final))
    assert await state_store.get_execution(record.execution_id) == final


async def test_unknown_execution_raises_execution_not_found(
    state_store: StateStore, uid: str
) -> None:
    """get_execution of an id never written raises ExecutionNotFound naming the id."""
    with pytest.raises(ExecutionNotFound) as caught:
        await state_store.get_execution(f"{uid}-missing")
    assert f"{uid}-missing" in str(caught.value)


async def test_execution_not_found_carries_the_execution_id(
    state_store: StateStore, uid: str
) -> None:
    """ExecutionNotFound.execution_id holds the id that was asked for."""
    with pytest.raises(ExecutionNotFound) as caught:
        await state_store.get_execution(f"{uid}-missing")
    assert caught.value.execution_id == f"{uid}-missing"


async def test_find_by_request_id_returns_the_execution_of_that_key(
    state_store: StateStore, uid: str
) -> None:
    """find_by_request_id finds the execution created for a key, and None for an unused key."""
    record = await start(
        state_store, execution(f"{uid}-e", f"{uid}-wf", request_id=f"{uid}-request")
    )
    await start(state_store, execution(f"{uid}-other", f"{uid}-wf"))

    assert await state_store.find_by_request_id(f"{uid}-request") == record
    assert await state_store.find_by_request_id(f"{uid}-unused") is None


async def test_list_filters_by_workflow_bot_strategy_and_status(
    state_store: StateStore, uid: str
) -> None:
    """Each filter keeps only matching executions, combined filters all apply, newest first."""
    wf, other_wf, bot, strategy = f"{uid}-wf", f"{uid}-wf2", f"{uid}-bot", f"{uid}-st"
    e1 = await start(state_store, execution(f"{uid}-1", wf, bot_id=bot, strategy_id=strategy))
    e2 = await start(state_store, execution(f"{uid}-2", wf, started_at=BASE_TIME + 1, bot_id=bot))
    await start(
        state_store, execution(f"{uid}-3", wf, started_at=BASE_TIME + 2, strategy_id=strategy)
    )
    await start(state_store, execution(f"{uid}-4", other_wf, started_at=BASE_TIME + 3))
    await state_store.write(StateBatch(execution=finished(e2, ExecutionStatus.COMPLETED)))

    assert await listed(state_store, workflow_id=wf) == [f"{uid}-3", f"{uid}-2", f"{uid}-1"]
    assert await listed(state_store, workflow_id=other_wf) == [f"{uid}-4"]
    assert await listed(state_store, bot_id=bot) == [f"{uid}-2", f"{uid}-1"]
    assert await listed(state_store, strategy_id=strategy) == [f"{uid}-3", f"{uid}-1"]
    assert await listed(state_store, workflow_id=wf, status=ExecutionStatus.COMPLETED) == [
        f"{uid}-2"
    ]
    assert await listed(
        state_store, workflow_id=wf, bot_id=bot, status=ExecutionStatus.RUNNING
    ) == [e1.execution_id]


async def test_list_pages_follow_page_token_without_gaps_or_repeats(
    state_store: StateStore, uid: str
) -> None:
    """Pages of ``limit`` executions chained by page_token list each execution once, newest
    first, and the last page has no token (two executions share a start time)."""
    starts = [BASE_TIME, BASE_TIME + 1, BASE_TIME + 1, BASE_TIME + 2, BASE_TIME + 3]
    for n, started_at in enumerate(starts):
        await start(state_store, execution(f"{uid}-{n}", f"{uid}-wf", started_at=started_at))

    pages: list[list[ExecutionRecord]] = []
    token: str | None = None
    while True:
        page = await state_store.list_executions(
            ExecutionQuery(workflow_id=f"{uid}-wf", limit=2, page_token=token)
        )
        pages.append(list(page.executions))
        token = page.next_page_token
        if token is None:
            break

    assert [len(p) for p in pages] == [2, 2, 1]
    records = [record for p in pages for record in p]
    assert sorted(r.execution_id for r in records) == [f"{uid}-{n}" for n in range(5)]
    assert [r.started_at for r in records] == sorted(starts, reverse=True)


async def test_list_time_range_is_half_open(state_store: StateStore, uid: str) -> None:
    """started_after is inclusive and started_before exclusive."""
    for n in range(5):
        await start(
            state_store, execution(f"{uid}-{n}", f"{uid}-wf", started_at=BASE_TIME + n * 10)
        )

    assert await listed(
        state_store,
        workflow_id=f"{uid}-wf",
        started_after=BASE_TIME + 10,
        started_before=BASE_TIME + 30,
    ) == [f"{uid}-2", f"{uid}-1"]
    assert await listed(state_store, workflow_id=f"{uid}-wf", started_after=BASE_TIME + 45) == []
    assert await listed(state_store, workflow_id=f"{uid}-wf", started_before=BASE_TIME + 10) == [
        f"{uid}-0"
    ]


async def test_foreign_page_token_is_invalid_request(state_store: StateStore, uid: str) -> None:
    """A page_token no store issued raises InvalidRequest naming page_token."""
    with pytest.raises(InvalidRequest) as caught:
        await state_store.list_executions(
            ExecutionQuery(workflow_id=f"{uid}-wf", page_token="not-a-token")
        )
    assert caught.value.field.endswith("page_token")


async def test_latest_checkpoint_of_each_node_wins(state_store: StateStore, uid: str) -> None:
    """get_checkpoints holds each node's last written checkpoint, and nothing for other runs."""
    record = execution(f"{uid}-e", f"{uid}-wf")
    intent = checkpoint(record, "buy", CheckpointState.INTENT)
    quote = checkpoint(record, "quote", CheckpointState.COMPLETED)
    failed = checkpoint(record, "buy", CheckpointState.FAILED)
    done = checkpoint(record, "buy", CheckpointState.COMPLETED, attempt=2)
    await state_store.write(StateBatch(execution=record, checkpoints=(quote, intent)))
    await state_store.write(StateBatch(checkpoints=(failed,)))
    assert await state_store.get_checkpoints(record.execution_id) == {
        "quote": quote,
        "buy": failed,
    }

    await state_store.write(StateBatch(checkpoints=(done,)))
    assert await state_store.get_checkpoints(record.execution_id) == {"quote": quote, "buy": done}
    assert await state_store.get_checkpoints(f"{uid}-never-ran") == {}


async def test_read_events_in_cursor_order_filtered_by_execution(
    state_store: StateStore, uid: str
) -> None:
    """Events read back equal, oldest first with growing cursors; the execution filter keeps
    one run's events under the same cursors; ``after`` and ``limit`` page through them."""
    a = execution(f"{uid}-a", f"{uid}-wf", bot_id=f"{uid}-bot")
    b = execution(f"{uid}-b", f"{uid}-wf", started_at=BASE_TIME + 1, strategy_id=f"{uid}-st")
    await state_store.write(StateBatch(execution=a, events=(event(a, 1), event(a, 2))))
    await state_store.write(StateBatch(execution=b, events=(event(b, 1, node_id=None),)))
    await state_store.write(StateBatch(events=(event(a, 3, node_id="buy"),)))

    a_history = await state_store.read_events(execution_id=a.execution_id)
    assert [e for _, e in a_history] == [event(a, 1), event(a, 2), event(a, 3, node_id="buy")]
    b_history = await state_store.read_events(execution_id=b.execution_id)
    assert [e for _, e in b_history] == [event(b, 1, node_id=None)]

    first = a_history[0][0]
    mine = {a.execution_id, b.execution_id}
    everything = [
        pair
        for pair in await state_store.read_events(after=first - 1)
        if pair[1].execution_id in mine
    ]
    assert everything == [*a_history[:2], *b_history, a_history[2]]
    cursors = [cursor for cursor, _ in everything]
    assert cursors == sorted(set(cursors))

    paged: list[tuple[int, Event]] = []
    after = 0
    while batch := await state_store.read_events(after=after, execution_id=a.execution_id, limit=1):
        assert len(batch) == 1
        paged.extend(batch)
        after = batch[-1][0]
    assert paged == list(a_history)


async def test_last_sequence_is_the_highest_event_sequence_of_the_execution(
    state_store: StateStore, uid: str
) -> None:
    """last_sequence gives an execution's highest event sequence across its writes (also
    events written before its record), unmoved by later checkpoint-only writes or other
    runs, and 0 without events."""
    a = execution(f"{uid}-a", f"{uid}-wf")
    b = execution(f"{uid}-b", f"{uid}-wf", started_at=BASE_TIME + 1)
    assert await state_store.last_sequence(a.execution_id) == 0
    await state_store.write(StateBatch(execution=a))
    assert await state_store.last_sequence(a.execution_id) == 0

    await state_store.write(StateBatch(events=(event(a, 1), event(a, 2))))
    await state_store.write(StateBatch(execution=b, events=(event(b, 1), event(b, 7))))
    await state_store.write(StateBatch(events=(event(a, 3, node_id="buy"),)))
    await state_store.write(
        StateBatch(checkpoints=(checkpoint(a, "buy", CheckpointState.COMPLETED),))
    )

    assert await state_store.last_sequence(a.execution_id) == 3
    assert await state_store.last_sequence(b.execution_id) == 7
    assert await state_store.last_sequence(f"{uid}-never-ran") == 0

    early = execution(f"{uid}-c", f"{uid}-wf", started_at=BASE_TIME + 2)
    await state_store.write(StateBatch(events=(event(early, 4),)))
    await start(state_store, early)
    assert await state_store.last_sequence(early.execution_id) == 4


# -- group commit and retention (issue 12) ----------------------------------------------

ANCIENT: Final = 1_000.0
"""End times of executions the retention tests prune (1970): no other test writes one,
so a prune up to them on a shared store removes nothing else."""


def ended(record: ExecutionRecord, status: ExecutionStatus, at: float) -> ExecutionRecord:
    """``record`` ended with ``status`` at ``at``."""
    return replace(finished(record, status), finished_at=at)


async def prune_all(store: StateStore, before: float) -> tuple[int, int]:
    """Prune up to ``before`` until nothing more can go: ``(removed, kept)`` of the last
    call that removed nothing (what the store keeps)."""
    removed = 0
    while True:
        report = await store.prune(before, limit=2)
        removed += report.removed
        if not report.more:
            return removed, report.kept


async def test_write_many_writes_each_batch_on_its_own(state_store: StateStore, uid: str) -> None:
    """write_many answers one outcome per batch in order: a batch whose fence is refused
    is not written, and the batches around it are."""
    lease = await state_store.acquire_lease(OwnerInfo(f"{uid}-owner", "cli", "host", 4242), 30.0)
    a = execution(f"{uid}-a", f"{uid}-wf")
    refused = execution(f"{uid}-refused", f"{uid}-wf")
    b = execution(f"{uid}-b", f"{uid}-wf", started_at=BASE_TIME + 1)
    outcomes = await state_store.write_many(
        [
            StateBatch(execution=a, events=(event(a, 1),), fence=lease.fence),
            StateBatch(execution=refused, fence=(lease.fence[0], lease.fence[1] + 1000)),
            StateBatch(
                execution=b,
                checkpoints=(checkpoint(b, "quote", CheckpointState.COMPLETED),),
                fence=lease.fence,
            ),
        ]
    )

    assert [type(outcome).__name__ for outcome in outcomes] == ["NoneType", "LeaseLost", "NoneType"]
    assert (await state_store.get_execution(a.execution_id)).execution_id == a.execution_id
    assert [e for _, e in await state_store.read_events(execution_id=a.execution_id)] == [
        event(a, 1)
    ]
    assert set(await state_store.get_checkpoints(b.execution_id)) == {"quote"}
    with pytest.raises(ExecutionNotFound):
        await state_store.get_execution(refused.execution_id)


async def test_prune_removes_ended_executions_oldest_first_and_keeps_the_rest(
    state_store: StateStore, uid: str
) -> None:
    """prune removes executions ended before the horizon, oldest end first, ``limit`` at a
    time (``more`` while it may remove more), with their checkpoints and events; never a
    running or interrupted one, one ended after the horizon, or one whose latest
    checkpoint is an unresolved intent (counted in ``kept``)."""
    horizon = ANCIENT + 100
    # Started in 1970 but after the ownership suite's orphans (1-4 s), which list first.
    _, kept_before = await prune_all(state_store, horizon)
    gone: list[ExecutionRecord] = []
    for n, status in enumerate(
        (ExecutionStatus.FAILED, ExecutionStatus.COMPLETED, ExecutionStatus.CANCELLED)
    ):
        record = execution(f"{uid}-gone{n}", f"{uid}-wf", started_at=ANCIENT - 10)
        done = ended(record, status, ANCIENT + n)
        await state_store.write(
            StateBatch(
                execution=done,
                checkpoints=(checkpoint(record, "quote", CheckpointState.COMPLETED),),
                events=(event(record, 1),),
            )
        )
        gone.append(done)
    running = await start(
        state_store, execution(f"{uid}-running", f"{uid}-wf", started_at=ANCIENT - 5)
    )
    interrupted = ended(
        execution(f"{uid}-interrupted", f"{uid}-wf", started_at=ANCIENT - 5),
        ExecutionStatus.INTERRUPTED,
        ANCIENT,
    )
    recent = ended(execution(f"{uid}-recent", f"{uid}-wf"), ExecutionStatus.COMPLETED, horizon)
    intent = ended(
        execution(f"{uid}-intent", f"{uid}-wf", started_at=ANCIENT - 5),
        ExecutionStatus.FAILED,
        ANCIENT - 1,
    )
    for record in (interrupted, recent):
        await start(state_store, record)
    order = {"client_order_id": f"{intent.execution_id}:buy"}
    await state_store.write(
        StateBatch(
            execution=intent,
            checkpoints=(
                checkpoint(intent, "buy", CheckpointState.INTENT)._replace(outputs=order),
            ),
        )
    )

    first = await state_store.prune(horizon, limit=2)
    assert (first.removed, first.more) == (2, True)
    for record in gone[:2]:
        with pytest.raises(ExecutionNotFound):
            await state_store.get_execution(record.execution_id)
    await state_store.get_execution(gone[2].execution_id)

    removed, kept = await prune_all(state_store, horizon)
    assert (removed, kept) == (1, kept_before + 1)
    for record in gone:
        with pytest.raises(ExecutionNotFound):
            await state_store.get_execution(record.execution_id)
        assert await state_store.get_checkpoints(record.execution_id) == {}
        assert await state_store.read_events(execution_id=record.execution_id) == []
    for record in (running, interrupted, recent, intent):
        assert (await state_store.get_execution(record.execution_id)).status is record.status
    assert set(await state_store.get_checkpoints(intent.execution_id)) == {"buy"}


async def test_prune_never_removes_an_execution_a_resume_claimed(
    state_store: StateStore, uid: str
) -> None:
    """A prune racing the claim of an ended execution (a manual resume) either removes it
    before the claim, which then finds nothing, or leaves the claimed, running execution
    whole; claimed first, it is never a candidate."""
    lease = await state_store.acquire_lease(OwnerInfo(f"{uid}-owner", "cli", "host", 4242), 30.0)
    horizon = ANCIENT + 100
    raced = execution(f"{uid}-raced", f"{uid}-wf", started_at=ANCIENT - 10)
    claimed = execution(f"{uid}-claimed", f"{uid}-wf", started_at=ANCIENT - 10)
    for record in (raced, claimed):
        await start(state_store, ended(record, ExecutionStatus.FAILED, ANCIENT))

    await state_store.claim(claimed.execution_id, lease)
    await prune_all(state_store, horizon)
    assert (await state_store.get_execution(claimed.execution_id)).status is ExecutionStatus.RUNNING

    claim, _ = await asyncio.gather(
        state_store.claim(raced.execution_id, lease),
        state_store.prune(horizon),
        return_exceptions=True,
    )
    if isinstance(claim, ExecutionNotFound):
        with pytest.raises(ExecutionNotFound):
            await state_store.get_execution(raced.execution_id)
    else:
        assert not isinstance(claim, BaseException), claim
        record = await state_store.get_execution(raced.execution_id)
        assert record.status is ExecutionStatus.RUNNING
        await prune_all(state_store, horizon)
        assert (await state_store.get_execution(raced.execution_id)).owner == lease.fence[0]


# -- emergency control ------------------------------------------------------------------


IdField = Literal["workflow_id", "bot_id", "strategy_id"]
SCOPE_ID: Final[dict[Scope, IdField]] = {
    Scope.STRATEGY: "strategy_id",
    Scope.BOT: "bot_id",
    Scope.WORKFLOW: "workflow_id",
}
"""Which id of an action a halt of each scope names."""


def run_ids(uid: str) -> ScopeIds:
    """The workflow, bot and strategy ids of a test's actions."""
    return ScopeIds(workflow_id=f"{uid}-wf", bot_id=f"{uid}-bot", strategy_id=f"{uid}-st")


def target_of(scope: Scope, ids: ScopeIds) -> str | None:
    """The target a halt of ``scope`` covering ``ids`` names."""
    return None if scope is Scope.GLOBAL else getattr(ids, SCOPE_ID[scope])


def spared_ids(scope: Scope, ids: ScopeIds) -> list[ScopeIds]:
    """Ids a halt of ``scope`` covering ``ids`` does not cover: another id, or none, in the
    place of the one it names (a global halt spares nothing)."""
    if scope is Scope.GLOBAL:
        return []
    field = SCOPE_ID[scope]
    return [replace(ids, **{field: other}) for other in (f"{getattr(ids, field)}-other", None)]


@pytest.mark.parametrize("scope", list(Scope))
async def test_halt_blocks_what_its_scope_covers_until_resumed(
    emergency_kit: EmergencyKit, emergency: EmergencyControl, uid: str, scope: Scope
) -> None:
    """A halt is listed, refuses covered actions with its reason, spares others; resume lifts
    it once (a second resume finds none)."""
    ids = run_ids(uid)
    target = target_of(scope, ids)
    halt = await emergency.halt(scope, target, reason="ops drill", actor="alice")
    assert (halt.scope, halt.target, halt.reason, halt.actor) == (
        scope,
        target,
        "ops drill",
        "alice",
    )
    assert halt in await emergency.halts()

    await emergency_kit.caught_up(emergency)
    assert emergency.active_halt(ids) == halt
    with pytest.raises(EmergencyHalted) as caught:
        emergency.ensure_trading_allowed(ids)
    assert (caught.value.reason, caught.value.scope, caught.value.target) == (
        "ops drill",
        scope.value,
        target,
    )
    for spared in spared_ids(scope, ids):
        emergency.ensure_trading_allowed(spared)
        assert emergency.active_halt(spared) is None

    assert await emergency.resume(scope, target, reason="drill over", actor="bob") is True
    await emergency_kit.caught_up(emergency)
    emergency.ensure_trading_allowed(ids)
    assert emergency.active_halt(ids) is None
    assert halt not in await emergency.halts()
    assert await emergency.resume(scope, target, reason="drill over", actor="bob") is False


async def test_active_halt_is_the_most_restrictive_covering_halt(
    emergency_kit: EmergencyKit, emergency: EmergencyControl, uid: str
) -> None:
    """With halts on every scope, global wins over strategy over bot over workflow."""
    ids = run_ids(uid)
    order = [Scope.GLOBAL, Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW]
    halts = {
        scope: await emergency.halt(scope, target_of(scope, ids), reason=f"{scope} drill")
        for scope in reversed(order)
    }
    for scope in order:
        await emergency_kit.caught_up(emergency)
        assert emergency.active_halt(ids) == halts[scope]
        with pytest.raises(EmergencyHalted) as caught:
            emergency.ensure_trading_allowed(ids)
        assert caught.value.reason == f"{scope} drill"
        assert await emergency.resume(scope, target_of(scope, ids), reason="lifted")
    await emergency_kit.caught_up(emergency)
    assert emergency.active_halt(ids) is None


async def test_repeated_halt_takes_the_new_reason_and_keeps_since(
    emergency_kit: EmergencyKit, emergency: EmergencyControl, uid: str
) -> None:
    """Halting a halted target again updates reason and actor; the halt still dates from the
    first call."""
    ids = run_ids(uid)
    first = await emergency.halt(Scope.WORKFLOW, ids.workflow_id, reason="first", actor="a")
    again = await emergency.halt(Scope.WORKFLOW, ids.workflow_id, reason="second", actor="b")
    assert (again.reason, again.actor, again.since) == ("second", "b", first.since)

    await emergency_kit.caught_up(emergency)
    assert emergency.active_halt(ids) == again
    assert [h for h in await emergency.halts() if h.target == ids.workflow_id] == [again]


async def test_halt_made_by_one_controller_stops_another(
    emergency_kit: EmergencyKit, emergency: EmergencyControl, uid: str
) -> None:
    """Two controllers on the same state: a halt and a resume by one reach the other's view."""
    other = await emergency_kit.open()
    ids = run_ids(uid)
    await emergency.halt(Scope.BOT, ids.bot_id, reason="shared drill", actor="alice")

    await emergency_kit.caught_up(other)
    with pytest.raises(EmergencyHalted) as caught:
        other.ensure_trading_allowed(ids)
    assert caught.value.reason == "shared drill"

    assert await other.resume(Scope.BOT, ids.bot_id, reason="over", actor="bob")
    await emergency_kit.caught_up(emergency)
    emergency.ensure_trading_allowed(ids)


async def test_closed_controller_fails_closed(emergency_kit: EmergencyKit, uid: str) -> None:
    """After close, the pre-action check refuses trading instead of guessing."""
    control = await emergency_kit.open()
    await control.close()
    with pytest.raises(EmergencyHalted):
        control.ensure_trading_allowed(run_ids(uid))


@pytest.mark.parametrize(
    ("limit_type", "value", "threshold"),
    [
        pytest.param("daily_loss", -600.0, -500.0, id="daily_loss-below"),
        pytest.param("max_position", -15.0, 10.0, id="max_position-short"),
        pytest.param("max_position", 15.0, 10.0, id="max_position-long"),
        pytest.param("max_order_notional", 1500.0, 1000.0, id="max_order_notional-above"),
    ],
)
async def test_breach_in_the_limit_types_direction_raises(
    emergency_kit: EmergencyKit,
    emergency: EmergencyControl,
    uid: str,
    limit_type: str,
    value: float,
    threshold: float,
) -> None:
    """A value past the threshold in the type's direction raises RiskLimitExceeded; without
    auto_halt trading goes on."""
    ids = run_ids(uid)
    with pytest.raises(RiskLimitExceeded) as caught:
        await emergency.check_risk_limit(limit_type, value, threshold, auto_halt=False, ids=ids)
    breach = caught.value
    assert (breach.limit_type, breach.value, breach.threshold, breach.halted) == (
        limit_type,
        value,
        threshold,
        False,
    )
    await emergency_kit.caught_up(emergency)
    emergency.ensure_trading_allowed(ids)


@pytest.mark.parametrize(
    ("limit_type", "value", "threshold"),
    [
        pytest.param("daily_loss", -400.0, -500.0, id="daily_loss-above"),
        pytest.param("daily_loss", -500.0, -500.0, id="daily_loss-equal"),
        pytest.param("max_position", -5.0, 10.0, id="max_position-short"),
        pytest.param("max_position", 10.0, 10.0, id="max_position-equal"),
        pytest.param("max_order_notional", -5000.0, 1000.0, id="max_order_notional-below"),
        pytest.param("max_order_notional", 1000.0, 1000.0, id="max_order_notional-equal"),
    ],
)
async def test_value_within_the_limit_passes(
    emergency: EmergencyControl, uid: str, limit_type: str, value: float, threshold: float
) -> None:
    """A value on the safe side of the threshold (or on it) is no breach."""
    await emergency.check_risk_limit(limit_type, value, threshold, ids=run_ids(uid))
    assert emergency.active_halt(run_ids(uid)) is None


async def test_breach_with_auto_halt_halts_globally(
    emergency_kit: EmergencyKit, emergency: EmergencyControl, uid: str
) -> None:
    """A breach with auto_halt (the default) halts trading globally, naming the limit."""
    with pytest.raises(RiskLimitExceeded) as caught:
        await emergency.check_risk_limit("max_order_notional", 5000.0, 1000.0)
    assert caught.value.halted is True

    await emergency_kit.caught_up(emergency)
    with pytest.raises(EmergencyHalted) as halted:
        emergency.ensure_trading_allowed(run_ids(uid))
    assert halted.value.scope == Scope.GLOBAL.value
    assert "max_order_notional" in halted.value.reason
    assert any(h.scope is Scope.GLOBAL for h in await emergency.halts())


async def test_risk_limits_are_set_listed_replaced_and_used(
    emergency: EmergencyControl, uid: str
) -> None:
    """set_risk_limit stores a limit that list_risk_limits shows, a second call replaces it,
    and a check without a threshold compares with the configured one."""
    limit_type = f"exposure_{uid}"
    limit = await emergency.set_risk_limit(
        limit_type, 100.0, LimitDirection.ABOVE, auto_halt=False, actor="carol"
    )
    assert (limit.limit_type, limit.threshold, limit.direction, limit.auto_halt) == (
        limit_type,
        100.0,
        LimitDirection.ABOVE,
        False,
    )
    assert limit.updated_by == "carol"
    assert limit in await emergency.list_risk_limits()

    replaced = await emergency.set_risk_limit(
        limit_type, 200.0, LimitDirection.ABOVE, auto_halt=False, actor="dave"
    )
    limits = await emergency.list_risk_limits()
    assert [x for x in limits if x.limit_type == limit_type] == [replaced]

    await emergency.check_risk_limit(limit_type, 150.0, auto_halt=False)
    with pytest.raises(RiskLimitExceeded) as caught:
        await emergency.check_risk_limit(limit_type, 250.0, auto_halt=False)
    assert (caught.value.value, caught.value.threshold) == (250.0, 200.0)


async def test_audit_entries_are_newest_first_with_actor_and_action(
    emergency: EmergencyControl, uid: str
) -> None:
    """Halt, resume and set_risk_limit each leave an entry naming actor and action, listed
    newest first; ``limit`` keeps the newest."""
    target, limit_type = f"{uid}-wf", f"audit_{uid}"
    await emergency.halt(Scope.WORKFLOW, target, reason="audit halt", actor="alice")
    await emergency.resume(Scope.WORKFLOW, target, reason="audit resume", actor="bob")
    await emergency.set_risk_limit(limit_type, 5.0, LimitDirection.ABOVE, actor="carol")

    entries = await emergency.audit_entries(limit=50)
    entry_ids = [entry.entry_id for entry in entries]
    assert entry_ids == sorted(set(entry_ids), reverse=True)
    # The service also audits each halt's barrier (who acknowledged): not a change.
    entries = [entry for entry in entries if entry.action != "halt_barrier"]
    mine = [
        (entry.action, entry.actor, entry.scope, entry.target)
        for entry in entries
        if entry.target == target or entry.details.get("limit_type") == limit_type
    ]
    assert mine == [
        ("set_risk_limit", "carol", None, None),
        ("resume", "bob", Scope.WORKFLOW, target),
        ("halt", "alice", Scope.WORKFLOW, target),
    ]
    reasons = [entry.reason for entry in entries if entry.target == target]
    assert reasons == ["audit resume", "audit halt"]
    newest = await emergency.audit_entries(limit=50)
    assert await emergency.audit_entries(limit=2) == newest[:2]


EmergencyCall = Callable[[EmergencyControl, str], Awaitable[object]]


@pytest.mark.parametrize(
    ("field", "call"),
    [
        pytest.param(
            "target",
            lambda c, uid: c.halt(Scope.GLOBAL, f"{uid}-bot", reason="r"),
            id="global-halt-with-target",
        ),
        pytest.param(
            "target", lambda c, uid: c.halt(Scope.BOT, None, reason="r"), id="bot-halt-no-target"
        ),
        pytest.param(
            "target", lambda c, uid: c.halt(Scope.WORKFLOW, "", reason="r"), id="empty-target"
        ),
        pytest.param(
            "scope",
            lambda c, uid: c.halt(cast(Scope, "planet"), f"{uid}-bot", reason="r"),
            id="unknown-scope",
        ),
        pytest.param(
            "reason", lambda c, uid: c.halt(Scope.BOT, f"{uid}-bot", reason=""), id="empty-reason"
        ),
        pytest.param(
            "scope",
            lambda c, uid: c.resume(cast(Scope, "planet"), f"{uid}-bot", reason="r"),
            id="resume-unknown-scope",
        ),
        pytest.param(
            "limit_type",
            lambda c, uid: c.check_risk_limit(f"unknown_{uid}", 1.0),
            id="unknown-limit-type",
        ),
        pytest.param(
            "value",
            lambda c, uid: c.check_risk_limit("max_order_notional", math.nan, 1000.0),
            id="nan-value",
        ),
        pytest.param(
            "threshold",
            lambda c, uid: c.check_risk_limit("max_order_notional", 1.0, math.inf),
            id="infinite-threshold",
        ),
        pytest.param(
            "direction",
            lambda c, uid: c.set_risk_limit(f"custom_{uid}", 1.0),
            id="custom-limit-no-direction",
        ),
        pytest.param(
            "direction",
            lambda c, uid: c.set_risk_limit(f"custom_{uid}", 1.0, cast(LimitDirection, "sideways")),
            id="unknown-direction",
        ),
        pytest.param(
            "threshold",
            lambda c, uid: c.set_risk_limit(f"custom_{uid}", math.nan, LimitDirection.ABOVE),
            id="nan-limit-threshold",
        ),
    ],
)
async def test_bad_request_raises_invalid_request_naming_the_field(
    emergency: EmergencyControl, uid: str, field: str, call: EmergencyCall
) -> None:
    """A bad scope, target or value raises InvalidRequest naming it, and changes nothing."""
    with pytest.raises(InvalidRequest) as caught:
        await call(emergency, uid)
    assert caught.value.field == field
    assert emergency.active_halt(run_ids(uid)) is None
    assert all(limit.limit_type != f"custom_{uid}" for limit in await emergency.list_risk_limits())


# -- event bus --------------------------------------------------------------------------


class Inbox:
    """A handler keeping the event dicts of one execution (a shared bus may carry others),
    raising after it kept those whose sequence is in ``fail_on``."""

    def __init__(self, execution_id: str, *, fail_on: Container[int] = ()) -> None:
        self.execution_id = execution_id
        self.items: list[dict[str, Any]] = []
        self._fail_on = fail_on
        self._arrived = asyncio.Event()

    async def __call__(self, item: dict[str, Any]) -> None:
        if item.get("execution_id") != self.execution_id:
            return
        self.items.append(item)
        self._arrived.set()
        if item["sequence"] in self._fail_on:
            raise RuntimeError(f"handler refuses event {item['sequence']}")

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The kept items once there are ``count`` of them."""
        async with asyncio.timeout(DEADLINE_SECONDS):
            while len(self.items) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.items


def bus_events(uid: str, count: int) -> list[Event]:
    """``count`` events of one execution, sequence 0 to count - 1."""
    run = execution(f"{uid}-e", f"{uid}-wf", bot_id=f"{uid}-bot", strategy_id=f"{uid}-st")
    return [event(run, n) for n in range(count)]


async def test_subscriber_receives_contract_dicts_in_publish_order(
    event_bus: EventBus, uid: str
) -> None:
    """Every published event reaches a subscriber once, as Event.to_dict(), in order."""
    inbox = Inbox(f"{uid}-e")
    subscription = await event_bus.subscribe(TOPIC, inbox)
    events = bus_events(uid, 25)
    for item in events:
        event_bus.publish(item)

    assert await inbox.wait_for(len(events)) == [item.to_dict() for item in events]
    assert subscription.dropped == 0


async def test_a_bus_is_healthy_while_open_and_not_once_closed(event_bus: EventBus) -> None:
    """healthy() (what the executor's health check follows) holds while the bus can deliver,
    and no longer once it is closed."""
    assert event_bus.healthy()
    await event_bus.close()
    assert not event_bus.healthy()


async def test_unknown_topic_is_invalid_request(event_bus: EventBus) -> None:
    """Subscribing to a topic other than workflow_events raises InvalidRequest naming topic."""
    with pytest.raises(InvalidRequest) as caught:
        await event_bus.subscribe("orders", Inbox("none"))
    assert caught.value.field == "topic"


async def test_failing_handler_does_not_stop_delivery(event_bus: EventBus, uid: str) -> None:
    """A handler that raises keeps receiving later events, and other subscribers get all."""
    failing = Inbox(f"{uid}-e", fail_on={0, 3})
    healthy = Inbox(f"{uid}-e")
    await event_bus.subscribe(TOPIC, failing)
    await event_bus.subscribe(TOPIC, healthy)
    events = bus_events(uid, 6)
    for item in events:
        event_bus.publish(item)

    expected = [item.to_dict() for item in events]
    assert await failing.wait_for(len(events)) == expected
    assert await healthy.wait_for(len(events)) == expected


async def test_unsubscribed_handler_receives_nothing_more(event_bus: EventBus, uid: str) -> None:
    """After unsubscribe a handler gets no event, while the remaining subscriber gets all."""
    gone = Inbox(f"{uid}-e")
    staying = Inbox(f"{uid}-e")
    subscription = await event_bus.subscribe(TOPIC, gone)
    await event_bus.subscribe(TOPIC, staying)
    await event_bus.unsubscribe(subscription)
    events = bus_events(uid, 5)
    for item in events:
        event_bus.publish(item)

    assert len(await staying.wait_for(len(events))) == len(events)
    assert gone.items == []


async def test_publish_of_an_unencodable_event_neither_raises_nor_blocks_later_ones(
    event_bus: EventBus, uid: str
) -> None:
    """publish never raises, even for data JSON cannot encode; the next event still arrives."""
    inbox = Inbox(f"{uid}-e")
    await event_bus.subscribe(TOPIC, inbox)
    bad, good = bus_events(uid, 2)
    event_bus.publish(bad._replace(data={"unencodable": object()}))
    event_bus.publish(good)

    async with asyncio.timeout(DEADLINE_SECONDS):
        while good.to_dict() not in inbox.items:
            await inbox.wait_for(len(inbox.items) + 1)
    assert inbox.items[-1] == good.to_dict()


async def replayed_until(
    event_bus: EventBus, last: Event, **filters: Any
) -> list[tuple[int, dict[str, Any]]]:
    """What a replay with ``filters`` yields, up to and including the event ``last``."""
    items: list[tuple[int, dict[str, Any]]] = []
    async with asyncio.timeout(DEADLINE_SECONDS), aclosing(event_bus.replay(**filters)) as stream:
        async for sequence, item in stream:
            items.append((sequence, item))
            if item["event_id"] == last.event_id:
                return items
    raise AssertionError("the replay ended before the last event")


async def test_replay_gives_published_events_after_a_sequence(
    event_bus: EventBus, uid: str
) -> None:
    """Replay from last_sequence gives what was published since, in order, as contract dicts
    under growing sequences; from one of those sequences it gives only the later ones."""
    start = await event_bus.last_sequence()
    events = bus_events(uid, 4)
    for item in events:
        event_bus.publish(item)

    mine = await replayed_until(
        event_bus, events[-1], after_sequence=start, workflow_id=f"{uid}-wf"
    )
    assert [item for _, item in mine] == [item.to_dict() for item in events]
    sequences = [sequence for sequence, _ in mine]
    assert sequences == sorted(set(sequences))
    assert sequences[0] > start
    assert await event_bus.last_sequence() >= sequences[-1]

    rest = await replayed_until(
        event_bus, events[-1], after_sequence=sequences[1], execution_id=f"{uid}-e"
    )
    assert rest == mine[2:]


async def test_replay_follows_events_published_while_it_waits(
    event_bus: EventBus, uid: str
) -> None:
    """A replay that has yielded everything kept waits for, then yields, what comes next."""
    first, second = bus_events(uid, 2)
    start = await event_bus.last_sequence()
    event_bus.publish(first)
    async with aclosing(event_bus.replay(after_sequence=start, execution_id=f"{uid}-e")) as stream:
        async with asyncio.timeout(DEADLINE_SECONDS):
            _, item = await anext(stream)
        assert item == first.to_dict()

        live = asyncio.create_task(anext(stream))
        await eventually(lambda: stream.ag_running, "the replay waits for the next event")
        event_bus.publish(second)
        async with asyncio.timeout(DEADLINE_SECONDS):
            _, item = await live
        assert item == second.to_dict()


async def test_replay_filters_by_ids_and_keeps_scope_events_out_of_id_filters(
    event_bus: EventBus, uid: str
) -> None:
    """Each id given must match; an emergency event (about a scope) appears in an unfiltered
    replay only, even when it names the workflow."""
    start = await event_bus.last_sequence()
    mine = execution(f"{uid}-e", f"{uid}-wf", bot_id=f"{uid}-bot", strategy_id=f"{uid}-st")
    other = execution(f"{uid}-o", f"{uid}-wf", bot_id=f"{uid}-bot2", strategy_id=f"{uid}-st")
    halted = Event(
        type=EventType.EMERGENCY_HALTED.value,
        event_id=f"{uid}-halt",
        sequence=1,
        timestamp=BASE_TIME,
        workflow_id=f"{uid}-wf",
        data={"scope": "workflow", "target": f"{uid}-wf"},
    )
    published = [event(mine, 1), event(other, 1), halted, event(mine, 2)]
    for item in published:
        event_bus.publish(item)
    last = published[-1]

    def ids(items: list[tuple[int, dict[str, Any]]]) -> list[str]:
        wanted = {item.event_id for item in published}
        return [item["event_id"] for _, item in items if item["event_id"] in wanted]

    everything = await replayed_until(event_bus, last, after_sequence=start)
    assert ids(everything) == [item.event_id for item in published]
    by_workflow = await replayed_until(
        event_bus, last, after_sequence=start, workflow_id=f"{uid}-wf"
    )
    assert ids(by_workflow) == [f"{uid}-e-1", f"{uid}-o-1", f"{uid}-e-2"]
    by_bot = await replayed_until(
        event_bus, last, after_sequence=start, bot_id=f"{uid}-bot", strategy_id=f"{uid}-st"
    )
    assert ids(by_bot) == [f"{uid}-e-1", f"{uid}-e-2"]
    by_run = await replayed_until(event_bus, last, after_sequence=start, execution_id=f"{uid}-e")
    assert ids(by_run) == [f"{uid}-e-1", f"{uid}-e-2"]


async def test_negative_replay_sequence_is_invalid_request(event_bus: EventBus) -> None:
    """Replay after a negative sequence raises InvalidRequest naming after_sequence."""
    with pytest.raises(InvalidRequest) as caught:
        event_bus.replay(after_sequence=-1)
    assert caught.value.field == "after_sequence"
