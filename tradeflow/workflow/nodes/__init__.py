"""Node types: the registry and the built-ins (imported here so they register)."""

from tradeflow.workflow.nodes import actions, conditions, providers, risk, triggers
from tradeflow.workflow.nodes.registry import (
    CATEGORIES,
    ExecutionContext,
    NodeFn,
    NodeRegistry,
    NodeSpec,
    Prop,
    RiskChecker,
    default_registry,
    node,
)

__all__ = [
    "CATEGORIES",
    "ExecutionContext",
    "NodeFn",
    "NodeRegistry",
    "NodeSpec",
    "Prop",
    "RiskChecker",
    "actions",
    "conditions",
    "default_registry",
    "node",
    "providers",
    "risk",
    "triggers",
]
