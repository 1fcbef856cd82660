"""The parsed, validated form of a workflow definition.

The definition format is the seed's, unchanged:
``{"blocks": [{"id", "name", "category", "type", "properties", "config", "inputs", "outputs"}]}``.
:func:`tradeflow.engine.validation.parse_workflow` turns a dict into a :class:`Workflow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Block", "BreakerConfig", "NodeConfig", "Ref", "RetryConfig", "Workflow"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A wire: ``"<block_id>.<output>"``."""

    block_id: str
    output: str

    def __str__(self) -> str:
        return f"{self.block_id}.{self.output}"


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``config.retry``: exponential backoff with jitter (stamina)."""

    max_attempts: int = 3
    """Attempts in all, the first included."""
    initial_interval: float = 0.1
    """Seconds before the first retry."""
    backoff_coefficient: float = 2.0
    """Each wait is the previous one times this."""
    max_interval: float = 5.0
    """Upper bound on one wait, in seconds."""
    jitter: float = 0.1
    """Random seconds (at most) added to each wait."""
    non_retryable: tuple[str, ...] = ()
    """Error class names that fail at once (``OrderRejected`` always does)."""


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """``config.circuit_breaker``: a named breaker shared by every call to one dependency."""

    name: str
    failure_threshold: int = 5
    """Consecutive failures that open the circuit."""
    recovery_timeout: float = 30.0
    """Seconds open before one trial call is let through (half-open)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """``config``: execution policy of one block. Absent parts cost nothing."""

    timeout: float | None = None
    """Seconds one attempt may take."""
    retry: RetryConfig | None = None
    circuit_breaker: BreakerConfig | None = None


@dataclass(frozen=True, slots=True)
class Block:
    """One validated block. ``properties`` has defaults filled in."""

    id: str
    name: str
    category: str
    type: str
    properties: dict[str, Any]
    config: NodeConfig
    inputs: dict[str, Ref]
    outputs: tuple[str, ...]
    index: int
    """Position of the block in the definition's ``blocks`` list."""


@dataclass(frozen=True, slots=True)
class Workflow:
    """A validated workflow: blocks in a deterministic topological order."""

    blocks: tuple[Block, ...]
    """Topologically ordered (ties broken by definition order)."""
    definition: dict[str, Any]
    """The definition as given (for persistence and resume)."""
    upstream: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Block id -> ids it reads from."""
    downstream: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Block id -> ids reading from it."""

    def block(self, block_id: str) -> Block:
        for b in self.blocks:
            if b.id == block_id:
                return b
        raise KeyError(block_id)
