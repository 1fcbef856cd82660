"""A replica fenced by a halt barrier (its lease revoked in the store) refuses to start
executions with a retryable error and nothing stored, and takes a new lease at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from kit import DEADLINE_SECONDS, eventually
from workflows import trading_workflow

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.manager import ExecutionManager, Submission
from tradeflow.app.settings import Settings
from tradeflow.domain.errors import UnavailableError
from tradeflow.domain.records import ExecutionQuery, ExecutionStatus


@pytest.mark.asyncio
async def test_an_execution_refused_by_a_revoked_lease_is_unavailable_and_nothing_is_stored(
    db_path: Path,
) -> None:
    """After the store revoked this replica's lease (a barrier fenced it), an execution's
    start is refused: ExecuteWorkflow answers UNAVAILABLE (safe to retry: nothing was
    stored), not NOT_FOUND; the refused write makes the keeper renew at once, find the
    lease gone and take a new one, under which the retry completes."""
    settings = Settings.from_env("test")
    assert settings.sqlite_path == str(db_path)
    async with await Infrastructure.create(
        "test", settings=replace(settings, lease_seconds=600.0)
    ) as infra:
        manager = ExecutionManager(infra)
        submission = Submission(trading_workflow(), "fenced")
        first = await manager.execute(submission)
        assert first.record.status is ExecutionStatus.COMPLETED
        fence = infra.owner.lease.fence
        store = infra.state
        assert await store.revoke_lease(fence)  # type: ignore[attr-defined]

        with pytest.raises(UnavailableError, match="nothing stored"):
            await manager.execute(submission)
        executions = await store.list_executions(ExecutionQuery(workflow_id="fenced"))
        assert [r.status for r in executions.executions] == [ExecutionStatus.COMPLETED]

        # The refused write woke the heartbeat: with a 600 s lease, only that renews now.
        await eventually(lambda: infra.owner.lease.epoch != fence.epoch, "a new lease")
        retried = await asyncio.wait_for(manager.execute(submission), DEADLINE_SECONDS)
        assert retried.record.status is ExecutionStatus.COMPLETED
        await manager.drain(DEADLINE_SECONDS)
