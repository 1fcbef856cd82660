"""structlog set-up: JSON lines in production, a readable console in development.

Executions bind ``correlation_id``, ``execution_id`` and ``workflow_id`` through
``structlog.contextvars``, so every line logged while one runs carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = ("critical", "debug", "error", "info", "warning")


def configure_logging(*, json: bool, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog process-wide (idempotent; the last call wins)."""
    if level.lower() not in _LEVELS:
        from tradeflow.domain.errors import ConfigurationError

        raise ConfigurationError(f"log level must be one of {list(_LEVELS)}, found {level!r}")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        # Plain tracebacks: rich's (structlog's default when rich is installed) print every
        # frame's local variables, which may hold a secret an api_call resolved.
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=(
            structlog.PrintLoggerFactory(stream) if stream is not None else _StderrLogger
        ),
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is at the time of the call (a test harness or a
    daemon may swap it after logging was configured)."""

    def __init__(self, *args: object) -> None:
        pass

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = msg


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound with ``component=<name>``; it follows later :func:`configure_logging`
    calls (a lazy proxy, resolved at each use)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
