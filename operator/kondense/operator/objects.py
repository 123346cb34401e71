"""Kubernetes objects for one CompressedModel (pure builders: dicts in, dicts out)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kondense.api.resource import CompressedModelSpec, Placement
from kondense.operator.locations import Location, claims, pvc_volumes, variant_location
from kondense.operator.naming import HASH_LABEL, VARIANT_LABEL, Names
from kondense.operator.rollout import BASE
from kondense.operator.settings import OperatorSettings

RUN_AS_USER = 10001
TERMINATION_LOG = "/dev/termination-log"


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
    """(pod spec fields, container fields) from resources/nodeSelector/tolerations."""
    pod: dict[str, Any] = {}
    if spec.nodeSelector:
        pod["nodeSelector"] = dict(spec.nodeSelector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    container: dict[str, Any] = {}
    if spec.resources:
        container["resources"] = spec.resources.model_dump(exclude_none=True)
    return pod, container


def scratch_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    # read-only root filesystem: torch, ORT and Python need a writable /tmp
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def compression_job(
    spec: CompressedModelSpec,
    owner: Owner,
    settings: OperatorSettings,
    spec_hash: str,
    variant: str,
) -> dict[str, Any]:
    """One compression Job (or the baseline Job when ``variant`` is BASE)."""
    names = Names(owner.name)
    output = variant_location(spec, owner.namespace, owner.name, spec_hash, variant)
    data = spec.data
    uris = [spec.baseModel.uri, data.evaluation.uri, data.calibration.uri if data.calibration else None]
    uris.append(data.training.uri if data.training else None)
    writable = claims(output.uri)
    read_only = [c for c in claims(*uris) if c not in writable]
    volumes, mounts = pvc_volumes(writable, settings.pvc_root, read_only=False)
    ro_volumes, ro_mounts = pvc_volumes(read_only, settings.pvc_root, read_only=True)
    # the two lists index volumes separately; rename the read-only ones
    for i, (vol, mount) in enumerate(zip(ro_volumes, ro_mounts, strict=True)):
        vol["name"] = mount["name"] = f"pvc-ro-{i}"
    tmp_volume, tmp_mount = scratch_volume()

    args = [
        "--model", spec.baseModel.uri,
        "--eval", data.evaluation.uri,
        "--task", spec.task.value,
        "--output", output.uri,
        "--pvc-root", settings.pvc_root,
        "--termination-log", TERMINATION_LOG,
    ]  # fmt: skip
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
    pod_fields, container_fields = placement(spec.compression)
    labels = names.labels("compression", **{VARIANT_LABEL: variant, HASH_LABEL: spec_hash[:12]})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, names.job(variant, spec_hash), labels),
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
                    "containers": [
                        {
                            "name": "compress",
                            "image": spec.compression.image or settings.compression_image,
                            "imagePullPolicy": settings.image_pull_policy,
                            "command": ["kondense-compress"],
                            "args": args,
                            "env": [{"name": "KONDENSE_PVC_ROOT", "value": settings.pvc_root}],
                            "securityContext": container_security(),
                            "terminationMessagePath": TERMINATION_LOG,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [*mounts, *ro_mounts, tmp_mount],
                            **container_fields,
                        }
                    ],
                    "volumes": [*volumes, *ro_volumes, tmp_volume],
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
    tmp_volume, tmp_mount = scratch_volume()
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
                            "image": spec.serving.image or settings.serving_image,
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
