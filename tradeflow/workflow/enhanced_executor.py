"""Public path of the enhanced executor (the seed's API): the engine's executor on an
infrastructure's runtime, whose executions emit events, persist their progress and ask
the emergency controller before each action.

    infra = await Infrastructure.create("development")
    executor = EnhancedWorkflowExecutor(workflow=definition, infra=infra, workflow_id="arb_btc_001")
    await executor.initialize()
    result = await executor.execute()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tradeflow.domain.limits import check_id
from tradeflow.engine.executor import Executor
from tradeflow.engine.model import Workflow
from tradeflow.engine.nodes.registry import NodeRegistry
from tradeflow.engine.runner import Plan

if TYPE_CHECKING:
    # Annotation only: importing the composition root would load every adapter.
    from tradeflow.app.infrastructure import Infrastructure

__all__ = ["EnhancedWorkflowExecutor"]


class EnhancedWorkflowExecutor(Executor):
    """Runs a workflow with the production safety of an :class:`Infrastructure`.

    Backward compatible with :class:`~tradeflow.workflow.executor.WorkflowExecutor`:
    same definition, same ``initialize``/``execute``, same result dict.
    """

    def __init__(
        self,
        workflow: Mapping[str, Any] | Workflow | Plan,
        infra: Infrastructure,
        workflow_id: str,
        bot_id: str | None = None,
        strategy_id: str | None = None,
        *,
        registry: NodeRegistry | None = None,
        max_concurrency: int = 16,
    ) -> None:
        check_id("workflow_id", workflow_id)
        check_id("bot_id", bot_id, optional=True)
        check_id("strategy_id", strategy_id, optional=True)
        super().__init__(
            workflow,
            infra.runtime,
            workflow_id=workflow_id,
            bot_id=bot_id,
            strategy_id=strategy_id,
            registry=registry,
            max_concurrency=max_concurrency,
        )
        self.infra = infra
