"""The deployment artefacts in deploy/: valid Kubernetes manifests that agree with each
other and with the services, alert rules and a dashboard on metrics tradeflow exports,
and a container build whose commands and sources exist. Nothing is run or contacted."""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from tradeflow.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
NAMESPACE = "tradeflow"
K8S_VERSION = "1.33.0"
SERVICES = ("executor", "emergency", "state")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

RPC_HISTOGRAM = "tradeflow_rpc_server_handled_seconds"
"""Registered by ``tradeflow.adapters.grpc.server.serve``, not by :class:`Metrics`."""

_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}

# PromQL parts that are not metric names, removed before picking identifiers out.
_PROMQL_NOISE = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings (label values)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range selectors
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
    re.compile(r"\boffset\s+\w+"),
    re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b"),  # numbers
)
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool"})


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def _resources() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in _manifests() for doc in _yaml_documents(path)]


def _find(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for _, doc in _resources() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind}/{name} in {K8S}, found {len(matches)}"
    return matches[0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container.get("env", ()) if "value" in var}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@cache
def _exported_metrics() -> frozenset[str]:
    """Sample names tradeflow exposes: every family of :class:`Metrics` plus the gRPC
    server histogram (checked to still be registered under that name)."""
    server_source = (ROOT / "tradeflow" / "adapters" / "grpc" / "server.py").read_text()
    assert f'"{RPC_HISTOGRAM}"' in server_source, f"{RPC_HISTOGRAM} is no longer registered"
    families = [(f.name, f.type) for f in Metrics().registry.collect()]
    families.append((RPC_HISTOGRAM, "histogram"))
    return frozenset(
        name + suffix for name, kind in families for suffix in _SAMPLE_SUFFIXES.get(kind, ("",))
    )


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers not called as functions)."""
    for noise in _PROMQL_NOISE:
        expr = noise.sub(" ", expr)
    return {
        match.group()
        for match in _IDENTIFIER.finditer(expr)
        if match.group() not in _PROMQL_KEYWORDS
        and not expr[match.end() :].lstrip().startswith("(")
    }


def _unknown_metrics(expr: str) -> set[str]:
    """Names read by ``expr`` other than ``up`` and the ``tradeflow_`` samples exported."""
    return {
        name
        for name in _metric_names(expr)
        if name != "up" and not (name.startswith("tradeflow_") and name in _exported_metrics())
    }


def _alert_rules() -> list[dict[str, Any]]:
    (rules_file,) = _yaml_documents(DEPLOY / "prometheus" / "alerts.yaml")
    return [rule for group in rules_file["groups"] for rule in group["rules"]]


def _dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads((DEPLOY / "grafana" / "tradeflow.json").read_text())
    return [
        (panel["title"], target) for panel in dashboard["panels"] for target in panel["targets"]
    ]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.strip().partition(" ") for line in lines)
        if not keyword.startswith("#")
    ]


def _module_of(command: list[str]) -> str:
    assert command[:2] == ["python", "-m"], f"expected `python -m <module>`, found {command}"
    return command[2]


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
        for name, doc in _resources()
    ],
)
def test_manifest_validates_strictly(resource: dict[str, Any]) -> None:
    """The resource matches the Kubernetes schema in strict mode (no unknown fields)."""
    try:
        outcome = kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        # Just the field and the reason: the full error dumps the whole schema.
        outcome = f"{'.'.join(str(part) for part in exc.path)}: {exc.message}"
    assert outcome == K8S_VERSION.rsplit(".", 1)[0]


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists each manifest of deploy/k8s exactly once and nothing else."""
    (kustomization,) = _yaml_documents(KUSTOMIZATION)
    assert sorted(kustomization["resources"]) == [path.name for path in _manifests()]
    assert kustomization["namespace"] == NAMESPACE


def test_every_resource_is_in_the_tradeflow_namespace() -> None:
    """Every namespaced resource names the tradeflow namespace, which is itself a manifest."""
    outside = [
        f"{name}:{doc['kind']}/{doc['metadata']['name']}"
        for name, doc in _resources()
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE
    ]
    assert outside == []
    assert _find("Namespace", NAMESPACE)["kind"] == "Namespace"


@pytest.mark.parametrize("service", SERVICES)
def test_service_ports_agree(service: str) -> None:
    """Listen address, probes (HTTP /healthz on the metrics port: the kubelet's gRPC probe
    cannot present a client certificate), container and Service ports and scrape port
    agree, and the pod mounts its TLS Secret where TRADEFLOW_TLS_* point."""
    deployment = _find("Deployment", service)
    pod = deployment["spec"]["template"]
    container = _container(deployment)
    env = _env(container)
    grpc_port = _port(env[f"TRADEFLOW_{service.upper()}_ADDR"])
    metrics_port = int(env[f"TRADEFLOW_{service.upper()}_METRICS_PORT"])

    assert {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in PROBES
    } == dict.fromkeys(PROBES, ("/healthz", "metrics"))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["spec"]["volumes"]}
    assert secrets["tls"] == f"tradeflow-{service}-tls"
    assert {env[f"TRADEFLOW_TLS_{part}"].rpartition("/")[0] for part in ("CA", "CERT", "KEY")} == {
        mounts["tls"]
    }
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": grpc_port,
        "metrics": metrics_port,
    }
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    spec = _find("Service", service)["spec"]
    assert spec["type"] == "ClusterIP"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in spec["ports"]} == {
        "grpc": (grpc_port, "grpc"),
        "metrics": (metrics_port, "metrics"),
    }


