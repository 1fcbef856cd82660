"""The ``tradeflow`` command.

Errors are one line on stderr, never a traceback (set ``TRADEFLOW_DEBUG=1`` to
see one). Exit codes: 0 completed, 1 failed, 2 bad input or usage, 3 halted,
4 cancelled, 5 a backing service is unavailable, 70 internal error, 130 interrupted
by Ctrl-C, 143 by SIGTERM. An interrupted run is recorded ``interrupted`` (resumable
with ``tradeflow executions resume``) and this process's lease is released.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

import orjson

from tradeflow.app.cancel_on_halt import JOB_WORKFLOW_ID, cancel_resting_orders, job_request_id
from tradeflow.app.devstack import DEFAULT_PORTS, Stack, load_env_file, stop_recorded
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.settings import ENVIRONMENTS, CliSettings, Settings
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import BarrierReport, LimitExplanation, ScopeIds
from tradeflow.domain.errors import (
    AccessDenied,
    EmergencyHalted,
    ResumeAwaitingConfirmation,
    RiskLimitExceeded,
    TradeflowError,
    UnavailableError,
    WorkflowValidationError,
)
from tradeflow.domain.limits import (
    DEFINITION_MAX_BYTES,
    ID_CHARACTERS,
    ID_MAX_LENGTH,
    check_id,
)
from tradeflow.domain.records import (
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
    rfc3339,
)
from tradeflow.domain.risk import NO_OPTIONS, LimitOptions, TriggerProgress
from tradeflow.domain.trading import TradingState
from tradeflow.engine.validation import parse_workflow
from tradeflow.observability.logging import configure_logging
from tradeflow.ports import EmergencyControl
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

__all__ = ["main"]

EXIT = {
    ExecutionStatus.COMPLETED: 0,
    ExecutionStatus.FAILED: 1,
    ExecutionStatus.HALTED: 3,
    ExecutionStatus.CANCELLED: 4,
}
STACK_DIR = ".stack"
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 5
EXIT_PENDING = 6
"""``tradeflow resume`` recorded a request that awaits a second operator."""
EXIT_DENIED = 7
"""A service refused this caller (its certificate's principal or role)."""
EXIT_INTERNAL = 70


def _id_of_file(path: Path) -> str:
    """The default workflow id of a file: its name without extension, each character an
    id may not hold (a dot, a space...) as ``_``, at most ``ID_MAX_LENGTH`` long."""
    return re.sub(f"[^{ID_CHARACTERS}]", "_", path.stem)[:ID_MAX_LENGTH] or "workflow"


def load_definition(path: str) -> dict[str, Any]:
    """Read a workflow JSON file, with errors that say what is wrong where.

    At most ``DEFINITION_MAX_BYTES`` are read, so a huge file costs nothing; orjson
    refuses nesting deeper than 1024 levels with a ``JSONDecodeError``, where ``json``
    would overflow the stack.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(DEFINITION_MAX_BYTES + 1)
    except OSError as exc:
        raise TradeflowError(f"cannot read workflow file {path!r}: {exc.strerror}") from None
    if len(data) > DEFINITION_MAX_BYTES:
        raise TradeflowError(
            f"{path}: a workflow file may hold at most {DEFINITION_MAX_BYTES} bytes; "
            "this one is larger"
        )
    try:
        loaded = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TradeflowError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    if not isinstance(loaded, dict):
        raise TradeflowError(
            f"{path}: expected a JSON object with 'blocks', found {type(loaded).__name__}"
        )
    return loaded


class Progress:
    """Prints one line per event of a run, as it happens."""

    def __init__(self, out: TextIO, *, as_json: bool, workflow_id: str | None = None) -> None:
        self.out = out
        self.as_json = as_json
        self.workflow_id = workflow_id
        """Show only this workflow's executions (a shared bus carries every bot's events);
        events of no execution (halts, breakers) are always shown."""
        self.counts = {"completed": 0, "skipped": 0, "failed": 0}

    async def __call__(self, event: dict[str, Any]) -> None:
        if (
            self.workflow_id is not None
            and event.get("execution_id") is not None
            and event.get("workflow_id") != self.workflow_id
        ):
            return
        if self.as_json:
            print(json.dumps(event, separators=(",", ":"), default=str), file=self.out, flush=True)
            return
        line = self.render(event)
        if line:
            print(line, file=self.out, flush=True)

    def render(self, event: dict[str, Any]) -> str | None:
        kind, data, node = event["type"], event.get("data") or {}, event.get("node_id")
        if kind == "execution_started":
            self.counts = dict.fromkeys(self.counts, 0)
            resumed = " (resumed)" if data.get("resumed") else ""
            return f"> execution {event['execution_id']} started{resumed}: workflow {event['workflow_id']}"
        if kind == "node_started":
            return None
        if kind == "node_completed":
            self.counts["completed"] += 1
            return f"  ok   {node:<20} {data.get('duration_ms', 0):8.2f} ms  {_brief(data.get('outputs'))}"
        if kind == "node_skipped":
            self.counts["skipped"] += 1
            return f"  skip {node:<20}             {data.get('reason', '')}"
        if kind == "node_failed":
            self.counts["failed"] += 1
            return (
                f"  FAIL {node:<20} {data.get('duration_ms', 0):8.2f} ms  {data.get('error', '')}"
            )
        if kind == "node_retrying":
            return (
                f"  retry {node:<19} attempt {data.get('attempt')} failed: {data.get('error')}; "
                f"next in {data.get('next_wait_s', 0):.2f}s"
            )
        if kind.startswith("execution_"):
            c = self.counts
            tail = f": {data['error']}" if data.get("error") else ""
            return (
                f"= {data.get('status', kind)} in {data.get('duration_ms', 0):.2f} ms "
                f"({c['completed']} completed, {c['skipped']} skipped, {c['failed']} failed){tail}"
            )
        return f"! {kind}: {_brief(data)}"


def _brief(value: Any, limit: int = 70) -> str:
    if isinstance(value, dict):
        text = " ".join(f"{k}={_scalar(v)}" for k, v in value.items())
    else:
        text = _scalar(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def _stack_env(env: str) -> dict[str, str]:
    """Settings for ``--env production``: the environment, completed by the ``env`` file
    of a stack started in this directory with ``tradeflow stack up`` (``make up``)."""
    values = dict(os.environ)
    stack_file = Path(STACK_DIR) / "env"
    if env == "production" and stack_file.exists():
        # The caller's identity is all or nothing: one chosen in the environment (TLS
        # files, or plaintext) is never mixed with parts of the file's.
        chosen = any(key in values for key in _IDENTITY)
        for key, value in load_env_file(stack_file).items():
            if not (chosen and key in _IDENTITY):
                values.setdefault(key, value)
    return values


_IDENTITY = frozenset(
    {"TRADEFLOW_TLS_CA", "TRADEFLOW_TLS_CERT", "TRADEFLOW_TLS_KEY", "TRADEFLOW_GRPC_PLAINTEXT"}
)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(args.env, _stack_env(args.env))
    if getattr(args, "db", None):
        settings = replace(settings, sqlite_path=args.db)
    if getattr(args, "prices", None):
        settings = replace(settings, prices_file=args.prices)
    return settings


async def _infra(args: argparse.Namespace, *, retention: bool = False) -> Infrastructure:
    """The infrastructure of a command; ``retention``: for the commands that run
    executions (``run``, ``executions resume``), the embedded retention task too."""
    return await Infrastructure.create(
        args.env, settings=_settings(args), owner_kind="cli", retention=retention
    )


@contextlib.asynccontextmanager
async def _kill_switch(args: argparse.Namespace) -> AsyncIterator[EmergencyControl]:
    """What ``halt``, ``resume`` and ``status`` use: in production the emergency service
    alone (no NATS, no state service: the kill switch must work while they are down);
    embedded, the state file's emergency tables."""
    if args.env != "production":
        async with await _infra(args) as infra:
            yield infra.emergency
        return
    from tradeflow.app.remote import connect_emergency  # embedded use never loads gRPC

    control = await connect_emergency(_settings(args), clock=SystemClock(), id_factory=new_id)
    try:
        yield control
    finally:
        await control.close()


