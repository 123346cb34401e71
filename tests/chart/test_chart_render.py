"""The chart renders, lints, validates against the official schemas and keeps its contracts."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_support import ALL_FEATURES, CHART, REPO, Render, by_kind, helm_template, one, run

# The chart's kubeVersion floor (the CRD uses CEL rules with fieldPath, new in 1.28) and the
# kubectl/helm the project installs.
KUBERNETES_VERSIONS = ("1.28", "1.35")
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def unknown_fields(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Keys in `given` that the typed model dropped (pydantic ignores unknown fields)."""
    if isinstance(given, dict) and isinstance(parsed, dict):
        out = []
        for key, value in given.items():
            if key not in parsed:
                out.append(f"{path}.{key}")
            else:
                out += unknown_fields(value, parsed[key], f"{path}.{key}")
        return out
    if isinstance(given, list) and isinstance(parsed, list):
        return [
            e
            for i, (g, p) in enumerate(zip(given, parsed, strict=False))
            for e in unknown_fields(g, p, f"{path}[{i}]")
        ]
    return []


def validate_monitoring(obj: dict[str, Any]) -> None:
    """prometheus-operator CRs against models generated from its CRDs, rejecting unknown fields."""
    from cloudcoil.models.prometheus_operator import v1

    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    model = getattr(v1, obj["kind"]).model_validate(obj)
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert not unknown_fields(obj, dumped), f"{obj['kind']}: unknown fields {unknown_fields(obj, dumped)}"


def validate_all(objects: list[dict[str, Any]]) -> set[str]:
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] in MONITORING_KINDS:
            validate_monitoring(obj)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc.message} at {list(exc.path)}"
                )
    return kinds


