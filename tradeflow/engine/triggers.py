"""The trigger evaluator: loss triggers and dead-man's switches, evaluated periodically.

A :class:`TriggerEvaluator` runs beside an :class:`~tradeflow.engine.emergency.EmergencyController`
(embedded: in every process of the infrastructure; with services: in the emergency
service). Each round judges every configured trigger (:func:`~tradeflow.domain.risk.is_trigger`)
by :func:`~tradeflow.domain.risk.evaluate_trigger` and stores its progress by
compare-and-set, so several evaluators on one store (processes on one SQLite file,
emergency replicas on one Redis) count each evaluation once and only the one that
stored it acts:

- while a breach has lasted ``consecutive`` evaluations (every round of it: firing is
  level-triggered), the trigger's scope is put in the trigger's state (actor
  ``trigger:<key>``, resting orders cancelled if the trigger says so) unless a halt of
  that scope is already as restrictive: a trigger never loosens a halt, a halt that
  could not be written is asked for again next round, and an operator who resumes a
  scope whose breach lasts sees it restricted again (beat again, or change the limit);
  then ``confirm`` (the service's halt barrier) is awaited;
- on a new trading day of a ``daily_loss`` trigger with ``lift_on_reset``, the halt it
  set is undone, and only that one (never an operator's): the weaker halt it replaced,
  if any, is put back, else the scope resumes.

What a trigger judges: ``daily_loss`` and ``max_drawdown`` read their scope's equity from
the :class:`~tradeflow.ports.PnlSource` (one read per scope and round); without one, or
when the read fails, they are skipped (logged). ``heartbeat`` needs none.

Evaluations are counted per slot of ``interval`` seconds of the clock: one evaluation
per trigger and slot, whichever evaluator makes it (so several evaluators do not speed
the debounce up), and a clock set back never silences a trigger.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

import structlog

from tradeflow.domain.clock import Clock
from tradeflow.domain.errors import EmergencyHalted, TradeflowError
from tradeflow.domain.records import HaltState, RiskLimit, Scope
from tradeflow.domain.risk import TriggerOutcome, TriggerProgress, evaluate_trigger, is_trigger
from tradeflow.domain.trading import TradingState
from tradeflow.engine.emergency import EmergencyController, trigger_actor
from tradeflow.ports import PnlSource

__all__ = ["TriggerEvaluator"]

_EQUITY_TIMEOUT_MIN: Final = 1.0
"""An equity read may take the trigger interval, and never less than this (seconds)."""

_log = structlog.get_logger(__name__)


class TriggerEvaluator:
    """Evaluates the triggers of ``controller`` every ``interval`` seconds (:meth:`start`),
    or one round when asked (:meth:`evaluate`).

    ``pnl`` gives the equity of a scope (``None``: loss triggers are skipped); ``clock``
    dates the evaluations (one per trigger per ``interval`` slot of it, whoever makes it); ``confirm`` is awaited with each halt a trigger sets. Counts fires in
    ``tradeflow_trigger_fired_total`` and failures in ``tradeflow_trigger_errors_total``
    of the controller's metrics.
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_confirm",
        "_controller",
        "_interval",
        "_pnl",
        "_task",
        "_unpriced",
        "failures",
    )

    def __init__(
        self,
        controller: EmergencyController,
        pnl: PnlSource | None,
        *,
        clock: Clock,
        interval: float,
        confirm: Callable[[HaltState], Awaitable[object]] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"trigger interval must be > 0 seconds, found {interval!r}")
        self._controller = controller
        self._pnl = pnl
        self._clock = clock
        self._interval = interval
        self._confirm = confirm
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._unpriced: set[str] = set()
        """Loss triggers already logged as skipped for want of a P&L source."""
        self.failures = 0
        """Evaluations that failed since this evaluator was made (also in the metrics)."""

    async def evaluate(self) -> list[tuple[RiskLimit, TriggerOutcome]]:
        """One round over every trigger: those this evaluator evaluated and stored, each
        with its outcome (skipped ones, and those another evaluator stored first, are not
        listed). Never raises for one trigger's failure (logged and counted)."""
        try:
            snapshot = self._controller.state()
        except EmergencyHalted as exc:
            self._failed(None, "trigger.state_unavailable", exc)
            return []
        # Dead-man's switches first: they need no equity read, and none should wait on one.
        triggers = sorted(
            (limit for limit in snapshot.limit_list() if is_trigger(limit)),
            key=lambda limit: limit.limit_type != "heartbeat",
        )
        if not triggers:
            return []
        try:
            stored = await self._controller.trigger_progress([limit.key for limit in triggers])
        except TradeflowError as exc:
            self._failed(None, "trigger.progress_unavailable", exc)
            return []
        equities: dict[tuple[Scope, str | None], float] = {}
        done: list[tuple[RiskLimit, TriggerOutcome]] = []
        for limit in triggers:
            try:
                outcome = await self._evaluate_one(
                    limit, stored.get(limit.key, TriggerProgress()), equities
                )
            except Exception as exc:  # one trigger's failure never stops the round
                self._failed(limit, "trigger.failed", exc)
                continue
            if outcome is not None:
                done.append((limit, outcome))
        # Fires after every lift of the round: a trigger whose state stood under another's
        # halt, lifted just now, restricts its scope again in the same round.
        for n, (limit, outcome) in enumerate(done):
            if not outcome.fire:
                continue
            try:
                done[n] = (limit, replace(outcome, progress=await self._fire(limit, outcome)))
            except Exception as exc:
                self._failed(limit, "trigger.failed", exc)
        return done

    def start(self) -> None:
        """Evaluate every ``interval`` seconds until :meth:`close` (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="emergency:triggers")

    async def close(self) -> None:
        """Stop the loop (a round in progress is cancelled); idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.evaluate()
            except Exception as exc:  # the loop must outlive any round
                self._failed(None, "trigger.round_failed", exc)

    async def _evaluate_one(
        self,
        limit: RiskLimit,
        progress: TriggerProgress,
        equities: dict[tuple[Scope, str | None], float],
    ) -> TriggerOutcome | None:
        now = self._clock.time()
        if progress.evaluated_at and self._slot(now) == self._slot(progress.evaluated_at):
            return None  # this slot's evaluation is done (by another evaluator, or a round ago)
        equity: float | None = None
        if limit.limit_type != "heartbeat":
            if self._pnl is None:
                if limit.key not in self._unpriced:
                    self._unpriced.add(limit.key)
                    _log.warning("trigger.no_pnl_source", limit=limit.key)
                return None
            equity = await self._equity(limit.scope, limit.target, equities)
        outcome = evaluate_trigger(limit, progress, equity, now)
        saved = replace(outcome.progress, version=progress.version + 1)
        if not await self._controller.save_trigger_progress(limit.key, saved, progress.version):
            return None  # another evaluator stored this evaluation (or the limit went)
        if saved.lifting:  # a new day's lift, or one that failed before: until it is done
            saved = await self._lift(limit, saved)
        return replace(outcome, progress=saved)

    def _slot(self, at: float) -> int:
        return math.floor(at / self._interval)

    async def _equity(
        self,
        scope: Scope,
        target: str | None,
        equities: dict[tuple[Scope, str | None], float],
    ) -> float:
        """The equity of a scope, read once per round (``TimeoutError`` past the bound)."""
        known = equities.get((scope, target))
        if known is not None:
            return known
        assert self._pnl is not None
        async with asyncio.timeout(max(self._interval, _EQUITY_TIMEOUT_MIN)):
            equity = float(await self._pnl.equity(scope, target))
        if equity != equity or equity in (float("inf"), float("-inf")):
            raise ValueError(f"equity of {scope.value} {target!r} is not a finite number")
        equities[(scope, target)] = equity
        return equity

    async def _fire(self, limit: RiskLimit, outcome: TriggerOutcome) -> TriggerProgress:
        """Put the scope in the trigger's state (nothing if it is already as restrictive);
        a halt that fails is asked for again next round (the breach still counts). The
        weaker halt of another actor it will replace is stored first (what a
        ``lift_on_reset`` puts back), so it is never lost; the progress as stored."""
        saved = outcome.progress
        standing = self._controller.state().halts.get((limit.scope, limit.target))
        assert limit.state is not None
        if standing is not None and standing.state.rank >= limit.state.rank:
            return saved  # nothing to write (checked again under the controller's lock)
        replaced = (
            None
            if standing is None or standing.actor == trigger_actor(limit)
            else {
                "state": standing.state.value,
                "actor": standing.actor,
                "reason": standing.reason,
                "cancel_orders": standing.cancel_orders,
            }
        )
        if replaced != saved.replaced:
            kept = replace(saved, version=saved.version + 1, replaced=replaced)
            if not await self._controller.save_trigger_progress(limit.key, kept, saved.version):
                return saved  # a beat or another evaluator moved it: next round asks again
            saved = kept
        reason = outcome.reason(limit)
        halt = await self._controller.halt_for_trigger(limit, reason)
        if halt is None:
            return saved
        metrics = self._controller.metrics
        if metrics is not None:
            metrics.triggers_fired.labels(limit.limit_type).inc()
        _log.warning("trigger.fired", limit=limit.key, state=halt.state.value, reason=reason)
        if self._confirm is not None:
            try:
                await self._confirm(halt)
            except Exception as exc:  # the halt stands; only its confirmation failed
                self._failed(limit, "trigger.confirm_failed", exc)
        return saved

    async def _lift(self, limit: RiskLimit, saved: TriggerProgress) -> TriggerProgress:
        """At a new trading day: undo this trigger's halt (putting back the one it
        replaced) and mark the lift done; a lift that fails stays pending and is tried
        again next round. The progress as stored after it."""
        reason = f"{limit.key}: trading day {saved.day} began (lift_on_reset)"
        restore = None
        if saved.replaced is not None:
            kept = saved.replaced
            restore = HaltState(
                limit.scope,
                limit.target,
                str(kept["reason"]),
                str(kept["actor"]),
                self._clock.time(),
                TradingState(kept["state"]),
                bool(kept["cancel_orders"]),
            )
        if await self._controller.lift_for_trigger(limit, reason, restore):
            _log.warning("trigger.lifted", limit=limit.key, day=saved.day)
        done = replace(saved, version=saved.version + 1, replaced=None, lifting=False)
        if await self._controller.save_trigger_progress(limit.key, done, saved.version):
            return done
        return saved

    def _failed(self, limit: RiskLimit | None, event: str, error: BaseException) -> None:
        self.failures += 1
        limit_type = "none" if limit is None else limit.limit_type
        metrics = self._controller.metrics
        if metrics is not None:
            metrics.trigger_errors.labels(limit_type).inc()
        message = error.message if isinstance(error, TradeflowError) else repr(error)
        if isinstance(error, TradeflowError | TimeoutError):
            _log.warning(event, limit=None if limit is None else limit.key, error=message)
        else:
            _log.error(
                event, limit=None if limit is None else limit.key, error=message, exc_info=error
            )
