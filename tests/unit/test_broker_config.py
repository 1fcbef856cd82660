"""deploy/ runs the brokers' users exactly as tradeflow.app.brokers renders them, each
service connects as its own user with its own password, and every Redis command an
adapter sends is granted to the users that run it. Nothing is run or contacted (the
servers are started on the same text in tests/integration/test_broker_acls.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

import tradeflow.adapters.redis as redis_adapters
from tradeflow.adapters.redis import ledger as paper_ledger
from tradeflow.adapters.redis import state as state_store
from tradeflow.adapters.tls import redact_url
from tradeflow.app.brokers import (
    REDIS_ACL_SCRIPT,
    REDIS_COMMANDS,
    main,
    nats_authorization,
    nats_password_variable,
    nats_users,
    redis_acl,
    redis_users,
)
from tradeflow.domain.errors import ConfigurationError

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
PASSWORDS_SECRET = "tradeflow-broker-passwords"


def _resource(kind: str, name: str) -> dict[str, Any]:
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return dict(doc)
    raise AssertionError(f"no {kind} {name} in {K8S}")


def _pod(kind: str, name: str) -> dict[str, Any]:
    return dict(_resource(kind, name)["spec"]["template"]["spec"])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def _secret_key(variable: dict[str, Any]) -> tuple[str, str]:
    ref = variable["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_nats_runs_the_rendered_users_with_quoted_passwords_from_the_secret() -> None:
    """nats.conf holds the authorization block as rendered; each user's password variable
    is the Secret's key, quoted (NATS parses a variable's value)."""
    conf = _resource("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert nats_authorization() in conf
    assert "verify: true" in conf
    env = _env(_pod("StatefulSet", "nats")["containers"][0])
    for user in nats_users():
        variable = nats_password_variable(user.name)
        assert env[variable]["value"] == f'"$({variable}_SECRET)"'
        assert _secret_key(env[f"{variable}_SECRET"]) == (PASSWORDS_SECRET, f"nats-{user.name}")


def test_redis_loads_the_rendered_acl_through_the_init_script() -> None:
    """The ACL rules are the rendered text, the init container runs the script on them
    and the password files, and Redis loads its output on TLS only."""
    assert _resource("ConfigMap", "redis-acl")["data"]["users.acl"] == redis_acl()
    pod = _pod("StatefulSet", "redis")
    (init,) = pod["initContainers"]
    rules, passwords, out = init["command"][4:]
    assert init["command"][:4] == ["sh", "-c", REDIS_ACL_SCRIPT, "render"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert (rules, passwords, out) == (
        f"{mounts['acl-rules']}/users.acl",
        mounts["passwords"],
        f"{mounts['acl']}/users.acl",
    )
    args = pod["containers"][0]["args"]
    assert args[args.index("--aclfile") + 1] == out
    assert args[args.index("--port") + 1] == "0"
    assert args[args.index("--tls-auth-clients") + 1] == "yes"
    volumes = {v["name"]: v for v in pod["volumes"]}
    served = {item["key"] for item in volumes["passwords"]["secret"]["items"]}
    assert served == {f"redis-{u.name}" for u in redis_users() if u.name != "probe"}


@pytest.mark.parametrize(
    ("service", "brokers"),
    [("executor", ("nats", "redis")), ("emergency", ("nats", "redis")), ("state", ("redis",))],
)
def test_each_service_connects_as_its_own_user_over_tls(
    service: str, brokers: tuple[str, ...]
) -> None:
    """A service's broker URLs name its own user, with the password of its own key of the
    Secret, on TLS; the shared ConfigMap holds no broker URL."""
    env = _env(_pod("Deployment", service)["containers"][0])
    schemes = {"nats": "tls", "redis": "rediss"}
    users = {"nats": {u.name for u in nats_users()}, "redis": {u.name for u in redis_users()}}
    for broker in ("nats", "redis"):
        url = env.get(f"TRADEFLOW_{broker.upper()}_URL")
        if broker not in brokers:
            assert url is None
            continue
        assert url is not None and service in users[broker]
        password = f"{broker.upper()}_PASSWORD"
        assert url["value"].startswith(f"{schemes[broker]}://{service}:$({password})@")
        assert _secret_key(env[password]) == (PASSWORDS_SECRET, f"{broker}-{service}")
    shared = _resource("ConfigMap", "tradeflow-config")["data"]
    assert not {"TRADEFLOW_NATS_URL", "TRADEFLOW_REDIS_URL"} & set(shared)


_LUA_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'")
_CLIENT_CALL = re.compile(r"\b(?:self\._client|client|pipe|pubsub)\.(\w+)\b")
_PYTHON_COMMANDS = {
    "delete": ("del",),
    "register_script": REDIS_COMMANDS["scripts"],
    "script_load": ("script|load",),
    # Not commands: a pipeline sends what it holds, a pubsub object subscribes.
    "pipeline": (),
    "execute": (),
    "pubsub": (),
    "get_message": (),
    "aclose": (),
    "connection_pool": (),
}


def _commands_of(module: str) -> set[str]:
    source = (Path(redis_adapters.__file__).parent / f"{module}.py").read_text()
    found = {name.lower() for name in _LUA_CALL.findall(source)}
    for method in _CLIENT_CALL.findall(source):
        found.update(_PYTHON_COMMANDS.get(method, (method,)))
    return found


@pytest.mark.parametrize("module", ["state", "emergency", "ledger"])
def test_every_command_an_adapter_sends_is_granted(module: str) -> None:
    """The commands in a Redis adapter's scripts and calls are all in its group (so in
    every user that runs it)."""
    granted = set(REDIS_COMMANDS[module]) | set(REDIS_COMMANDS["scripts"])
    assert _commands_of(module) - granted == set()


def test_the_halt_barrier_is_granted_what_it_runs_of_the_state_store() -> None:
    """The emergency service lists and revokes leases with the state store's scripts."""
    scripts = state_store._LIVE + state_store._RELEASE
    assert {name.lower() for name in _LUA_CALL.findall(scripts)} <= set(REDIS_COMMANDS["leases"])


