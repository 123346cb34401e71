"""The controllers kube-controller-manager runs for Deployments and Jobs, as far as kondense needs them.

* **Deployment** -> Pods directly (no ReplicaSets: the operator never reads them), owned by the
  Deployment so garbage collection follows it. A template change rolls the pods honouring
  ``RollingUpdate`` ``maxSurge``/``maxUnavailable`` (percentages resolved as Kubernetes does) or
  ``Recreate``; scaling down removes not-ready pods first, then the newest. Status: ``replicas``,
  ``updatedReplicas``, ``readyReplicas``, ``availableReplicas``, ``unavailableReplicas``,
  ``observedGeneration`` and the ``Available``/``Progressing`` conditions.
* **Job** -> one Pod at a time up to ``parallelism``/``completions``; a failed pod is replaced until
  ``failed > backoffLimit`` (``BackoffLimitExceeded``); ``activeDeadlineSeconds`` ends it
  (``DeadlineExceeded``, active pods deleted); ``Complete``/``Failed`` conditions (with the
  ``SuccessCriteriaMet``/``FailureTarget`` ones Kubernetes 1.31+ adds first), ``startTime``,
  ``completionTime``, ``active``/``ready``/``succeeded``/``failed`` counts. With ``restartPolicy:
  OnFailure`` container restarts count as failures, as the Job controller counts them.

The planning functions are pure (``plan_deployment``/``plan_job``: objects in, actions out) so the
transitions are unit-tested without processes; :class:`Controllers` applies them through the API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kondense.localcluster.kubelet import NODE_NAME

log = logging.getLogger("kondense.localcluster.controllers")
TEMPLATE_HASH_LABEL = "pod-template-hash"
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet (no vowels)


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(length))


def template_hash(template: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(c for c in digest if c in string.hexdigits)[:10]


def owned_by(pod: Mapping[str, Any], uid: str) -> bool:
    refs = pod["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _scaled(value: int | str | None, replicas: int, default: str, round_up: bool) -> int:
    """An intOrString (``1`` or ``"25%"``) against ``replicas``; surge rounds up, unavailable down."""
    value = default if value is None else value
    if isinstance(value, int):
        return value
    if value.endswith("%"):
        exact = replicas * float(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def _pod_for(owner: Mapping[str, Any], kind: str, api_version: str, name: str, labels: dict[str, str],
             annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    meta, template = owner["metadata"], owner["spec"]["template"]
    template_meta = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**(template_meta.get("labels") or {}), **labels},
            "annotations": {**(template_meta.get("annotations") or {}), **(annotations or {})},
            "ownerReferences": [
                {
                    "apiVersion": api_version,
                    "kind": kind,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        # the scheduler's part: everything runs on the one local node
        "spec": {**template["spec"], "nodeName": NODE_NAME},
    }


def _condition(existing: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
               now: str, job: bool = False) -> dict[str, Any]:  # fmt: skip
    wanted = "True" if status else "False"
    before = next((c for c in existing if c.get("type") == type_), None)
    same = before is not None and before.get("status") == wanted
    changed = before is None or not same or before.get("reason") != reason or before.get("message") != message
    condition = {"type": type_, "status": wanted, "reason": reason, "message": message,
                 "lastTransitionTime": before["lastTransitionTime"] if same and before else now}  # fmt: skip
    if job:
        condition["lastProbeTime"] = before.get("lastProbeTime", now) if before and not changed else now
    else:
        condition["lastUpdateTime"] = before.get("lastUpdateTime", now) if before and not changed else now
    return condition


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # pod names
    status: dict[str, Any] = field(default_factory=dict)


# ---- Deployments -------------------------------------------------------------------------------------


def _scale_down_order(pod: Mapping[str, Any]) -> tuple[int, str]:
    # not ready first, then the newest (what the ReplicaSet controller removes first)
    created = pod["metadata"].get("creationTimestamp") or ""
    newest_first = "".join(chr(0x10FFFF - ord(ch)) for ch in created)
    return (1 if is_ready(pod) else 0, newest_first)


def plan_deployment(deployment: Mapping[str, Any], pods: list[dict[str, Any]], now: str) -> Plan:
    meta, spec = deployment["metadata"], deployment.get("spec") or {}
    desired = int(spec.get("replicas", 1))
    strategy = spec.get("strategy") or {}
    current_hash = template_hash(spec["template"])
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    plan = Plan()
    # pods that will never run again (Deployment pods restart forever, but a StartError under a custom
    # restartPolicy could end one): replace them
    for pod in pods:
        if phase(pod) in ("Succeeded", "Failed"):
            plan.delete.append(pod["metadata"]["name"])
    pods = [p for p in pods if p["metadata"]["name"] not in plan.delete]
    new = [p for p in pods if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == current_hash]
    old = [p for p in pods if p not in new]

    def create(count: int) -> None:
        for _ in range(max(0, count)):
            name = f"{meta['name']}-{current_hash}-{random_suffix()}"
            plan.create.append(
                _pod_for(deployment, "Deployment", "apps/v1", name, {TEMPLATE_HASH_LABEL: current_hash})
            )

    if strategy.get("type") == "Recreate":
        plan.delete += [p["metadata"]["name"] for p in old]
        if not old:
            create(desired - len(new))
    else:
        rolling = strategy.get("rollingUpdate") or {}
        surge = _scaled(rolling.get("maxSurge"), desired, "25%", round_up=True)
        unavailable = _scaled(rolling.get("maxUnavailable"), desired, "25%", round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1  # what the API server's validation forces
        if len(new) > desired:
            surplus = sorted(new, key=_scale_down_order)[: len(new) - desired]
            plan.delete += [p["metadata"]["name"] for p in surplus]
            new = [p for p in new if p not in surplus]
        if len(new) < desired:
            room = desired - len(new) if not old else desired + surge - len(new) - len(old)
            create(min(desired - len(new), room))
        min_available = desired - unavailable
        available = sum(is_ready(p) for p in new) + sum(is_ready(p) for p in old)
        removable = available - min_available
        for pod in sorted(old, key=_scale_down_order):
            if not is_ready(pod):
                plan.delete.append(pod["metadata"]["name"])
            elif removable > 0:
                plan.delete.append(pod["metadata"]["name"])
                removable -= 1

    remaining = [p for p in pods if p["metadata"]["name"] not in plan.delete]
    ready = sum(is_ready(p) for p in remaining)
    updated = sum(
        (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == current_hash for p in remaining
    )
    total = len(remaining) + len(plan.create)
    rolling = strategy.get("rollingUpdate") or {}
    max_unavailable = _scaled(rolling.get("maxUnavailable"), desired, "25%", round_up=False)
    existing = list((deployment.get("status") or {}).get("conditions") or [])
    complete = updated == desired and ready >= desired and total == desired
    conditions = [
        _condition(existing, "Available", ready >= desired - max_unavailable,
                   "MinimumReplicasAvailable" if ready >= desired - max_unavailable else "MinimumReplicasUnavailable",
                   "Deployment has minimum availability." if ready >= desired - max_unavailable
                   else "Deployment does not have minimum availability.", now),
        _condition(existing, "Progressing", True, "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                   f'Deployment "{meta["name"]}" has successfully progressed.' if complete
                   else f'Deployment "{meta["name"]}" is progressing.', now),
    ]  # fmt: skip
    plan.status = {
        "observedGeneration": meta.get("generation", 1),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, desired - ready),
        "conditions": conditions,
    }
    return plan


# ---- Jobs --------------------------------------------------------------------------------------------


def _finished(job: Mapping[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def plan_job(job: Mapping[str, Any], pods: list[dict[str, Any]], now: datetime) -> Plan:
    meta, spec = job["metadata"], job.get("spec") or {}
    status = dict(job.get("status") or {})
    plan = Plan()
    ts = now.isoformat().replace("+00:00", "Z")
    existing = list(status.get("conditions") or [])
    policy = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy", "Never")
    active = [
        p
        for p in pods
        if phase(p) not in ("Succeeded", "Failed") and not p["metadata"].get("deletionTimestamp")
    ]
    succeeded = sum(phase(p) == "Succeeded" for p in pods)
    failed = sum(phase(p) == "Failed" for p in pods)
    if policy == "OnFailure":  # restarts in place are the failures of such a Job
        failed += sum(
            cs.get("restartCount", 0)
            for p in pods
            for cs in (p.get("status") or {}).get("containerStatuses") or []
        )
    start = status.get("startTime") or ts
    new_status: dict[str, Any] = {
        "startTime": start,
        "active": len(active),
        "ready": sum(is_ready(p) for p in active),
        "succeeded": succeeded,
        "failed": failed,
        "terminating": 0,
    }
    if _finished(job):
        new_status["active"] = 0
        new_status["ready"] = 0
        plan.delete += [p["metadata"]["name"] for p in active]
        plan.status = {**status, **{k: v for k, v in new_status.items() if k not in ("startTime",)}}
        return plan

    completions = int(spec.get("completions") or 1)
    parallelism = int(spec["parallelism"]) if spec.get("parallelism") is not None else 1
    backoff_limit = int(spec["backoffLimit"]) if spec.get("backoffLimit") is not None else 6
    deadline = spec.get("activeDeadlineSeconds")
    started = datetime.fromisoformat(start.replace("Z", "+00:00"))

    def finish(kind: str, reason: str, message: str) -> None:
        target = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
        new_status["conditions"] = [
            *[c for c in existing if c.get("type") not in (target, kind)],
            _condition(existing, target, True, reason, message, ts, job=True),
            _condition(existing, kind, True, reason, message, ts, job=True),
        ]
        plan.delete.extend(p["metadata"]["name"] for p in active)
        new_status["active"], new_status["ready"] = 0, 0
        if kind == "Complete":
            new_status["completionTime"] = ts

    if succeeded >= completions:
        finish("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
    elif failed > backoff_limit:
        finish("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    elif deadline is not None and (now - started).total_seconds() > float(deadline):
        finish("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    else:
        wanted = min(parallelism, completions - succeeded) - len(active)
        for _ in range(max(0, wanted)):
            labels = {"batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"],
                      "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}  # fmt: skip
            name = f"{meta['name'][:57]}-{random_suffix()}"
            plan.create.append(
                _pod_for(job, "Job", "batch/v1", name, labels, {"batch.kubernetes.io/job-tracking": ""})
            )
        new_status["active"] = len(active) + max(0, wanted)
        if existing:
            new_status["conditions"] = existing
    plan.status = new_status
    return plan


# ---- the shell ---------------------------------------------------------------------------------------


class Controllers:
    """Runs the Deployment and Job controllers against the API (one ``sync`` per tick)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def sync(self, pods: list[dict[str, Any]], now: datetime) -> bool:
        """One pass over every Deployment and Job; True when pods were created or deleted."""
        acted = False
        ts = now.isoformat().replace("+00:00", "Z")
        for kind in ("Deployment", "Job"):
            for owner in self.api.list(kind):
                uid = owner["metadata"]["uid"]
                if owner["metadata"].get("deletionTimestamp"):
                    continue
                owned = [p for p in pods if owned_by(p, uid)]
                plan = (
                    plan_deployment(owner, owned, ts) if kind == "Deployment" else plan_job(owner, owned, now)
                )
                acted |= self._apply(kind, owner, plan)
        return acted

    def _apply(self, kind: str, owner: dict[str, Any], plan: Plan) -> bool:
        meta = owner["metadata"]
        namespace = meta["namespace"]
        for name in plan.delete:
            self.api.delete("Pod", namespace, name)
            log.info("%s %s/%s: deleted pod %s", kind, namespace, meta["name"], name)
        for pod in plan.create:
            self.api.create(pod)
            log.info("%s %s/%s: created pod %s", kind, namespace, meta["name"], pod["metadata"]["name"])
        if plan.status and plan.status != (owner.get("status") or {}):
            self.api.patch_status(kind, namespace, meta["name"], plan.status)
        return bool(plan.delete or plan.create)
