"""Principals, the access rules' building blocks and the security settings, without a
network (the services' policies over real TLS are in tests/integration/test_security.py)."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeflow.adapters.grpc.security import Refusal, Rule, TransportSecurity, own
from tradeflow.app.certs import Authority
from tradeflow.app.remote import transport_security
from tradeflow.app.settings import ServiceSettings, Settings, TlsFiles
from tradeflow.domain.errors import ConfigurationError, InvalidRequest
from tradeflow.domain.limits import ACTOR_MAX_LENGTH
from tradeflow.domain.principals import (
    CALLER,
    SYSTEM,
    Caller,
    Principal,
    Role,
    attributed,
    current_caller,
)
from tradeflow.domain.records import AuditEntry

_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,118}", fullmatch=True)
_ROLES = st.sampled_from([Role.BOT, Role.OPERATOR, Role.ADMIN, Role.EXECUTOR])


@given(_ROLES, _NAMES)
def test_a_principal_round_trips_through_its_uri(role: Role, name: str) -> None:
    principal = Principal(role, name)
    assert Principal.parse(principal.uri) == principal
    assert str(principal) == f"{role.value}/{name}"
    assert len(str(principal)) <= ACTOR_MAX_LENGTH  # it is the actor of its changes


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://tradeflow/system/tradeflow",  # not a certificate's role
        "spiffe://tradeflow/root/alice",
        "spiffe://tradeflow/operator/",
        "spiffe://tradeflow/operator/a/b",
        "spiffe://other/operator/alice",
        "spiffe://tradeflow/operator/" + "a" * 120,  # operator/<120> is longer than an actor
        "operator/alice",
        "",
    ],
)
def test_a_uri_naming_no_principal_is_refused_naming_the_expected_form(uri: str) -> None:
    expected = re.escape("spiffe://tradeflow/<bot|operator|admin|executor>/<name>")
    with pytest.raises(InvalidRequest, match=expected):
        Principal.parse(uri)


def test_a_rule_admits_its_roles_and_checks_bound_roles_only() -> None:
    rule = Rule(
        frozenset({Role.BOT, Role.OPERATOR}),
        request=own(lambda message: message.get("bot_id"), "bot_id"),
    )
    bot, operator = Caller(Principal(Role.BOT, "b1")), Caller(Principal(Role.OPERATOR, "o"))
    admin = Caller(Principal(Role.ADMIN, "a"))
    rule.admit(bot, "Run")
    rule.admit(operator, "Run")
    with pytest.raises(Refusal, match=r"admin/a may not call Run \(allowed: bot, operator\)") as no:
        rule.admit(admin, "Run")
    assert no.value.code is grpc.StatusCode.PERMISSION_DENIED
    rule.check(rule.request, {"bot_id": "b1"}, bot, "Run")
    rule.check(rule.request, {"bot_id": "anyone"}, operator, "Run")  # operators are not bound
    for forged in ({"bot_id": "b1-alias"}, {}):
        with pytest.raises(Refusal, match="bot_id must be the caller's own") as refused:
            rule.check(rule.request, forged, bot, "Run")
        assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_audit_entries_carry_the_bound_caller() -> None:
    entry = AuditEntry(0, 1.0, "x", "halt", None, None, "why", {"k": 1})
    assert current_caller() is SYSTEM
    assert attributed(entry).details == {
        "k": 1,
        "principal": "system/tradeflow",
        "role": "system",
        "peer": "",
    }
    token = CALLER.set(Caller(Principal(Role.OPERATOR, "alice"), "ipv4:10.0.0.7:5000"))
    try:
        entry = attributed(entry)
    finally:
        CALLER.reset(token)
    assert (entry.principal, entry.role, entry.peer) == (
        "operator/alice",
        "operator",
        "ipv4:10.0.0.7:5000",
    )


def test_tls_settings_need_all_three_files_and_exclude_plaintext() -> None:
    assert Settings.from_env("production", {}).tls is None
    files = {"TRADEFLOW_TLS_CA": "ca", "TRADEFLOW_TLS_CERT": "c", "TRADEFLOW_TLS_KEY": "k"}
    assert Settings.from_env("production", files).tls == TlsFiles("ca", "c", "k")
    with pytest.raises(ConfigurationError, match="TRADEFLOW_TLS_KEY must be set too"):
        Settings.from_env("production", {**files, "TRADEFLOW_TLS_KEY": ""})
    with pytest.raises(ConfigurationError, match="choose one"):
        ServiceSettings.from_env("state", {**files, "TRADEFLOW_GRPC_PLAINTEXT": "true"})
    with pytest.raises(ConfigurationError, match="TRADEFLOW_GRPC_PLAINTEXT must be true or false"):
        ServiceSettings.from_env("state", {"TRADEFLOW_GRPC_PLAINTEXT": "yes please"})


def test_service_edges_settings() -> None:
    default = ServiceSettings.from_env("executor", {"TRADEFLOW_EXECUTOR_ADDR": "[::]:7000"})
    assert (default.metrics_host, default.reflection) == ("::", True)
    assert default.resume_confirm_scopes == ("global", "strategy")
    chosen = ServiceSettings.from_env(
        "executor",
        {
            "TRADEFLOW_METRICS_HOST": "10.1.2.3",
            "TRADEFLOW_GRPC_REFLECTION": "false",
            "TRADEFLOW_RESUME_CONFIRM_SCOPES": "",
        },
    )
    assert (chosen.metrics_host, chosen.reflection, chosen.resume_confirm_scopes) == (
        "10.1.2.3",
        False,
        (),
    )
    with pytest.raises(ConfigurationError, match="TRADEFLOW_RESUME_CONFIRM_SCOPES must name"):
        ServiceSettings.from_env("executor", {"TRADEFLOW_RESUME_CONFIRM_SCOPES": "global,planet"})


def test_neither_tls_nor_plaintext_is_refused_and_unreadable_files_are_named(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match="set TRADEFLOW_TLS_CA, TRADEFLOW_TLS_CERT"):
        transport_security(None, plaintext=False)
    assert transport_security(None, plaintext=True).plaintext
    missing = TlsFiles(str(tmp_path / "ca.crt"), "c", "k")
    with pytest.raises(ConfigurationError, match=r"TRADEFLOW_TLS_CA: cannot read .*ca\.crt"):
        transport_security(missing, plaintext=False)
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="is not a PEM file"):
        transport_security(missing, plaintext=False)
    authority = Authority()
    cert, key = authority.issue(Principal(Role.BOT, "b")).write(tmp_path, "bot")
    (tmp_path / "ca.crt").write_bytes(authority.cert_pem)
    security = transport_security(TlsFiles(str(tmp_path / "ca.crt"), str(cert), str(key)), False)
    assert isinstance(security, TransportSecurity) and not security.plaintext
    assert oct(key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("configured_halts", "value", "auto_halt", "binding", "halts"),
    [
        # A configured limit that halts: a bot cannot waive it (binding), anyone else may.
        (True, 600.0, False, False, False),
        (True, 600.0, False, True, True),
        # A configured limit that does not halt never does.
        (False, 600.0, True, True, False),
        # Only the caller's own, stricter threshold is breached: its auto_halt decides.
        (True, 450.0, False, True, False),
        (True, 450.0, True, True, True),
    ],
)
def test_a_bound_caller_cannot_waive_a_configured_halt(
    configured_halts: bool, value: float, auto_halt: bool, binding: bool, halts: bool
) -> None:
    from tradeflow.domain.emergency import assess_limit
    from tradeflow.domain.records import LimitDirection, RiskLimit

    limit = RiskLimit("exposure", 500.0, LimitDirection.ABOVE, configured_halts, 1.0, "admin")
    verdict = assess_limit({limit.key: limit}, "exposure", value, 400.0, auto_halt, binding=binding)
    assert verdict.breached
    assert verdict.halts is halts


def test_bot_strategies_are_id_pairs() -> None:
    chosen = ServiceSettings.from_env(
        "executor", {"TRADEFLOW_BOT_STRATEGIES": "bot-1=strat-a, bot-2 = strat-b"}
    )
    assert chosen.bot_strategies == {"bot-1": "strat-a", "bot-2": "strat-b"}
    assert ServiceSettings.from_env("executor", {}).bot_strategies == {}
    for bad in ("bot-1", "bot-1=", "=strat", "bot 1=strat"):
        with pytest.raises(ConfigurationError, match="TRADEFLOW_BOT_STRATEGIES must be id=id"):
            ServiceSettings.from_env("executor", {"TRADEFLOW_BOT_STRATEGIES": bad})