async def cmd_run(args: argparse.Namespace) -> int:
    definition = load_definition(args.file)
    workflow_id = args.workflow_id or _id_of_file(Path(args.file))
    async with await _infra(args, retention=True) as infra:
        progress = Progress(sys.stdout, as_json=args.json, workflow_id=workflow_id)
        await infra.events.subscribe("workflow_events", progress)
        executor = EnhancedWorkflowExecutor(
            definition, infra, workflow_id, bot_id=args.bot_id, strategy_id=args.strategy_id
        )
        await executor.initialize()
        code = 0
        for index in range(args.count):
            if index:
                await asyncio.sleep(args.interval)
            result = await executor.run()
            if result.halt is not None:
                raise result.halt
            code = EXIT[result.status]
            if code:
                break
    return code


async def cmd_resume_execution(args: argparse.Namespace) -> int:
    async with await _infra(args, retention=True) as infra:
        record = await infra.state.get_execution(args.execution_id)
        progress = Progress(sys.stdout, as_json=args.json, workflow_id=record.workflow_id)
        await infra.events.subscribe("workflow_events", progress)
        executor = EnhancedWorkflowExecutor(
            record.definition,
            infra,
            record.workflow_id,
            bot_id=record.bot_id,
            strategy_id=record.strategy_id,
        )
        result = await executor.resume(args.execution_id)
    return EXIT[result["status"]]  # the seed's dict: its status string equals the StrEnum key