def test_helm_lint_strict_default_and_all_features(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "all.yaml"
    values.write_text(yaml.safe_dump(ALL_FEATURES))
    cluster_wide = tmp_path / "cluster-wide.yaml"
    cluster_wide.write_text(
        yaml.safe_dump(
            {
                **ALL_FEATURES,
                "watch": {"clusterWide": True},
                "networkPolicy": {"enabled": True, "namespaces": ["ml"]},
            }
        )
    )
    for extra in ([], ["--values", str(values)], ["--values", str(cluster_wide)]):
        result = run([helm, "lint", "--strict", str(CHART), *extra])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_default_render_is_valid(render: Render) -> None:
    kinds = validate_all(render())
    assert kinds == {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "Deployment", "Service",
    }  # fmt: skip


def test_cluster_wide_render_is_valid(render: Render) -> None:
    values = {"watch": {"clusterWide": True}, "networkPolicy": {"enabled": True, "namespaces": ["ml"]}}
    kinds = validate_all(render(values))
    assert kinds == {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
        "NetworkPolicy",
    }  # fmt: skip


def test_every_optional_feature_renders_valid(render: Render) -> None:
    objects = render(ALL_FEATURES)
    kinds = validate_all(objects)
    assert MONITORING_KINDS | {"ConfigMap", "Role", "RoleBinding"} <= kinds
    # The monitoring CRs really went through the strict check: a typo is caught.
    monitor = one(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError, match=r"\.spec\.endpoints\[0\]\.intervall"):
        validate_monitoring(monitor)


def test_chart_crd_matches_generated_crd() -> None:
    from kondense.api.crd import crd_yaml

    chart_copy = (CHART / "crds" / "compressedmodels.kondense.dev.yaml").read_text()
    assert chart_copy == crd_yaml(), "charts/kondense/crds drifted from the models: run `make chart-crds`"


def test_kube_version_floor(helm: str, tmp_path: Path) -> None:
    too_old = helm_template(helm, tmp_path, None, "--kube-version", "1.27.0")
    assert too_old.returncode != 0 and "kubeVersion" in too_old.stderr
    assert helm_template(helm, tmp_path, None, "--kube-version", "1.28.0").returncode == 0


def test_versions_and_images_match_the_build(render: Render) -> None:
    """Chart version/appVersion = the distribution's version; default images = what `make images` builds."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == chart["appVersion"] == version

    made = run(["make", "-s", "-n", "images"], cwd=REPO)
    assert made.returncode == 0, made.stderr
    built = dict(re.findall(r"docker build -f (\S+) -t (\S+) \.", made.stdout))
    assert set(built) == {"operator/Dockerfile", "compression/Dockerfile", "serving/Dockerfile"}

    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == built["operator/Dockerfile"]
    assert env["KONDENSE_COMPRESSION_IMAGE"] == built["compression/Dockerfile"]
    assert env["KONDENSE_SERVING_IMAGE"] == built["serving/Dockerfile"]
    assert env["KONDENSE_TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver:24.08-py3"

    loaded = run(["make", "-s", "-n", "kind-load"], cwd=REPO).stdout.split()
    assert set(built.values()) <= set(loaded), "make kind-load must load every image make images builds"


def test_operator_deployment_contract(render: Render) -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["args"] == ["operator", "--namespace=kondense"]  # namespaced by default
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 8000}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "KONDENSE_NAMESPACES" not in env  # namespaces travel as CLI flags only
    assert env["KONDENSE_HEALTH_PORT"] == "8080" and env["KONDENSE_METRICS_PORT"] == "8000"
    assert env["KONDENSE_PVC_ROOT"] == "/mnt/pvc"
    assert env["KONDENSE_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    assert env["KONDENSE_PROMETHEUS_ALLOWED_URLS"] == ""  # only the operator's own Prometheus by default
    assert env["KONDENSE_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }

    service = one(render(), "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_watching_namespaces(render: Render) -> None:
    objects = render({"watch": {"namespaces": ["team-a", "team-b"]}})
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "--namespace=team-a", "--namespace=team-b"]


def test_the_default_install_watches_only_its_own_namespace(render: Render) -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "--namespace=kondense"]
    cluster_wide = one(render({"watch": {"clusterWide": True}}), "Deployment")
    assert cluster_wide["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "operator",
        "--all-namespaces",
    ]


def test_operator_reads_the_chart_environment(render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real operator settings accept what the chart sets, value for value."""
    from kondense.operator.settings import OperatorSettings

    container = one(render({"operator": {"logLevel": "DEBUG"}}), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    for name in [k for k in os.environ if k.startswith("KONDENSE_")]:
        monkeypatch.delenv(name)
    for item in container["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    settings = OperatorSettings()
    assert settings.compression_image == "kondense/compression:0.1.0"
    assert settings.serving_image == "kondense/serving:0.1.0"
    assert settings.triton_image == "nvcr.io/nvidia/tritonserver:24.08-py3"
    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.prometheus_url == "http://prometheus.monitoring:9090"
    assert settings.pvc_root == "/mnt/pvc"
    assert (settings.health_port, settings.metrics_port, settings.log_level) == (8080, 8000, "DEBUG")
    assert settings.namespaces == []


# What the operator calls, per (apiGroup, resource), and nothing more: kube.py (apply = get + create
# + merge-patch, delete, list_jobs, list_pods, pvc_exists, get_cmodel, patch_status,
# patch_http_route) and kopf (list/watch/patch of CompressedModels, watch of Jobs, core/v1 Events).
# `compressedmodels/finalizers: update` lets children carry blockOwnerDeletion ownerReferences.
WORKLOAD_RULES = {
    ("kondense.dev", "compressedmodels"): {"get", "list", "watch", "patch"},
    ("kondense.dev", "compressedmodels/status"): {"patch"},
    ("kondense.dev", "compressedmodels/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"list"},
    ("apps", "deployments"): {"get", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "create", "patch", "delete"},  # serving.autoscaling
    ("", "persistentvolumeclaims"): {"get"},
    ("", "events"): {"create"},
}
HTTPROUTES = {("gateway.networking.k8s.io", "httproutes"): {"get", "patch"}}
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
# kopf lists/watches namespaces only when it watches given ones (to notice them come and go)
DISCOVERY_RULES = CRD_DISCOVERY | {("", "namespaces"): {"list", "watch"}}
READ_VERBS = {"get", "list", "watch"}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule keys {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource, *rule["verbs"]), f"wildcard in {rule}"
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def rules_of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[tuple[str, str], set[str]]]:
    return {
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": flatten(o["rules"])
        for o in by_kind(objects, kind)
    }


def test_rbac_cluster_wide_is_exactly_what_the_operator_uses(render: Render) -> None:
    cluster_wide = {"watch": {"clusterWide": True}}
    objects = render(cluster_wide)
    cluster_roles = rules_of(objects, "ClusterRole")
    assert cluster_roles == {"/kondense-discovery": CRD_DISCOVERY, "/kondense": WORKLOAD_RULES}
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    assert not any(resource == "secrets" for rules in cluster_roles.values() for _, resource in rules)
    with_gateway = rules_of(render({**cluster_wide, "gatewayAPI": {"enabled": True}}), "ClusterRole")
    assert with_gateway["/kondense"] == WORKLOAD_RULES | HTTPROUTES


def test_rbac_reads_secrets_only_for_notifications(render: Render) -> None:
    """spec.notifications read their URL from a Secret: `get` on secrets, only when switched on."""
    secrets = {("", "secrets"): {"get"}}
    assert rules_of(render({"notifications": {"enabled": True}}), "Role") == {
        "kondense/kondense": WORKLOAD_RULES | secrets
    }
    cluster_wide = rules_of(
        render({"watch": {"clusterWide": True}, "notifications": {"enabled": True}}), "ClusterRole"
    )
    assert cluster_wide["/kondense"] == WORKLOAD_RULES | secrets


def test_rbac_default_is_namespaced_and_cluster_scope_is_read_only(render: Render) -> None:
    """The default install may change nothing outside its own namespace (kube-system included)."""
    objects = render()
    assert rules_of(objects, "Role") == {"kondense/kondense": WORKLOAD_RULES}
    cluster_roles = rules_of(objects, "ClusterRole")
    assert cluster_roles == {"/kondense-discovery": DISCOVERY_RULES}
    assert all(verbs <= READ_VERBS for rules in cluster_roles.values() for verbs in rules.values())
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == "kondense" and binding["roleRef"]["kind"] == "Role"
    (cluster_binding,) = by_kind(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == "kondense-discovery"


def test_rbac_namespaced_when_watching_namespaces(render: Render) -> None:
    objects = render({"watch": {"namespaces": ["team-a", "team-b"]}})
    assert rules_of(objects, "ClusterRole") == {"/kondense-discovery": DISCOVERY_RULES}
    assert not [
        r for r in rules_of(objects, "Role") if r.startswith("kondense/")
    ]  # not its own unless listed
    assert rules_of(objects, "Role") == {"team-a/kondense": WORKLOAD_RULES, "team-b/kondense": WORKLOAD_RULES}
    sa = one(objects, "ServiceAccount")["metadata"]
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
        assert binding["roleRef"]["name"] in {
            r["metadata"]["name"] for r in objects if r["kind"].endswith("Role")
        }


def test_existing_service_account(render: Render, helm: str, tmp_path: Path) -> None:
    objects = render({"serviceAccount": {"create": False, "name": "mine"}})
    assert not by_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    missing = helm_template(helm, tmp_path, {"serviceAccount": {"create": False}})
    assert missing.returncode != 0 and "serviceAccount.name is required" in missing.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"logLevel": "LOUD"}}, "at '/operator/logLevel': value must be one of"),
        ({"watch": {"namespaces": "default"}}, "at '/watch/namespaces': got string, want array"),
        ({"watch": {"namespaces": ["Not_A_Namespace"]}}, "at '/watch/namespaces/0'"),
        ({"watch": {"namespaces": ["a", "a"]}}, "at '/watch/namespaces'"),
        (
            {"metrics": {"serviceMonitr": {"enabled": True}}},
            "additional properties 'serviceMonitr' not allowed",
        ),
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
        ({"images": {"operator": {"pullPolicy": "Sometimes"}}}, "at '/images/operator/pullPolicy'"),
        ({"images": {"serving": {"tag": "bad tag"}}}, "at '/images/serving/tag'"),
        ({"operator": {"prometheusUrl": "prometheus:9090"}}, "at '/operator/prometheusUrl'"),
        ({"operator": {"metricsPort": 70000}}, "at '/operator/metricsPort'"),
        ({"operator": {"pvcRoot": "mnt/pvc"}}, "at '/operator/pvcRoot'"),
        ({"prometheusRule": {"window": "10 minutes"}}, "at '/prometheusRule/window'"),
        ({"prometheusRule": {"drift": {"latencyRatio": 0.5}}}, "at '/prometheusRule/drift/latencyRatio'"),
        (
            {"metrics": {"podMonitor": {"interval": 15}}},
            "at '/metrics/podMonitor/interval': got number, want string",
        ),
        ({"gatewayAPI": {"enabled": "yes"}}, "at '/gatewayAPI/enabled': got string, want boolean"),
        ({"watch": {"clusterWide": "yes"}}, "at '/watch/clusterWide': got string, want boolean"),
        ({"networkPolicy": {"enabled": True, "namespaces": ["Bad_NS"]}}, "at '/networkPolicy/namespaces/0'"),
        (
            {"networkPolicy": {"prometheus": {"podSelector": {"matchLabel": {"a": "b"}}}}},
            "at '/networkPolicy/prometheus/podSelector': additional properties 'matchLabel' not allowed",
        ),
        (
            {"networkPolicy": {"compression": {"egress": [{"to": [{"ipBlok": {"cidr": "1.2.3.4/32"}}]}]}}},
            "at '/networkPolicy/compression/egress/0/to/0': additional properties 'ipBlok' not allowed",
        ),
    ],
)
def test_bad_values_fail_with_the_path(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = helm_template(helm, tmp_path, values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"watch": {"clusterWide": True, "namespaces": ["a"]}},
            "watch.clusterWide and watch.namespaces exclude each other",
        ),
        (
            {"watch": {"clusterWide": True}, "networkPolicy": {"enabled": True}},
            "networkPolicy.namespaces: list the namespaces to protect when watch.clusterWide is true",
        ),
        (
            {"networkPolicy": {"enabled": True, "namespaces": ["a"]}},
            "networkPolicy.namespaces is only for watch.clusterWide",
        ),
    ],
)
def test_contradicting_values_fail_with_a_sentence(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = helm_template(helm, tmp_path, values)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_service_monitor_needs_the_service(helm: str, tmp_path: Path) -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    result = helm_template(helm, tmp_path, values)
    assert (
        result.returncode != 0
        and "metrics.serviceMonitor.enabled needs metrics.service.enabled" in result.stderr
    )


def test_monitoring_objects_keep_the_operator_labels(render: Render) -> None:
    objects = render(ALL_FEATURES)
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # operator metrics carry `namespace`
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_monitor = one(objects, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "kondense", "app.kubernetes.io/managed-by": "kondense",
    }  # fmt: skip
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kondense.json"])["uid"] == "kondense-overview"


def test_prometheus_allow_list_reaches_the_operator_settings(render: Render) -> None:
    from kondense.operator.settings import OperatorSettings

    urls = ["http://thanos.monitoring:9090", "https://prom.example.com"]
    deployment = one(render({"operator": {"prometheusAllowedUrls": urls}}), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = OperatorSettings.model_validate(
        {
            "prometheus_url": env["KONDENSE_PROMETHEUS_URL"],
            "prometheus_allowed_urls": env["KONDENSE_PROMETHEUS_ALLOWED_URLS"],
        }
    )
    assert settings.prometheus_allowed_urls == urls


def test_webhook_allow_list_reaches_the_operator_settings(render: Render) -> None:
    from kondense.operator.settings import OperatorSettings

    default = one(render(), "Deployment")
    env = {e["name"]: e.get("value") for e in default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KONDENSE_WEBHOOK_ALLOWED_URLS"] == ""  # only the CR's own namespace's Services by default
    assert env["KONDENSE_WEBHOOK_OWN_NAMESPACE_SERVICES"] == "true"
    urls = ["https://hooks.slack.com/services", "http://loadtester.test:8080/gate"]
    values = {"operator": {"webhookAllowedUrls": urls, "webhookOwnNamespaceServices": False}}
    deployment = one(render(values), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = OperatorSettings.model_validate(
        {
            "webhook_allowed_urls": env["KONDENSE_WEBHOOK_ALLOWED_URLS"],
            "webhook_own_namespace_services": env["KONDENSE_WEBHOOK_OWN_NAMESPACE_SERVICES"],
        }
    )
    assert settings.webhook_allowed_urls == urls and settings.webhook_own_namespace_services is False
