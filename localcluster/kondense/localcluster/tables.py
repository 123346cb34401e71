"""Server-side printing: ``meta.k8s.io/v1`` Tables, as ``kubectl get`` asks for them.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`` and prints the columns the
server chose: a custom resource's ``additionalPrinterColumns`` (``Age`` when it declares none), the
built-in columns of the kinds the local cluster runs (Pods' READY/STATUS/RESTARTS, Deployments'
READY/UP-TO-DATE/AVAILABLE, Jobs' STATUS/COMPLETIONS/DURATION, Services' TYPE/CLUSTER-IP/PORT(S), ...),
and ``Name``/``Created At`` for anything else, as the API server's default table convertor does. The
cell values follow the API server's printers (``k8s.io/kubernetes/pkg/printers/internalversion``).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TABLE_MEDIA = "as=Table"
_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated."
)
_AGE_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "Clients may not set this value. It is represented in RFC3339 form and is in UTC."
)

Row = list[Any]
Printer = Callable[[Mapping[str, Any], datetime.datetime], Row]


def wants_table(accept: str) -> bool:
    """Whether the client asked for a Table (kubectl get does; -o yaml/json/jsonpath do not)."""
    return any("as=Table" in part.replace(" ", "") and "g=meta.k8s.io" in part for part in accept.split(","))


# ---- formatting ---------------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def human_duration(seconds_total: float) -> str:
    """k8s.io/apimachinery's duration.HumanDuration: 45s, 5m3s, 12m, 3h5m, 10h, 2d4h, 30d, 2y10d."""
    seconds = int(seconds_total)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def since(value: Any, now: datetime.datetime) -> str:
    """translateTimestampSince: the age of a timestamp, ``<unknown>`` without one."""
    when = _parse_time(value)
    return "<unknown>" if when is None else human_duration((now - when).total_seconds())


# ---- a small JSONPath, enough for additionalPrinterColumns --------------------------------------------

_STEP = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$]+)
      | \[(?P<index>-?\d+)\]
      | \[\*\]
      | \.\*
      | \[['"](?P<quoted>[^'"]+)['"]\]
      | \[\?\(@\.(?P<filter>[A-Za-z0-9_.\-]+)\s*(?P<op>==|!=)\s*['"]?(?P<value>[^'"\)]*)['"]?\)\]""",
    re.VERBOSE,
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The values at a Kubernetes JSONPath like ``.status.conditions[?(@.type=="Ready")].status``."""
    expression = path.strip()
    if expression.startswith("{") and expression.endswith("}"):
        expression = expression[1:-1]
    expression = expression.removeprefix("$")
    values = [obj]
    position = 0
    while position < len(expression):
        match = _STEP.match(expression, position)
        if match is None:
            return []
        position = match.end()
        found: list[Any] = []
        for value in values:
            if match["field"] is not None or match["quoted"] is not None:
                key = match["field"] if match["field"] is not None else match["quoted"]
                if isinstance(value, Mapping) and key in value:
                    found.append(value[key])
            elif match["index"] is not None:
                index = int(match["index"])
                if isinstance(value, list) and -len(value) <= index < len(value):
                    found.append(value[index])
            elif match["filter"] is not None:
                if isinstance(value, list):
                    for item in value:
                        field = jsonpath(item, "." + match["filter"])
                        equal = bool(field) and str(_scalar(field[0])) == match["value"]
                        if equal == (match["op"] == "=="):
                            found.append(item)
            elif isinstance(value, list):
                found.extend(value)
            elif isinstance(value, Mapping):
                found.extend(value.values())
        values = found
    return values


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# ---- columns --------------------------------------------------------------------------------------------


def column(
    name: str, type_: str = "string", *, fmt: str = "", description: str = "", priority: int = 0
) -> dict[str, Any]:
    return {"name": name, "type": type_, "format": fmt, "description": description, "priority": priority}


NAME = column("Name", fmt="name", description=_NAME_DESCRIPTION)
AGE = column("Age", description=_AGE_DESCRIPTION)