async def cmd_validate(args: argparse.Namespace) -> int:
    workflow = parse_workflow(load_definition(args.file))
    order = " -> ".join(b.id for b in workflow.blocks)
    print(f"valid: {len(workflow.blocks)} blocks; order: {order}")
    return 0


@runtime_checkable
class _Confirming(Protocol):
    """An emergency control that says how the live executors confirmed a halt (the
    emergency service's client; embedded, the SQLite commit is the barrier)."""

    async def halt_with_report(
        self,
        scope: Scope,
        target: str | None = None,
        *,
        reason: str,
        actor: str = "unknown",
        state: TradingState = TradingState.HALTED,
        cancel_orders: bool = False,
    ) -> tuple[HaltState, BarrierReport]: ...


async def cmd_halt(args: argparse.Namespace) -> int:
    """Restrict trading; with ``--cancel-orders`` also cancel the scope's resting orders:
    embedded, here and now (this process has the state file's ledger); in production an
    executor runs the job the halt asks for."""
    scope, state = Scope(args.scope), TradingState(args.state)
    async with _kill_switch(args) as emergency:
        change = (
            emergency.halt_with_report if isinstance(emergency, _Confirming) else emergency.halt
        )
        done = await change(
            scope,
            args.target,
            reason=args.reason,
            actor=args.actor,
            state=state,
            cancel_orders=args.cancel_orders,
        )
    halt, report = done if isinstance(done, tuple) else (done, None)
    print(f"{halt.state.value} {_where(halt.scope, halt.target)}: {halt.reason}")
    if report is not None:
        _print_barrier(report)
    if not args.cancel_orders:
        return 0
    if args.env == "production":
        print(
            f"resting orders: an executor cancels them (request id {job_request_id(halt)}; "
            f"`tradeflow executions list --workflow {JOB_WORKFLOW_ID} --env production`)"
        )
        return 0
    async with await _infra(args) as infra:
        cancelled = await cancel_resting_orders(infra, halt)
    print(
        f"resting orders: {len(cancelled.cancelled)} cancelled by execution "
        f"{cancelled.execution_id} ({cancelled.status.value})"
        + (f": {cancelled.error}" if cancelled.error else "")
    )
    for client_order_id in cancelled.cancelled:
        print(f"  cancelled {client_order_id}")
    return EXIT[cancelled.status]


def _print_barrier(report: BarrierReport) -> None:
    """How the live executors confirmed a halt (version ``report.version``)."""
    print(
        f"confirmed at version {report.version}: {len(report.acknowledged)} of "
        f"{len(report.live)} live executor(s) acknowledged"
    )
    for action in report.in_flight:
        print(
            f"  in flight on {action.owner}: execution {action.execution_id} "
            f"block {action.node_id} order {action.client_order_id}"
        )
    for owner in report.fenced:
        print(f"  fenced {owner}: no acknowledgement in time, its lease was revoked")


async def cmd_resume(args: argparse.Namespace) -> int:
    scope, target = Scope(args.scope), args.target
    async with _kill_switch(args) as emergency:
        try:
            lifted = await emergency.resume(scope, target, reason=args.reason, actor=args.actor)
        except ResumeAwaitingConfirmation as pending:
            print(
                f"{_where(scope, target)} stays halted: {pending.message}, until "
                f"{rfc3339(pending.confirm_before)}"
            )
            return EXIT_PENDING
    print(
        f"resumed {_where(scope, target)}" if lifted else f"{_where(scope, target)} was not halted"
    )
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with _kill_switch(args) as emergency:
        halts = await emergency.halts()
        limits = await emergency.list_risk_limits()
    if not halts:
        print("trading: ACTIVE (no halts)")
    for h in halts:
        cancels = " (cancels resting orders)" if h.cancel_orders else ""
        print(
            f"{h.state.value.upper()} {_where(h.scope, h.target)} since {rfc3339(h.since)} "
            f"by {h.actor}{cancels}: {h.reason}"
        )
    for limit in limits:
        print(f"limit {_limit_line(limit)}")
    return 0


_SCOPE_FLAGS = (("strategy", Scope.STRATEGY), ("bot", Scope.BOT), ("workflow", Scope.WORKFLOW))


def _limit_scope(args: argparse.Namespace) -> tuple[Scope, str | None]:
    """The scope ``--strategy``, ``--bot`` or ``--workflow`` names (at most one: argparse
    sees to it); global without any."""
    for flag, scope in _SCOPE_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            return scope, check_id(f"--{flag}", value)
    return Scope.GLOBAL, None


def _number(value: float) -> str:
    return f"{value:.10g}"