def test_reading_scope_books_is_granted_what_the_script_runs() -> None:
    """The emergency service reads scope books (its loss triggers) with the ledger's
    scope book script, run read-only: its commands are in the ``books`` group, and the
    emergency user reads those keys only."""
    commands = {name.lower() for name in _LUA_CALL.findall(paper_ledger._SCOPE_BOOK)}
    assert commands | {"evalsha_ro"} <= set(REDIS_COMMANDS["books"])
    emergency = next(user for user in redis_users() if user.name == "emergency")
    assert "books" in emergency.commands
    assert not [key for key in emergency.keys if ":paper:" in key]
    assert {key.rsplit(":", 1)[-1] for key in emergency.read_keys} >= {"realized", "marks"}


def test_only_the_provisioner_may_change_the_stream_and_inboxes_are_per_user() -> None:
    """No runtime user may create, update, delete or purge the stream or delete a
    consumer; the provisioner may create and update it and nothing else. Each user
    subscribes to its own inbox subjects only."""
    changes = ("STREAM.CREATE", "STREAM.UPDATE", "STREAM.DELETE", "STREAM.PURGE", "MSG.DELETE")
    for user in nats_users():
        granted = [s for s in user.publish if any(c in s for c in (*changes, "CONSUMER.DELETE"))]
        if user.name == "provisioner":
            assert sorted(granted) == [
                "$JS.API.STREAM.CREATE.TRADEFLOW_EVENTS",
                "$JS.API.STREAM.UPDATE.TRADEFLOW_EVENTS",
            ]
            assert all(s.startswith("$JS.API.STREAM.") for s in user.publish)
        else:
            assert granted == [], user.name
        inboxes = [s for s in user.subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"_INBOX_{user.name}.>"]


def test_the_stream_job_provisions_as_the_provisioner_over_tls() -> None:
    """deploy's Job nats-stream runs this module as ``provisioner`` with its own
    password, over TLS with a certificate of its own, and may reach NATS."""
    pod = _pod("Job", "nats-stream")
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "tradeflow.app.brokers"]
    env = _env(container)
    url = env["TRADEFLOW_NATS_URL"]["value"]
    assert url.startswith("tls://provisioner:$(NATS_PASSWORD)@nats.")
    assert _secret_key(env["NATS_PASSWORD"]) == (PASSWORDS_SECRET, "nats-provisioner")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {
        env[f"TRADEFLOW_TLS_{part}"]["value"].rpartition("/")[0] for part in ("CA", "CERT", "KEY")
    } == {mounts["tls"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "tradeflow-provisioner-tls"
    labels = _resource("Job", "nats-stream")["spec"]["template"]["metadata"]["labels"]
    egress = _resource("NetworkPolicy", "nats-stream")["spec"]
    assert egress["podSelector"]["matchLabels"].items() <= labels.items()
    assert egress["egress"][0]["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "nats"
    }


def test_provisioning_needs_a_nats_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main({}) == 1
    assert "TRADEFLOW_NATS_URL" in capsys.readouterr().err


def test_redis_users_refuse_a_prefix_that_is_a_pattern() -> None:
    with pytest.raises(ConfigurationError, match="TRADEFLOW_REDIS_PREFIX"):
        redis_users("trade*")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("tls://executor:s3cret@nats:4222", "tls://executor:***@nats:4222"),
        ("rediss://state:p@ss@redis:6379/0", "rediss://state:***@redis:6379/0"),
        ("nats://TOKEN@nats:4222", "nats://***@nats:4222"),
        ("nats://a:x@n1:4222,nats://b:y@n2:4222", "nats://a:***@n1:4222,nats://b:***@n2:4222"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
