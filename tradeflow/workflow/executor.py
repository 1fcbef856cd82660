"""Public path of the base executor (the seed's API)."""

from tradeflow.engine.executor import WorkflowExecutor

__all__ = ["WorkflowExecutor"]