def _limit_line(limit: RiskLimit) -> str:
    """One limit, its options that differ from the defaults and who set it."""
    extras: list[str] = []
    if limit.window is not None:
        extras.append(f"per {_number(limit.window)}s")
    if limit.state is not None:
        after = f" after {limit.consecutive} breaches in a row" if limit.consecutive > 1 else ""
        extras.append(f"moves the scope to {limit.state.value}{after}")
    if limit.limit_type == "daily_loss":
        extras.append(f"day from {limit.reset_time} {limit.timezone}")
    if limit.lift_on_reset:
        extras.append("lifted at the next day")
    if limit.cancel_orders:
        extras.append("cancels resting orders")
    if not limit.auto_halt:
        extras.append("no auto halt")
    options = f" ({', '.join(extras)})" if extras else ""
    by = f" by {limit.updated_by}" if limit.updated_by else ""
    if limit.limit_type == "heartbeat":
        rule = f"no beat for {_number(limit.threshold)}s"
    else:
        rule = f"{limit.direction.value} {_number(limit.threshold)}"
    return (
        f"{limit.limit_type} {_where(limit.scope, limit.target)}: {rule}{options}; "
        f"set{by} at {rfc3339(limit.updated_at)}"
    )


def _limit_json(limit: RiskLimit) -> dict[str, Any]:
    return {"key": limit.key, **asdict(limit)}


def _print_json(value: Any) -> None:
    print(json.dumps(value, separators=(",", ":"), default=str), flush=True)


async def cmd_limits(args: argparse.Namespace) -> int:
    """Set, list, delete or explain the risk limits (pre-trade checks and triggers)."""
    if args.action == "set":
        return await _set_limit(args)
    if args.action == "delete":
        scope, target = _limit_scope(args)
        async with _kill_switch(args) as emergency:
            deleted = await emergency.delete_risk_limit(
                args.limit_type, scope, target, actor=args.actor
            )
        where = _where(scope, target)
        if args.json:
            _print_json(
                {
                    "limit_type": args.limit_type,
                    "scope": scope,
                    "target": target,
                    "deleted": deleted,
                }
            )
        else:
            print(
                f"deleted {args.limit_type} {where}"
                if deleted
                else f"no {args.limit_type} limit on {where}"
            )
        return 0
    if args.action == "explain":
        ids = ScopeIds(
            workflow_id=check_id("--workflow", args.workflow, optional=True),
            bot_id=check_id("--bot", args.bot, optional=True),
            strategy_id=check_id("--strategy", args.strategy, optional=True),
        )
        async with _kill_switch(args) as emergency:
            explanation = await emergency.explain_limits(ids)
        if args.json:
            _print_json(_explanation_json(explanation))
        else:
            _print_explanation(explanation)
        return 0
    async with _kill_switch(args) as emergency:
        limits = await emergency.list_risk_limits()
    for limit in limits:
        if args.json:
            _print_json(_limit_json(limit))
        else:
            print(_limit_line(limit))
    if not limits and not args.json:
        print("no limits")
    return 0


async def _set_limit(args: argparse.Namespace) -> int:
    scope, target = _limit_scope(args)
    options = LimitOptions(
        window=args.window,
        state=None if args.state is None else TradingState(args.state),
        consecutive=args.consecutive,
        timezone=args.timezone,
        reset_time=args.reset_time,
        lift_on_reset=args.lift_on_reset,
        cancel_orders=args.cancel_orders,
    )
    async with _kill_switch(args) as emergency:
        limit = await emergency.set_risk_limit(
            args.limit_type,
            args.threshold,
            None if args.direction is None else LimitDirection(args.direction),
            auto_halt=not args.no_auto_halt,
            actor=args.actor,
            scope=scope,
            target=target,
            options=options,
        )
    if args.json:
        _print_json(_limit_json(limit))
    else:
        print(f"set {_limit_line(limit)}")
    return 0


def _explanation_json(explanation: LimitExplanation) -> dict[str, Any]:
    halt = explanation.halt
    return {
        "ids": asdict(explanation.ids),
        "state": explanation.state,
        "halt": None if halt is None else asdict(halt),
        "applicable": [_limit_json(limit) for limit in explanation.applicable],
        "deciding": [_limit_json(limit) for limit in explanation.deciding],
        "triggers": [
            {"limit": _limit_json(limit), "progress": asdict(progress)}
            for limit, progress in explanation.triggers
        ],
    }


