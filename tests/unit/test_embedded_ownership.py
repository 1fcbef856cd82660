"""Embedded ownership with real processes: `tradeflow` commands as subprocesses on one
state file. Each execution has one live owner; a resume of a live one is refused naming
it; an interrupted or dead owner's execution is resumed once; a paused owner that wakes
up past its lease neither writes nor trades; each order is placed once.

Every workflow here is ``gated_orders``: a buy, then an ``api_call`` to a local gate the
test holds closed, then a sell. A process waiting at the gate has placed its first order
and not its second: the point at which these tests signal, kill, pause or race it.
Nothing here sleeps to synchronise: the tests wait (bounded by ``DEADLINE_SECONDS``)
for the gate to see a request, for a process to exit or for a stored state.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gate import GateServer
from kit import eventually, execution
from workflows import gated_orders

from tradeflow.adapters.memory.paper import DEFAULT_BALANCES
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.errors import OwnerAlive
from tradeflow.domain.limits import ID_CHARACTERS
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import (
    EventType,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)

TRIALS = 8
"""Concurrent-resume races (half of interrupted executions, half of killed owners')."""
SHORT_LEASE = "0.5"
"""TRADEFLOW_LEASE_SECONDS of a process this test kills or pauses: its lease lapses soon."""
SETUP_LEASE = "1.0"
"""The lease of the runs killed to set up the races: short, with room for a heartbeat
delayed while another process starts."""
AT_ONCE = 4
"""Trials set up, and raced, side by side (eight processes starting at once on the two
cores CI has: fine for a 3 s lease, not for a much shorter one)."""
assert TRIALS % AT_ONCE == 0
EXIT_USAGE = 2
FIRST, SECOND = "first", "second"
"""The two orders of ``gated_orders``."""


class Cli:
    """One `tradeflow` command in its own process; its output goes to files (no pipe
    that could fill and block it)."""

    def __init__(self, tmp_path: Path, name: str, *args: str, lease: str | None = None) -> None:
        self.name = name
        self.out_path = tmp_path / f"{name}.out"
        self.err_path = tmp_path / f"{name}.err"
        # The gates are local HTTP servers: the egress policy must allow loopback explicitly.
        env = {
            **os.environ,
            "TRADEFLOW_LOG_LEVEL": "warning",
            "TRADEFLOW_EGRESS_ALLOW": "127.0.0.1",
        }
        env.pop("TRADEFLOW_LEASE_SECONDS", None)
        if lease is not None:
            env["TRADEFLOW_LEASE_SECONDS"] = lease
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tradeflow.app.cli", *args],
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
        self.pid = self.process.pid

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self) -> int:
        """Wait (bounded) for the process to end; its exit code."""
        await eventually(lambda: not self.running(), f"`{self.name}` exited")
        return self.process.returncode

    def describe(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited {code}"
        return (
            f"`{self.name}` (pid {self.pid}, {state}); stdout: {self.out!r}; stderr: {self.err!r}"
        )


@pytest.fixture
def processes() -> Iterator[list[Cli]]:
    """The processes a test starts: any still alive at teardown is killed (by its pid)."""
    started: list[Cli] = []
    yield started
    for cli in started:
        if cli.running():
            cli.process.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
            cli.process.wait(30)


@pytest.fixture
def store(conn: sqlite3.Connection) -> SQLiteStateStore:
    """The test's view of the shared state file (what `executions` reads)."""
    return SQLiteStateStore(conn)


def start(processes: list[Cli], tmp_path: Path, name: str, *args: str, **kw: Any) -> Cli:
    cli = Cli(tmp_path, name, *args, **kw)
    processes.append(cli)
    return cli


def quiet(gate: GateServer) -> GateServer:
    """``gate`` without the traceback its server prints when the process it answers
    was killed meanwhile (a broken pipe)."""
    gate.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return gate


def start_run(
    processes: list[Cli], tmp_path: Path, gate: GateServer, name: str, lease: str | None = None
) -> Cli:
    """`tradeflow run` of a gated workflow whose workflow id is ``name``."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(gated_orders(gate.url)))
    return start(processes, tmp_path, f"run-{name}", "run", str(path), lease=lease)


async def at_gate(gate: GateServer, cli: Cli) -> None:
    """Wait until ``cli``'s execution waits at ``gate`` (its first order placed)."""
    await eventually(lambda: gate.arrived.is_set() or not cli.running(), f"{cli.name} at the gate")
    assert gate.arrived.is_set(), cli.describe()


async def execution_of(store: SQLiteStateStore, workflow_id: str) -> ExecutionRecord:
    (record,) = (await store.list_executions(ExecutionQuery(workflow_id=workflow_id))).executions
    return record


def orders(conn: sqlite3.Connection, execution_id: str) -> list[str]:
    """The client order ids of ``execution_id``'s orders in the shared paper ledger."""
    rows = conn.execute(
        "SELECT client_order_id FROM paper_orders WHERE client_order_id LIKE ?"
        " ORDER BY client_order_id",
        (f"{execution_id}:%",),
    )
    return [client_order_id for (client_order_id,) in rows]


def assert_each_order_once(conn: sqlite3.Connection, execution_id: str) -> None:
    """Both orders of the execution are in the ledger once, each filled once, and the
    ledger's order ids are unique and its balances the sum of its fills."""
    wanted = [f"{execution_id}:{FIRST}", f"{execution_id}:{SECOND}"]
    assert orders(conn, execution_id) == wanted
    fills = Counter(
        client_order_id
        for (client_order_id,) in conn.execute(
            "SELECT client_order_id FROM paper_fills WHERE client_order_id LIKE ?",
            (f"{execution_id}:%",),
        )
    )
    assert fills == Counter(wanted)
    ((rows, ids),) = conn.execute("SELECT count(*), count(DISTINCT order_id) FROM paper_orders")
    assert rows == ids
    assert_ledger_is_its_fills(conn)


def assert_ledger_is_its_fills(conn: sqlite3.Connection) -> None:
    """Every venue's balances equal its opening balances moved by each of its fills."""
    expected: dict[str, dict[str, float]] = {}
    for venue, symbol, side, quantity, price, fee in conn.execute(
        "SELECT venue, symbol, side, quantity, price, fee FROM paper_fills ORDER BY fill_id"
    ):
        held = expected.setdefault(venue, dict(DEFAULT_BALANCES))
        base, quote = symbol.split("/")
        signed = quantity if side == "buy" else -quantity
        held[quote] = held.get(quote, 0.0) - signed * price - fee
        held[base] = held.get(base, 0.0) + signed
    stored: dict[str, dict[str, float]] = {}
    for venue, asset, amount in conn.execute("SELECT venue, asset, amount FROM paper_balances"):
        stored.setdefault(venue, {})[asset] = amount
    assert stored.keys() == expected.keys()
    for venue, held in expected.items():
        assert stored[venue] == pytest.approx(held, rel=1e-12, abs=1e-9), venue


async def event_counts(store: SQLiteStateStore, execution_id: str) -> Counter[tuple[str, Any]]:
    """How often each (event type, node or resumed flag) was recorded for the execution."""
    counts: Counter[tuple[str, Any]] = Counter()
    for _, event in await store.read_events(execution_id=execution_id):
        detail = event.data.get("resumed", False) if event.node_id is None else event.node_id
        counts[event.type, detail] += 1
    return counts


def journal_rows(conn: sqlite3.Connection, execution_id: str) -> tuple[int, int]:
    """(journal rows of the execution, journal rows in the file)."""
    ((own,),) = conn.execute("SELECT count(*) FROM batches WHERE execution_id = ?", (execution_id,))
    ((every,),) = conn.execute("SELECT count(*) FROM batches")
    return own, every


def list_line(cli: Cli, execution_id: str) -> str:
    """The line of `executions list` output about ``execution_id``."""
    (line,) = [line for line in cli.out.splitlines() if line.startswith(execution_id)]
    return line


HOST = re.sub(f"[^{ID_CHARACTERS}]", "_", socket.gethostname())[:40]
"""This machine as an owner names it (the characters an id may not hold as _)."""
STARTED = EventType.EXECUTION_STARTED.value
COMPLETED = EventType.NODE_COMPLETED.value


@pytest.mark.asyncio
async def test_two_concurrent_resumes_of_an_orphan_one_runs_it_each_order_once(
    tmp_path: Path,
    conn: sqlite3.Connection,
    store: SQLiteStateStore,
    processes: list[Cli],
) -> None:
    """Two `executions resume ID` started together, TRIALS times (of interrupted and of
    dead owners' executions): exactly one runs it, the other exits 2 naming that owner
    (pid) and runs nothing; each order is placed and filled once."""
    gates = [quiet(GateServer()) for _ in range(TRIALS)]
    try:
        ids: list[str] = []
        for batch in range(0, TRIALS, AT_ONCE):
            ids += await orphans(tmp_path, store, processes, range(batch, batch + AT_ONCE), gates)

        async def all_orphans() -> bool:
            return {r.execution_id for r in await store.orphans(100)} == set(ids)

        await eventually(all_orphans, "every owner's lease lapsed or was released")
        for trial, execution_id in enumerate(ids):
            record = await store.get_execution(execution_id)
            expected = ExecutionStatus.INTERRUPTED if trial % 2 == 0 else ExecutionStatus.RUNNING
            assert record.status is expected
            assert orders(conn, execution_id) == [f"{execution_id}:{FIRST}"]

        messages = []
        for batch in range(0, TRIALS, AT_ONCE):
            trials = range(batch, batch + AT_ONCE)
            pairs = {
                trial: tuple(
                    start(
                        processes,
                        tmp_path,
                        f"resume{trial}{side}",
                        "executions",
                        "resume",
                        ids[trial],
                    )
                    for side in "ab"
                )
                for trial in trials
            }
            for trial, (a, b) in pairs.items():
                messages.append(await one_runs(store, gates[trial], ids[trial], a, b))

        for trial, execution_id in enumerate(ids):
            record = await store.get_execution(execution_id)
            assert record.status is ExecutionStatus.COMPLETED
            assert record.takeovers == trial % 2  # a killed owner's run was taken over
            assert_each_order_once(conn, execution_id)
            counts = await event_counts(store, execution_id)
            assert counts[STARTED, True] == 1, counts  # the loser started no run
            assert counts[COMPLETED, FIRST] == counts[COMPLETED, SECOND] == 1, counts
        assert len(messages) == TRIALS
    finally:
        for gate in gates:
            gate.close()


async def orphans(
    tmp_path: Path,
    store: SQLiteStateStore,
    processes: list[Cli],
    trials: range,
    gates: list[GateServer],
) -> list[str]:
    """Executions stopped between their orders: an even trial's run is terminated (the
    record says interrupted), an odd trial's killed (running, its lease lapses soon)."""
    runs = {
        trial: start_run(
            processes, tmp_path, gates[trial], f"race{trial}", SETUP_LEASE if trial % 2 else None
        )
        for trial in trials
    }
    for trial, run in runs.items():
        await at_gate(gates[trial], run)
        run.signal(signal.SIGKILL if trial % 2 else signal.SIGTERM)
    for trial, run in runs.items():
        assert await run.exit_code() == (-signal.SIGKILL if trial % 2 else 143), run.describe()
        gates[trial].arrived.clear()
    return [(await execution_of(store, f"race{trial}")).execution_id for trial in trials]


async def one_runs(
    store: SQLiteStateStore, gate: GateServer, execution_id: str, a: Cli, b: Cli
) -> str:
    """Of two resumes of ``execution_id`` started together, one waits at ``gate`` (so
    it runs the execution) and the other ended, refused naming the first as owner; the
    gate opens and the first completes the execution. Returns the refusal."""
    await eventually(
        lambda: (
            (gate.arrived.is_set() and not (a.running() and b.running()))
            or not (a.running() or b.running())
        ),
        f"of two resumes of {execution_id}, one at the gate and the other ended",
    )
    assert gate.arrived.is_set() and a.running() != b.running(), f"{a.describe()}; {b.describe()}"
    winner, loser = (a, b) if a.running() else (b, a)
    owner = (await store.get_execution(execution_id)).owner
    assert owner is not None and f"-{winner.pid}-" in owner
    assert loser.process.returncode == EXIT_USAGE, loser.describe()
    # Refused at its claim (OwnerAlive), not stopped later by its first write.
    assert "running under a live lease held by" in loser.err, loser.describe()
    assert owner in loser.err and "Traceback" not in loser.err, loser.describe()
    assert loser.out == "", loser.describe()  # it started no run
    gate.open.set()
    assert await winner.exit_code() == 0, winner.describe()
    assert "(resumed)" in winner.out
    return loser.err.strip()


@pytest.mark.asyncio
async def test_a_resume_of_an_execution_whose_owner_is_alive_is_refused_naming_it(
    tmp_path: Path,
    conn: sqlite3.Connection,
    store: SQLiteStateStore,
    processes: list[Cli],
    gate: GateServer,
) -> None:
    """While `tradeflow run` waits between its orders, `executions list` shows it live
    with its owner, and `executions resume` exits 2 naming that owner (pid) and trades
    nothing; the run then finishes, each order once."""
    run = start_run(processes, tmp_path, quiet(gate), "alive")
    await at_gate(gate, run)
    record = await execution_of(store, "alive")
    execution_id, owner = record.execution_id, record.owner
    assert owner is not None and f"-{run.pid}-" in owner and record.owner_live

    listing = start(processes, tmp_path, "list", "executions", "list")
    assert await listing.exit_code() == 0, listing.describe()
    line = list_line(listing, execution_id)
    assert "running" in line and f"owner={owner} (live)" in line and "orphan" not in line

    resume = start(processes, tmp_path, "resume", "executions", "resume", execution_id)
    assert await resume.exit_code() == EXIT_USAGE, resume.describe()
    assert resume.err.count("\n") == 1 and "Traceback" not in resume.err, resume.describe()
    assert execution_id in resume.err and owner in resume.err
    assert f"(cli, pid {run.pid} on {HOST})" in resume.err
    assert orders(conn, execution_id) == [f"{execution_id}:{FIRST}"]
    after = await store.get_execution(execution_id)
    assert (after.owner, after.epoch, after.status) == (owner, record.epoch, record.status)

    gate.open.set()
    assert await run.exit_code() == 0, run.describe()
    assert_each_order_once(conn, execution_id)
    counts = await event_counts(store, execution_id)
    assert counts[STARTED, True] == 0 and counts[STARTED, False] == 1, counts


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
async def test_a_signalled_run_is_interrupted_then_resumed_without_repeating_its_order(
    tmp_path: Path,
    conn: sqlite3.Connection,
    store: SQLiteStateStore,
    processes: list[Cli],
    gate: GateServer,
    signum: int,
    code: int,
    said: str,
) -> None:
    """SIGTERM / Ctrl-C of `tradeflow run` between its orders: exit 143 / 130, the record
    says interrupted (not running), its lease is released (an orphan at once),
    `executions list` offers the resume, and `executions resume` finishes it: the first
    order is not placed again, the second is placed once."""
    run = start_run(processes, tmp_path, quiet(gate), "signalled")
    await at_gate(gate, run)
    run.signal(signum)
    assert await run.exit_code() == code, run.describe()
    assert said in run.err
    record = await execution_of(store, "signalled")
    execution_id = record.execution_id
    assert record.status is ExecutionStatus.INTERRUPTED
    assert record.owner is not None and f"-{run.pid}-" in record.owner
    assert not record.owner_live  # released on the way out: no lease to wait for
    assert orders(conn, execution_id) == [f"{execution_id}:{FIRST}"]

    listing = start(processes, tmp_path, "list", "executions", "list")
    assert await listing.exit_code() == 0, listing.describe()
    line = list_line(listing, execution_id)
    assert "interrupted" in line and "(orphan: interrupted" in line
    assert f"tradeflow executions resume {execution_id}" in line and "(live)" not in line

    gate.open.set()
    resume = start(processes, tmp_path, "resume", "executions", "resume", execution_id)
    assert await resume.exit_code() == 0, resume.describe()
    assert "(resumed)" in resume.out
    final = await store.get_execution(execution_id)
    assert final.status is ExecutionStatus.COMPLETED and final.takeovers == 0
    assert final.owner is not None and f"-{resume.pid}-" in final.owner
    assert_each_order_once(conn, execution_id)
    counts = await event_counts(store, execution_id)
    assert counts[COMPLETED, FIRST] == counts[COMPLETED, SECOND] == 1, counts


@pytest.mark.asyncio
async def test_a_killed_runs_execution_shows_as_an_orphan_once_its_lease_lapses_then_resumes(
    tmp_path: Path,
    conn: sqlite3.Connection,
    store: SQLiteStateStore,
    processes: list[Cli],
    gate: GateServer,
) -> None:
    """kill -9 of `tradeflow run` between its orders (lease 0.5 s): once the lease lapses,
    `executions list` shows the execution running, its dead owner and not live (an orphan
    to resume); `executions resume` takes it over and completes it, each order once."""
    run = start_run(processes, tmp_path, quiet(gate), "killed", lease=SHORT_LEASE)
    await at_gate(gate, run)
    run.signal(signal.SIGKILL)
    assert await run.exit_code() == -signal.SIGKILL
    record = await execution_of(store, "killed")
    execution_id, owner = record.execution_id, record.owner
    assert owner is not None and f"-{run.pid}-" in owner
    assert record.status is ExecutionStatus.RUNNING

    async def lapsed() -> bool:
        return not (await store.get_execution(execution_id)).owner_live

    await eventually(lapsed, "the killed owner's lease lapsed")
    listing = start(processes, tmp_path, "list", "executions", "list")
    assert await listing.exit_code() == 0, listing.describe()
    line = list_line(listing, execution_id)
    assert "running" in line and f"owner={owner} (orphan: owner's lease lapsed" in line
    assert f"tradeflow executions resume {execution_id}" in line and "(live)" not in line

    gate.open.set()
    resume = start(processes, tmp_path, "resume", "executions", "resume", execution_id)
    assert await resume.exit_code() == 0, resume.describe()
    assert "(resumed)" in resume.out
    final = await store.get_execution(execution_id)
    assert final.status is ExecutionStatus.COMPLETED and final.takeovers == 1
    assert_each_order_once(conn, execution_id)


@pytest.mark.asyncio
async def test_a_paused_owner_that_wakes_after_a_takeover_neither_writes_nor_trades(
    tmp_path: Path,
    conn: sqlite3.Connection,
    store: SQLiteStateStore,
    processes: list[Cli],
    gate: GateServer,
) -> None:
    """SIGSTOP of `tradeflow run` between its orders past its lease (0.5 s); another
    process resumes and completes the execution; after SIGCONT the paused one (its gate
    call answered, its sell next) writes no journal row and no record change, places no
    order, and exits non-zero saying its lease is no longer valid."""
    run = start_run(processes, tmp_path, quiet(gate), "paused", lease=SHORT_LEASE)
    await at_gate(gate, run)
    run.signal(signal.SIGSTOP)
    record = await execution_of(store, "paused")
    execution_id = record.execution_id

    async def lapsed() -> bool:
        return not (await store.get_execution(execution_id)).owner_live

    await eventually(lapsed, "the paused owner's lease lapsed")
    gate.open.set()  # answers the paused process's call too: it reads it once woken
    resume = start(processes, tmp_path, "resume", "executions", "resume", execution_id)
    assert await resume.exit_code() == 0, resume.describe()
    taken = await store.get_execution(execution_id)
    assert taken.status is ExecutionStatus.COMPLETED and taken.epoch > record.epoch
    assert taken.owner is not None and f"-{resume.pid}-" in taken.owner
    assert_each_order_once(conn, execution_id)
    rows, events = journal_rows(conn, execution_id), await event_counts(store, execution_id)

    run.signal(signal.SIGCONT)
    assert await run.exit_code() != 0, run.describe()
    assert "no longer valid" in run.err and "Traceback" not in run.err, run.describe()
    after = await store.get_execution(execution_id)
    assert (after.status, after.owner, after.epoch, after.finished_at) == (
        taken.status,
        taken.owner,
        taken.epoch,
        taken.finished_at,
    )
    assert journal_rows(conn, execution_id) == rows
    assert await event_counts(store, execution_id) == events
    assert_each_order_once(conn, execution_id)


@pytest.mark.asyncio
async def test_an_interrupted_execution_claimed_by_a_live_owner_is_refused_to_another(
    store: SQLiteStateStore,
) -> None:
    """Between a resume's claim and its first write the record still says interrupted: a
    second claim then must see the live claimer and get OwnerAlive (not take the
    execution over), as two `executions resume` racing need."""
    dead = await store.acquire_lease(OwnerInfo("cli-h-1-aaaaaaaa", "cli", "h", 1), 5.0)
    first = await store.acquire_lease(OwnerInfo("cli-h-2-bbbbbbbb", "cli", "h", 2), 5.0)
    second = await store.acquire_lease(OwnerInfo("cli-h-3-cccccccc", "cli", "h", 3), 5.0)
    await store.write(StateBatch(execution("cut"), fence=dead.fence))
    await store.write(
        StateBatch(execution("cut", status=ExecutionStatus.INTERRUPTED), fence=dead.fence)
    )
    await store.release_lease(dead)
    await store.claim("cut", first)
    with pytest.raises(OwnerAlive, match="pid 2"):
        await store.claim("cut", second)
    record = await store.get_execution("cut")
    assert (record.owner, record.epoch) == (first.info.owner, first.epoch)
