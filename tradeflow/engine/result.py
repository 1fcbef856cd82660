"""The typed result of one run; the seed's result dict is its view at the public edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tradeflow.domain.records import ExecutionRecord, ExecutionStatus, rfc3339
from tradeflow.engine.runner import HaltError

__all__ = ["ExecutionResult"]


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What one run produced. Halted, failed and cancelled are statuses, not errors."""

    status: ExecutionStatus
    execution_id: str
    workflow_id: str | None
    correlation_id: str
    results: dict[str, dict[str, Any]]
    """Outputs of each completed node."""
    errors: dict[str, str]
    """Error of each failed node."""
    skipped: list[str]
    """Skipped nodes, in the order they were skipped."""
    error: str | None
    """Why the run did not complete."""
    started_at: float
    finished_at: float
    halt: HaltError | None
    """What stopped a halted run: ``execute()`` raises it."""
    record: ExecutionRecord | None = None
    """The final record as the state store holds it (its ``result`` is :meth:`as_dict`),
    built once by a durable journal; None when the journal records nothing."""

    def with_record(self, record: ExecutionRecord) -> ExecutionResult:
        """This result carrying the final record its journal wrote."""
        return ExecutionResult(
            self.status,
            self.execution_id,
            self.workflow_id,
            self.correlation_id,
            self.results,
            self.errors,
            self.skipped,
            self.error,
            self.started_at,
            self.finished_at,
            self.halt,
            record,
        )

    def as_dict(self) -> dict[str, Any]:
        """The seed's result dict (the one the final record holds, when there is one)."""
        if self.record is not None and self.record.result is not None:
            return self.record.result
        return {
            "status": self.status.value,
            "execution_id": self.execution_id,
            "workflow_id": self.workflow_id,
            "correlation_id": self.correlation_id,
            "results": self.results,
            "errors": self.errors,
            "skipped": self.skipped,
            "error": self.error,
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "duration_ms": (self.finished_at - self.started_at) * 1000.0,
        }