def _print_explanation(explanation: LimitExplanation) -> None:
    ids = explanation.ids
    named = [
        f"{label} {value!r}"
        for label, value in (
            ("workflow", ids.workflow_id),
            ("bot", ids.bot_id),
            ("strategy", ids.strategy_id),
        )
        if value is not None
    ]
    print(f"for {', '.join(named) if named else 'no workflow, bot or strategy (global only)'}")
    halt = explanation.halt
    if halt is None:
        print(f"trading: {explanation.state.value.upper()}")
    else:
        print(
            f"trading: {explanation.state.value.upper()} by the halt of "
            f"{_where(halt.scope, halt.target)} since {rfc3339(halt.since)} by {halt.actor}: "
            f"{halt.reason}"
        )
    if not explanation.applicable:
        print("limits: none")
    else:
        print("limits (* the strictest of its type, which decides):")
        deciding = {limit.key for limit in explanation.deciding}
        for limit in explanation.applicable:
            mark = "*" if limit.key in deciding else " "
            print(f"  {mark} {_limit_line(limit)}")
    if explanation.triggers:
        print("triggers:")
        for limit, progress in explanation.triggers:
            print(
                f"    {limit.limit_type} {_where(limit.scope, limit.target)}: "
                f"{_progress(limit, progress)}"
            )


def _progress(limit: RiskLimit, progress: TriggerProgress) -> str:
    """A trigger's progress in words."""
    if not progress.evaluated_at:
        seen = "not evaluated yet"
    elif limit.limit_type == "heartbeat":
        since = _number(progress.value or 0.0)
        seen = f"{since}s since the last beat (ttl {_number(limit.threshold)}s)"
    else:
        seen = f"{_number(progress.value or 0.0)} against {_number(limit.threshold)}"
    parts = [seen]
    if progress.last_beat is not None:
        parts.append(f"last beat {rfc3339(progress.last_beat)}")
    if progress.day is not None:
        parts.append(f"trading day {progress.day} from equity {_number(progress.anchor or 0.0)}")
    if progress.peak is not None:
        parts.append(f"peak equity {_number(progress.peak)}")
    parts.append(f"{progress.breaches} of {limit.consecutive} breach(es) in a row")
    parts.append("FIRED" if progress.fired else "armed")
    return "; ".join(parts)


async def cmd_heartbeat(args: argparse.Namespace) -> int:
    """One beat of a scope's dead-man's switch, or one every ``--every`` seconds until
    interrupted (a beat the emergency control could not take is reported and the next one
    tried: if they keep failing, the switch lapses, which is its point)."""
    scope, target = (Scope.GLOBAL, None) if args.global_scope else _limit_scope(args)
    where = _where(scope, target)
    clock = SystemClock()
    warned = False
    async with _kill_switch(args) as emergency:
        while True:
            sent = clock.time()
            try:
                expires_at = await emergency.heartbeat(scope, target)
            except UnavailableError as exc:
                if args.every is None:
                    raise
                print(f"heartbeat {where} failed: {exc}", file=sys.stderr, flush=True)
            else:
                if args.json:
                    _print_json(
                        {"scope": scope, "target": target, "expires_at": rfc3339(expires_at)}
                    )
                else:
                    print(
                        f"heartbeat {where}: lapses at {rfc3339(expires_at)} unless beaten again",
                        flush=True,
                    )
                if args.every is not None and args.every >= expires_at - sent and not warned:
                    warned = True
                    print(
                        f"warning: --every {_number(args.every)} is not shorter than the time "
                        f"to live of {where}'s switch: it lapses between beats",
                        file=sys.stderr,
                        flush=True,
                    )
            if args.every is None:
                return 0
            await asyncio.sleep(args.every)


async def cmd_events(args: argparse.Namespace) -> int:
    async with await _infra(args) as infra:
        progress = Progress(sys.stdout, as_json=args.json)
        cursor = 0
        while True:
            batch = await infra.state.read_events(after=cursor, execution_id=args.execution)
            for position, event in batch:
                await progress(event.to_dict())
                cursor = position
            if not args.follow:
                return 0
            if not batch:
                await asyncio.sleep(args.poll)


async def cmd_executions(args: argparse.Namespace) -> int:
    async with await _infra(args) as infra:
        if args.action == "list":
            page = await infra.state.list_executions(
                ExecutionQuery(
                    workflow_id=args.workflow,
                    bot_id=args.bot,
                    strategy_id=args.strategy,
                    status=ExecutionStatus(args.status) if args.status else None,
                    limit=args.limit,
                )
            )
            for rec in page.executions:
                print(_execution_line(rec))
            if not page.executions:
                print("no executions")
            return 0
        record = await infra.state.get_execution(args.execution_id)
        checkpoints = await infra.state.get_checkpoints(args.execution_id)
    print(_execution_line(record))
    if record.error:
        print(f"  error: {record.error}")
    for node_id, cp in checkpoints.items():
        detail = cp.error or _brief(cp.outputs or {})
        print(f"  {cp.state.value:<9} {node_id:<20} {detail}")
    return 0


