"""The one reader of ``TRADEFLOW_*``: the library's :class:`Settings`, the services'
:class:`ServiceSettings` and the CLI's :class:`CliSettings`. Adapters get plain values
from these; a malformed variable raises ``ConfigurationError`` naming it, what was
expected and what was found."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeVar

import orjson

from tradeflow.adapters.memory.paper import DEFAULT_BALANCES, PaperExchange, PaperLedger
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.egress import SecretHosts
from tradeflow.domain.errors import ConfigurationError
from tradeflow.domain.limits import ID_PATTERN
from tradeflow.domain.ownership import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_TAKEOVERS
from tradeflow.ports import PriceFeed

__all__ = [
    "ENVIRONMENTS",
    "CliSettings",
    "ServiceSettings",
    "Settings",
    "TlsFiles",
    "default_sqlite_path",
]

ENVIRONMENTS = ("development", "test", "production")
SERVICE_PORTS: Final = {"executor": 50051, "emergency": 50052, "state": 50053}
"""Default gRPC port of each service; its metrics port is 1000 higher."""

N = TypeVar("N", int, float)
_LEASE_MIN_SECONDS: Final = 0.1
_LEASE_MAX_SECONDS: Final = 3600.0
"""The state service's bounds on a lease's ttl."""


def default_sqlite_path() -> Path:
    """``$XDG_STATE_HOME/tradeflow/tradeflow.db`` (``~/.local/state/...``): one file per
    user, so ``tradeflow halt`` in any shell reaches bots started in any directory."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tradeflow" / "tradeflow.db"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """``TRADEFLOW_TLS_CA``, ``TRADEFLOW_TLS_CERT``, ``TRADEFLOW_TLS_KEY``: PEM files of
    the CA every tradeflow certificate is checked against, and of this process's own
    certificate and key (its principal is the certificate's URI SAN,
    ``spiffe://tradeflow/<role>/<name>``). gRPC servers and clients use them for mutual
    TLS; NATS and Redis too when their URL asks for TLS (``tls://``, ``rediss://``)."""

    ca: str
    cert: str
    key: str

    @classmethod
    def from_env(cls, e: Mapping[str, str]) -> TlsFiles | None:
        """The three paths, or ``None`` when none is set; some but not all is an error."""
        names = ("TRADEFLOW_TLS_CA", "TRADEFLOW_TLS_CERT", "TRADEFLOW_TLS_KEY")
        paths = [e.get(name) or None for name in names]
        if not any(paths):
            return None
        missing = [name for name, path in zip(names, paths, strict=True) if path is None]
        if missing:
            raise ConfigurationError(
                f"{', '.join(missing)} must be set too: TLS needs a CA, a certificate and a key"
            )
        ca, cert, key = (str(path) for path in paths)
        return cls(ca, cert, key)


def _plaintext(e: Mapping[str, str], tls: TlsFiles | None) -> bool:
    """``TRADEFLOW_GRPC_PLAINTEXT``: ``true`` chooses gRPC without TLS, hence without any
    authentication (local development only); it cannot be combined with TLS files."""
    plaintext = _flag(e, "TRADEFLOW_GRPC_PLAINTEXT", False)
    if plaintext and tls is not None:
        raise ConfigurationError(
            "TRADEFLOW_GRPC_PLAINTEXT=true and TRADEFLOW_TLS_* are both set: choose one"
        )
    return plaintext


def _flag(e: Mapping[str, str], key: str, default: bool) -> bool:
    raw = e.get(key)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false", "1", "0"):
        raise ConfigurationError(f"{key} must be true or false, found {raw!r}")
    return raw.lower() in ("true", "1")


