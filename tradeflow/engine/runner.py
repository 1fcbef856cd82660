"""The DAG runner: runs a plan once, telling a journal what happens.

Both executors run it; they differ only in the journal (see :mod:`tradeflow.engine.journal`):
the base one's records nothing, the enhanced one's emits events, persists state and asks
the emergency controller before each action.

Scheduling: a node becomes ready when all its upstream nodes are done. Pure
nodes (computation on their inputs) are awaited inline as soon as they are
ready. Nodes that call out (prices, HTTP, orders, risk reads) are awaited inline
when alone, and run as concurrent tasks, at most ``max_concurrency`` at a time,
when several are ready together: an asyncio task costs ~5 us, so only real
overlap pays for one. Ready nodes start in a deterministic order (topological,
ties by definition order).
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from tradeflow.domain.errors import (
    EmergencyHalted,
    LeaseLost,
    NodeExecutionError,
    RiskLimitExceeded,
    TradeflowError,
    describe,
)
from tradeflow.domain.records import Checkpoint, CheckpointState, ExecutionStatus
from tradeflow.domain.trading import ActionEffect, OrderEffect
from tradeflow.engine.model import Block, BreakerConfig, Workflow
from tradeflow.engine.nodes.registry import ExecutionContext, NodeRegistry, NodeSpec
from tradeflow.engine.resilience import BreakerRegistry, run_protected
from tradeflow.engine.validation import parse_workflow

if TYPE_CHECKING:
    from tradeflow.engine.journal import NullJournal

__all__ = ["HaltError", "NodePlan", "Plan", "RunOutcome", "Runner"]

_EFFECTS: Final = {
    ActionEffect.ORDER: OrderEffect.OPENS,
    ActionEffect.CANCEL: OrderEffect.CANCELS,
    ActionEffect.NONE: OrderEffect.NONE,
}

HaltError = EmergencyHalted | RiskLimitExceeded


@dataclass(frozen=True, slots=True)
class NodePlan:
    """Everything the runner needs about one block, computed once per workflow."""

    block: Block
    spec: NodeSpec
    wires: tuple[tuple[str, str, str], ...]
    """``(input_name, upstream_id, output_name)`` for each wired input."""
    downstream: tuple[str, ...]
    upstream: tuple[str, ...]
    position: int
    """Index in the topological order."""
    is_action: bool
    effect: OrderEffect | None
    """For an action, what it does to exposure as far as its type tells: ``OPENS`` for
    one that may place an order (the journal may refine it against the position),
    ``CANCELS`` or ``NONE``; ``None`` for any other node."""
    does_io: bool
    """An action or an external call: the journal is told before it starts."""
    protected: bool
    """The config asks for a timeout, retry or breaker."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A workflow ready to run many times."""

    workflow: Workflow
    nodes: dict[str, NodePlan]
    order: tuple[str, ...]
    waiting: dict[str, int]
    """Upstream count by node id: each run counts down a copy."""
    roots: tuple[tuple[int, str], ...]
    """``(position, node_id)`` of the nodes without upstream, sorted: a ready heap."""

    @classmethod
    def of(cls, definition: Mapping[str, Any] | Workflow | Plan, registry: NodeRegistry) -> Plan:
        """The plan of a definition (validated here), of a validated workflow, or itself."""
        if isinstance(definition, Plan):
            return definition
        workflow = (
            definition
            if isinstance(definition, Workflow)
            else parse_workflow(definition, registry=registry)
        )
        nodes: dict[str, NodePlan] = {}
        for position, block in enumerate(workflow.blocks):
            spec = registry.get(block.category, block.type)
            if spec is None:  # validation already rejects this; guard a registry swapped since
                raise TradeflowError(f"node type {block.category}/{block.type} is not registered")
            config = block.config
            if config.circuit_breaker is None and spec.breaker is not None:
                # Every external dependency gets a named breaker, asked for or not.
                config = replace(
                    config, circuit_breaker=BreakerConfig(name=spec.breaker(block.properties))
                )
                block = replace(block, config=config)
            nodes[block.id] = NodePlan(
                block=block,
                spec=spec,
                wires=tuple((name, ref.block_id, ref.output) for name, ref in block.inputs.items()),
                downstream=workflow.downstream.get(block.id, ()),
                upstream=workflow.upstream.get(block.id, ()),
                position=position,
                is_action=block.category == "actions",
                effect=_EFFECTS[spec.effect] if block.category == "actions" else None,
                does_io=block.category == "actions" or spec.breaker is not None,
                protected=(
                    config.timeout is not None
                    or config.retry is not None
                    or config.circuit_breaker is not None
                ),
            )
        return cls(
            workflow=workflow,
            nodes=nodes,
            order=tuple(nodes),
            waiting={node_id: len(n.upstream) for node_id, n in nodes.items()},
            roots=tuple((n.position, node_id) for node_id, n in nodes.items() if not n.upstream),
        )


