"""Timeouts, retries (stamina) and named circuit breakers around node calls.

Everything a node's ``config`` does not ask for costs nothing: a node with an
empty config is awaited directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

import stamina

from tradeflow.domain.clock import Clock
from tradeflow.domain.errors import (
    CircuitOpenError,
    ConfigurationError,
    EgressRefused,
    EmergencyHalted,
    ExternalRequestRejected,
    InvalidRequest,
    LeaseLost,
    NodeTimeoutError,
    OrderRejected,
    RiskLimitExceeded,
    WorkflowValidationError,
)
from tradeflow.engine.model import BreakerConfig, NodeConfig, RetryConfig

__all__ = ["BreakerRegistry", "BreakerState", "CircuitBreaker", "TransitionHook", "run_protected"]

T = TypeVar("T")

# Errors that say "your request is wrong", "you may not" or "this process is not set up
# for it" (a missing or unbound secret): the dependency is healthy, so they neither trip
# a breaker nor deserve a retry.
_NOT_A_DEPENDENCY_FAILURE: tuple[type[BaseException], ...] = (
    ConfigurationError,
    OrderRejected,
    ExternalRequestRejected,
    EgressRefused,
    RiskLimitExceeded,
    EmergencyHalted,
    InvalidRequest,
    WorkflowValidationError,
    LeaseLost,
)
_NEVER_RETRIED: tuple[type[BaseException], ...] = (*_NOT_A_DEPENDENCY_FAILURE, CircuitOpenError)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionHook = Callable[[str, BreakerState, BreakerState], None]
"""Called as ``hook(breaker_name, old_state, new_state)`` on every transition."""


class CircuitBreaker:
    """Consecutive-failure breaker: opens after ``failure_threshold`` failures, lets one
    trial call through after ``recovery_timeout`` (half-open), closes on its success."""

    def __init__(
        self, config: BreakerConfig, *, clock: Clock, on_transition: TransitionHook | None = None
    ) -> None:
        self.name = config.name
        self.failure_threshold = config.failure_threshold
        self.recovery_timeout = config.recovery_timeout
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._clock = clock
        self._on_transition = on_transition

    def before_call(self) -> None:
        """Raise :class:`CircuitOpenError` unless a call may go through now."""
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            remaining = self._opened_at + self.recovery_timeout - self._clock.monotonic()
            if remaining > 0:
                raise CircuitOpenError(self.name, remaining)
            self._move(BreakerState.HALF_OPEN)
        if self._trial_in_flight:
            raise CircuitOpenError(self.name, 0.0)
        self._trial_in_flight = True

    def record_success(self) -> None:
        self._trial_in_flight = False
        self.failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self._opened_at = self._clock.monotonic()
            self._move(BreakerState.OPEN)

    def release(self) -> None:
        """Forget an attempt that ended without a verdict (cancelled)."""
        self._trial_in_flight = False

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)


class BreakerRegistry:
    """Breakers by name, shared by every execution using one infrastructure."""

    def __init__(self, *, clock: Clock, on_transition: TransitionHook | None = None) -> None:
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, config: BreakerConfig) -> CircuitBreaker:
        """The breaker named ``config.name``; the first config seen for a name sets it up."""
        breaker = self._breakers.get(config.name)
        if breaker is None:
            breaker = CircuitBreaker(config, clock=self._clock, on_transition=self._on_transition)
            self._breakers[config.name] = breaker
        return breaker


RetryHook = Callable[[int, BaseException, float], None]
"""Called as ``hook(failed_attempt, error, next_wait_seconds)`` before each retry."""


async def run_protected(
    call: Callable[[], Awaitable[T]],
    *,
    node_id: str,
    config: NodeConfig,
    breaker: CircuitBreaker | None,
    on_retry: RetryHook | None = None,
) -> T:
    """Await ``call()`` under the node's timeout, breaker and retry policy."""
    if config.retry is None:
        return await _attempt(call, node_id, config.timeout, breaker)
    retry = config.retry
    retryable = _retryable_predicate(retry)
    for attempt in stamina.retry_context(
        on=retryable,
        attempts=retry.max_attempts,
        timeout=None,
        wait_initial=retry.initial_interval,
        wait_max=retry.max_interval,
        wait_jitter=retry.jitter,
        wait_exp_base=retry.backoff_coefficient,
    ):
        with attempt:
            try:
                return await _attempt(call, node_id, config.timeout, breaker)
            except Exception as exc:
                if on_retry is not None and attempt.num < retry.max_attempts and retryable(exc):
                    on_retry(attempt.num, exc, attempt.next_wait)
                raise
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


async def _attempt(
    call: Callable[[], Awaitable[T]],
    node_id: str,
    limit: float | None,
    breaker: CircuitBreaker | None,
) -> T:
    if breaker is None:
        return await _timed(call, node_id, limit)
    breaker.before_call()
    try:
        result = await _timed(call, node_id, limit)
    except _NOT_A_DEPENDENCY_FAILURE:
        breaker.record_success()
        raise
    except Exception:
        breaker.record_failure()
        raise
    except BaseException:
        breaker.release()
        raise
    breaker.record_success()
    return result


async def _timed(call: Callable[[], Awaitable[T]], node_id: str, limit: float | None) -> T:
    if limit is None:
        return await call()
    try:
        async with asyncio.timeout(limit):
            return await call()
    except TimeoutError:
        raise NodeTimeoutError(node_id, limit) from None


def _retryable_predicate(retry: RetryConfig) -> Callable[[Exception], bool]:
    names = frozenset(retry.non_retryable)

    def retryable(exc: Exception) -> bool:
        if isinstance(exc, _NEVER_RETRIED):
            return False
        return not any(cls.__name__ in names for cls in type(exc).__mro__)

    return retryable
