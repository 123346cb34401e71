"""The chart's optional NetworkPolicies, judged against the pods the operator really creates.

The policies come from `helm template`; the pods from the operator's own object builders (a
compression Job, ONNX Runtime and Triton Deployments, the load generator Job) and from the chart's
Deployment. A small evaluator of the NetworkPolicy rules (label selectors, namespace selectors, named
and numbered ports, ipBlocks; Kubernetes' semantics: a pod no policy selects is open, a selected pod
accepts only what some rule allows) answers "may this reach that?".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest
from chart_support import MODEL_HOST_EGRESS, Render, by_kind

from kondense.api.resource import LoadTest
from kondense.operator.backends import SERVING_BACKENDS, ServingContext
from kondense.operator.objects import Owner, compression_job, loadgen_job
from kondense.operator.settings import OperatorSettings
from kondense_testing.builders import digits_spec, job_result

NAMESPACE = "ml"  # where the CompressedModel lives
OWNER = Owner("digits", NAMESPACE, "7b9e1c1e-0000-4000-8000-000000000001")
SETTINGS = OperatorSettings()
NAMESPACE_LABELS = {
    "ml": {"kubernetes.io/metadata.name": "ml"},
    "kondense": {"kubernetes.io/metadata.name": "kondense"},
    "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
    "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
    "other": {"kubernetes.io/metadata.name": "other"},
}


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # named container ports
    ip: str = "10.244.0.99"


@dataclass(frozen=True)
class Address:
    ip: str


Endpoint = Pod | Address


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], NAMESPACE_LABELS[other.namespace]):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def port_matches(ports: list[dict[str, Any]] | None, target: Endpoint, port: int, protocol: str) -> bool:
    if not ports:
        return True
    named = target.ports if isinstance(target, Pod) else {}
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        number = named.get(wanted) if isinstance(wanted, str) else wanted
        if number is not None and (number == port or number <= port <= entry.get("endPort", number)):
            return True
    return False


def allowed(
    policies: list[dict[str, Any]],
    kind: str,
    pod: Pod,
    other: Endpoint,
    port: int,
    protocol: str,
    port_owner: Endpoint,
) -> bool:
    """Does some policy selecting ``pod`` allow this ``kind`` (Ingress/Egress) of traffic?"""
    direction = "ingress" if kind == "Ingress" else "egress"
    peers_key = "from" if kind == "Ingress" else "to"
    selecting = [
        p for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.labels)
        and kind in p["spec"]["policyTypes"]
    ]  # fmt: skip
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(direction) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(peer, other, pod.namespace) for peer in peers):
                continue
            if port_matches(rule.get("ports"), port_owner, port, protocol):
                return True
    return False


def can_reach(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    egress = not isinstance(src, Pod) or allowed(policies, "Egress", src, dst, port, protocol, dst)
    ingress = not isinstance(dst, Pod) or allowed(policies, "Ingress", dst, src, port, protocol, dst)
    return egress and ingress


def pod_of(template: dict[str, Any], namespace: str) -> Pod:
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports") or []
        if "name" in p
    }
    return Pod(namespace, dict(template["metadata"]["labels"]), ports)


def server_pods(runtime: str) -> list[Pod]:
    """The stable and canary pods of the real serving backend for ``runtime``."""
    import yaml

    from kondense.api.resource import CompressedModelSpec
    from kondense.operator.rollout import Track
    from kondense_testing.paths import EXAMPLES

    example = {"onnxruntime": "digits", "triton": "digits-triton"}[runtime]
    body = yaml.safe_load((EXAMPLES / example / "compressedmodel.yaml").read_text())
    spec = CompressedModelSpec.model_validate(body["spec"])
    assert spec.serving.runtime == runtime
    backend = SERVING_BACKENDS[spec.serving.runtime]
    ctx = ServingContext(spec, OWNER, SETTINGS)
    result = job_result("int8")
    assert result.artifact is not None
    result.artifact.uri = "pvc://models/kondense/ml/digits/abc/int8"
    pods = []
    for track in ("stable", "canary"):
        t = Track(artifact=result.artifact, variant="int8", replicas=1)
        (deployment,) = [o for o in backend.workload(ctx, track, t, 1) if o["kind"] == "Deployment"]
        pods.append(pod_of(deployment["spec"]["template"], NAMESPACE))
    return pods


@pytest.fixture
def policies(render: Render) -> list[dict[str, Any]]:
    values = {
        "watch": {"namespaces": [NAMESPACE]},
        "networkPolicy": {"enabled": True, "compression": {"egress": MODEL_HOST_EGRESS}},
    }
    return by_kind(render(values), "NetworkPolicy")


@pytest.fixture
def closed_policies(render: Render) -> list[dict[str, Any]]:
    return by_kind(
        render({"watch": {"namespaces": [NAMESPACE]}, "networkPolicy": {"enabled": True}}), "NetworkPolicy"
    )


@pytest.fixture
def operator_pod(render: Render) -> Pod:
    (deployment,) = by_kind(render({"watch": {"namespaces": [NAMESPACE]}}), "Deployment")
    return pod_of(deployment["spec"]["template"], "kondense")


STRANGER = Pod("other", {"app": "curious"}, ip="10.244.7.7")
NEIGHBOUR = Pod(NAMESPACE, {"app": "notebook"}, ip="10.244.1.5")
PROMETHEUS = Pod("monitoring", {"app": "prometheus"}, ip="10.244.3.3")
DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, {"dns": 53}, ip="10.96.0.10")
MODEL_HOST = Address("203.0.113.10")
ELSEWHERE = Address("198.51.100.20")
METADATA = Address("169.254.169.254")


def test_no_policies_unless_enabled(render: Render) -> None:
    assert not by_kind(render(), "NetworkPolicy")


def test_onnxruntime_servers_take_their_port_from_anyone_and_nothing_else(policies) -> None:
    stable, canary = server_pods("onnxruntime")
    http = stable.ports["http"]
    for client in (STRANGER, NEIGHBOUR, PROMETHEUS):
        assert can_reach(policies, client, stable, http)  # serving and /metrics share the port
        assert not can_reach(policies, client, stable, 22)
        assert not can_reach(policies, client, stable, 9090)
    # the canary's shadow copy reaches stable; servers reach nothing else
    assert can_reach(policies, canary, stable, http)
    assert can_reach(policies, canary, DNS, 53, "UDP")
    for target, port in ((ELSEWHERE, 443), (METADATA, 80), (NEIGHBOUR, 8080), (PROMETHEUS, 9090)):
        assert not can_reach(policies, canary, target, port)


def test_triton_metrics_port_is_for_prometheus_only(policies) -> None:
    stable, _ = server_pods("triton")
    assert {"http", "grpc", "metrics"} <= set(stable.ports)
    for port in (stable.ports["http"], stable.ports["grpc"]):
        assert can_reach(policies, STRANGER, stable, port)
    assert can_reach(policies, PROMETHEUS, stable, stable.ports["metrics"])
    assert not can_reach(policies, STRANGER, stable, stable.ports["metrics"])
    assert not can_reach(policies, NEIGHBOUR, stable, stable.ports["metrics"])


def test_compression_jobs_reach_only_dns_and_the_model_hosts(policies, closed_policies) -> None:
    job = compression_job(digits_spec(), OWNER, SETTINGS, "0123456789ab", "int8")
    pod = pod_of(job["spec"]["template"], NAMESPACE)
    assert can_reach(policies, pod, MODEL_HOST, 443)
    assert can_reach(policies, pod, DNS, 53, "UDP") and can_reach(policies, pod, DNS, 53, "TCP")
    for target, port in (
        (MODEL_HOST, 80),
        (ELSEWHERE, 443),
        (METADATA, 80),
        (PROMETHEUS, 9090),
        (NEIGHBOUR, 80),
    ):
        assert not can_reach(policies, pod, target, port)
    stable, _ = server_pods("onnxruntime")
    assert not can_reach(policies, pod, stable, stable.ports["http"])
    for client in (STRANGER, NEIGHBOUR, PROMETHEUS):
        assert not can_reach(policies, client, pod, 8080)
    # no model hosts configured: no network at all, not even DNS
    for target, port, protocol in ((DNS, 53, "UDP"), (MODEL_HOST, 443, "TCP"), (NEIGHBOUR, 80, "TCP")):
        assert not can_reach(closed_policies, pod, target, port, protocol)


def test_the_load_generator_reaches_the_servers_only(policies) -> None:
    spec = digits_spec()
    spec.rollout.analysis.loadTest = LoadTest(rps=5)
    job = loadgen_job(spec, OWNER, SETTINGS, "http://digits.ml.svc:8080")
    pod = pod_of(job["spec"]["template"], NAMESPACE)
    stable, _ = server_pods("onnxruntime")
    assert can_reach(policies, pod, stable, stable.ports["http"])
    assert can_reach(policies, pod, DNS, 53, "UDP")
    for target, port in ((ELSEWHERE, 443), (NEIGHBOUR, 8080), (METADATA, 80)):
        assert not can_reach(policies, pod, target, port)
    assert not can_reach(policies, STRANGER, pod, 8080)


def test_the_operator_takes_probes_and_prometheus_only(policies, operator_pod) -> None:
    metrics, health = operator_pod.ports["metrics"], operator_pod.ports["health"]
    assert can_reach(policies, PROMETHEUS, operator_pod, metrics)
    assert not can_reach(policies, STRANGER, operator_pod, metrics)
    assert not can_reach(policies, NEIGHBOUR, operator_pod, 9999)
    assert can_reach(policies, STRANGER, operator_pod, health)  # kubelet probes come from the node


def test_policies_cover_every_watched_namespace(render: Render) -> None:
    objects = render({"watch": {"namespaces": ["team-a", "team-b"]}, "networkPolicy": {"enabled": True}})
    where = sorted(
        (p["metadata"]["namespace"], p["metadata"]["name"]) for p in by_kind(objects, "NetworkPolicy")
    )
    assert where == sorted(
        [("kondense", "kondense-operator")]
        + [
            (ns, f"kondense-{kind}")
            for ns in ("team-a", "team-b")
            for kind in ("servers", "compression", "loadgen")
        ]
    )
    cluster_wide = render(
        {"watch": {"clusterWide": True}, "networkPolicy": {"enabled": True, "namespaces": ["ml", "prod"]}}
    )
    namespaces = {p["metadata"]["namespace"] for p in by_kind(cluster_wide, "NetworkPolicy")}
    assert namespaces == {"kondense", "ml", "prod"}


def test_the_evaluator_itself_distinguishes_open_and_closed() -> None:
    """Guard for the checks above: with no policy everything is open, with a deny-all nothing is."""
    pod = Pod(NAMESPACE, {"app": "x"}, {"http": 8080})
    assert can_reach([], STRANGER, pod, 8080)
    deny = {"metadata": {"namespace": NAMESPACE}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert not can_reach([deny], STRANGER, pod, 8080)
    assert can_reach([deny], pod, STRANGER, 8080)  # ingress-only policy leaves egress open
