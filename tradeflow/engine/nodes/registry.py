"""The node registry: one place where every node type, built-in or user-defined, is declared.

A node type is an async function plus a :class:`NodeSpec` describing what it
accepts (properties, inputs) and produces (outputs); validation reads the spec,
the engine calls the function. Register your own with :func:`node`::

    from tradeflow.engine.nodes import Prop, node

    @node("providers", "constant_price", properties={"price": Prop("number", required=True)},
          outputs=("price",))
    async def constant_price(ctx, block, inputs):
        return {"price": block.properties["price"]}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, Unpack

from tradeflow.domain.egress import AllowList, SecretHosts
from tradeflow.domain.emergency import NO_IDS, ScopeIds
from tradeflow.domain.risk import Denial, PreTradeLimits
from tradeflow.domain.trading import ActionEffect, OrderEffect
from tradeflow.engine.secrets import SecretReader

if TYPE_CHECKING:
    import httpcore
    import httpx
    import structlog

    from tradeflow.engine.egress import Resolver
    from tradeflow.engine.model import Block
    from tradeflow.ports import Exchange, PriceFeed

__all__ = [
    "CATEGORIES",
    "CONTROL_INPUT",
    "EffectFn",
    "ExecutionContext",
    "HttpPool",
    "NodeFn",
    "NodeRegistry",
    "NodeSpec",
    "Prop",
    "RiskChecker",
    "default_registry",
    "node",
]

CATEGORIES = ("providers", "triggers", "conditions", "actions", "risk")

CONTROL_INPUT = "when"
"""An input every node type accepts: wiring it (``"when": "signal.triggered"``) makes the
block depend on another without using its value, so a false gate skips it."""

PropKind = Literal["string", "number", "integer", "boolean", "object", "array", "any"]


@dataclass(frozen=True, slots=True)
class Prop:
    """One accepted property of a node type."""

    kind: PropKind
    required: bool = False
    default: Any = None
    """Filled in when the property is absent (and not required)."""
    choices: tuple[Any, ...] | None = None
    """When set, the value must be one of these."""
    minimum: float | None = None
    """For numbers: smallest allowed value (inclusive)."""
    sensitive: bool = False
    """The value may carry a credential: a validation problem shows its type only."""
    doc: str = ""


class RiskChecker(Protocol):
    """What risk nodes and the pre-trade checks of ``place_order`` call; the enhanced
    executor passes ``infra.emergency`` (see :class:`~tradeflow.ports.EmergencyControl`
    for each method), the base one local checks with nothing configured."""

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        ids: ScopeIds = NO_IDS,
    ) -> None: ...

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits: ...

    async def record_order_denied(
        self,
        denial: Denial,
        *,
        ids: ScopeIds,
        execution_id: str,
        node_id: str,
        client_order_id: str,
    ) -> None: ...


class HttpPool:
    """What ``api_call`` reaches the outside world with: one ``httpx.AsyncClient`` whose
    connections all pass the egress policy (:mod:`tradeflow.engine.egress`), created on
    first use (building one costs ~20 ms, so workflows without HTTP nodes never pay for
    it), and the secrets a request may reference (:attr:`secrets`).

    ``egress_allow`` lists the hosts (``host`` or ``host:port``) that may be reached
    even at a loopback, private or link-local address (``TRADEFLOW_EGRESS_ALLOW``); a
    malformed entry raises ``ConfigurationError`` here. ``secrets_dir`` is
    ``TRADEFLOW_SECRETS_DIR``, ``secret_hosts`` the hosts each secret may be sent to
    (``TRADEFLOW_SECRET_HOSTS``; none by default). ``resolver`` and ``connector`` replace
    the system's DNS resolver and httpcore's connecting backend (tests inject both)."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        egress_allow: Iterable[str] = (),
        secrets_dir: str | None = None,
        secret_hosts: SecretHosts | None = None,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._timeout = timeout
        self._allow = AllowList.parse(egress_allow)
        self._resolver = resolver
        self._connector = connector
        self.secrets = SecretReader(secrets_dir, hosts=secret_hosts)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            from tradeflow.engine.egress import egress_client, system_resolver

            self._client = egress_client(
                self._allow,
                timeout=self._timeout,
                resolver=self._resolver or system_resolver,
                connector=self._connector,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass(slots=True)
class ExecutionContext:
    """What a node function sees of the execution it runs in (one per execution)."""

    execution_id: str
    workflow_id: str
    correlation_id: str
    bot_id: str | None
    strategy_id: str | None
    exchange: Exchange
    prices: PriceFeed
    risk: RiskChecker
    http_pool: HttpPool
    log: structlog.typing.FilteringBoundLogger
    intents: frozenset[str] = frozenset()
    """Action blocks whose write-ahead intent a previous run recorded: their order may
    exist already, so they ask the exchange before placing it."""
    audits: list[asyncio.Task[None]] = field(default_factory=list)
    """Audits of denied orders, written in the background (outside the node's timeout);
    the executor waits a bounded time for them before the execution ends."""

    @property
    def ids(self) -> ScopeIds:
        """The ids this execution's risk checks belong to."""
        return ScopeIds(self.workflow_id, self.bot_id, self.strategy_id)

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (created on first use)."""
        return self.http_pool.client

    def client_order_id(self, block_id: str) -> str:
        """The idempotency key of the order a block places in this execution.

        Stable across resume, so re-placing after a crash cannot trade twice.
        """
        return f"{self.execution_id}:{block_id}"


NodeFn = Callable[["ExecutionContext", "Block", dict[str, Any]], Awaitable[dict[str, Any]]]
"""``async def run(ctx, block, inputs) -> outputs``."""

EffectFn = Callable[["ExecutionContext", "Block", dict[str, Any]], Awaitable[OrderEffect]]
"""``async def order_effect(ctx, block, inputs) -> OrderEffect``."""

PropsCheck = Callable[[Mapping[str, Any], frozenset[str]], list[tuple[str, str, str]]]
"""Cross-field check of ``(properties with defaults, wired input names)``:
returns ``(field, expected, found)`` problems."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Declaration of one node type."""

    category: str
    type: str
    run: NodeFn
    properties: Mapping[str, Prop] = field(default_factory=dict)
    inputs: Mapping[str, bool] = field(default_factory=dict)
    """Input name -> required."""
    variadic_inputs: bool = False
    """Accept any input names (e.g. ``all``/``any``)."""
    outputs: tuple[str, ...] = ()
    outputs_from_properties: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
    """For types whose outputs depend on properties (``static``)."""
    gate: str | None = None
    """Boolean output that, when false, skips every dependent (triggers, conditions)."""
    accepts_gates: bool = False
    """Receives false gate values instead of being skipped (``all``/``any``)."""
    breaker: Callable[[Mapping[str, Any]], str] | None = None
    """Default circuit-breaker name for an external call, from the properties."""
    check: PropsCheck | None = None
    pure: bool = False
    """Computes from its inputs alone, never waits on I/O: always run inline. Leave False
    for anything that calls out (the runner then overlaps independent calls)."""
    effect: ActionEffect = ActionEffect.ORDER
    """For actions: what it does at a venue. Only ``ORDER`` actions are refused while
    trading is halted; a custom action is taken to place orders unless it says otherwise."""
    order_effect: EffectFn | None = None
    """For ``ORDER`` actions: ``async def (ctx, block, inputs) -> OrderEffect``, what the
    order does to the position (asked only while its scope is ``REDUCE_ONLY``, where a
    reducing order may still run). Without it an order counts as opening exposure."""
    doc: str = ""

    def output_names(self, properties: Mapping[str, Any]) -> tuple[str, ...]:
        if self.outputs_from_properties is not None:
            return self.outputs_from_properties(properties)
        return self.outputs


class NodeRegistry:
    """Node types by ``(category, type)``."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], NodeSpec] = {}

    def register(self, spec: NodeSpec, *, replace: bool = False) -> NodeSpec:
        if spec.category not in CATEGORIES:
            raise ValueError(f"unknown category {spec.category!r}: expected one of {CATEGORIES}")
        key = (spec.category, spec.type)
        if key in self._specs and not replace:
            raise ValueError(f"node type {spec.category}/{spec.type} is already registered")
        self._specs[key] = spec
        return spec

    def get(self, category: str, type_: str) -> NodeSpec | None:
        return self._specs.get((category, type_))

    def types(self, category: str) -> list[str]:
        return sorted(t for (c, t) in self._specs if c == category)

    def specs(self) -> list[NodeSpec]:
        return [self._specs[k] for k in sorted(self._specs)]


default_registry = NodeRegistry()
"""The registry executors use unless given another."""


class _Options(TypedDict, total=False):
    """The keyword options of :func:`node` that are :class:`NodeSpec` fields as they are."""

    variadic_inputs: bool
    outputs: tuple[str, ...]
    outputs_from_properties: Callable[[Mapping[str, Any]], tuple[str, ...]]
    gate: str
    accepts_gates: bool
    breaker: Callable[[Mapping[str, Any]], str]
    check: PropsCheck
    pure: bool
    effect: ActionEffect
    order_effect: EffectFn


def node(
    category: str,
    type_: str,
    *,
    properties: Mapping[str, Prop] | None = None,
    inputs: Mapping[str, bool] | None = None,
    registry: NodeRegistry | None = None,
    replace: bool = False,
    **options: Unpack[_Options],
) -> Callable[[NodeFn], NodeFn]:
    """Decorator registering ``async def run(ctx, block, inputs)`` as a node type; the
    other options are the :class:`NodeSpec` fields of the same names."""

    def register(fn: NodeFn) -> NodeFn:
        spec = NodeSpec(
            category,
            type_,
            fn,
            properties=dict(properties or {}),
            inputs=dict(inputs or {}),
            doc=(fn.__doc__ or "").strip(),
            **options,
        )
        (registry or default_registry).register(spec, replace=replace)
        return fn

    return register
