"""Cancel on halt: the job that cancels the resting orders of a halted scope.

A halt may ask for it (``HaltState.cancel_orders``). The emergency service holds no
exchange, so the job is an ordinary durable execution, of a built-in workflow with one
``cancel_open_orders`` block per venue, run by an executor under its lease: taken over if
that executor dies, and harmless to run again (what it cancelled no longer rests, and
cancelling a cancelled order returns it unchanged).

Its request id is made of the halt (:func:`job_request_id`: scope, target and the time
the halt began), so however many executors notice one halt, the state store's
request-id deduplication lets exactly one execution exist. Who runs it:

- the executor service: each replica watches the halts and submits the job of every halt
  asking for one (:class:`~tradeflow.app.manager.ExecutionManager`);
- embedded: ``tradeflow halt --cancel-orders`` runs it in its own process, on the state
  file's paper ledger (:func:`cancel_resting_orders`).

What it cancelled is its result (the ``cancelled`` output of each block, in the
execution's checkpoints, its ``node_completed`` events and its final record), read back
as a :class:`CancelReport` and written to the emergency audit (``cancel_on_halt``) by the
process that ran it to its end (:func:`audit_job`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tradeflow.domain.limits import ID_MAX_LENGTH
from tradeflow.domain.records import ExecutionStatus, HaltState, Scope
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

if TYPE_CHECKING:
    from tradeflow.app.infrastructure import Infrastructure
    from tradeflow.engine.result import ExecutionResult
    from tradeflow.ports import EmergencyControl

__all__ = [
    "JOB_REQUEST_PREFIX",
    "JOB_VENUES",
    "JOB_WORKFLOW_ID",
    "CancelJob",
    "CancelReport",
    "audit_job",
    "cancel_job",
    "cancel_resting_orders",
    "job_request_id",
]

JOB_WORKFLOW_ID: Final = "cancel_on_halt"
"""The workflow id of every cancel-on-halt execution (``tradeflow executions list
--workflow cancel_on_halt``)."""

JOB_VENUES: Final = ("paper",)
"""The venues whose resting orders the job cancels: the paper exchange's default."""

JOB_REQUEST_PREFIX: Final = "cancel-on-halt:"
"""Request ids of the jobs start with it; no caller's may (the executor service refuses
them), so nobody can plant an execution in a job's place."""


@dataclass(frozen=True, slots=True)
class CancelJob:
    """The execution to submit for one halt."""

    request_id: str
    definition: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CancelReport:
    """What one cancel-on-halt execution did."""

    execution_id: str
    status: ExecutionStatus
    cancelled: tuple[str, ...]
    """The client order ids it cancelled, venue by venue."""
    error: str | None = None
    """Why it did not complete."""

    @classmethod
    def of(
        cls, execution_id: str, status: ExecutionStatus, result: Mapping[str, Any] | None
    ) -> CancelReport:
        """The report of an execution whose final result dict is ``result``."""
        result = result or {}
        outputs: Mapping[str, Mapping[str, Any]] = result.get("results") or {}
        cancelled = tuple(
            client_order_id
            for block_outputs in outputs.values()
            for client_order_id in block_outputs.get("cancelled", ())
        )
        return cls(execution_id, status, cancelled, result.get("error"))


def job_request_id(halt: HaltState) -> str:
    """``cancel-on-halt:<scope>:<since, in microseconds>:<target, '-' for global>``: the
    same for every executor that sees the halt (a longer target than an id may hold is
    replaced by its digest)."""
    since = round(halt.since * 1_000_000)
    key = f"{JOB_REQUEST_PREFIX}{halt.scope.value}:{since}:{'-' if halt.target is None else halt.target}"
    if len(key) <= ID_MAX_LENGTH:
        return key
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{JOB_REQUEST_PREFIX}{halt.scope.value}:{since}:{digest}"


def cancel_job(halt: HaltState, venues: Sequence[str] = JOB_VENUES) -> CancelJob:
    """The job cancelling the resting orders of ``halt``'s scope on each of ``venues``."""
    properties = {"scope": halt.scope.value, "target": halt.target}
    blocks = [
        {
            "id": f"cancel_{index}",
            "name": f"cancel resting orders on {venue}",
            "category": "actions",
            "type": "cancel_open_orders",
            "properties": {**properties, "venue": venue},
        }
        for index, venue in enumerate(venues, 1)
    ]
    return CancelJob(job_request_id(halt), {"blocks": blocks})


async def cancel_resting_orders(
    infra: Infrastructure, halt: HaltState, *, venues: Sequence[str] = JOB_VENUES
) -> CancelReport:
    """Run the job of ``halt`` in this process, under ``infra``'s lease; once per halt.

    A job that completed is not run again: its report comes back. One that did not end,
    or ended otherwise (its owner died, it failed), is resumed here (``OwnerAlive`` while
    a live process runs it).
    """
    job = cancel_job(halt, venues)
    executor = EnhancedWorkflowExecutor(job.definition, infra, JOB_WORKFLOW_ID)
    record = await infra.state.find_by_request_id(job.request_id)
    if record is None:
        result = await executor.run(request_id=job.request_id)
    elif record.status is ExecutionStatus.COMPLETED:
        return CancelReport.of(record.execution_id, record.status, record.result)
    else:
        result = await executor.resume_run(record.execution_id)
    return await audit_job(infra.emergency, executor, result)


async def audit_job(
    emergency: EmergencyControl, executor: EnhancedWorkflowExecutor, result: ExecutionResult
) -> CancelReport:
    """Report the run ``result`` of the job ``executor`` ran to the audit (action
    ``cancel_on_halt``), by whichever process ran it to its end; returns the report."""
    report = CancelReport.of(result.execution_id, result.status, result.as_dict())
    properties = executor.plan.workflow.blocks[0].properties if executor.plan else {}
    await emergency.record_cancel_on_halt(
        Scope(properties.get("scope", Scope.GLOBAL.value)),
        properties.get("target"),
        execution_id=report.execution_id,
        status=report.status.value,
        cancelled=report.cancelled,
    )
    return report
