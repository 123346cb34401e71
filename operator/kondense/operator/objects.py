"""Kubernetes objects for one CompressedModel (pure builders: dicts in, dicts out)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from kondense.api.resource import CompressedModelSpec, Placement
from kondense.operator.locations import (
    ARTIFACT_DIR,
    Location,
    claims,
    job_directory,
    pvc_volumes,
    variant_location,
)
from kondense.operator.naming import HASH_LABEL, VARIANT_LABEL, Names
from kondense.operator.rollout import BASE
from kondense.operator.settings import OperatorSettings

RUN_AS_USER = 10001
TERMINATION_LOG = "/dev/termination-log"
OUTPUT_MOUNT = "/output"  # a compression Job's own directory, the only thing it can write


class ImageNotAllowed(ValueError):
    """A CompressedModel names an image the operator's settings do not allow."""


def workload_image(requested: str | None, default: str, settings: OperatorSettings, where: str) -> str:
    """The image a pod runs: the operator's default, or an override on `KONDENSE_ALLOWED_IMAGES`."""
    if requested is None or requested == default:
        return default
    if requested in settings.allowed_images:
        return requested
    allowed = ", ".join(settings.allowed_images) or "none: image overrides are disabled"
    raise ImageNotAllowed(
        f"{where}: image {requested!r} is not on the operator's allow-list (KONDENSE_ALLOWED_IMAGES; "
        f"allowed: {allowed}); remove the field to use the default {default!r}"
    )


def image_problems(spec: CompressedModelSpec, settings: OperatorSettings) -> list[str]:
    """Every image override of ``spec`` that the settings refuse (nothing is created for such a spec)."""
    problems = []
    for requested, default, where in (
        (spec.compression.image, settings.compression_image, "spec.compression.image"),
        (spec.serving.image, settings.serving_image, "spec.serving.image"),
    ):
        try:
            workload_image(requested, default, settings, where)
        except ImageNotAllowed as exc:
            problems.append(str(exc))
    return problems


@dataclass(frozen=True)
class Owner:
    """The CompressedModel that owns every object (garbage collection on delete)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": "kondense.dev/v1alpha1",
            "kind": "CompressedModel",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def metadata(owner: Owner, name: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner.reference()],
        **extra,
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def placement(spec: Placement) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec fields, container fields) from resources/nodeSelector/tolerations/affinity."""
    pod: dict[str, Any] = {}
    if spec.nodeSelector:
        pod["nodeSelector"] = dict(spec.nodeSelector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = dict(spec.affinity)
    container: dict[str, Any] = {}
    if spec.resources:
        container["resources"] = spec.resources.model_dump(exclude_none=True)
    return pod, container


def compression_placement(spec: CompressedModelSpec) -> Placement:
    """Where compression Jobs run: on the serving pods' class of node unless told otherwise.

    With ``compression.sameNodesAsServing`` (the default) each of nodeSelector, affinity and
    tolerations not set under ``compression`` is taken from ``serving`` (set but empty: none), so int8
    variants are measured on the CPUs that will serve them. Resources are never copied.
    """
    own = spec.compression
    if not own.sameNodesAsServing:
        return own
    serving = spec.serving
    return Placement(
        resources=own.resources,
        nodeSelector=own.nodeSelector if own.nodeSelector is not None else serving.nodeSelector,
        tolerations=own.tolerations if own.tolerations is not None else serving.tolerations,
        affinity=own.affinity if own.affinity is not None else serving.affinity,
    )


def scratch_volume(size_limit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    # read-only root filesystem: torch, ORT and Python need a writable /tmp (bounded: it is node disk)
    return {"name": "tmp", "emptyDir": {"sizeLimit": size_limit}}, {"name": "tmp", "mountPath": "/tmp"}


def compression_job(
    spec: CompressedModelSpec,
    owner: Owner,
    settings: OperatorSettings,
    run: str,
    variant: str,
) -> dict[str, Any]:
    """One compression Job (or the baseline Job when ``variant`` is BASE) of compression run ``run``.

    Every input is mounted read-only; the only writable storage is the Job's own directory
    (``subPath`` at /output), which an init container creates first: a directory the kubelet makes
    for a ``subPath`` belongs to root, and the Job runs as a non-root user.
    """
    names = Names(owner.name)
    directory = job_directory(spec, owner.namespace, owner.name, run, variant)
    output = variant_location(spec, owner.namespace, owner.name, run, variant)
    data = spec.data
    uris = [spec.baseModel.uri, data.evaluation.uri, data.calibration.uri if data.calibration else None]
    uris.append(data.training.uri if data.training else None)
    output_claim = directory.claim
    input_claims = claims(*uris)
    volumes, mounts = pvc_volumes(
        [c for c in input_claims if c != output_claim], settings.pvc_root, read_only=True
    )
    init_containers: list[dict[str, Any]] = []
    output_args = ["--output", output.uri]
    if output_claim:
        claim_mount = posixpath.join(settings.pvc_root, output_claim)
        volumes.append(
            {"name": "output", "persistentVolumeClaim": {"claimName": output_claim, "readOnly": False}}
        )
        if output_claim in input_claims:  # inputs beside the output: the claim itself stays read-only
            mounts.append({"name": "output", "mountPath": claim_mount, "readOnly": True})
        mounts.append(
            {"name": "output", "mountPath": OUTPUT_MOUNT, "subPath": directory.subpath(), "readOnly": False}
        )
        output_args += ["--output-dir", posixpath.join(OUTPUT_MOUNT, ARTIFACT_DIR)]
        init_containers.append(
            {
                "name": "output-directory",
                "image": workload_image(
                    spec.compression.image, settings.compression_image, settings, "spec.compression.image"
                ),
                "imagePullPolicy": settings.image_pull_policy,
                "command": ["mkdir"],
                "args": ["-p", "--", directory.local_path(settings.pvc_root)],
                "securityContext": container_security(),
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "output", "mountPath": claim_mount}],
            }
        )
    tmp_volume, tmp_mount = scratch_volume(settings.job_tmp_size_limit)

    args = [
        "--model", spec.baseModel.uri,
        "--eval", data.evaluation.uri,
        "--task", spec.task.value,
        *output_args,
        "--pvc-root", settings.pvc_root,
        "--termination-log", TERMINATION_LOG,
    ]  # fmt: skip
    if spec.baseModel.sha256:
        args += ["--model-sha256", spec.baseModel.sha256]
    if data.calibration:
        args += ["--calibration", data.calibration.uri]
    if data.training:
        args += ["--train", data.training.uri]
    if variant == BASE:
        args += ["--baseline"]
    else:
        target = spec.target(variant)
        args += ["--target", json.dumps(target.model_dump(mode="json", exclude_none=True), sort_keys=True)]
        args += ["--max-accuracy-delta", str(spec.budget_for(target))]
    pod_fields, container_fields = placement(compression_placement(spec))
    labels = names.labels("compression", **{VARIANT_LABEL: variant, HASH_LABEL: run[:12]})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, names.job(variant, run), labels),
        "spec": {
            "backoffLimit": spec.compression.backoffLimit,
            "activeDeadlineSeconds": spec.compression.activeDeadlineSeconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": pod_security(),
                    "automountServiceAccountToken": False,
                    **pod_fields,
                    **({"initContainers": init_containers} if init_containers else {}),
                    "containers": [
                        {
                            "name": "compress",
                            "image": workload_image(
                                spec.compression.image,
                                settings.compression_image,
                                settings,
                                "spec.compression.image",
                            ),
                            "imagePullPolicy": settings.image_pull_policy,
                            "command": ["kondense-compress"],
                            "args": args,
                            "env": [{"name": "KONDENSE_PVC_ROOT", "value": settings.pvc_root}],
                            "securityContext": container_security(),
                            "terminationMessagePath": TERMINATION_LOG,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [*mounts, tmp_mount],
                            **container_fields,
                        }
                    ],
                    "volumes": [*volumes, tmp_volume],
                },
            },
        },
    }


