"""One executor lifecycle: plan a workflow once, run it many times on a :class:`Runtime`.

The two public executors are this class on two runtimes: ``WorkflowExecutor`` on an
in-memory one whose executions record nothing (the null journal), and
``EnhancedWorkflowExecutor`` on an infrastructure's, whose executions emit events,
persist their progress and ask the emergency controller before each action (the
durable journal, :mod:`tradeflow.engine.journal`).

:meth:`Executor.run` returns the typed result, whatever the status;
:meth:`Executor.execute` is the seed's edge: the result dict, or the halt raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from tradeflow.domain.errors import InvalidRequest, LeaseLost, describe
from tradeflow.domain.limits import check_id
from tradeflow.domain.records import Checkpoint, CheckpointState, ExecutionRecord, ExecutionStatus
from tradeflow.engine.journal import NULL_JOURNAL, DurableJournal, NullJournal
from tradeflow.engine.model import Workflow
from tradeflow.engine.nodes import default_registry
from tradeflow.engine.nodes.registry import ExecutionContext, NodeRegistry
from tradeflow.engine.result import ExecutionResult
from tradeflow.engine.runner import Plan, Runner

if TYPE_CHECKING:
    from tradeflow.engine.runtime import Runtime
    from tradeflow.observability.metrics import Series

__all__ = ["AUDIT_WAIT_SECONDS", "Executor"]

AUDIT_WAIT_SECONDS = 2.0
"""How long a run waits, once its nodes are done, for the audits of its denied orders."""


class _Start(NamedTuple):
    """Who an execution is and when it started (a named tuple: built once per run)."""

    execution_id: str
    workflow_id: str
    correlation_id: str
    bot_id: str | None
    strategy_id: str | None
    started_at: float
    request_id: str | None
    takeovers: int = 0


class Executor:
    """Runs one workflow definition on a runtime, as many times as asked."""

    def __init__(
        self,
        workflow: Mapping[str, Any] | Workflow | Plan,
        runtime: Runtime,
        *,
        workflow_id: str = "",
        bot_id: str | None = None,
        strategy_id: str | None = None,
        registry: NodeRegistry | None = None,
        max_concurrency: int = 16,
    ) -> None:
        self.definition = workflow
        self.runtime = runtime
        self.workflow_id = workflow_id
        self.bot_id = bot_id
        self.strategy_id = strategy_id
        self.registry = registry if registry is not None else default_registry
        self.max_concurrency = max_concurrency
        self.plan: Plan | None = None
        self._node_seconds: dict[str, Series] = {}
        self._cancelled = asyncio.Event()

    async def initialize(self) -> None:
        """Validate the definition and plan the run (raises ``WorkflowValidationError``)."""
        if self.plan is not None:
            return
        self.plan = Plan.of(self.definition, self.registry)
        if self.runtime.durability is not None:
            histogram = self.runtime.durability.metrics.node_seconds
            self._node_seconds = {
                node_id: histogram.labels(node.block.type)
                for node_id, node in self.plan.nodes.items()
            }

    def cancel(self) -> None:
        """Stop the run in progress (or the next one, if none is): nodes already running
        finish, no further node starts, the status becomes ``cancelled``."""
        self._cancelled.set()

    async def execute(
        self,
        *,
        correlation_id: str | None = None,
        request_id: str | None = None,
        execution_id: str | None = None,
        started_at: float | None = None,
    ) -> dict[str, Any]:
        """Run the workflow once (as :meth:`run`). Returns the result dict; raises
        ``EmergencyHalted`` or ``RiskLimitExceeded`` (with ``execution_id``) when a halt
        stopped the run."""
        start = self._start(correlation_id, request_id, execution_id, started_at)
        return _seed_edge(await self._run(start, {}, 0))

    async def run(
        self,
        *,
        correlation_id: str | None = None,
        request_id: str | None = None,
        execution_id: str | None = None,
        started_at: float | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        """Run the workflow once; the typed result, whatever its status.

        ``request_id`` is an idempotency key recorded with the execution;
        ``execution_id`` and ``started_at`` let a caller hand out the id (and record the
        start) before the run starts. An id that is given must be well-formed
        (:func:`~tradeflow.domain.limits.check_id`). ``on_started`` is called once the
        execution's start is durable (it is written first then), before any node runs.
        """
        start = self._start(correlation_id, request_id, execution_id, started_at)
        return await self._run(start, {}, 0, on_started)

    def _start(
        self,
        correlation_id: str | None,
        request_id: str | None,
        execution_id: str | None,
        started_at: float | None,
    ) -> _Start:
        # Synchronous, called by both run() and execute(): one coroutine layer less per run.
        # Checked only when given: the base executor's hot path passes none of them.
        if correlation_id is not None:
            check_id("correlation_id", correlation_id)
        if request_id is not None:
            check_id("request_id", request_id)
        if execution_id is not None:
            check_id("execution_id", execution_id)
        execution_id = execution_id or self.runtime.ids()
        return _Start(
            execution_id,
            self.workflow_id,
            correlation_id or execution_id,
            self.bot_id,
            self.strategy_id,
            started_at if started_at is not None else self.runtime.clock.time(),
            request_id,
        )

    async def resume(self, execution_id: str) -> dict[str, Any]:
        """Continue an interrupted execution from its checkpoints; the result dict, or the
        halt raised, as :meth:`execute`.

        The execution is first claimed under this process's lease: ``OwnerAlive`` (naming
        the owner) while a live process runs it; of two concurrent resumes one runs.
        Completed nodes are not run again; an action whose intent was recorded first asks
        the exchange for the order by its client order id and adopts it if it exists
        (else places it with that id, which the exchange deduplicates). An execution
        whose owners died more than ``max_takeovers`` times ends ``failed`` instead.
        """
        return _seed_edge(await self.resume_run(execution_id))

    async def resume_run(self, execution_id: str, *, takeover: bool = False) -> ExecutionResult:
        """:meth:`resume`, returning the typed result whatever its status. A ``takeover``
        (by a replica, of an orphan) claims only an unfinished execution: one that ended
        meanwhile (say, cancelled) raises ``InvalidRequest`` and is left as it is."""
        check_id("execution_id", execution_id)
        await self.initialize()
        assert self.plan is not None
        durability = self.runtime.durability
        if durability is None:
            raise InvalidRequest("execution_id", "an execution of a durable executor", execution_id)
        record = await durability.state.get_execution(execution_id)
        if record.status is ExecutionStatus.COMPLETED:
            raise InvalidRequest("execution_id", "an execution that did not complete", execution_id)
        if record.definition != self.plan.workflow.definition:
            # Checkpoints name this execution's blocks: another workflow must not reuse them.
            raise InvalidRequest(
                "execution_id",
                "an execution of this executor's workflow definition",
                f"{execution_id} (recorded with another definition)",
            )
        lease = await durability.owner.start()
        # Watched from before the claim: a cancel delivered by a heartbeat between the claim
        # and the run must not be lost (_run watches again, the same callback).
        durability.owner.watch(execution_id, self.cancel)
        try:
            claim = await durability.state.claim(execution_id, lease, takeover=takeover)
        except BaseException:
            durability.owner.unwatch(execution_id)
            raise
        start = _Start(
            record.execution_id,
            record.workflow_id,
            record.correlation_id,
            record.bot_id,
            record.strategy_id,
            record.started_at,
            record.request_id,
            claim.takeovers,
        )
        checkpoints = await durability.state.get_checkpoints(execution_id)
        last_sequence = await durability.state.last_sequence(execution_id)
        if claim.takeover and claim.takeovers > durability.max_takeovers:
            return await self._quarantine(start, last_sequence, claim.takeovers)
        if claim.cancel_requested:
            # Asked of a previous owner (or while it had none): end it, running nothing.
            self._cancelled.set()
        return await self._run(start, checkpoints, last_sequence)

    async def _quarantine(
        self, start: _Start, last_sequence: int, takeovers: int
    ) -> ExecutionResult:
        """End an execution that kept killing its owners ``failed``, running nothing."""
        assert self.runtime.durability is not None
        error = (
            f"quarantined: its owner died {takeovers} times while running it (more than "
            f"max_takeovers={self.runtime.durability.max_takeovers}); resume it by hand "
            "once the cause is fixed"
        )
        return await self._journal(start, last_sequence).finish(self._failed(start, error))

    def _failed(self, start: _Start, error: str) -> ExecutionResult:
        """The result of an execution ended ``failed`` before any node ran."""
        return ExecutionResult(
            ExecutionStatus.FAILED,
            start.execution_id,
            start.workflow_id or None,
            start.correlation_id,
            {},
            {},
            [],
            error,
            start.started_at,
            self.runtime.clock.time(),
            None,
        )

    async def _run(
        self,
        start: _Start,
        restored: Mapping[str, Checkpoint],
        last_sequence: int,
        on_started: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        if self.plan is None:
            await self.initialize()
        assert self.plan is not None
        runtime = self.runtime
        durability = runtime.durability
        if durability is not None:
            if not durability.owner.started:
                await durability.owner.start()
            else:
                # Embedded stores answer without suspending: runs back to back would never
                # let the lease's renewal (or the emergency view, or the trigger evaluator)
                # run, and the lease would lapse under a busy bot. One turn per run.
                await asyncio.sleep(0)
            # A cancellation requested through another process reaches this run.
            durability.owner.watch(start.execution_id, self.cancel)
        # An action that recorded its intent, or failed after it, may have placed its order.
        intents = frozenset(
            node_id
            for node_id, checkpoint in restored.items()
            if checkpoint.state in _MAY_HAVE_ACTED
        )
        journal = self._journal(start, last_sequence, intents)
        ctx = ExecutionContext(
            start.execution_id,
            start.workflow_id,
            start.correlation_id,
            start.bot_id,
            start.strategy_id,
            runtime.exchange,
            runtime.prices,
            runtime.risk,
            runtime.http,
            runtime.log,
            intents,
        )
        if on_started is not None:
            try:
                await journal.begin()
            except BaseException as exc:
                # Not accepted. The start may have been stored all the same (a reply lost
                # after the commit): end it failed, best effort, rather than leave it
                # running under this live lease or "interrupted" for another to run.
                self._unwatch(start.execution_id)
                if not isinstance(exc, Exception):
                    journal.unbind()
                    raise
                await self._refuse(journal, start, exc)
                raise
            on_started()
        try:
            outcome = await Runner(
                self.plan, ctx, runtime.breakers, journal, self.max_concurrency, self._cancelled
            ).run(restored)
            if ctx.audits:
                # Denied orders' audits: bounded, and one still running goes on by itself.
                await asyncio.wait(ctx.audits, timeout=AUDIT_WAIT_SECONDS)
        except LeaseLost:
            # Another owner has (or will have) the execution: write nothing more here.
            journal.unbind()
            raise
        except BaseException:
            # Interrupted (task cancelled, shutdown): keep what ran and mark the
            # execution "interrupted", resumable here or by another owner. The flush is shielded (it runs
            # in a task of its own); the log context is reset here, where it was bound.
            try:
                await asyncio.shield(journal.interrupted())
            finally:
                journal.unbind()
            raise
        finally:
            self._cancelled = asyncio.Event()
            self._unwatch(start.execution_id)
        status, results, errors, skipped, halt, error = outcome
        result = ExecutionResult(
            status,
            start.execution_id,
            start.workflow_id or None,
            start.correlation_id,
            results,
            errors,
            skipped,
            error,
            start.started_at,
            runtime.clock.time(),
            halt,
        )
        return await journal.finish(result)

    async def _refuse(self, journal: NullJournal, start: _Start, error: Exception) -> None:
        """Best effort: record a submission whose start could not be confirmed as failed
        (not one refused because another execution holds its idempotency key: that one
        wrote nothing, and the key's execution is the submission's)."""
        if isinstance(error, InvalidRequest) and error.field == "request_id":
            journal.unbind()
            return
        why = f"submission not accepted: its start could not be stored ({describe(error)})"
        if isinstance(journal, DurableJournal):
            # Without the idempotency key: the caller was told the submission failed, so a
            # retry with the same key must start it (a start stored after all keeps it).
            journal.start = replace(journal.start, request_id=None)
        # If this fails too, the start was most likely not stored either: nothing to end.
        with contextlib.suppress(Exception):
            await journal.finish(self._failed(start, why))

    def _unwatch(self, execution_id: str) -> None:
        if self.runtime.durability is not None:
            self.runtime.durability.owner.unwatch(execution_id)

    def _journal(
        self, start: _Start, last_sequence: int, inherited: frozenset[str] = frozenset()
    ) -> NullJournal:
        durability = self.runtime.durability
        if durability is None:
            return NULL_JOURNAL
        assert self.plan is not None
        record = ExecutionRecord(
            start.execution_id,
            start.workflow_id,
            ExecutionStatus.RUNNING,
            start.started_at,
            self.plan.workflow.definition,
            start.correlation_id,
            start.bot_id,
            start.strategy_id,
            request_id=start.request_id,
            owner=durability.owner.info.owner,
            epoch=durability.owner.lease.epoch,
            takeovers=start.takeovers,
            owner_live=True,
        )
        return DurableJournal(
            durability,
            record,
            clock=self.runtime.clock,
            log=self.runtime.log,
            node_seconds=self._node_seconds,
            last_sequence=last_sequence,
            inherited=inherited,
        )


_MAY_HAVE_ACTED = frozenset({CheckpointState.INTENT, CheckpointState.FAILED})


def _seed_edge(result: ExecutionResult) -> dict[str, Any]:
    """The seed's API: a halted run raises its halt (``EmergencyHalted`` /
    ``RiskLimitExceeded``), naming the execution; any other run returns the dict."""
    halt = result.halt
    if halt is not None:
        halt.execution_id = result.execution_id
        raise halt
    return result.as_dict()