@pytest.mark.parametrize("peer", ["emergency", "state"])
def test_executor_dials_its_peers_through_their_services(peer: str) -> None:
    """The executor's TRADEFLOW_<PEER>_ADDR is the peer Service's DNS name and gRPC port."""
    address = _env(_container(_find("Deployment", "executor")))[f"TRADEFLOW_{peer.upper()}_ADDR"]
    grpc = next(p for p in _find("Service", peer)["spec"]["ports"] if p["name"] == "grpc")
    assert address == f"{peer}.{NAMESPACE}.svc.cluster.local:{grpc['port']}"


@pytest.mark.parametrize("service", SERVICES)
def test_termination_grace_outlasts_the_shutdown(service: str) -> None:
    """Kubernetes waits out the preStop pause, the drain and the server stop (each <= grace)."""
    grace = float(_find("ConfigMap", "tradeflow-config")["data"]["TRADEFLOW_SHUTDOWN_GRACE"])
    deployment = _find("Deployment", service)
    pre_stop = _container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert (
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        > pre_stop + 2 * grace
    )


@pytest.mark.parametrize(
    ("kind", "name"),
    [*(("Deployment", s) for s in SERVICES), ("StatefulSet", "nats"), ("StatefulSet", "redis")],
)
def test_pods_run_locked_down(kind: str, name: str) -> None:
    """The pod runs non-root on a read-only root filesystem, without capabilities, with limits."""
    workload = _find(kind, name)
    container = _container(workload)
    context = container["securityContext"]
    assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert context["runAsNonRoot"] is context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_alert_rules_are_complete() -> None:
    """Every alert rule has a name, an expression, a severity and a summary."""
    rules = _alert_rules()
    incomplete = [
        rule.get("alert", "<unnamed>")
        for rule in rules
        if not (
            rule.get("alert")
            and rule.get("expr")
            and rule.get("labels", {}).get("severity") in {"warning", "critical"}
            and rule.get("annotations", {}).get("summary")
        )
    ]
    assert rules
    assert incomplete == []


def test_alerts_read_only_exported_metrics() -> None:
    """Each alert reads at least one metric, and only `up` or metrics tradeflow exports."""
    reads = {rule["alert"]: _metric_names(rule["expr"]) for rule in _alert_rules()}
    assert [alert for alert, names in reads.items() if not names] == []
    unknown = {rule["alert"]: _unknown_metrics(rule["expr"]) for rule in _alert_rules()}
    assert {alert: names for alert, names in unknown.items() if names} == {}


def test_dashboard_reads_only_exported_metrics() -> None:
    """Each dashboard query reads at least one metric, and only metrics tradeflow exports."""
    targets = _dashboard_targets()
    assert targets
    assert [title for title, t in targets if not _metric_names(t["expr"])] == []
    unknown = {f"{title}/{t['refId']}": _unknown_metrics(t["expr"]) for title, t in targets}
    assert {query: names for query, names in unknown.items() if names} == {}


def test_container_commands_run_modules_of_this_repo() -> None:
    """The image's CMD and every Deployment's command run `python -m` on a package of this repo."""
    commands = [
        json.loads(args)
        for keyword, args in _dockerfile_instructions()
        if keyword in {"CMD", "ENTRYPOINT"}
    ]
    commands += [_container(_find("Deployment", s))["command"] for s in SERVICES]
    modules = {_module_of(command) for command in commands}
    assert modules == {f"{service}_service" for service in SERVICES}
    assert [m for m in sorted(modules) if not (ROOT / m / "__main__.py").is_file()] == []


def test_image_build_installs_the_services_extra_as_non_root() -> None:
    """Stages use python:3.11-slim; only `.[services]`, from allowed sources; non-root USER."""
    instructions = _dockerfile_instructions()
    arguments = {
        args.split("=", 1)[0]: args.split("=", 1)[1] for k, args in instructions if k == "ARG"
    }
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert arguments["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(stage.startswith("${PYTHON_IMAGE} ") for stage in stages)
    assert len(stages) > 1

    final_user = [args for keyword, args in instructions if keyword == "USER"][-1]
    assert int(final_user.split(":")[0]) > 0

    installs = [shlex.split(args) for keyword, args in instructions if keyword == "RUN"]
    projects = [arg for run in installs if "install" in run for arg in run if arg.startswith(".")]
    assert projects == [".[services]"]

    sources = [
        part
        for keyword, args in instructions
        if keyword == "COPY" and not args.startswith("--from")
        for part in shlex.split(args)[:-1]
    ]
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert [s for s in sources if not (ROOT / s).exists() or s not in allowed] == []
