"""Public path of the enhanced executor (the seed's API)."""

from tradeflow.engine.enhanced import EnhancedWorkflowExecutor

__all__ = ["EnhancedWorkflowExecutor"]
