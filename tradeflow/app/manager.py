"""Executions run on behalf of remote callers: what the executor service serves.

It owns the in-flight executions of this process: submit (idempotent by request
id, durable before it returns), wait, cancel, drain on shutdown, and takeover: every
``takeover_interval`` it claims the orphans of dead replicas (those whose node types it
knows) and resumes them from their checkpoints. Whatever replica a call reaches, it
sees the truth: a retried request waits for the execution's final status wherever it
runs, and a cancel reaches the owner through the state store (with the owner's next
heartbeat). Halted, failed and cancelled executions are results, not errors. The
service's servicer only translates protobuf.

Every replica also watches the halts (every ``takeover_interval``, apart from the
takeover loop, so a slow emergency service never delays a takeover) and submits the
cancel-on-halt job of each halt that asks for one (:mod:`tradeflow.app.cancel_on_halt`):
the job's request id is the halt's, so of all the replicas submitting it one execution
runs.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tradeflow.app.cancel_on_halt import JOB_WORKFLOW_ID, audit_job, cancel_job, job_request_id
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.domain.codec import MAX_PAGE_SIZE
from tradeflow.domain.errors import (
    ExecutionNotFound,
    InvalidRequest,
    LeaseLost,
    OwnerAlive,
    TradeflowError,
    UnavailableError,
    ValidationIssue,
    WorkflowValidationError,
    describe,
)
from tradeflow.domain.limits import check_id
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
)
from tradeflow.engine.nodes import default_registry
from tradeflow.engine.nodes.registry import NodeRegistry
from tradeflow.engine.result import ExecutionResult
from tradeflow.engine.runner import Plan
from tradeflow.engine.validation import parse_workflow
from tradeflow.observability.logging import get_logger
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

__all__ = ["ExecutionManager", "ExecutionView", "Submission"]

_log = get_logger("tradeflow.manager")

_CACHED_PLANS = 256
_TAKEOVER_BATCH = 32
"""Orphans claimed per look: the rest wait for the next (or for another replica)."""
_UNRUNNABLE_KEPT = 1024
"""Orphans remembered as not runnable here (their node types are unknown to this replica)."""
_STRANDED_WAIT_MAX = 30.0
"""Most seconds between two retries of a run that failed on the way (back-off doubles)."""
_POLL_FIRST, _POLL_MAX = 0.02, 0.5
"""Back-off, in seconds, of a wait for an execution that runs in another process."""


@dataclass(frozen=True, slots=True)
class Submission:
    """A request to run a workflow; every id is checked when it is built."""

    definition: Mapping[str, Any]
    workflow_id: str
    bot_id: str | None = None
    strategy_id: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        check_id("workflow_id", self.workflow_id)
        for field in ("bot_id", "strategy_id", "request_id", "correlation_id"):
            check_id(field, getattr(self, field), optional=True)


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """An execution and the latest state of each of its nodes, in block order."""

    record: ExecutionRecord
    nodes: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class _Job:
    """An execution run (or resumed) here: what running it again needs."""

    executor: EnhancedWorkflowExecutor
    execution_id: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class _Running:
    executor: EnhancedWorkflowExecutor | None
    """None for an ended execution found by its request id in the state store."""
    execution_id: str
    task: asyncio.Future[ExecutionView]


def _same_caller(asking: tuple[str | None, str], found: tuple[str | None, str]) -> None:
    """Refuse a request id already used for another bot or workflow."""
    if asking != found:
        raise InvalidRequest(
            "request_id",
            "an id not used before by another bot or workflow",
            "the id of another caller's execution",
        )


class ExecutionManager:
    """Runs submissions on one shared infrastructure."""

    def __init__(self, infra: Infrastructure, *, registry: NodeRegistry | None = None) -> None:
        self.infra = infra
        self.registry = registry if registry is not None else default_registry
        self._running: dict[str, _Running] = {}
        self._plans: OrderedDict[bytes, Plan] = OrderedDict()
        self._claims: dict[str, asyncio.Future[_Running]] = {}
        self._by_request: dict[str, str] = {}
        self._draining = False
        self._takeover: asyncio.Task[None] | None = None
        self._halt_watch: asyncio.Task[None] | None = None
        self._cancel_jobs: set[str] = set()
        """Request ids of the cancel-on-halt jobs seen completed, of the halts
        still in force (not looked up again)."""
        self._interval = 0.5
        self._unrunnable: OrderedDict[str, None] = OrderedDict()
        self._waits: dict[str, asyncio.Task[ExecutionView]] = {}
        """One poller per execution running elsewhere that a caller waits for."""
        self._stranded: dict[str, tuple[_Job, int, float]] = {}
        """Runs here that failed on the way (the store unreachable at their last write):
        still ``running`` under this replica's live lease, so no other replica would take
        them over; the takeover loop resumes them here, with back-off, until they end.
        Value: the job, its tries, the loop time of the next try."""

    def start_takeover(self, interval: float) -> None:
        """Look for orphans every ``interval`` seconds and take them over, and for halts
        asking to cancel resting orders (until drained)."""
        if self._takeover is None:
            self._interval = interval
            self._takeover = asyncio.create_task(self._take_over(interval), name="takeover")
            self._halt_watch = asyncio.create_task(
                self._watch_halts(interval), name="cancel-on-halt"
            )

    def validate(self, definition: object) -> tuple[ValidationIssue, ...]:
        """Every problem in ``definition`` (empty when it is valid)."""
        try:
            parse_workflow(definition, registry=self.registry)
        except WorkflowValidationError as error:
            return error.issues
        return ()

    async def submit(self, submission: Submission) -> str:
        """Start an execution and return its id once its start is durable (a replica dying
        right after leaves an orphan that another takes over, never a lost submission); a
        repeated request id returns the first."""
        return (await self._start(submission, durable=True)).execution_id

    async def execute(self, submission: Submission) -> ExecutionView:
        """Run an execution to its end. If the caller goes away the execution goes on."""
        running = await self._start(submission, durable=False)
        return await asyncio.shield(running.task)

    async def _start(self, submission: Submission, *, durable: bool) -> _Running:
        self._refuse_if_draining()
        request_id = submission.request_id
        if request_id is None:
            return await self._launch(submission, None, durable)
        # Concurrent requests with one key wait for the first: looking the key up in the
        # store is a round trip, and the second must not start its own execution meanwhile.
        claim = self._claims.get(request_id)
        if claim is not None:
            return await asyncio.shield(claim)
        claim = asyncio.get_running_loop().create_future()
        self._claims[request_id] = claim
        try:
            running = await self._known_request(request_id, submission)
            if running is None:
                running = await self._launch(submission, request_id, durable)
        except BaseException as exc:
            claim.set_exception(exc)
            claim.exception()  # the waiters, if any, re-raise it; none is not an error
            raise
        else:
            claim.set_result(running)
            return running
        finally:
            del self._claims[request_id]

    def _refuse_if_draining(self) -> None:
        if self._draining:
            # UNAVAILABLE at the edge: the caller retries on another replica.
            raise UnavailableError("executor is shutting down")

    async def _launch(
        self, submission: Submission, request_id: str | None, durable: bool
    ) -> _Running:
        executor = EnhancedWorkflowExecutor(
            self._plan(submission.definition),
            self.infra,
            submission.workflow_id,
            submission.bot_id,
            submission.strategy_id,
            registry=self.registry,
        )
        await executor.initialize()
        execution_id = self.infra.id_factory()
        # Checked again with no await before the task exists: a drain that began while this
        # request was looked up must not see a task appear after it took its snapshot.
        self._refuse_if_draining()
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run = executor.run(
            correlation_id=submission.correlation_id,
            request_id=request_id,
            execution_id=execution_id,
            started_at=self.infra.clock.time(),
            on_started=(lambda: started.set_result(None)) if durable else None,
        )
        running = self._track(
            _Job(executor, execution_id, request_id),
            run,
            takeover=False,
            started=started if durable else None,
        )
        if durable:
            await asyncio.wait((started, running.task), return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                running.task.result()  # the start could not be written: say why
        return running

    def _track(
        self,
        job: _Job,
        run: Coroutine[Any, Any, ExecutionResult],
        *,
        takeover: bool,
        tries: int = 0,
        started: asyncio.Future[None] | None = None,
    ) -> _Running:
        task = asyncio.create_task(
            self._outcome(job, run, takeover=takeover, tries=tries, started=started)
        )
        execution_id, request_id = job.execution_id, job.request_id
        running = _Running(job.executor, execution_id, task)
        self._running[execution_id] = running
        if request_id is not None:
            self._by_request[request_id] = execution_id
        task.add_done_callback(lambda done: self._finished(done, execution_id, request_id))
        return running

    async def _outcome(
        self,
        job: _Job,
        run: Coroutine[Any, Any, ExecutionResult],
        *,
        takeover: bool,
        tries: int = 0,
        started: asyncio.Future[None] | None = None,
    ) -> ExecutionView:
        """The final view of a run here or, once another owner has it (this replica lost
        its lease, or another claimed the orphan first), of that owner's run."""
        execution_id = job.execution_id
        try:
            result = await run
            if job.executor.workflow_id == JOB_WORKFLOW_ID:
                await self._audit_cancel_job(job.executor, result)
            return _view(job.executor, result)
        except (LeaseLost, OwnerAlive, InvalidRequest, ExecutionNotFound) as exc:
            if started is not None and not started.done():
                # A submission whose start was not stored under this lease: not accepted.
                raise UnavailableError(f"submission not accepted: {exc.message}") from exc
            if isinstance(exc, InvalidRequest | ExecutionNotFound) and not takeover:
                raise
            # No longer runs here (another owner has it, or it ended before this replica
            # could take it over): the takeover loop may claim it again under this
            # replica's new lease if it is an orphan once more.
            _log.info("execution.moved", execution_id=execution_id, reason=exc.message)
            self._forget(job)
            if takeover and job.request_id is None:
                return await self.get(execution_id)  # nobody can be waiting for it
            try:
                return await self._final(execution_id)
            except ExecutionNotFound:
                # Its start was refused (this replica's lease was revoked or lapsed first):
                # nothing of it was stored, so running it again elsewhere is safe.
                raise UnavailableError(
                    f"execution not started, nothing stored ({exc.message}): retry"
                ) from exc
        except Exception as exc:
            if started is not None and not started.done():
                raise  # a submission refused before its start was stored: nothing to retry
            # Most likely the store was unreachable at a write: the execution is still
            # ``running`` under this replica's live lease, so retry it here (for as long
            # as it takes the store to come back: no other replica may take it over).
            tries += 1
            wait = min(self._interval * 2**tries, _STRANDED_WAIT_MAX)
            next_try = asyncio.get_running_loop().time() + wait
            self._stranded[execution_id] = (job, tries, next_try)
            _log.error(
                "execution.stranded", execution_id=execution_id, error=describe(exc), tries=tries
            )
            raise

    def _forget(self, job: _Job) -> None:
        running = self._running.get(job.execution_id)
        if running is not None and running.executor is job.executor:
            del self._running[job.execution_id]

    async def _final(self, execution_id: str) -> ExecutionView:
        """Wait until an execution running in another process is final; every caller
        waiting for one execution shares one poller."""
        wait = self._waits.get(execution_id)
        if wait is None:
            wait = asyncio.create_task(self._poll_final(execution_id))
            self._waits[execution_id] = wait
            wait.add_done_callback(lambda _: self._waits.pop(execution_id, None))
        return await asyncio.shield(wait)

    async def _poll_final(self, execution_id: str) -> ExecutionView:
        """Poll the store with back-off (the owner may itself die and be replaced)."""
        wait = _POLL_FIRST
        while not (await self.infra.state.get_execution(execution_id)).status.final:
            await asyncio.sleep(wait)
            wait = min(wait * 1.5, _POLL_MAX)
        return await self.get(execution_id)

    async def _take_over(self, interval: float) -> None:
        while not self._draining:
            self._retry_stranded()
            # Past the orphans this replica cannot run, so they never hide runnable ones.
            limit = min(_TAKEOVER_BATCH + len(self._unrunnable), MAX_PAGE_SIZE)
            try:
                orphans = await self.infra.state.orphans(limit)
            except TradeflowError as exc:
                _log.warning("takeover.failed", error=describe(exc))
                orphans = []
            adopted = sum(self._adopt(record) for record in orphans)
            if adopted < _TAKEOVER_BATCH or len(orphans) < limit:
                await asyncio.sleep(interval)
            else:
                await asyncio.sleep(0)  # a full batch: look again at once

    async def _watch_halts(self, interval: float) -> None:
        while not self._draining:
            await self._cancel_on_halts()
            await asyncio.sleep(interval)

    async def _cancel_on_halts(self) -> None:
        """See that each halt in force that asks for it has its cancel-on-halt job
        completed: submit it (a failed submission is tried again at the next look; another
        replica's may have won meanwhile, and then the submission finds that execution),
        and start a job that ended ``failed`` again (its venue was down longer than its
        sweeps), until it completes or the halt is lifted."""
        try:
            halts = await self.infra.emergency.halts()
        except TradeflowError as exc:
            _log.warning("cancel_on_halt.halts_unknown", error=describe(exc))
            return
        asking = {job_request_id(halt): halt for halt in halts if halt.cancel_orders}
        self._cancel_jobs.intersection_update(asking)  # a lifted halt's job is forgotten
        for request_id, halt in asking.items():
            if request_id in self._cancel_jobs:
                continue
            try:
                record = await self.infra.state.find_by_request_id(request_id)
                if record is None:
                    job = cancel_job(halt)
                    execution_id = await self.submit(
                        Submission(job.definition, JOB_WORKFLOW_ID, request_id=request_id)
                    )
                    _log.info(
                        "cancel_on_halt.submitted",
                        execution_id=execution_id,
                        scope=halt.scope.value,
                        target=halt.target,
                    )
                elif record.status is ExecutionStatus.COMPLETED:
                    self._cancel_jobs.add(request_id)
                elif record.status is ExecutionStatus.FAILED and self._adopt(
                    record, takeover=False
                ):
                    _log.warning("cancel_on_halt.restarted", execution_id=record.execution_id)
            except Exception as exc:  # whatever it was, the next look tries again
                _log.warning(
                    "cancel_on_halt.not_submitted", request_id=request_id, error=describe(exc)
                )

    async def _audit_cancel_job(
        self, executor: EnhancedWorkflowExecutor, result: ExecutionResult
    ) -> None:
        try:
            await audit_job(self.infra.emergency, executor, result)
        except TradeflowError as exc:  # the job's own record still says what it did
            _log.warning(
                "cancel_on_halt.not_audited", execution_id=result.execution_id, error=exc.message
            )

    def _retry_stranded(self) -> None:
        now = asyncio.get_running_loop().time()
        for execution_id, (job, tries, at) in list(self._stranded.items()):
            if execution_id not in self._running and at <= now:
                del self._stranded[execution_id]
                run = job.executor.resume_run(execution_id, takeover=True)
                self._track(job, run, takeover=True, tries=tries)

    def _adopt(self, record: ExecutionRecord, *, takeover: bool = True) -> bool:
        """Resume an orphan here (or, not as a ``takeover``, an execution that ended
        without completing), unless it runs here already or uses unknown node types;
        whether it was taken."""
        execution_id = record.execution_id
        if self._draining or execution_id in self._running or execution_id in self._unrunnable:
            return False
        try:
            plan = self._plan(record.definition)
        except WorkflowValidationError as exc:
            # Another replica may know its node types: leave it to them.
            self._unrunnable[execution_id] = None
            if len(self._unrunnable) > _UNRUNNABLE_KEPT:
                self._unrunnable.popitem(last=False)
            _log.warning("takeover.skipped", execution_id=execution_id, error=describe(exc))
            return False
        executor = EnhancedWorkflowExecutor(
            plan,
            self.infra,
            record.workflow_id,
            record.bot_id,
            record.strategy_id,
            registry=self.registry,
        )
        self._stranded.pop(execution_id, None)
        _log.info("takeover.claiming", execution_id=execution_id, previous_owner=record.owner)
        run = executor.resume_run(execution_id, takeover=takeover)
        self._track(_Job(executor, execution_id, record.request_id), run, takeover=takeover)
        return True

    def _finished(
        self, task: asyncio.Future[ExecutionView], execution_id: str, request_id: str | None
    ) -> None:
        running = self._running.get(execution_id)
        if running is not None and running.task is task:
            del self._running[execution_id]
        if request_id is not None and execution_id not in self._running:
            self._by_request.pop(request_id, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A submitted execution has nobody awaiting it: say what happened.
            _log.error("execution.crashed", execution_id=execution_id, error=describe(error))

    def _plan(self, definition: Mapping[str, Any]) -> Plan:
        """The validated, planned workflow, from a small cache: bots submit the same
        definition over and over, and validating it costs ~20x hashing it."""
        key = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
        plan = self._plans.get(key)
        if plan is None:
            # Planned from a private copy: a caller may change its dict afterwards, and the
            # plan's definition is what executions record and resumes compare.
            plan = Plan.of(orjson.loads(key), self.registry)
            self._plans[key] = plan
            if len(self._plans) > _CACHED_PLANS:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    async def _known_request(self, request_id: str, submission: Submission) -> _Running | None:
        """The execution an earlier request with ``request_id`` started, if it was for the
        same bot and workflow: a request id names nobody else's execution, so it can
        neither read one nor stand in for one."""
        caller = (submission.bot_id, submission.workflow_id)
        execution_id = self._by_request.get(request_id)
        running = self._running.get(execution_id) if execution_id is not None else None
        if running is not None and running.executor is not None:
            _same_caller(caller, (running.executor.bot_id, running.executor.workflow_id))
            return running
        record = await self.infra.state.find_by_request_id(request_id)
        if record is None:
            return None
        _same_caller(caller, (record.bot_id, record.workflow_id))
        if not record.status.final:
            # Running elsewhere (or an orphan about to be taken over): wait for its end.
            task = asyncio.create_task(self._final(record.execution_id))
            return _Running(None, record.execution_id, task)
        view = await self.get(record.execution_id)
        done: asyncio.Future[ExecutionView] = asyncio.get_running_loop().create_future()
        done.set_result(view)
        return _Running(None, view.record.execution_id, done)

    async def get(self, execution_id: str) -> ExecutionView:
        """An execution from the state store; raises ``ExecutionNotFound``."""
        check_id("execution_id", execution_id)
        record = await self.infra.state.get_execution(execution_id)
        checkpoints = await self.infra.state.get_checkpoints(execution_id)
        order = [b.get("id") for b in record.definition.get("blocks", []) if isinstance(b, dict)]
        nodes = tuple(checkpoints[n] for n in order if n in checkpoints)
        return ExecutionView(record, nodes)

    async def list(self, query: ExecutionQuery) -> ExecutionPage:
        return await self.infra.state.list_executions(query)

    async def cancel(self, execution_id: str) -> tuple[bool, ExecutionStatus]:
        """Ask an execution to stop, wherever it runs (it ends ``cancelled`` once the nodes
        already running finish): here at once, in another replica with its owner's next
        heartbeat; an orphan is ended ``cancelled`` now. ``(False, status)`` when it had
        already ended."""
        check_id("execution_id", execution_id)
        running = self._running.get(execution_id)
        if running is not None and running.executor is not None and not running.task.done():
            running.executor.cancel()
            try:
                # Also on the execution: if this replica dies before the run sees it,
                # whoever takes it over ends it cancelled.
                await self.infra.state.request_cancel(execution_id)
            except TradeflowError as exc:
                _log.warning("cancel.not_recorded", execution_id=execution_id, error=describe(exc))
            return True, ExecutionStatus.RUNNING
        record = await self.infra.state.get_execution(execution_id)
        if record.status.final:
            return False, record.status
        record = await self.infra.state.request_cancel(execution_id)
        return True, record.status

    async def drain(self, grace: float) -> None:
        """Refuse new work; let in-flight executions finish for ``grace`` seconds, then
        interrupt the rest, which keeps their checkpoints and leaves them resumable."""
        self._draining = True
        for loop in (self._takeover, self._halt_watch):
            if loop is not None:
                loop.cancel()
        for wait in list(self._waits.values()):
            wait.cancel()
        tasks = [r.task for r in self._running.values()]
        if not tasks:
            return
        _log.info("executor.draining", in_flight=len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            _log.warning("executor.interrupted", executions=len(pending))


def _view(executor: EnhancedWorkflowExecutor, result: ExecutionResult) -> ExecutionView:
    """The final view, as the state store now holds it, built from the result (no round trip)."""
    record, skipped = result.record, set(result.skipped)
    # A durable journal built the record, finished.
    assert executor.plan is not None and record is not None and record.finished_at is not None
    finished = record.finished_at
    nodes = []
    for node_id in executor.plan.order:
        if node_id in result.results:
            state, outputs, error = CheckpointState.COMPLETED, result.results[node_id], None
        elif node_id in result.errors:
            state, outputs, error = CheckpointState.FAILED, None, result.errors[node_id]
        elif node_id in skipped:
            state, outputs, error = CheckpointState.SKIPPED, None, None
        else:
            continue
        nodes.append(Checkpoint(record.execution_id, node_id, state, finished, outputs, error))
    return ExecutionView(record, tuple(nodes))
