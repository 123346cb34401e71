"""Serving backends: the pods behind a track and the PromQL that reads their SLIs (registry)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.utils.quantity import parse_quantity

from kondense.api.resource import CompressedModelSpec, ResourceRequirements, Runtime
from kondense.operator.analysis import SLI
from kondense.operator.locations import Location, pvc_volumes
from kondense.operator.naming import SHA_ANNOTATION, TRACK_LABEL, VARIANT_LABEL, Names
from kondense.operator.objects import (
    Owner,
    artifact_dir,
    container_security,
    grpc_port,
    metadata,
    placement,
    pod_security,
    scratch_volume,
    workload_image,
)
from kondense.operator.providers import ComparisonQueries
from kondense.operator.rollout import Track
from kondense.operator.settings import OperatorSettings


@dataclass(frozen=True)
class ServingContext:
    spec: CompressedModelSpec
    owner: Owner
    settings: OperatorSettings

    @property
    def names(self) -> Names:
        return Names(self.owner.name)

    def service_url(self, track: str | None) -> str:
        host = f"{self.names.service(track)}.{self.owner.namespace}.{self.settings.service_domain}"
        return f"http://{host}:{self.spec.serving.port}"


def pod_matcher(pods: Sequence[str] | None) -> str:
    """`,pod=~"a|b"` for PromQL; an empty list matches nothing (no pods serve: no data)."""
    if pods is None:
        return ""
    if not pods:
        return ',pod="__none__"'
    alternatives = "|".join(re.escape(p).replace("\\", "\\\\") for p in sorted(pods))
    return f',pod=~"{alternatives}"'


def _selector(names: Names, track: str) -> dict[str, str]:
    return {"kondense.dev/model": names.model, TRACK_LABEL: track}


def _deployment(
    ctx: ServingContext,
    track: str,
    t: Track,
    replicas: int,
    pod_spec: dict[str, Any],
    metrics_port: int,
) -> dict[str, Any]:
    names = ctx.names
    variant = t.variant or "base"
    labels = names.labels("server", **{TRACK_LABEL: track, VARIANT_LABEL: variant})
    annotations = {
        SHA_ANNOTATION: t.artifact.sha256,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            ctx.owner, names.deployment(track), labels, annotations={SHA_ANNOTATION: t.artifact.sha256}
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(names, track)},
            # never below the desired ready count while an artifact rolls (promotion without errors)
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def _pvc_mounts(
    uri: str | None, settings: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The artifact's own directory, read-only, where its path says (a server sees nothing else of
    the claim: not the other models' artifacts, not the data)."""
    location = Location(uri) if uri else None
    if location is None or location.claim is None:
        return [], []
    volumes, _ = pvc_volumes([location.claim], settings.pvc_root, read_only=True)
    mount = {
        "name": volumes[0]["name"],
        "mountPath": location.local_path(settings.pvc_root),
        "subPath": location.subpath(),
        "readOnly": True,
    }
    return volumes, [mount]


def cpu_threads(resources: ResourceRequirements | None) -> int | None:
    """ONNX Runtime intra-op threads for a pod's CPU limit (its request when it has no limit): the
    whole CPUs it may use, at least 1; None when neither is set."""
    cpu = None
    if resources is not None:
        cpu = (resources.limits or {}).get("cpu") or (resources.requests or {}).get("cpu")
    if cpu is None:
        return None
    return max(1, math.floor(parse_quantity(str(cpu))))