def crd_columns(printer_columns: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """A custom resource's columns: Name, then its additionalPrinterColumns (or Age)."""
    declared = list(printer_columns or []) or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    return [NAME] + [
        column(
            c["name"],
            c.get("type", "string"),
            fmt=c.get("format", ""),
            description=c.get("description", ""),
            priority=int(c.get("priority", 0)),
        )
        for c in declared
    ]


def crd_row(
    obj: Mapping[str, Any], printer_columns: Sequence[Mapping[str, Any]] | None, now: datetime.datetime
) -> Row:
    declared = list(printer_columns or []) or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    cells: Row = [obj["metadata"].get("name", "")]
    for c in declared:
        values = jsonpath(obj, c.get("jsonPath", ""))
        if not values or values[0] is None:
            cells.append(None)
            continue
        value = values[0]
        kind = c.get("type", "string")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "date":
            cells.append(since(value, now))
        elif (kind in ("integer", "number") and numeric) or isinstance(value, str | bool):
            cells.append(value)
        else:
            cells.append(
                json.dumps(value, separators=(",", ":"))
                if isinstance(value, dict | list)
                else str(_scalar(value))
            )
    return cells


# ---- built-in printers -------------------------------------------------------------------------------------


def _containers(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return list(spec.get("containers") or [])


def _selector(selector: Mapping[str, Any] | None) -> str:
    if not selector:
        return "<none>"
    labels = (
        selector.get("matchLabels", selector)
        if "matchLabels" in selector or "matchExpressions" in selector
        else selector
    )
    parts = [f"{k}={v}" for k, v in sorted((labels or {}).items()) if isinstance(v, str)]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        operator = expression.get("operator", "")
        if operator == "Exists":
            parts.append(expression["key"])
        elif operator == "DoesNotExist":
            parts.append(f"!{expression['key']}")
        else:
            parts.append(f"{expression['key']} {operator.lower()} ({values})")
    return ",".join(parts) or "<none>"


def _pod_status(pod: Mapping[str, Any]) -> tuple[str, int, int, int, str]:
    """(status reason, ready containers, total, restarts, last restart age) as kubectl shows them."""
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    reason = status.get("reason") or status.get("phase") or ""
    total = len(spec.get("containers") or [])
    restarts = 0
    ready = 0
    initializing = False
    for index, init in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(init.get("restartCount") or 0)
        state = init.get("state") or {}
        terminated = state.get("terminated")
        waiting = state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        initializing = True
        if terminated:
            reason = "Init:" + (terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}")
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(spec.get('initContainers') or [])}"
        break
    if not initializing:
        has_running = False
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount") or 0)
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated:
                reason = (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode')}"
                )
            elif state.get("running") and container.get("ready"):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = (
                "Running"
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or []
                )
                else "NotReady"
            )
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    last = ""
    for container in status.get("containerStatuses") or []:
        finished = ((container.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
        if finished and (not last or finished > last):
            last = finished
    return reason, ready, total, restarts, last


def _pod(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    reason, ready, total, restarts, last = _pod_status(obj)
    restart_text = f"{restarts} ({since(last, now)} ago)" if last and restarts else str(restarts)
    status = obj.get("status") or {}
    gates = (obj.get("spec") or {}).get("readinessGates") or []
    return [
        obj["metadata"]["name"],
        f"{ready}/{total}",
        reason,
        restart_text,
        since(obj["metadata"].get("creationTimestamp"), now),
        status.get("podIP") or "<none>",
        (obj.get("spec") or {}).get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def _deployment(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers = _containers(obj)
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        int(status.get("updatedReplicas", 0)),
        int(status.get("availableReplicas", 0)),
        since(obj["metadata"].get("creationTimestamp"), now),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        _selector(spec.get("selector")),
    ]


def _replicaset(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers = _containers(obj)
    return [
        obj["metadata"]["name"],
        int(spec.get("replicas", 1)),
        int(status.get("replicas", 0)),
        int(status.get("readyReplicas", 0)),
        since(obj["metadata"].get("creationTimestamp"), now),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        _selector(spec.get("selector")),
    ]


def _has_condition(obj: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _job(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if _has_condition(obj, "Complete"):
        state = "Complete"
    elif _has_condition(obj, "Failed"):
        state = "Failed"
    elif obj["metadata"].get("deletionTimestamp"):
        state = "Terminating"
    elif _has_condition(obj, "Suspended"):
        state = "Suspended"
    elif _has_condition(obj, "FailureTarget"):
        state = "FailureTarget"
    elif _has_condition(obj, "SuccessCriteriaMet"):
        state = "SuccessCriteriaMet"
    else:
        state = "Running"
    succeeded = int(status.get("succeeded", 0))
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    else:
        parallelism = int(spec.get("parallelism", 1))
        completions = f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"
    start, end = _parse_time(status.get("startTime")), _parse_time(status.get("completionTime"))
    duration = "" if start is None else human_duration(((end or now) - start).total_seconds())
    containers = _containers(obj)
    return [
        obj["metadata"]["name"],
        state,
        completions,
        duration,
        since(obj["metadata"].get("creationTimestamp"), now),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        _selector(spec.get("selector")),
    ]


def _service(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    spec = obj.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    external: str
    if kind == "ExternalName":
        external = spec.get("externalName") or "<none>"
    elif kind == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        external = ",".join(i.get("ip") or i.get("hostname") or "" for i in ingress) or "<pending>"
    else:
        external = ",".join(spec.get("externalIPs") or []) or "<none>"
    ports = []
    for port in spec.get("ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        ports.append(f"{text}/{port.get('protocol', 'TCP')}")
    return [
        obj["metadata"]["name"],
        kind,
        spec.get("clusterIP") or "<none>",
        external,
        ",".join(ports) or "<none>",
        since(obj["metadata"].get("creationTimestamp"), now),
        _selector(spec.get("selector")) if spec.get("selector") else "<none>",
    ]


def _event(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    involved = obj.get("involvedObject") or obj.get("regarding") or {}
    last = (
        obj.get("lastTimestamp")
        or obj.get("eventTime")
        or obj.get("firstTimestamp")
        or obj.get("deprecatedLastTimestamp")
    )
    return [
        since(last, now),
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        obj.get("message") or obj.get("note") or "",
        obj["metadata"]["name"],
    ]


def _namespace(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    return [
        obj["metadata"]["name"],
        (obj.get("status") or {}).get("phase", ""),
        since(obj["metadata"].get("creationTimestamp"), now),
    ]


def _node(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    ready = next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )
    status = "Unknown" if ready is None else "Ready" if ready.get("status") == "True" else "NotReady"
    roles = sorted(
        key.split("/", 1)[1]
        for key in (obj["metadata"].get("labels") or {})
        if key.startswith("node-role.kubernetes.io/")
    )
    version = ((obj.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
    return [
        obj["metadata"]["name"],
        status,
        ",".join(roles) or "<none>",
        since(obj["metadata"].get("creationTimestamp"), now),
        version,
    ]


def _configmap(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], count, since(obj["metadata"].get("creationTimestamp"), now)]


def _secret(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    count = len(obj.get("data") or {}) + len(obj.get("stringData") or {})
    return [
        obj["metadata"]["name"],
        obj.get("type", "Opaque"),
        count,
        since(obj["metadata"].get("creationTimestamp"), now),
    ]


def _pvc(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    modes = {
        "ReadWriteOnce": "RWO",
        "ReadOnlyMany": "ROX",
        "ReadWriteMany": "RWX",
        "ReadWriteOncePod": "RWOP",
    }
    return [
        obj["metadata"]["name"],
        status.get("phase", "Pending"),
        spec.get("volumeName", ""),
        (status.get("capacity") or {}).get("storage", ""),
        ",".join(modes.get(m, m) for m in status.get("accessModes") or []),
        spec.get("storageClassName") or "<unset>",
        spec.get("volumeAttributesClassName") or "<unset>",
        since(obj["metadata"].get("creationTimestamp"), now),
    ]


def _age_only(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    return [obj["metadata"]["name"], since(obj["metadata"].get("creationTimestamp"), now)]


def _default(obj: Mapping[str, Any], now: datetime.datetime) -> Row:
    created = _parse_time(obj["metadata"].get("creationTimestamp"))
    return [obj["metadata"]["name"], created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else None]


_WIDE = 1
# the template columns kubectl shows with -o wide for Deployments, ReplicaSets and Jobs alike
CONTAINERS = column("Containers", description="Names of each container in the template.", priority=_WIDE)
IMAGES = column("Images", description="Images referenced by each container in the template.", priority=_WIDE)
# (group, plural) -> columns and the row printer, for the kinds kubectl users look at here.
BUILTIN: dict[tuple[str, str], tuple[list[dict[str, Any]], Printer]] = {
    ("", "pods"): (
        [
            NAME,
            column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            column("Status", description="The aggregate status of the containers in this pod."),
            column(
                "Restarts",
                description="The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            column(
                "IP",
                description="IP address allocated to the pod. Routable at least within the cluster.",
                priority=_WIDE,
            ),
            column(
                "Node",
                description="NodeName is a request to schedule this pod onto a specific node.",
                priority=_WIDE,
            ),
            column(
                "Nominated Node",
                description="nominatedNodeName is set only when this pod preempts other pods on the node.",
                priority=_WIDE,
            ),
            column(
                "Readiness Gates",
                description="If specified, all readiness gates will be evaluated for pod readiness.",
                priority=_WIDE,
            ),
        ],
        _pod,
    ),
    ("apps", "deployments"): (
        [
            NAME,
            column("Ready", description="Number of the pod with ready state"),
            column(
                "Up-to-date",
                "integer",
                description="Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            column(
                "Available",
                "integer",
                description="Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            column(
                "Selector",
                description="Label query over pods that should match the replicas count.",
                priority=_WIDE,
            ),
        ],
        _deployment,
    ),
    ("apps", "replicasets"): (
        [
            NAME,
            column("Desired", "integer", description="Replicas is the number of desired replicas."),
            column(
                "Current", "integer", description="Replicas is the most recently observed number of replicas."
            ),
            column("Ready", "integer", description="The number of ready replicas for this replica set."),
            AGE,
            CONTAINERS,
            IMAGES,
            column(
                "Selector",
                description="Selector is a label query over pods that should match the replica count.",
                priority=_WIDE,
            ),
        ],
        _replicaset,
    ),
    ("batch", "jobs"): (
        [
            NAME,
            column("Status", description="Status of the job."),
            column(
                "Completions",
                description="The desired number of successfully finished pods the job should be run with.",
            ),
            column("Duration", description="Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            column(
                "Selector",
                description="A label query over pods that should match the pod count.",
                priority=_WIDE,
            ),
        ],
        _job,
    ),
    ("", "services"): (
        [
            NAME,
            column("Type", description="type determines how the Service is exposed."),
            column("Cluster-IP", description="clusterIP is the IP address of the service."),
            column(
                "External-IP",
                description="externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            column("Port(s)", description="The list of ports that are exposed by this service."),
            AGE,
            column(
                "Selector",
                description="Route service traffic to pods with label keys and values matching this selector.",
                priority=_WIDE,
            ),
        ],
        _service,
    ),
    ("", "events"): (
        [
            column(
                "Last Seen",
                description="The time at which the most recent occurrence of this event was recorded.",
            ),
            column("Type", description="Type of this event (Normal, Warning)."),
            column(
                "Reason",
                description="This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            column("Object", description="The object that this event is about."),
            column("Message", description="A human-readable description of the status of this operation."),
            column("Name", fmt="name", description=_NAME_DESCRIPTION, priority=_WIDE),
        ],
        _event,
    ),
    ("", "namespaces"): (
        [NAME, column("Status", description="The status of the namespace"), AGE],
        _namespace,
    ),
    ("", "nodes"): (
        [
            NAME,
            column("Status", description="The status of the node"),
            column("Roles", description="The roles of the node"),
            AGE,
            column("Version", description="Kubelet Version reported by the node."),
        ],
        _node,
    ),
    ("", "configmaps"): (
        [NAME, column("Data", "integer", description="Number of data entries"), AGE],
        _configmap,
    ),
    ("", "secrets"): (
        [
            NAME,
            column("Type", description="The type of the secret"),
            column("Data", "integer", description="Number of data entries"),
            AGE,
        ],
        _secret,
    ),
    ("", "persistentvolumeclaims"): (
        [
            NAME,
            column("Status", description="The phase of the claim."),
            column("Volume", description="The binding reference to the PersistentVolume backing this claim."),
            column("Capacity", description="The actual resources of the underlying volume."),
            column("Access Modes", description="The actual access modes the volume backing the PVC has."),
            column("StorageClass", description="Name of the StorageClass required by the claim."),
            column(
                "VolumeAttributesClass", description="Name of the VolumeAttributesClass used by the claim."
            ),
            AGE,
        ],
        _pvc,
    ),
    ("", "serviceaccounts"): ([NAME, AGE], _age_only),
}
BUILTIN[("events.k8s.io", "events")] = BUILTIN[("", "events")]
_DEFAULT_COLUMNS = [NAME, column("Created At", "date", description=_AGE_DESCRIPTION)]


def _row_object(obj: Mapping[str, Any], include: str) -> Any:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(
    objects: Sequence[Mapping[str, Any]],
    *,
    group: str,
    plural: str,
    printer_columns: Sequence[Mapping[str, Any]] | None,
    custom: bool,
    resource_version: str,
    include_object: str = "Metadata",
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The Table a real API server answers for these objects (``custom``: a CRD's resource)."""
    now = now or datetime.datetime.now(datetime.UTC)
    printer: Printer
    if custom:
        columns = crd_columns(printer_columns)

        def printer(obj: Mapping[str, Any], at: datetime.datetime) -> Row:
            return crd_row(obj, printer_columns, at)
    else:
        columns, printer = BUILTIN.get((group, plural), (_DEFAULT_COLUMNS, _default))
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer(obj, now)}
        included = _row_object(obj, include_object)
        if included is not None:
            row["object"] = included
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }
