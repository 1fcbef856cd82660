"""The typed result of one run; the seed's result dict is its view at the public edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from tradeflow.domain.records import ExecutionRecord, ExecutionStatus
from tradeflow.engine.runner import HaltError

__all__ = ["ExecutionResult"]


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What one run produced. Halted, failed and cancelled are statuses, not errors."""

    view: dict[str, Any]
    """The seed's result dict, built once at the end of the run (:meth:`as_dict`)."""
    halt: HaltError | None
    """What stopped a halted run: ``execute()`` raises it."""
    record: ExecutionRecord | None
    """The final record as the state store holds it (``result`` is :attr:`view`), built
    once by a durable journal; None when the journal records nothing."""

    @property
    def status(self) -> ExecutionStatus:
        return ExecutionStatus(self.view["status"])

    @property
    def execution_id(self) -> str:
        return cast(str, self.view["execution_id"])

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """Outputs of each completed node."""
        return cast(dict[str, dict[str, Any]], self.view["results"])

    @property
    def errors(self) -> dict[str, str]:
        """Error of each failed node."""
        return cast(dict[str, str], self.view["errors"])

    @property
    def skipped(self) -> list[str]:
        """Skipped nodes, in the order they were skipped."""
        return cast(list[str], self.view["skipped"])

    def as_dict(self) -> dict[str, Any]:
        """The seed's result dict."""
        return self.view