class RunOutcome(NamedTuple):
    """What one run of the plan produced (a named tuple: built once per execution)."""

    status: ExecutionStatus
    results: dict[str, dict[str, Any]]
    errors: dict[str, str]
    skipped: list[str]
    halt: HaltError | None
    error: str | None


@dataclass(slots=True)
class Runner:
    """Runs a plan once (one per execution); ``restored`` checkpoints (resume) are not run
    again."""

    plan: Plan
    ctx: ExecutionContext
    breakers: BreakerRegistry
    journal: NullJournal
    max_concurrency: int
    cancelled: asyncio.Event
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    skipped_ids: set[str] = field(default_factory=set)
    gated: set[str] = field(default_factory=set)
    """Completed nodes whose gate output is false."""
    halt: HaltError | None = None
    failure: str | None = None

    async def run(self, restored: Mapping[str, Checkpoint]) -> RunOutcome:
        nodes = self.plan.nodes
        waiting = dict(self.plan.waiting)
        ready = list(self.plan.roots)
        queued: deque[NodePlan] = deque()
        """Ready nodes that call out, waiting for a concurrency slot."""
        running: dict[asyncio.Task[None], NodePlan] = {}
        try:
            while True:
                while ready and self._may_start():
                    node = nodes[heapq.heappop(ready)[1]]
                    if self._admit(node, restored.get(node.block.id)) is not None:
                        self._release(node, waiting, ready)
                    elif node.spec.pure:
                        await self._run_node(node)
                        self._release(node, waiting, ready)
                    else:
                        queued.append(node)
                if not self._may_start():
                    queued.clear()
                if len(queued) == 1 and not running:
                    node = queued.popleft()
                    await self._run_node(node)
                    self._release(node, waiting, ready)
                elif queued or running:
                    await self._overlap(queued, running, waiting, ready)
                else:
                    break
        except BaseException:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        return self._outcome()

    async def _overlap(
        self,
        queued: deque[NodePlan],
        running: dict[asyncio.Task[None], NodePlan],
        waiting: dict[str, int],
        ready: list[tuple[int, str]],
    ) -> None:
        """Start queued nodes as tasks up to the limit, then wait for the first to finish."""
        while queued and len(running) < self.max_concurrency:
            node = queued.popleft()
            running[asyncio.create_task(self._run_node(node))] = node
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            node = running.pop(task)
            task.result()
            self._release(node, waiting, ready)

    def _may_start(self) -> bool:
        return self.halt is None and self.failure is None and not self.cancelled.is_set()

    def _admit(self, node: NodePlan, checkpoint: Checkpoint | None) -> str | None:
        """Decide whether ``node`` runs: returns why it does not, or None to run it."""
        for upstream_id in node.upstream:
            if upstream_id in self.skipped_ids:
                reason = f"upstream {upstream_id!r} was skipped"
            elif upstream_id in self.gated and not node.spec.accepts_gates:
                reason = f"upstream {upstream_id!r} did not pass"
            else:
                continue
            self._skip(node.block.id)
            self.journal.node_skipped(node, reason)
            return reason
        if checkpoint is not None and checkpoint.state is CheckpointState.COMPLETED:
            self._record_outputs(node, checkpoint.outputs or {})
            return "restored"
        if checkpoint is not None and checkpoint.state is CheckpointState.SKIPPED:
            self._skip(node.block.id)
            return "restored"
        return None

    def _skip(self, node_id: str) -> None:
        self.skipped.append(node_id)
        self.skipped_ids.add(node_id)

    def _release(
        self, node: NodePlan, waiting: dict[str, int], ready: list[tuple[int, str]]
    ) -> None:
        nodes = self.plan.nodes
        for downstream_id in node.downstream:
            waiting[downstream_id] -= 1
            if waiting[downstream_id] == 0:
                heapq.heappush(ready, (nodes[downstream_id].position, downstream_id))

    def _record_outputs(self, node: NodePlan, outputs: dict[str, Any]) -> None:
        self.results[node.block.id] = outputs
        gate = node.spec.gate
        if gate is not None and not outputs.get(gate):
            self.gated.add(node.block.id)

    async def _run_node(self, node: NodePlan) -> None:
        block = node.block
        results = self.results
        inputs = {name: results[src][out] for name, src, out in node.wires}
        journal = self.journal
        started = 0.0
        try:
            if node.does_io:
                classify = node.spec.order_effect
                await journal.before_io(
                    node, None if classify is None else partial(classify, self.ctx, block, inputs)
                )
            started = journal.node_started(node)
            if node.protected:
                outputs = await self._run_protected(node, inputs)
            else:
                if node.is_action:
                    journal.guard_action(node)
                outputs = await node.spec.run(self.ctx, block, inputs)
            _check_outputs(block, outputs)
        except LeaseLost:
            # Not the node's failure: this process may no longer act for the execution.
            raise
        except (EmergencyHalted, RiskLimitExceeded) as halt:
            self._fail(node, halt, started)
            if self.halt is None:
                self.halt = halt
            return
        except Exception as exc:
            self._fail(node, exc, started)
            if self.failure is None:
                self.failure = str(NodeExecutionError(block.id, block.type, exc))
            return
        self._record_outputs(node, outputs)
        journal.node_completed(node, outputs, started)

    def _fail(self, node: NodePlan, error: BaseException, started: float) -> None:
        self.errors[node.block.id] = describe(error)
        self.journal.node_failed(node, error, started)

    async def _run_protected(self, node: NodePlan, inputs: dict[str, Any]) -> dict[str, Any]:
        config = node.block.config
        journal = self.journal

        async def attempt() -> dict[str, Any]:
            # Every attempt of an action asks again: a halt during a retry's back-off
            # must stop the retry.
            if node.is_action:
                journal.guard_action(node)
            return await node.spec.run(self.ctx, node.block, inputs)

        return await run_protected(
            attempt,
            node_id=node.block.id,
            config=config,
            breaker=self.breakers.get(config.circuit_breaker) if config.circuit_breaker else None,
            on_retry=partial(journal.node_retrying, node),
        )

    def _outcome(self) -> RunOutcome:
        if self.halt is not None:
            status = ExecutionStatus.HALTED
            error: str | None = describe(self.halt)
        elif self.failure is not None:
            status, error = ExecutionStatus.FAILED, self.failure
        elif self.cancelled.is_set() and len(self.results) + len(self.skipped) < len(
            self.plan.nodes
        ):
            status, error = ExecutionStatus.CANCELLED, "execution cancelled"
        else:
            status, error = ExecutionStatus.COMPLETED, None
        return RunOutcome(status, self.results, self.errors, self.skipped, self.halt, error)


def _check_outputs(block: Block, outputs: dict[str, Any]) -> None:
    for name in block.outputs:
        if name not in outputs:
            raise TradeflowError(
                f"node type {block.category}/{block.type} returned no value for "
                f"declared output {name!r}"
            )
