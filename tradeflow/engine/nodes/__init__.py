"""Node types: the registry and the built-ins (imported here so they register)."""

from tradeflow.engine.nodes import actions, conditions, providers, risk, triggers
from tradeflow.engine.nodes.registry import (
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