def worker_threads(cpus: int | None, workers: int) -> int | None:
    """Each worker's share of the pod's whole CPUs, at least 1 (None: not known)."""
    return None if cpus is None else max(1, cpus // workers)


def dedicated_cpus(resources: ResourceRequirements | None) -> bool:
    """Whether a pod with these resources owns whole CPUs: Guaranteed QoS (cpu and memory requested
    equal to their limits) with an integer CPU count, the pods the kubelet's static CPU manager gives
    exclusive cores. Only there may ONNX Runtime threads spin (``--spin-wait``): on shared or
    quota-limited CPUs spinning threads burn the quota and run several times slower."""
    if resources is None:
        return False
    limits, requests = resources.limits or {}, resources.requests or {}
    try:
        cpu = parse_quantity(str(limits["cpu"]))
        memory = limits["memory"]
        same = all(
            parse_quantity(str(requests.get(key, limits[key]))) == parse_quantity(str(limits[key]))
            for key in ("cpu", "memory")
        )
    except (KeyError, ValueError):
        return False
    return bool(memory) and same and cpu >= 1 and cpu == int(cpu)


class ServingBackend(Protocol):
    @property
    def runtime(self) -> Runtime: ...

    def workload(self, ctx: ServingContext, track: str, t: Track, replicas: int) -> list[dict[str, Any]]:
        """The Deployment (and whatever it needs) serving ``t`` on ``track``."""
        ...

    def queries(
        self, namespace: str, model: str, track: str, window: str, pods: Sequence[str] | None = None
    ) -> dict[SLI, str]:
        """PromQL per SLI for one track over ``window``, limited to ``pods`` when given (the pods
        serving the current variant: series of replaced pods must not count)."""
        ...

    def comparison_queries(
        self, namespace: str, model: str, track: str, window: str, pods: Sequence[str] | None = None
    ) -> ComparisonQueries:
        """Counts (and the latency histogram when the runtime exports one) of one track over
        ``window``, for the relative gates that judge the canary against stable."""
        ...

    @property
    def tees_requests(self) -> bool:
        """Mirror first: the stable server copies requests to the canary itself (else the traffic
        router mirrors them, e.g. the HTTPRoute's RequestMirror filter)."""
        ...

    def mirror_queries(
        self, namespace: str, model: str, variant: str, window: str, pods: Sequence[str] | None = None
    ) -> dict[SLI, str]:
        """PromQL per SLI of the canary's answers to mirrored copies (phase Mirroring) over ``window``:
        the canary ``pods`` serving ``variant``; never its user requests (it has none then)."""
        ...


class OnnxRuntimeBackend:
    """kondense's own server (`kondense serve`): Open Inference Protocol v2, shadow agreement."""

    runtime = Runtime.ONNXRUNTIME
    tees_requests = True

    def workload(self, ctx: ServingContext, track: str, t: Track, replicas: int) -> list[dict[str, Any]]:
        spec, settings = ctx.spec, ctx.settings
        port = spec.serving.port
        args = [
            "serve",
            "--model", artifact_dir(t.artifact.uri, settings),
            "--name", ctx.owner.name,
            "--expected-sha256", t.artifact.sha256,
            "--variant", track,
            "--port", str(port),
        ]  # fmt: skip
        grpc = grpc_port(port)
        args += ["--grpc-port", str(grpc)]
        workers = spec.serving.workers or 1
        if workers > 1:
            args += ["--workers", str(workers)]
        threads = spec.serving.threads or worker_threads(cpu_threads(spec.serving.resources), workers)
        if threads:  # else the server reads its cgroup's CPU quota itself (and shares it out)
            args += ["--threads", str(threads)]
        if dedicated_cpus(spec.serving.resources):  # whole CPUs of its own: threads may spin
            args += ["--spin-wait"]
        if track == "canary":
            args += [
                "--shadow-of",
                ctx.service_url("stable"),
                "--shadow-sample",
                "1.0",
                "--task",
                spec.task.value,
            ]
        if track == "stable" and t.mirror_to is not None:  # mirror first: tee a sample to the canary
            percentage = spec.rollout.mirror.percentage if spec.rollout.mirror else 100
            args += [
                "--mirror-to", ctx.service_url("canary"),
                "--mirror-sample", f"{percentage / 100:g}",
                "--mirror-variant", t.mirror_to,
                "--task", spec.task.value,
            ]  # fmt: skip
        volumes, mounts = _pvc_mounts(t.artifact.uri, settings)
        tmp_volume, tmp_mount = scratch_volume(settings.pod_tmp_size_limit)
        pod_fields, container_fields = placement(spec.serving)
        probe = {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        }
        pod_spec = {
            "securityContext": pod_security(),
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 30,
            **pod_fields,
            "containers": [
                {
                    "name": "server",
                    "image": workload_image(
                        spec.serving.image, settings.serving_image, settings, "spec.serving.image"
                    ),
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": ["kondense"],
                    "args": args,
                    "ports": [
                        {"name": "http", "containerPort": port, "protocol": "TCP"},
                        {"name": "grpc", "containerPort": grpc, "protocol": "TCP"},
                    ],
                    "readinessProbe": probe,
                    "livenessProbe": {
                        "httpGet": {"path": "/v2/health/live", "port": "http"},
                        "periodSeconds": 10,
                    },
                    "securityContext": container_security(),
                    "volumeMounts": [*mounts, tmp_mount],
                    **container_fields,
                }
            ],
            "volumes": [*volumes, tmp_volume],
        }
        return [_deployment(ctx, track, t, replicas, pod_spec, port)]

    def queries(
        self, namespace: str, model: str, track: str, window: str, pods: Sequence[str] | None = None
    ) -> dict[SLI, str]:
        sel = f'namespace="{namespace}",model="{model}",variant="{track}"' + pod_matcher(pods)
        total = f"sum(rate(kondense_requests_total{{{sel}}}[{window}]))"
        compared = f'sum(rate(kondense_shadow_comparisons_total{{{sel},result=~"agree|disagree"}}[{window}]))'
        return {
            SLI.REQUESTS: f"sum(increase(kondense_requests_total{{{sel}}}[{window}]))",
            SLI.P99_LATENCY_MS: (
                f"1000 * histogram_quantile(0.99, sum by (le) "
                f"(rate(kondense_request_duration_seconds_bucket{{{sel}}}[{window}])))"
            ),
            # `or vector(0)`: no error series yet means 0 errors, as long as there are requests
            SLI.ERROR_RATE: f'(sum(rate(kondense_requests_total{{{sel},code=~"5.."}}[{window}])) or vector(0)) / {total}',
            SLI.ACCURACY_DELTA: (
                f'(sum(rate(kondense_shadow_comparisons_total{{{sel},result="disagree"}}[{window}])) or vector(0))'
                f" / {compared}"
            ),
        }

    def comparison_queries(
        self, namespace: str, model: str, track: str, window: str, pods: Sequence[str] | None = None
    ) -> ComparisonQueries:
        sel = f'namespace="{namespace}",model="{model}",variant="{track}"' + pod_matcher(pods)
        return ComparisonQueries(
            requests=f"sum(increase(kondense_requests_total{{{sel}}}[{window}]))",
            errors=f'sum(increase(kondense_requests_total{{{sel},code=~"5.."}}[{window}])) or vector(0)',
            latency_buckets=f"sum by (le) (increase(kondense_request_duration_seconds_bucket{{{sel}}}[{window}]))",
            confidence_buckets=f"sum by (le) (increase(kondense_output_confidence_bucket{{{sel}}}[{window}]))",
        )

    def mirror_queries(
        self, namespace: str, model: str, variant: str, window: str, pods: Sequence[str] | None = None
    ) -> dict[SLI, str]:
        # latency and errors: the canary's own answers to the copies (kondense_mirrored_*);
        # agreement: counted by the stable servers that sent the copies (label canary=<variant>)
        sel = f'namespace="{namespace}",model="{model}",variant="canary"' + pod_matcher(pods)
        total = f"sum(rate(kondense_mirrored_requests_total{{{sel}}}[{window}]))"
        by_stable = f'namespace="{namespace}",model="{model}",variant="stable",canary="{variant}"'
        compared = (
            f'sum(rate(kondense_mirror_comparisons_total{{{by_stable},result=~"agree|disagree"}}[{window}]))'
        )
        return {
            SLI.REQUESTS: f"sum(increase(kondense_mirrored_requests_total{{{sel}}}[{window}]))",
            SLI.P99_LATENCY_MS: (
                f"1000 * histogram_quantile(0.99, sum by (le) "
                f"(rate(kondense_mirrored_request_duration_seconds_bucket{{{sel}}}[{window}])))"
            ),
            SLI.ERROR_RATE: f'(sum(rate(kondense_mirrored_requests_total{{{sel},code=~"5.."}}[{window}])) or vector(0)) / {total}',
            SLI.ACCURACY_DELTA: (
                f'(sum(rate(kondense_mirror_comparisons_total{{{by_stable},result="disagree"}}[{window}])) or vector(0))'
                f" / {compared}"
            ),
        }


TRITON_HTTP_PORT = 8000
TRITON_METRICS_PORT = 8002


class TritonBackend:
    """NVIDIA Triton with the onnxruntime_onnx platform; an init container (serving image) checks
    the artifact's sha256 and builds the model repository and config.pbtxt from the ONNX graph."""

    runtime = Runtime.TRITON
    tees_requests = False  # mirrored by the HTTPRoute's RequestMirror filter

    def workload(self, ctx: ServingContext, track: str, t: Track, replicas: int) -> list[dict[str, Any]]:
        spec, settings = ctx.spec, ctx.settings
        triton = spec.serving.triton
        max_batch = triton.maxBatchSize if triton else 8
        init_args = [
            "triton-repository",
            "--model", artifact_dir(t.artifact.uri, settings),
            "--repository", "/models",
            "--name", ctx.owner.name,
            "--expected-sha256", t.artifact.sha256,
            "--max-batch-size", str(max_batch),
            "--instance-kind", (triton.instanceKind.value if triton else "KIND_CPU"),
            "--instance-count", str(triton.instanceCount if triton else 1),
        ]  # fmt: skip
        if triton and triton.dynamicBatching:
            init_args += ["--max-queue-delay-us", str(triton.dynamicBatching.maxQueueDelayMicroseconds)]
            for size in triton.dynamicBatching.preferredBatchSize or []:
                init_args += ["--preferred-batch-size", str(size)]
        volumes, mounts = _pvc_mounts(t.artifact.uri, settings)
        tmp_volume, tmp_mount = scratch_volume(settings.pod_tmp_size_limit)
        repo_volume, repo_mount = (
            {"name": "models", "emptyDir": {}},
            {"name": "models", "mountPath": "/models"},
        )
        pod_fields, container_fields = placement(spec.serving)
        pod_spec = {
            "securityContext": pod_security(),
            "automountServiceAccountToken": False,
            **pod_fields,
            "initContainers": [
                {
                    "name": "model-repository",
                    "image": workload_image(
                        spec.serving.image, settings.serving_image, settings, "spec.serving.image"
                    ),
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": ["kondense"],
                    "args": init_args,
                    "securityContext": container_security(),
                    "volumeMounts": [*mounts, repo_mount, tmp_mount],
                }
            ],
            "containers": [
                {
                    "name": "triton",
                    "image": settings.triton_image,
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": ["tritonserver"],
                    "args": [
                        "--model-repository=/models",
                        f"--http-port={TRITON_HTTP_PORT}",
                        "--grpc-port=8001",
                        f"--metrics-port={TRITON_METRICS_PORT}",
                        "--metrics-config=summary_latencies=true",
                        "--disable-auto-complete-config",
                    ],
                    "ports": [
                        {"name": "http", "containerPort": TRITON_HTTP_PORT, "protocol": "TCP"},
                        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": TRITON_METRICS_PORT, "protocol": "TCP"},
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/v2/health/ready", "port": "http"},
                        "periodSeconds": 2,
                    },
                    "livenessProbe": {
                        "httpGet": {"path": "/v2/health/live", "port": "http"},
                        "periodSeconds": 10,
                    },
                    "securityContext": container_security(),
                    "volumeMounts": [repo_mount, tmp_mount],
                    **container_fields,
                }
            ],
            "volumes": [*volumes, repo_volume, tmp_volume],
        }
        return [_deployment(ctx, track, t, replicas, pod_spec, TRITON_METRICS_PORT)]

    def queries(
        self, namespace: str, model: str, track: str, window: str, pods: Sequence[str] | None = None
    ) -> dict[SLI, str]:
        # Triton's metrics carry no track: the pods are told apart by name
        by_name = pod_matcher(pods) if pods is not None else f',pod=~"{Names(model).deployment(track)}-.*"'
        pods_sel = f'namespace="{namespace}",model="{model}"' + by_name
        success = f"sum(increase(nv_inference_request_success{{{pods_sel}}}[{window}]))"
        failure = f"(sum(increase(nv_inference_request_failure{{{pods_sel}}}[{window}])) or vector(0))"
        return {
            SLI.REQUESTS: f"{success} + {failure}",
            SLI.P99_LATENCY_MS: f'max(nv_inference_request_summary_us{{{pods_sel},quantile="0.99"}}) / 1000',
            SLI.ERROR_RATE: f"{failure} / ({success} + {failure})",
        }

    def comparison_queries(
        self, namespace: str, model: str, track: str, window: str, pods: Sequence[str] | None = None
    ) -> ComparisonQueries:
        by_name = pod_matcher(pods) if pods is not None else f',pod=~"{Names(model).deployment(track)}-.*"'
        pods_sel = f'namespace="{namespace}",model="{model}"' + by_name
        success = f"sum(increase(nv_inference_request_success{{{pods_sel}}}[{window}]))"
        failure = f"(sum(increase(nv_inference_request_failure{{{pods_sel}}}[{window}])) or vector(0))"
        # Triton exports latency as a summary (quantiles), not a histogram: no latency comparison
        return ComparisonQueries(requests=f"{success} + {failure}", errors=failure, latency_buckets=None)

    def mirror_queries(
        self, namespace: str, model: str, variant: str, window: str, pods: Sequence[str] | None = None
    ) -> dict[SLI, str]:
        # At weight 0 every request the canary's pods get is a RequestMirror copy: latency and errors
        # are its own; agreement cannot be judged (the gateway drops the mirrored answers unseen).
        return self.queries(namespace, model, "canary", window, pods)


SERVING_BACKENDS: dict[Runtime, ServingBackend] = {
    Runtime.ONNXRUNTIME: OnnxRuntimeBackend(),
    Runtime.TRITON: TritonBackend(),
}