async def cmd_prune(args: argparse.Namespace) -> int:
    """``executions prune``: remove the executions that ended more than ``--older-than``
    days ago (default ``TRADEFLOW_RETENTION_DAYS``), calling ``prune`` until it has
    nothing more to remove (once with ``--limit``)."""
    settings = _settings(args)
    days = args.older_than if args.older_than is not None else settings.retention_days
    if args.older_than is None and not days > 0:
        print(
            "error: TRADEFLOW_RETENTION_DAYS is 0 (keep everything): "
            "pass --older-than DAYS to prune anyway",
            file=sys.stderr,
        )
        return EXIT_USAGE
    since_epoch = time.time() / 86_400
    if days > since_epoch:
        where = "--older-than" if args.older_than is not None else "TRADEFLOW_RETENTION_DAYS"
        print(
            f"error: {where} must be at most {since_epoch:.0f} days (back to 1970), found {days}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    async with await Infrastructure.create(
        args.env, settings=settings, owner_kind="cli", retention=False
    ) as infra:
        ended_before = infra.clock.time() - days * 86_400
        removed = 0
        while True:
            report = await infra.state.prune(ended_before, limit=args.limit or 0)
            removed += report.removed
            if args.limit is not None or not report.more:
                break
    more = " (more to remove: run it again)" if report.more else ""
    kept = (
        f"; kept {report.kept} with an unresolved order intent (the venue may hold the "
        "order: reconcile it there by its client order id)"
        if report.kept
        else ""
    )
    print(f"removed {removed} execution(s) that ended before {rfc3339(ended_before)}{more}{kept}")
    return 0


async def cmd_stack(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(_stack, args)


def _stack(args: argparse.Namespace) -> int:
    """Start, stop or show the local stack (blocking: processes and files)."""
    workdir = Path(args.dir)
    path = workdir / "stack.json"
    if args.action == "up":
        if path.exists():
            raise TradeflowError(
                f"a stack is already recorded in {workdir}: `tradeflow stack down` first"
            )
        stack = Stack(workdir.resolve(), DEFAULT_PORTS, tls=True)
        stack.start()
        stack.write_files()
        print(f"stack up in {workdir}: " + ", ".join(f"{k}={v}" for k, v in stack.ports.items()))
        print(
            f"clients: `tradeflow ... --env production` in this directory, or `source {workdir}/env`"
        )
        others = ", ".join(f"{workdir}/env-{p.role.value}-{p.name}" for p in stack.CLIENTS[1:])
        print(
            f"mutual TLS with a throwaway CA in {stack.certs}: clients act as the operator; "
            f"source one of {others} to act in another role"
        )
        return 0
    if args.action == "down":
        stopped = stop_recorded(workdir)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"no stack recorded in {workdir}")
        return 0
    print(path.read_text() if path.exists() else f"no stack recorded in {workdir}")
    return 0


def _execution_line(rec: ExecutionRecord) -> str:
    ids = " ".join(f"{k}={v}" for k, v in (("bot", rec.bot_id), ("strategy", rec.strategy_id)) if v)
    return (
        f"{rec.execution_id}  {rec.status.value:<11} {rfc3339(rec.started_at)}  "
        f"workflow={rec.workflow_id} {ids}".rstrip()
        + _ownership(rec)
    )


def _ownership(rec: ExecutionRecord) -> str:
    """Who runs an unfinished execution, and whether that owner is alive."""
    if rec.status.final:
        return ""
    if rec.owner is not None and rec.owner_live and rec.status is ExecutionStatus.RUNNING:
        return f"  owner={rec.owner} (live)"
    why = "interrupted" if rec.status is ExecutionStatus.INTERRUPTED else "owner's lease lapsed"
    owner = f"owner={rec.owner} " if rec.owner else ""
    return f"  {owner}(orphan: {why}; `tradeflow executions resume {rec.execution_id}`)"


def _where(scope: Scope, target: str | None) -> str:
    return scope.value if target is None else f"{scope.value} {target!r}"