def grpc_port(http_port: int) -> int:
    """The Service (and kondense serve's) gRPC port next to the HTTP one: 8081 for the default 8080."""
    return http_port + 1 if http_port < 65535 else http_port - 1


def service(
    owner: Owner, name: str, selector: dict[str, str], port: int, labels: dict[str, str]
) -> dict[str, Any]:
    """REST on ``port`` and the Open Inference Protocol over gRPC on ``grpc_port(port)``; both
    target the serving container's named ports (``http``, ``grpc``) whatever the runtime."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": grpc_port(port),
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def artifact_dir(uri: str | None, settings: OperatorSettings) -> str:
    if not uri:
        raise ValueError("artifact has no location")
    return Location(uri).local_path(settings.pvc_root)


def loadgen_job(
    spec: CompressedModelSpec, owner: Owner, settings: OperatorSettings, url: str
) -> dict[str, Any]:
    """The built-in load of `analysis.loadTest`: replays the evaluation inputs against the Service
    for as long as the canary runs (the operator deletes it when the canary ends)."""
    load = spec.rollout.analysis.loadTest
    assert load is not None
    names = Names(owner.name)
    volumes, mounts = pvc_volumes(claims(spec.data.evaluation.uri), settings.pvc_root, read_only=True)
    tmp_volume, tmp_mount = scratch_volume(settings.pod_tmp_size_limit)
    labels = names.labels("loadgen")
    loadgen_args = [
        "loadgen", "--url", url, "--model", owner.name,
        "--data", spec.data.evaluation.uri, "--rps", f"{load.rps:g}", "--pvc-root", settings.pvc_root,
    ]  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, names.loadgen(), labels),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 24 * 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": pod_security(),
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "loadgen",
                            "image": workload_image(
                                spec.serving.image, settings.serving_image, settings, "spec.serving.image"
                            ),
                            "imagePullPolicy": settings.image_pull_policy,
                            "command": ["kondense"],
                            "args": loadgen_args,
                            "securityContext": container_security(),
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "volumeMounts": [*mounts, tmp_mount],
                        }
                    ],
                    "volumes": [*volumes, tmp_volume],
                },
            },
        },
    }


def horizontal_pod_autoscaler(
    owner: Owner,
    deployment: str,
    labels: dict[str, str],
    min_replicas: int,
    max_replicas: int,
    cpu_utilization: int,
) -> dict[str, Any]:
    """An autoscaling/v2 HPA named as the Deployment it scales (on average CPU utilization)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, deployment, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": cpu_utilization},
                    },
                }
            ],
        },
    }