def _names(e: Mapping[str, str], key: str, default: str = "") -> tuple[str, ...]:
    """A comma-separated list (blanks dropped)."""
    return tuple(part.strip() for part in e.get(key, default).split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of an infrastructure; :meth:`from_env` reads ``TRADEFLOW_*``."""

    sqlite_path: str = field(default_factory=lambda: str(default_sqlite_path()))
    """``TRADEFLOW_SQLITE_PATH``: the embedded state file (``:memory:`` for none)."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """``TRADEFLOW_SQLITE_SYNCHRONOUS``: NORMAL survives a process crash; FULL also
    survives power loss, at ~200 us instead of ~11 us per commit."""
    prices_file: str | None = None
    """``TRADEFLOW_PRICES_FILE``: JSON ticks replayed by ``price_feed`` nodes."""
    log_level: str = "info"
    """``TRADEFLOW_LOG_LEVEL`` (``warning`` in test)."""
    log_json: bool = False
    """``TRADEFLOW_LOG_FORMAT=json`` (default in production) or ``console``."""
    event_buffer: int = 10_000
    """Events buffered per slow subscriber before the oldest are dropped."""
    emergency_address: str = "127.0.0.1:50052"
    """``TRADEFLOW_EMERGENCY_ADDR``."""
    state_address: str = "127.0.0.1:50053"
    """``TRADEFLOW_STATE_ADDR``."""
    nats_url: str = field(default="nats://127.0.0.1:4222", repr=False)
    """``TRADEFLOW_NATS_URL`` (left out of ``repr``: it may hold a password)."""
    nats_event_subjects: bool = False
    """``TRADEFLOW_NATS_EVENT_SUBJECTS=true``: publish each workflow event on its own
    contract subject (``tradeflow.v1.events.<bot>.<strategy>.<workflow>.<type>``) instead
    of one batch message per send on ``tradeflow.v1.batches.<bot>.<strategy>.<workflow>.batch``
    (fewer messages: the default)."""
    emergency_max_staleness: float = 0.75
    """``TRADEFLOW_EMERGENCY_MAX_STALENESS``: in production, how old (seconds) the last
    snapshot or heartbeat from the emergency service may be before this process treats
    every scope as ``CANCEL_ONLY`` (fail closed). Keep it a few times the service's
    ``TRADEFLOW_EMERGENCY_HEARTBEAT``: 0.75 s with the 0.25 s heartbeat bounds the time
    trading runs on an emergency state nobody confirms to under 1 s."""
    paper_balances: dict[str, float] | None = None
    """``TRADEFLOW_PAPER_BALANCES``: starting balances of each paper venue, as a JSON
    object (e.g. ``{"USDT": 50000, "BTC": 1}``); the paper exchange's defaults if unset."""
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    """``TRADEFLOW_REDIS_URL`` (left out of ``repr``: it may hold a password): in
    production, where the paper exchange's ledger lives (shared by every replica, so an
    order is placed once whoever places it)."""
    redis_prefix: str = "tradeflow"
    """``TRADEFLOW_REDIS_PREFIX``: namespace of the paper ledger's Redis keys."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """``TRADEFLOW_LEASE_SECONDS``: how long this process's lease on its executions lives
    without a heartbeat (renewed every third of it). A killed owner's executions are
    taken over after at most this long."""
    takeover_interval: float = 0.5
    """``TRADEFLOW_TAKEOVER_INTERVAL``: how often an executor replica looks for orphans."""
    max_takeovers: int = DEFAULT_MAX_TAKEOVERS
    """``TRADEFLOW_MAX_TAKEOVERS``: an execution whose owner died more often than this is
    ended ``failed`` (quarantined) instead of being taken over again."""
    trigger_interval: float = 1.0
    """``TRADEFLOW_TRIGGER_INTERVAL``: seconds between evaluations of the loss triggers and
    dead-man's switches (embedded: in every process of the infrastructure; with services:
    in the emergency service). A trigger's ``consecutive`` counts these evaluations."""
    node_modules: tuple[str, ...] = ()
    """``TRADEFLOW_NODE_MODULES``: comma-separated modules imported at start, which
    register custom node types (every replica must know every type it may take over);
    entry points of group ``tradeflow.nodes`` are loaded too."""

    retention_days: float = 7.0
    """``TRADEFLOW_RETENTION_DAYS``: executions that ended longer ago than this are pruned
    (with their checkpoints and events; never a running or interrupted one, one with an
    unresolved intent, or the audit log); 0 keeps everything."""
    retention_interval: float = 600.0
    """``TRADEFLOW_RETENTION_INTERVAL``: seconds between automatic prunes (the first runs
    at start)."""

    tls: TlsFiles | None = None
    """``TRADEFLOW_TLS_*``: this process's identity toward the services (see :class:`TlsFiles`)."""
    grpc_plaintext: bool = False
    """``TRADEFLOW_GRPC_PLAINTEXT``: talk to the services without TLS (local development)."""
    egress_allow: tuple[str, ...] = ()
    """``TRADEFLOW_EGRESS_ALLOW``: comma-separated hosts (``host`` or ``host:port``) an
    ``api_call`` may reach even though they resolve to a loopback, private or link-local
    address (everything else public is allowed; such addresses are refused by default)."""
    secrets_dir: str | None = None
    """``TRADEFLOW_SECRETS_DIR``: a directory of mounted secret files; ``{"secret": "NAME"}``
    in an ``api_call`` is read from the file ``NAME`` there, else from the environment
    variable ``TRADEFLOW_SECRET_NAME``."""
    secret_hosts: SecretHosts = field(default_factory=SecretHosts)
    """``TRADEFLOW_SECRET_HOSTS``: the hosts each secret may be sent to, comma-separated
    ``NAME=host|host`` entries (e.g. ``BINANCE_KEY=api.binance.com|testnet.binance.vision``);
    a secret bound to no host is sent nowhere."""

    @classmethod
    def from_env(cls, env: str, environ: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if environ is None else environ
        synchronous = e.get("TRADEFLOW_SQLITE_SYNCHRONOUS", "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f"TRADEFLOW_SQLITE_SYNCHRONOUS must be NORMAL or FULL, found {synchronous!r}"
            )
        log_format = e.get("TRADEFLOW_LOG_FORMAT", "json" if env == "production" else "console")
        if log_format not in ("json", "console"):
            raise ConfigurationError(
                f"TRADEFLOW_LOG_FORMAT must be json or console, found {log_format!r}"
            )
        default_path = ":memory:" if env == "test" else str(default_sqlite_path())
        defaults = cls()
        lease = _number(e, "TRADEFLOW_LEASE_SECONDS", defaults.lease_seconds, positive=True)
        if not _LEASE_MIN_SECONDS <= lease <= _LEASE_MAX_SECONDS:
            raise ConfigurationError(
                f"TRADEFLOW_LEASE_SECONDS must be between {_LEASE_MIN_SECONDS} and "
                f"{_LEASE_MAX_SECONDS}, found {lease!r}"
            )
        return cls(
            sqlite_path=e.get("TRADEFLOW_SQLITE_PATH", default_path),
            sqlite_synchronous="FULL" if synchronous == "FULL" else "NORMAL",
            prices_file=e.get("TRADEFLOW_PRICES_FILE") or None,
            log_level=e.get("TRADEFLOW_LOG_LEVEL", "warning" if env == "test" else "info"),
            log_json=log_format == "json",
            emergency_address=e.get("TRADEFLOW_EMERGENCY_ADDR", defaults.emergency_address),
            state_address=e.get("TRADEFLOW_STATE_ADDR", defaults.state_address),
            nats_url=e.get("TRADEFLOW_NATS_URL", defaults.nats_url),
            nats_event_subjects=_flag(
                e, "TRADEFLOW_NATS_EVENT_SUBJECTS", defaults.nats_event_subjects
            ),
            emergency_max_staleness=_number(
                e,
                "TRADEFLOW_EMERGENCY_MAX_STALENESS",
                defaults.emergency_max_staleness,
                positive=True,
            ),
            paper_balances=_balances(e.get("TRADEFLOW_PAPER_BALANCES")),
            redis_url=e.get("TRADEFLOW_REDIS_URL", defaults.redis_url),
            redis_prefix=e.get("TRADEFLOW_REDIS_PREFIX") or defaults.redis_prefix,
            lease_seconds=lease,
            takeover_interval=_number(
                e, "TRADEFLOW_TAKEOVER_INTERVAL", defaults.takeover_interval, positive=True
            ),
            max_takeovers=_number(e, "TRADEFLOW_MAX_TAKEOVERS", defaults.max_takeovers),
            trigger_interval=_number(
                e, "TRADEFLOW_TRIGGER_INTERVAL", defaults.trigger_interval, positive=True
            ),
            node_modules=_names(e, "TRADEFLOW_NODE_MODULES"),
            retention_days=_retention_days(e, defaults.retention_days),
            retention_interval=_number(
                e, "TRADEFLOW_RETENTION_INTERVAL", defaults.retention_interval, positive=True
            ),
            tls=(tls := TlsFiles.from_env(e)),
            grpc_plaintext=_plaintext(e, tls),
            egress_allow=_names(e, "TRADEFLOW_EGRESS_ALLOW"),
            secrets_dir=e.get("TRADEFLOW_SECRETS_DIR") or None,
            secret_hosts=SecretHosts.parse(_names(e, "TRADEFLOW_SECRET_HOSTS")),
        )

    def price_feed(self, clock: Clock) -> ReplayPriceFeed:
        """The replayed prices these settings describe (a file, or the synthetic series)."""
        if self.prices_file:
            return ReplayPriceFeed.from_file(self.prices_file, clock=clock)
        return ReplayPriceFeed(clock=clock)

    def paper_exchange(
        self, prices: PriceFeed, *, clock: Clock, ids: IdFactory, ledger: PaperLedger | None = None
    ) -> PaperExchange:
        """The paper exchange these settings describe."""
        balances = DEFAULT_BALANCES if self.paper_balances is None else self.paper_balances
        return PaperExchange(
            prices, default_balances=balances, ledger=ledger, clock=clock, id_factory=ids
        )


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Configuration of ``python -m <name>_service``; every service validates every
    variable, as the three share one deployment configuration."""

    name: str
    """``executor``, ``emergency`` or ``state``."""
    listen: str
    """``TRADEFLOW_<NAME>_ADDR``: host:port the gRPC server binds (``127.0.0.1:<port>``
    by default, ports in :data:`SERVICE_PORTS`)."""
    metrics_port: int
    """``TRADEFLOW_<NAME>_METRICS_PORT``: Prometheus ``/metrics`` over HTTP (0: off)."""
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    """``TRADEFLOW_REDIS_URL`` (left out of ``repr``: it may hold a password)."""
    nats_url: str = field(default="nats://127.0.0.1:4222", repr=False)
    """``TRADEFLOW_NATS_URL`` (left out of ``repr``: it may hold a password)."""
    grace_seconds: float = 10.0
    """``TRADEFLOW_SHUTDOWN_GRACE``: how long SIGTERM waits for in-flight calls."""
    log_level: str = "info"
    """``TRADEFLOW_LOG_LEVEL``."""
    log_json: bool = True
    """``TRADEFLOW_LOG_FORMAT`` (json unless ``console``)."""
    redis_prefix: str = "tradeflow"
    """``TRADEFLOW_REDIS_PREFIX``: namespace of every Redis key the emergency and state
    services write."""
    heartbeat_seconds: float = 0.25
    """``TRADEFLOW_EMERGENCY_HEARTBEAT``: an idle ``WatchState`` stream resends the
    current snapshot this often, so watchers can tell a quiet state from a dead link
    (executors fail closed after ``TRADEFLOW_EMERGENCY_MAX_STALENESS``, 0.75 s, without one)."""
    halt_ack_timeout: float = 0.5
    """``TRADEFLOW_HALT_ACK_TIMEOUT``: the halt barrier's deadline, in seconds: a live
    executor that has not acknowledged a halt's state version by then loses its lease
    (fenced), and ``Halt`` returns."""
    trigger_interval: float = 1.0
    """``TRADEFLOW_TRIGGER_INTERVAL``: seconds between the emergency service's evaluations
    of loss triggers and dead-man's switches."""
    request_ttl_seconds: float = 3600.0
    """``TRADEFLOW_EMERGENCY_REQUEST_TTL``: how long the answer to a mutating request is
    kept by its ``request_id``; a retry within it is answered without acting twice."""
    max_events: int | None = None
    """``TRADEFLOW_STATE_MAX_EVENTS``: approximate cap on the state service's stream of
    every event (unset: keep all). Each execution's own history is never trimmed."""
    retention_days: float = 7.0
    """``TRADEFLOW_RETENTION_DAYS``: executions that ended longer ago than this are pruned
    (with their checkpoints and events; never a running or interrupted one, one with an
    unresolved intent, or the audit log); 0 keeps everything."""
    retention_interval: float = 600.0
    """``TRADEFLOW_RETENTION_INTERVAL``: seconds between automatic prunes (the first runs
    at start)."""
    tls: TlsFiles | None = None
    """``TRADEFLOW_TLS_*``: the service's certificate (its server identity and, toward the
    other services, its principal) and the CA its callers' certificates must chain to."""
    grpc_plaintext: bool = False
    """``TRADEFLOW_GRPC_PLAINTEXT=true``: serve without TLS and without authentication, for
    local development only. A service with neither this nor TLS files refuses to start."""
    metrics_host: str = "127.0.0.1"
    """``TRADEFLOW_METRICS_HOST``: the address ``/metrics`` binds (default: the host of
    the gRPC listen address)."""
    reflection: bool = True
    """``TRADEFLOW_GRPC_REFLECTION``: serve gRPC reflection (turn off in production)."""
    resume_confirm_scopes: tuple[str, ...] = ("global", "strategy")
    """``TRADEFLOW_RESUME_CONFIRM_SCOPES``: scopes whose resume needs a second operator
    (comma-separated of ``global``, ``strategy``, ``bot``, ``workflow``; empty: none)."""
    resume_confirm_seconds: float = 300.0
    """``TRADEFLOW_RESUME_CONFIRM_SECONDS``: how long a resume request waits for the
    second operator's confirmation."""
    bot_strategies: Mapping[str, str] = field(default_factory=dict)
    """``TRADEFLOW_BOT_STRATEGIES``: ``bot=strategy`` pairs, comma-separated: the executor
    service runs such a bot's workflows only under its strategy (a strategy halt or limit
    cannot be escaped by naming another or none)."""

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        e = os.environ if environ is None else environ
        var, port = f"TRADEFLOW_{name.upper()}", SERVICE_PORTS[name]
        defaults = cls(name, "", 0)
        redis_prefix = e.get("TRADEFLOW_REDIS_PREFIX", defaults.redis_prefix)
        if not redis_prefix:
            raise ConfigurationError("TRADEFLOW_REDIS_PREFIX must not be empty")
        listen = e.get(f"{var}_ADDR", f"127.0.0.1:{port}")
        return cls(
            name=name,
            listen=listen,
            metrics_port=_number(e, f"{var}_METRICS_PORT", port + 1000),
            redis_url=e.get("TRADEFLOW_REDIS_URL", defaults.redis_url),
            nats_url=e.get("TRADEFLOW_NATS_URL", defaults.nats_url),
            grace_seconds=_number(e, "TRADEFLOW_SHUTDOWN_GRACE", defaults.grace_seconds),
            log_level=e.get("TRADEFLOW_LOG_LEVEL", defaults.log_level),
            log_json=e.get("TRADEFLOW_LOG_FORMAT", "json") != "console",
            redis_prefix=redis_prefix,
            heartbeat_seconds=_number(
                e, "TRADEFLOW_EMERGENCY_HEARTBEAT", defaults.heartbeat_seconds, positive=True
            ),
            halt_ack_timeout=_number(
                e, "TRADEFLOW_HALT_ACK_TIMEOUT", defaults.halt_ack_timeout, positive=True
            ),
            trigger_interval=_number(
                e, "TRADEFLOW_TRIGGER_INTERVAL", defaults.trigger_interval, positive=True
            ),
            request_ttl_seconds=_number(
                e, "TRADEFLOW_EMERGENCY_REQUEST_TTL", defaults.request_ttl_seconds, positive=True
            ),
            # 0 stands for unset: a value read is > 0.
            max_events=_number(e, "TRADEFLOW_STATE_MAX_EVENTS", 0, positive=True) or None,
            retention_days=_retention_days(e, defaults.retention_days),
            retention_interval=_number(
                e, "TRADEFLOW_RETENTION_INTERVAL", defaults.retention_interval, positive=True
            ),
            tls=(tls := TlsFiles.from_env(e)),
            grpc_plaintext=_plaintext(e, tls),
            metrics_host=e.get("TRADEFLOW_METRICS_HOST") or _host_of(listen),
            reflection=_flag(e, "TRADEFLOW_GRPC_REFLECTION", defaults.reflection),
            resume_confirm_scopes=_scopes(e),
            resume_confirm_seconds=_number(
                e,
                "TRADEFLOW_RESUME_CONFIRM_SECONDS",
                defaults.resume_confirm_seconds,
                positive=True,
            ),
            bot_strategies=_pairs(e, "TRADEFLOW_BOT_STRATEGIES"),
        )


@dataclass(frozen=True, slots=True)
class CliSettings:
    """What the ``tradeflow`` command reads before it knows its environment."""

    env: str = "development"
    """``TRADEFLOW_ENV``: the default of ``--env``."""
    log_json: bool = False
    """``TRADEFLOW_LOG_FORMAT=json``; console otherwise."""
    log_level: str = "warning"
    """``TRADEFLOW_LOG_LEVEL``: the progress lines are the interface, logs stay quiet
    unless asked for."""
    debug: bool = False
    """``TRADEFLOW_DEBUG`` (non-empty): internal errors raise with their traceback."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CliSettings:
        e = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            env=e.get("TRADEFLOW_ENV", defaults.env),
            log_json=e.get("TRADEFLOW_LOG_FORMAT") == "json",
            log_level=e.get("TRADEFLOW_LOG_LEVEL", defaults.log_level),
            debug=bool(e.get("TRADEFLOW_DEBUG")),
        )


def _number(e: Mapping[str, str], key: str, default: N, *, positive: bool = False) -> N:
    """``e[key]`` read as the type of ``default``; an integer is ASCII digits only."""
    raw = e.get(key)
    if raw is None:
        return default
    kind = type(default)
    expected = ("an integer" if kind is int else "a number") + (" > 0" if positive else "")
    try:
        value = kind(raw) if kind is float or (raw.isascii() and raw.isdigit()) else None
    except ValueError:
        value = None
    if value is None or (positive and not 0 < value < float("inf")):
        raise ConfigurationError(f"{key} must be {expected}, found {raw!r}")
    return value


def _retention_days(e: Mapping[str, str], default: float) -> float:
    days = _number(e, "TRADEFLOW_RETENTION_DAYS", default)
    if not 0 <= days < float("inf"):
        raise ConfigurationError(
            f"TRADEFLOW_RETENTION_DAYS must be a number >= 0 (0 keeps everything), found {days!r}"
        )
    return days


def _balances(raw: str | None) -> dict[str, float] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigurationError(
            f"TRADEFLOW_PAPER_BALANCES must be a JSON object of asset -> amount, found {raw!r}"
        )
    return {k: float(v) for k, v in value.items()}


_CONFIRMABLE_SCOPES: Final = ("global", "strategy", "bot", "workflow")


def _scopes(e: Mapping[str, str]) -> tuple[str, ...]:
    scopes = _names(e, "TRADEFLOW_RESUME_CONFIRM_SCOPES", "global,strategy")
    bad = [scope for scope in scopes if scope not in _CONFIRMABLE_SCOPES]
    if bad:
        raise ConfigurationError(
            f"TRADEFLOW_RESUME_CONFIRM_SCOPES must name scopes of {_CONFIRMABLE_SCOPES}, "
            f"found {bad}"
        )
    return scopes


def _host_of(listen: str) -> str:
    """The host of ``host:port`` (``[::1]:50051`` -> ``::1``; ``:50051`` -> ``0.0.0.0``)."""
    host = listen.rpartition(":")[0].strip("[]")
    return host or "0.0.0.0"


def _pairs(e: Mapping[str, str], key: str) -> dict[str, str]:
    """``a=x,b=y`` as ``{"a": "x", "b": "y"}``, each side a well-formed id."""
    pairs = {}
    for item in _names(e, key):
        left, sep, right = (part.strip() for part in item.partition("="))
        if not (sep and ID_PATTERN.fullmatch(left) and ID_PATTERN.fullmatch(right)):
            raise ConfigurationError(f"{key} must be id=id pairs, comma-separated, found {item!r}")
        pairs[left] = right
    return pairs