def build_parser(default_env: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradeflow", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env",
        choices=ENVIRONMENTS,
        default=default_env,
        help="infrastructure: development (embedded, default) or production (services)",
    )
    common.add_argument(
        "--db",
        help="embedded state file (default: $TRADEFLOW_SQLITE_PATH or ~/.local/state/tradeflow/tradeflow.db)",
    )
    common.add_argument("--json", action="store_true", help="print events as JSON lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run a workflow file, showing live progress")
    run.add_argument("file")
    run.add_argument(
        "--workflow-id",
        help="default: the file name without extension, other characters than an id allows as _",
    )
    run.add_argument("--bot-id")
    run.add_argument("--strategy-id")
    run.add_argument("--prices", help="JSON price ticks replayed by price_feed nodes")
    run.add_argument(
        "--count", type=_positive_int, default=1, help="run this many times (a bot loop)"
    )
    run.add_argument(
        "--interval", type=float, default=1.0, help="seconds between runs with --count"
    )
    run.set_defaults(handler=cmd_run)

    validate = sub.add_parser("validate", help="check a workflow file and print every problem")
    validate.add_argument("file")
    validate.set_defaults(handler=cmd_validate)

    for name, handler, verb in (("halt", cmd_halt, "halt"), ("resume", cmd_resume, "resume")):
        p = sub.add_parser(
            name, parents=[common], help=f"{verb} trading (global or one strategy/bot/workflow)"
        )
        p.add_argument("--scope", choices=[s.value for s in Scope], default="global")
        p.add_argument("--target", help="the strategy, bot or workflow id (not for global)")
        p.add_argument("--reason", required=True)
        p.add_argument("--actor", default=os.environ.get("USER", "cli"))
        p.set_defaults(handler=handler)
    halt = sub.choices["halt"]
    halt.add_argument(
        "--state",
        choices=[s.value for s in TradingState if s is not TradingState.ACTIVE],
        default=TradingState.HALTED.value,
        help="what the scope still admits: halted (default) and cancel_only, cancels only; "
        "reduce_only, also orders that shrink a position",
    )
    halt.add_argument(
        "--cancel-orders",
        action="store_true",
        help="also cancel the scope's resting orders (embedded: now, printing them; "
        "production: an executor does)",
    )

    status = sub.add_parser("status", parents=[common], help="halts and risk limits in force")
    status.set_defaults(handler=cmd_status)

    _add_limit_commands(sub, common)

    events = sub.add_parser(
        "events", parents=[common], help="print recorded events; --follow tails them"
    )
    events.add_argument("--execution", help="only this execution")
    events.add_argument("--follow", "-f", action="store_true")
    events.add_argument(
        "--poll", type=float, default=0.2, help="seconds between polls with --follow"
    )
    events.set_defaults(handler=cmd_events)

    executions = sub.add_parser("executions", help="list, show, resume or prune executions")
    ex_sub = executions.add_subparsers(dest="action", required=True)
    ex_list = ex_sub.add_parser("list", parents=[common])
    ex_list.add_argument("--workflow")
    ex_list.add_argument("--bot")
    ex_list.add_argument("--strategy")
    ex_list.add_argument("--status", choices=[s.value for s in ExecutionStatus])
    ex_list.add_argument("--limit", type=_positive_int, default=20)
    ex_list.set_defaults(handler=cmd_executions)
    ex_show = ex_sub.add_parser("show", parents=[common])
    ex_show.add_argument("execution_id")
    ex_show.set_defaults(handler=cmd_executions)
    ex_resume = ex_sub.add_parser(
        "resume", parents=[common], help="continue an interrupted execution"
    )
    ex_resume.add_argument("execution_id")
    ex_resume.add_argument("--prices", help="JSON price ticks replayed by price_feed nodes")
    ex_resume.set_defaults(handler=cmd_resume_execution)
    ex_prune = ex_sub.add_parser(
        "prune",
        parents=[common],
        help="remove executions that ended long ago, with their checkpoints and events "
        "(never running, interrupted or with an unresolved order intent; never the audit log)",
    )
    ex_prune.add_argument(
        "--older-than",
        type=_non_negative_float,
        metavar="DAYS",
        help="ended more than this many days ago (default: $TRADEFLOW_RETENTION_DAYS, 7)",
    )
    ex_prune.add_argument(
        "--limit",
        type=_positive_int,
        help="remove at most this many, in one call (default: all, a thousand per call)",
    )
    ex_prune.set_defaults(handler=cmd_prune)
    stack = sub.add_parser("stack", help="a local service stack (NATS, Redis, the three services)")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--dir", default=STACK_DIR, help="where logs, data and stack.json go")
    stack.set_defaults(handler=cmd_stack)
    return parser


def _add_scope_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--strategy``, ``--bot``, ``--workflow`` (one at most; none: global), plus
    ``--global`` where one is required."""
    group = parser.add_mutually_exclusive_group(required=required)
    for flag, _ in _SCOPE_FLAGS:
        group.add_argument(f"--{flag}", metavar="ID", help=f"of one {flag} (default: global)")
    if required:
        group.add_argument("--global", dest="global_scope", action="store_true", help="global")


def _add_limit_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    actor = os.environ.get("USER", "cli")
    limits = sub.add_parser(
        "limits", help="risk limits per scope: pre-trade checks, loss triggers, dead-man's switches"
    )
    actions = limits.add_subparsers(dest="action", required=True)

    set_ = actions.add_parser(
        "set",
        parents=[common],
        help="set (or replace) the limit on TYPE of a scope (global unless one is named)",
    )
    set_.add_argument(
        "limit_type",
        metavar="TYPE",
        help="max_order_notional, price_collar_bps, max_position, max_open_orders, "
        "order_rate, daily_loss, max_drawdown, heartbeat, or a type risk nodes check",
    )
    set_.add_argument(
        "threshold",
        metavar="THRESHOLD",
        type=float,
        help="the limit (a loss trigger's is negative; a heartbeat's is its time to live, s)",
    )
    _add_scope_flags(set_)
    set_.add_argument(
        "--direction",
        choices=[d.value for d in LimitDirection],
        help="which side breaches (default: the type's own)",
    )
    set_.add_argument(
        "--no-auto-halt",
        action="store_true",
        help="a breach found by a risk check does not halt trading globally",
    )
    set_.add_argument(
        "--window", type=float, metavar="S", help="order_rate: THRESHOLD orders per S seconds"
    )
    set_.add_argument(
        "--state",
        choices=[s.value for s in TradingState if s is not TradingState.ACTIVE],
        help="a trigger (daily_loss, max_drawdown, heartbeat): what a breach moves the scope "
        "to (heartbeat: cancel_only unless given)",
    )
    set_.add_argument(
        "--consecutive",
        type=_positive_int,
        default=NO_OPTIONS.consecutive,
        metavar="N",
        help="a trigger acts after N breaching evaluations in a row (default 1)",
    )
    set_.add_argument(
        "--timezone",
        default=NO_OPTIONS.timezone,
        metavar="TZ",
        help="daily_loss: the trading day's IANA time zone (default UTC)",
    )
    set_.add_argument(
        "--reset-time",
        default=NO_OPTIONS.reset_time,
        metavar="HH:MM",
        help="daily_loss: local time the trading day starts (default 00:00)",
    )
    set_.add_argument(
        "--lift-on-reset",
        action="store_true",
        help="daily_loss: lift the state it set when the next trading day starts",
    )
    set_.add_argument(
        "--cancel-orders",
        action="store_true",
        help="a trigger: also cancel the scope's resting orders when it acts",
    )
    set_.add_argument("--actor", default=actor)
    set_.set_defaults(handler=cmd_limits)

    list_ = actions.add_parser("list", parents=[common], help="every configured limit")
    list_.set_defaults(handler=cmd_limits)

    delete = actions.add_parser(
        "delete", parents=[common], help="remove the limit on TYPE of a scope (global unless named)"
    )
    delete.add_argument("limit_type", metavar="TYPE")
    _add_scope_flags(delete)
    delete.add_argument("--actor", default=actor)
    delete.set_defaults(handler=cmd_limits)

    explain = actions.add_parser(
        "explain",
        parents=[common],
        help="what applies to an order of these ids: state, limits, the deciding ones, triggers",
    )
    explain.add_argument("--workflow", metavar="ID")
    explain.add_argument("--bot", metavar="ID")
    explain.add_argument("--strategy", metavar="ID")
    explain.set_defaults(handler=cmd_limits)

    heartbeat = sub.add_parser(
        "heartbeat",
        parents=[common],
        help="beat a scope's dead-man's switch (a heartbeat limit set there): once, or --every S",
    )
    _add_scope_flags(heartbeat, required=True)
    heartbeat.add_argument(
        "--every",
        type=_positive_float,
        metavar="S",
        help="beat every S seconds until interrupted (keep S well under the time to live)",
    )
    heartbeat.set_defaults(handler=cmd_heartbeat)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, found {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text}")
    return value


async def _until_signalled(args: argparse.Namespace) -> int:
    """Run the command; SIGTERM cancels it as Ctrl-C does, so a run in progress records
    itself ``interrupted`` and the lease is released on the way out."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return int(await args.handler(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tradeflow`` console script."""
    cli = CliSettings.from_env()
    args = build_parser(cli.env).parse_args(argv)
    try:
        configure_logging(json=cli.log_json, level=cli.log_level)
        return int(asyncio.run(_until_signalled(args)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("terminated", file=sys.stderr)
        return 143
    except WorkflowValidationError as exc:
        print(
            f"error: {exc.issues and len(exc.issues)} problem(s) in the workflow:", file=sys.stderr
        )
        for issue in exc.issues:
            print(f"  - {issue}", file=sys.stderr)
        return EXIT_USAGE
    except (EmergencyHalted, RiskLimitExceeded) as halt:
        # Raised through the infrastructure's close: the run's last events are printed.
        print(f"halted: {halt}", file=sys.stderr)
        return EXIT[ExecutionStatus.HALTED]
    except TradeflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _exit_of(exc)
    except Exception as exc:
        if cli.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


def _exit_of(error: TradeflowError) -> int:
    """The exit status of a command that failed with ``error``."""
    if isinstance(error, UnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, AccessDenied):
        return EXIT_DENIED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
