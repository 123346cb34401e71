"""The `CompressedModel` custom resource (group `kondense.dev`, version `v1alpha1`).

These pydantic models are the single source of truth: the CRD in `crds/` is generated from them
(`kondense crd`), `kondense validate` checks files with them, and the operator parses every object
it receives with them. Rules that OpenAPI cannot express are written twice on purpose: once as a
pydantic validator (the error users see from `kondense validate` and the operator) and once as a CEL
rule in ``x-kubernetes-validations`` (what the API server enforces on `kubectl apply`). The tests
prove both reject every file in `examples/invalid/`.
"""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from kondense.api.artifacts import ArtifactRef, VariantMetrics
from kondense.api.techniques import (
    PARAMS_BY_TECHNIQUE,
    TECHNIQUES_NEEDING_CALIBRATION,
    StrictModel,
    Task,
    Technique,
)
from kondense.api.uris import check_uri
from kondense.operator.naming import MODEL_NAME_MAX

GROUP = "kondense.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CompressedModel"
PLURAL = "compressedmodels"
SINGULAR = "compressedmodel"
SHORT_NAMES = ("cmodel", "cmodels")
CATEGORIES = ("kondense",)

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
URI_PATTERN = r"^(pvc|file|https?)://.+$"
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"

MAX_TARGETS = 16
MAX_STEPS = 8
MAX_ROLLOUT_STEPS = 20
MAX_CHECKS = 20  # bounded history of analysis checks kept in status
MIN_INTERVAL = timedelta(seconds=5)
MAX_INTERVAL = timedelta(hours=24)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=DNS1123_LABEL,
        description="DNS-1123 label: lower-case letters, digits and '-', starting and ending alphanumeric.",
    ),
]
Uri = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=URI_PATTERN,
        description="pvc://CLAIM/PATH (mounted from a PersistentVolumeClaim), file://PATH, or http(s)://URL.",
    ),
    AfterValidator(check_uri),  # the one pvc:// rule (kondense.api.uris); not expressible in OpenAPI
]


def _quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a quantity such as 500m, 2Gi or 4")
    if isinstance(value, str) and (len(value) > 64 or not re.fullmatch(QUANTITY_PATTERN, value)):
        raise ValueError(f"{value!r} is not a quantity such as 500m, 2Gi or 4")
    return value


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse `30s`, `2m`, `1h30m`, `500ms` (the subset of Go durations Kubernetes users write)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like '30s', '2m' or '1h30m'")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h)", text))
    return timedelta(seconds=seconds)


def _duration_field(default: str, minimum: timedelta, maximum: timedelta, description: str) -> Any:
    lo, hi = f"{int(minimum.total_seconds())}s", f"{int(maximum.total_seconds())}s"
    return Field(
        default,
        pattern=DURATION_PATTERN,
        max_length=32,
        description=f"{description} Between {lo} and {hi}.",
        json_schema_extra=cel_rules(
            cel(
                f"duration(self) >= duration('{lo}') && duration(self) <= duration('{hi}')",
                f"must be between {lo} and {hi}",
            )
        ),
    )


def _check_duration(value: str, minimum: timedelta, maximum: timedelta) -> str:
    parsed = parse_duration(value)
    if not minimum <= parsed <= maximum:
        raise ValueError(
            f"must be between {int(minimum.total_seconds())}s and {int(maximum.total_seconds())}s, got {value!r}"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Kubernetes-shaped helpers


class ResourceRequirements(StrictModel):
    requests: dict[str, Quantity] | None = Field(None, max_length=16)
    limits: dict[str, Quantity] | None = Field(None, max_length=16)


class Toleration(StrictModel):
    key: str | None = Field(None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


AFFINITY_KINDS = ("nodeAffinity", "podAffinity", "podAntiAffinity")


def _affinity(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a Kubernetes affinity object (nodeAffinity, podAffinity, podAntiAffinity)")
    unknown = sorted(set(value) - set(AFFINITY_KINDS))
    if unknown:
        raise ValueError(f"unknown affinity field(s) {unknown}: expected {', '.join(AFFINITY_KINDS)}")
    return value


Affinity = Annotated[
    dict[str, Any],
    PlainValidator(_affinity),
    WithJsonSchema(
        {
            "type": "object",
            "description": "A Kubernetes pod affinity (nodeAffinity, podAffinity, podAntiAffinity), "
            "copied into the pod spec as is.",
            # checked by the models (kondense validate, the operator) and by the API server when the
            # pod is created; a CEL rule over a schemaless object is not portable across versions
            "x-kubernetes-preserve-unknown-fields": True,
        }
    ),
]


class Placement(StrictModel):
    """Where pods go and what they may use (copied into the pod specs)."""

    resources: ResourceRequirements | None = None
    nodeSelector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(None, max_length=32)
    tolerations: list[Toleration] | None = Field(None, max_length=32)
    affinity: Affinity | None = None


# ---------------------------------------------------------------------------------------------
# spec.baseModel, spec.data


class ModelRef(StrictModel):
    """The model to compress, in its serving format."""

    uri: Uri
    format: Literal["onnx"] = Field("onnx", description="Serving format of the base model.")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Optional pin: compression refuses a base model that differs.",
    )


class DataRef(StrictModel):
    uri: Uri


class DataSpec(StrictModel):
    """Data files (.npz) for calibration, evaluation and training."""

    calibration: DataRef | None = Field(
        None,
        description="Calibration inputs (.npz, arrays named after the model inputs). static-int8 needs it.",
    )
    evaluation: DataRef = Field(description="Held-out inputs (+ optional `labels`) for offline evaluation.")
    training: DataRef | None = Field(
        None, description="Fine-tuning and distillation inputs; default: the calibration data."
    )


# ---------------------------------------------------------------------------------------------
# spec.targets: one compression Job and one candidate variant each


def _technique_discriminator(value: Any) -> str | None:
    if isinstance(value, dict):
        technique = value.get("technique")
        return technique if isinstance(technique, str) else None
    return getattr(value, "technique", None)


class StepBase(StrictModel):
    technique: Technique
    params: StrictModel


def _tagged(technique: Technique, base: type[BaseModel], suffix: str) -> Any:
    params_model = PARAMS_BY_TECHNIQUE[technique]
    cls = create_model(
        "".join(p.capitalize() for p in re.split(r"[-_]", technique.value)) + suffix,
        __base__=base,
        technique=(Literal[technique.value], Field(description="Compression technique.")),  # type: ignore[arg-type]
        params=(params_model, Field(default_factory=params_model, description=params_model.__doc__)),
    )
    return Annotated[cls, Tag(technique.value)]


PIPELINE = "pipeline"

if TYPE_CHECKING:  # the unions below are built at run time; type checkers see their common base
    Step = StepBase
else:
    Step = Annotated[
        Union[tuple(_tagged(t, StepBase, "Step") for t in Technique)],  # noqa: UP007
        Discriminator(_technique_discriminator),
    ]


class TargetBase(StrictModel):
    name: Name = Field(description="Variant name; also names the compression Job.")
    maxAccuracyDelta: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Accuracy budget for this target; default: spec.selection.maxAccuracyDelta.",
    )

    def pipeline(self) -> list[Any]:
        """The steps this target runs, in order (a single-technique target is a one-step pipeline)."""
        steps = getattr(self, "steps", None)
        if steps is not None:
            return list(steps)
        return [self]

    def techniques(self) -> list[Technique]:
        return [Technique(step.technique) for step in self.pipeline()]


class PipelineTarget(TargetBase):
    steps: list[Step] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="Techniques applied in order, e.g. prune then static-int8.",
    )


def _target_discriminator(value: Any) -> str | None:
    if isinstance(value, dict):
        if "technique" in value:
            technique = value["technique"]
            return technique if isinstance(technique, str) else None
        return PIPELINE if "steps" in value else None
    return getattr(value, "technique", None) or (PIPELINE if hasattr(value, "steps") else None)


if TYPE_CHECKING:
    Target = TargetBase
else:
    Target = Annotated[
        Union[
            (
                *tuple(_tagged(t, TargetBase, "Target") for t in Technique),
                Annotated[PipelineTarget, Tag(PIPELINE)],
            )
        ],
        Discriminator(_target_discriminator),
    ]


# ---------------------------------------------------------------------------------------------
# spec.selection, spec.compression, spec.serving


class Prefer(StrEnum):
    SMALLEST = "smallest"
    FASTEST = "fastest"
    PARETO = "pareto"


class SelectionSpec(StrictModel):
    maxAccuracyDelta: float = Field(
        0.01, ge=0, le=1, description="Offline gate: variants losing more than this are not rolled out."
    )
    prefer: Prefer = Field(
        Prefer.SMALLEST, description="Order of the passing variants (the fallback ladder)."
    )


class CompressionSpec(Placement):
    """Settings of the compression Jobs."""

    backoffLimit: int = Field(1, ge=0, le=10, description="Job retries before the variant fails.")
    activeDeadlineSeconds: int = Field(3600, ge=60, le=7 * 24 * 3600, description="Job time limit.")
    image: str | None = Field(None, max_length=512, description="Override the compression image.")
    sameNodesAsServing: bool = Field(
        True,
        description="Run the compression Jobs on the serving pods' class of node: serving.nodeSelector, "
        "serving.affinity and serving.tolerations apply to the Jobs wherever the same field is not set "
        "here (an empty value here sets none). int8 accuracy and speed depend on the CPU, so variants "
        "are measured on the hardware that will serve them.",
    )


class Runtime(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    TRITON = "triton"


class InstanceKind(StrEnum):
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


class DynamicBatching(StrictModel):
    maxQueueDelayMicroseconds: int = Field(100, ge=0, le=10_000_000)
    preferredBatchSize: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(None, max_length=16)


class TritonSpec(StrictModel):
    maxBatchSize: int = Field(8, ge=0, le=4096, description="0 disables batching in Triton.")
    dynamicBatching: DynamicBatching | None = None
    instanceKind: InstanceKind = InstanceKind.CPU
    instanceCount: int = Field(1, ge=1, le=64)


WORKERS_NEED_ONNXRUNTIME = (
    "workers: server processes are kondense serve's (runtime onnxruntime); Triton scales with its "
    "instance groups (serving.triton)"
)
AUTOSCALING_NEEDS_CPU = (
    "autoscaling: resources.requests.cpu is required (the HorizontalPodAutoscaler's CPU utilization is a "
    "percent of it)"
)


class Autoscaling(StrictModel):
    """HorizontalPodAutoscalers (autoscaling/v2, CPU utilization) for the stable and canary
    Deployments; `serving.replicas` is then only the size a Deployment is created with. The bounds are
    split between the tracks as the router splits replicas (the replicas router: by the canary weight;
    Gateway API: stable gets them whole, the canary its weight's share), at least one pod per serving
    track. The analysis holds while a track is scaling (ready pods != desired)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")
        )
    )

    minReplicas: int = Field(1, ge=1, le=100, description="Fewest pods of stable and canary together.")
    maxReplicas: int = Field(ge=1, le=100, description="Most pods of stable and canary together.")
    targetCPUUtilization: int = Field(
        80, ge=1, le=100, description="Average CPU use, percent of the pods' CPU request, to scale to."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.minReplicas > self.maxReplicas:
            raise ValueError(
                f"minReplicas ({self.minReplicas}) must not exceed maxReplicas ({self.maxReplicas})"
            )
        return self


class ServingSpec(Placement):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.autoscaling) || (has(self.resources) && has(self.resources.requests) "
                "&& 'cpu' in self.resources.requests)",
                AUTOSCALING_NEEDS_CPU,
                ".autoscaling",
            ),
            cel("!has(self.workers) || self.runtime == 'onnxruntime'", WORKERS_NEED_ONNXRUNTIME, ".workers"),
        )
    )

    runtime: Runtime = Field(Runtime.ONNXRUNTIME, description="onnxruntime (kondense's server) or triton.")
    replicas: int = Field(4, ge=1, le=100, description="Pods serving the model (stable + canary).")
    threads: int | None = Field(
        None, ge=1, le=256, description="ONNX Runtime intra-op threads per pod (per worker with workers)."
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Server processes per pod (kondense serve --workers), each with its own session and an "
        "equal share of the pod's CPUs: for a small model whose requests keep one core busy with HTTP and "
        "JSON. Each holds the model in memory: size the memory limit for all of them. onnxruntime only.",
    )
    image: str | None = Field(None, max_length=512, description="Override the serving image.")
    port: int = Field(8080, ge=1, le=65535)
    triton: TritonSpec | None = None
    autoscaling: Autoscaling | None = Field(
        None, description="Scale stable and canary on CPU with HorizontalPodAutoscalers (see Autoscaling)."
    )

    @model_validator(mode="after")
    def _autoscaling_needs_cpu(self) -> ServingSpec:
        if self.autoscaling is not None and "cpu" not in ((self.resources and self.resources.requests) or {}):
            raise ValueError(AUTOSCALING_NEEDS_CPU)
        if self.workers is not None and self.runtime != Runtime.ONNXRUNTIME:
            raise ValueError(WORKERS_NEED_ONNXRUNTIME)
        return self


# ---------------------------------------------------------------------------------------------
# steering: manual approval and acknowledged intents (kubectl kondense; issue 14)


class Approval(StrEnum):
    NONE = "none"
    PROMOTION = "promotion"
    EVERY_STEP = "everyStep"


class SteeringSpec(StrictModel):
    """The parts of spec.rollout that let people gate the rollout."""

    approval: Approval = Field(
        Approval.NONE,
        description="Manual gates: none; promotion (wait in phase WaitingForApproval before promoting); "
        "everyStep (wait before every step up and before promoting). While waiting the canary keeps its "
        "weight and analysis keeps running (a breach still rolls back); `kubectl kondense approve` lets it go on.",
    )
    webhooks: list[Webhook] = Field(
        default_factory=list,
        max_length=16,
        description="HTTP hooks: pre-rollout, rollout, confirm-traffic-increase, confirm-promotion, "
        "post-rollout, rollback (see Webhook).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("webhooks")
    @classmethod
    def _unique_webhooks(cls, hooks: list[Webhook]) -> list[Webhook]:
        names = [h.name for h in hooks]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"[{index}].name: duplicate webhook name {name!r} (names must be unique)")
        return hooks


class WebhookType(StrEnum):
    PRE_ROLLOUT = "pre-rollout"  # before a canary gets any traffic: a failure holds it back
    ROLLOUT = "rollout"  # with every interval analysis: a failure is a failed check
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"  # before each step up: a failure holds
    CONFIRM_PROMOTION = "confirm-promotion"  # before promoting: a failure holds
    POST_ROLLOUT = "post-rollout"  # after a promotion or a rollback (told, not asked)
    ROLLBACK = "rollback"  # with every interval analysis: a 2xx rolls the canary back at once


class Webhook(StrictModel):
    """An HTTP POST the operator makes at a point of the rollout (as Flagger's analysis.webhooks). The
    JSON payload names the model, namespace, phase, webhook type, variant, step, weight, the latest
    readings and `metadata`. A 2xx answer passes; anything else, an unreachable URL or a timeout fails."""

    name: Name
    type: WebhookType = Field(WebhookType.ROLLOUT, description="When it is called and what its answer does.")
    url: str = Field(pattern=r"^https?://.+$", max_length=2048, description="http(s) URL to POST to.")
    timeout: str = _duration_field("5s", timedelta(seconds=1), timedelta(seconds=60), "Answer within this.")
    metadata: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        None, max_length=32, description="Passed as is in the payload."
    )

    @field_validator("timeout")
    @classmethod
    def _timeout_range(cls, value: str) -> str:
        return _check_duration(value, timedelta(seconds=1), timedelta(seconds=60))

    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout).total_seconds()


class NotificationType(StrEnum):
    SLACK = "slack"  # Slack incoming webhook: {"text": ...}
    MSTEAMS = "msteams"  # Microsoft Teams incoming webhook: {"text": ...}
    WEBHOOK = "webhook"  # generic: {name, namespace, severity, reason, message}


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class SecretKeyRef(StrictModel):
    name: Name = Field(description="A Secret in the CompressedModel's namespace.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Its key.")


class Notification(StrictModel):
    """Where to tell people about the rollout: canary start, waiting for approval, each breach,
    rollback, promotion and failure. Sent off the reconcile path, with retries and backoff."""

    name: Name
    type: NotificationType
    secretKeyRef: SecretKeyRef = Field(description="The Secret key holding the URL to POST to.")
    severity: Severity = Field(Severity.INFO, description="Send only notices at least this severe.")


class NotificationsSpec(StrictModel):
    notifications: list[Notification] = Field(
        default_factory=list,
        max_length=8,
        description="Chat and webhook notifications (the operator needs `get` on Secrets: chart value "
        "notifications.enabled).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class SteeringStatus(BaseModel):
    """What the operator acknowledged of the intents written as annotations (kondense.api.intents)."""

    model_config = ConfigDict(extra="ignore")

    paused: bool = Field(False, description="The rollout is paused (annotation kondense.dev/paused).")
    intents: dict[str, Annotated[str, Field(max_length=128)]] = Field(
        default_factory=dict,
        max_length=8,
        description="The last nonce acted on per one-shot intent (approve, promote, abort, retry).",
    )


# ---------------------------------------------------------------------------------------------
# spec.rollout


class RouterType(StrEnum):
    REPLICAS = "replicas"
    GATEWAY_API = "gatewayAPI"


class HTTPRouteRef(StrictModel):
    """An HTTPRoute in the CompressedModel's own namespace, labelled `kondense.dev/canary-of: <name>`
    (the operator sets the weights of no other route)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.namespace)",
                "the HTTPRoute must be in the CompressedModel's own namespace: remove httpRoute.namespace",
                ".namespace",
            )
        )
    )

    name: Name
    namespace: Name | None = Field(
        None, description="Not allowed (kept to reject it clearly): the route is in the CR's namespace."
    )

    @field_validator("namespace")
    @classmethod
    def _own_namespace_only(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "the HTTPRoute must be in the CompressedModel's own namespace: remove httpRoute.namespace"
            )
        return value


class TrafficRouting(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "self.type != 'gatewayAPI' || has(self.httpRoute)",
                "gatewayAPI routing needs httpRoute",
                ".httpRoute",
            )
        )
    )

    type: RouterType = Field(RouterType.REPLICAS, description="replicas (ready-pod ratio) or gatewayAPI.")
    httpRoute: HTTPRouteRef | None = None

    @model_validator(mode="after")
    def _route_needed(self) -> TrafficRouting:
        if self.type is RouterType.GATEWAY_API and self.httpRoute is None:
            raise ValueError("httpRoute: required when type is gatewayAPI")
        return self


class PrometheusRef(StrictModel):
    url: str = Field(
        pattern=r"^https?://.+$",
        max_length=2048,
        description="Must be one of the operator's allowed Prometheus URLs (KONDENSE_PROMETHEUS_ALLOWED_URLS; "
        "default: only its own KONDENSE_PROMETHEUS_URL).",
    )


MAX_P99_MS = 600_000  # 10 minutes: no request waits that long, so a higher gate could never fail
DEFAULT_ERROR_RATE = 0.01  # the gate in force when spec.rollout.analysis.errorRate is not set


ABORT_FACTOR = 10.0
"""Default abort threshold: this many times ``max`` (a fraction's is capped at 1)."""

_ABORT_ABOVE_MAX = cel(
    "!has(self.abortAt) || self.abortAt > self.max", "abortAt must be greater than max", ".abortAt"
)
_ABORT_DESCRIPTION = (
    "Severe breach: a reading above this (with at least minRequests in the window) rolls back at once, "
    f"whatever failureLimit. Default {ABORT_FACTOR:g} x max"
)


class _Threshold(StrictModel):
    max: float
    abortAt: float | None = None

    @model_validator(mode="after")
    def _abort_above_max(self) -> _Threshold:
        if self.abortAt is not None and self.abortAt <= self.max:
            raise ValueError(f"abortAt: must be greater than max ({self.max:g}), got {self.abortAt:g}")
        return self

    def abort_at(self) -> float:
        return self.abortAt if self.abortAt is not None else ABORT_FACTOR * self.max


class MaxThreshold(_Threshold):
    model_config = ConfigDict(json_schema_extra=cel_rules(_ABORT_ABOVE_MAX))

    max: float = Field(
        gt=0, le=MAX_P99_MS, description="Breach when the reading is above this (milliseconds)."
    )
    abortAt: float | None = Field(None, gt=0, description=_ABORT_DESCRIPTION + ".")


class FractionThreshold(_Threshold):
    model_config = ConfigDict(json_schema_extra=cel_rules(_ABORT_ABOVE_MAX))

    max: float = Field(gt=0, le=1, description="Breach when the reading is above this (0 < max <= 1).")
    abortAt: float | None = Field(None, gt=0, le=1, description=_ABORT_DESCRIPTION + " (at most 1).")

    def abort_at(self) -> float:
        return self.abortAt if self.abortAt is not None else min(1.0, ABORT_FACTOR * self.max)


# ---------------------------------------------------------------------------------------------
# relative gates (issue 13): the canary judged against stable over the same window

MAX_RATIO_TO_STABLE = 100.0
DEFAULT_ALPHA = 0.05


class LatencyThreshold(MaxThreshold):
    """The p99 gate: absolute (``max``) and, optionally, relative to stable."""

    maxRatioToStable: float | None = Field(
        None,
        gt=1,
        le=MAX_RATIO_TO_STABLE,
        description="Relative gate: breach when the canary's p99 is above this many times stable's p99 "
        "over the same window AND a one-sided Mann-Whitney U test on the two latency histograms says the "
        "canary is slower with p < analysis.alpha. Above 1 (a same-speed canary must pass). The "
        "onnxruntime runtime only (Triton exports a latency summary, not a histogram).",
    )


MAX_BURN = 1000  # a burn this high needs an error budget below 0.1 % to be reachable
BURN_NEVER_FAILS = (
    "maxBurn x budget must be below 1 (a burn rate above it needs an error rate above 100 %: "
    "the gate could never fail)"
)


class BurnRateThreshold(StrictModel):
    """Error-budget burn: the canary's error rate over the analysis window divided by the SLO's error
    budget (1 - the SLO target). A burn of 1 spends the budget exactly over the SLO period."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("double(self.maxBurn) * double(self.budget) < 1.0", BURN_NEVER_FAILS, ".maxBurn")
        )
    )

    budget: float = Field(
        gt=0,
        lt=1,
        description="The SLO's error budget as a fraction of requests (0 < budget < 1), e.g. 0.001 for "
        "a 99.9 % availability SLO.",
    )
    maxBurn: float = Field(
        gt=0,
        le=MAX_BURN,
        description="Breach when the burn rate (error rate / budget) over the window is above this, e.g. 4 "
        "(the budget of 30 days spent in 7.5).",
    )

    @model_validator(mode="after")
    def _can_fail(self) -> BurnRateThreshold:
        if self.maxBurn * self.budget >= 1:
            raise ValueError(
                f"maxBurn: {BURN_NEVER_FAILS}, got {self.maxBurn:g} x {self.budget:g} = "
                f"{self.maxBurn * self.budget:g}"
            )
        return self

    def max_error_rate(self) -> float:
        """The error rate at which the gate breaches."""
        return self.maxBurn * self.budget


class ErrorRateThreshold(FractionThreshold):
    """The error-rate gate: absolute (``max``) and, optionally, relative to stable."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                f"!has(self.abortAt) || self.abortAt > (has(self.max) ? self.max : {DEFAULT_ERROR_RATE})",
                "abortAt must be greater than max",
                ".abortAt",
            )
        )
    )

    max: float = Field(
        DEFAULT_ERROR_RATE,
        gt=0,
        le=1,
        description=f"Breach when the reading is above this (0 < max <= 1). Default {DEFAULT_ERROR_RATE}.",
    )
    maxIncreaseOverStable: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Relative gate: breach when the canary's error rate exceeds stable's over the same "
        "window by more than this (absolute, e.g. 0.005 = half a percentage point) AND a one-sided "
        "two-proportion z-test says it is higher with p < analysis.alpha.",
    )
    burnRate: BurnRateThreshold | None = Field(
        None,
        description="Error-budget gate: breach when the canary's error rate over the analysis window, "
        "divided by the SLO's error budget, is above maxBurn (e.g. budget 0.001 for a 99.9 % SLO, maxBurn "
        "4: an error rate above 0.4 %). Judged like errorRate.max (minRequests in the window, no data is "
        "never a pass), during the steps and the bake.",
    )


# confidence drift (issue 13): the canary's output distribution against stable's over the same window

MAX_PSI = 10.0
DEFAULT_DRIFT_SAMPLES = 100
CONFIDENCE_SHIFT_NEEDS_A_GATE = "set maxPSI or maxKS (a confidence-shift gate with neither can never fail)"


class ConfidenceShiftThreshold(StrictModel):
    """Gate on confidence drift: the distribution of the served model's top-1 confidence
    (classification) or output L2 norm (embedding), canary against stable over the same window."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("has(self.maxPSI) || has(self.maxKS)", CONFIDENCE_SHIFT_NEEDS_A_GATE, ".maxPSI")
        )
    )

    maxPSI: float | None = Field(
        None,
        gt=0,
        le=MAX_PSI,
        description="Breach when the population stability index of the canary's distribution against "
        "stable's is above this (common reading: < 0.1 stable, 0.1-0.25 a shift, > 0.25 a large shift) "
        "AND a two-sample Kolmogorov-Smirnov test says the distributions differ with p < analysis.alpha.",
    )
    maxKS: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Breach when the Kolmogorov-Smirnov statistic (largest gap between the two CDFs) is "
        "above this AND its p-value is below analysis.alpha.",
    )
    minSamplesPerSide: int = Field(
        DEFAULT_DRIFT_SAMPLES,
        ge=10,
        le=1_000_000,
        description="Observations each track needs in the window before the gate is judged; fewer is no "
        "data. Two samples of one distribution differ by a PSI of about (bins - 1) x (1/n_canary + "
        f"1/n_stable) by chance, so keep it well above the bin count. Default {DEFAULT_DRIFT_SAMPLES}.",
    )

    @model_validator(mode="after")
    def _some_gate(self) -> ConfidenceShiftThreshold:
        if self.maxPSI is None and self.maxKS is None:
            raise ValueError(f"maxPSI: {CONFIDENCE_SHIFT_NEEDS_A_GATE}")
        return self


class LoadTest(StrictModel):
    rps: float = Field(gt=0, le=100_000, description="Requests per second replayed from the evaluation data.")


# A gate that can never fail is off: a fraction gate at max 1 (every reading is <= 1). The error-rate
# gate is on by default; a spec may loosen gates but cannot switch every one of them off.
_SOME_GATE_ON = (
    "(!has(self.errorRate) || !has(self.errorRate.max) || double(self.errorRate.max) < 1.0)"
    " || (has(self.errorRate) && has(self.errorRate.burnRate))"
    " || (has(self.accuracyDelta) && double(self.accuracyDelta.max) < 1.0)"
    " || has(self.p99LatencyMs)"
)
ALL_GATES_OFF = (
    "every analysis gate is off (an errorRate.max of 1 can never be exceeded and no other gate can "
    "fail): a canary answering only errors would be promoted; keep errorRate.max below 1 "
    f"(default {DEFAULT_ERROR_RATE}) or set errorRate.burnRate, p99LatencyMs or accuracyDelta"
)


class AnalysisSpec(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(cel(_SOME_GATE_ON, ALL_GATES_OFF, ".errorRate.max"))
    )

    prometheus: PrometheusRef | None = Field(
        None, description="Prometheus to query; default: the operator's KONDENSE_PROMETHEUS_URL."
    )
    window: str = _duration_field("1m", timedelta(seconds=5), timedelta(hours=1), "PromQL range window.")
    minRequests: int = Field(
        20, ge=1, le=1_000_000, description="Fewer canary requests in the window counts as no data."
    )
    p99LatencyMs: LatencyThreshold | None = Field(None, description="Gate on the canary's p99 latency (ms).")
    errorRate: ErrorRateThreshold = Field(
        default_factory=lambda: ErrorRateThreshold(max=DEFAULT_ERROR_RATE),
        description="Gate on the canary's share of failed requests (HTTP 5xx and errors). Always in force: "
        f"max {DEFAULT_ERROR_RATE} unless set; a spec cannot switch every gate off.",
    )
    accuracyDelta: FractionThreshold | None = Field(
        None, description="Live: 1 - agreement of the canary with the stable model (shadow requests)."
    )
    confidenceShift: ConfidenceShiftThreshold | None = Field(
        None,
        description="Relative gate on confidence drift, canary against stable over the same window: the "
        "histograms of top-1 confidence (classification) or output L2 norm (embedding) that the server "
        "exports. Catches a variant that agrees on argmax but is miscalibrated. The onnxruntime runtime "
        "only; not for regression models.",
    )
    alpha: float = Field(
        DEFAULT_ALPHA,
        gt=0,
        le=0.5,
        description="Significance level of the relative gates: a canary-versus-stable difference past its "
        "gate only counts when the test's one-sided p-value is below this (noise does not roll back).",
    )
    minSamplesPerSide: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Requests each track (canary and stable) needs in the window before a relative gate "
        "is judged; fewer is no data. Default: minRequests.",
    )
    loadTest: LoadTest | None = None

    @field_validator("window")
    @classmethod
    def _window_range(cls, value: str) -> str:
        return _check_duration(value, timedelta(seconds=5), timedelta(hours=1))

    @model_validator(mode="after")
    def _some_gate_on(self) -> AnalysisSpec:
        error_gate_on = self.errorRate.max < 1 or self.errorRate.burnRate is not None
        accuracy_gate_on = self.accuracyDelta is not None and self.accuracyDelta.max < 1
        if not (error_gate_on or accuracy_gate_on or self.p99LatencyMs is not None):
            raise ValueError(f"errorRate.max: {ALL_GATES_OFF}")
        return self

    def relative_gates(self) -> bool:
        """Whether any gate compares the canary with stable (the shell then reads both tracks)."""
        latency = self.p99LatencyMs is not None and self.p99LatencyMs.maxRatioToStable is not None
        return latency or self.errorRate.maxIncreaseOverStable is not None or self.confidenceShift is not None

    def samples_per_side(self) -> int:
        return self.minSamplesPerSide if self.minSamplesPerSide is not None else self.minRequests


# mirror first (issue 13): before any user traffic the canary answers copies of live requests

MAX_MIRROR = timedelta(hours=1)
MIRROR_BELOW_INTERVAL = "must be at least one interval (the mirror phase judges at least one full analysis)"
MIRROR_NEEDS_GATEWAY_ON_TRITON = (
    "mirroring on the triton runtime needs trafficRouting.type gatewayAPI (Triton cannot tee requests; "
    "the HTTPRoute's RequestMirror filter copies them to the canary)"
)


class MirrorSpec(StrictModel):
    """Mirror first: before the first weight step the canary gets copies of live requests (phase
    Mirroring, no user request is answered by it); its answers are discarded, and its latency, errors and
    (onnxruntime) agreement with stable are judged by the analysis gates. Only then the first step."""

    duration: str = Field(
        "1m",
        pattern=DURATION_PATTERN,
        max_length=32,
        description="How long the canary is judged on mirrored requests before the first step: at least "
        f"one interval, at most {int(MAX_MIRROR.total_seconds())}s. The phase ends when it has passed, "
        "the last interval analysis passed and minSamples were mirrored.",
        json_schema_extra=cel_rules(
            cel(
                f"duration(self) <= duration('{int(MAX_MIRROR.total_seconds())}s')",
                f"must be at most {int(MAX_MIRROR.total_seconds())}s",
            ),
        ),
    )
    minSamples: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="Mirrored requests the canary must have answered over the phase; fewer at the end of "
        "duration is no data (never a pass).",
    )
    percentage: int = Field(
        100, ge=1, le=100, description="Percent of stable's live requests copied to the canary."
    )

    @field_validator("duration")
    @classmethod
    def _duration_range(cls, value: str) -> str:
        return _check_duration(value, timedelta(seconds=1), MAX_MIRROR)

    def duration_seconds(self) -> float:
        return parse_duration(self.duration).total_seconds()


_STEPS_INCREASING = (
    "[" + ", ".join(str(i) for i in range(MAX_ROLLOUT_STEPS - 1)) + "]"
    ".all(i, i + 1 >= size(self) || self[i] < self[i + 1])"
)


BAKE_BELOW_INTERVAL = "must be at least one interval (the bake judges at least one full analysis)"


class HeaderMatchType(StrEnum):
    EXACT = "Exact"
    REGULAR_EXPRESSION = "RegularExpression"  # the Gateway implementation's dialect (RE2 for Envoy)


class HeaderMatch(StrictModel):
    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$",
        description="HTTP header name.",
    )
    value: str = Field(min_length=1, max_length=4096)
    type: HeaderMatchType = HeaderMatchType.EXACT


class CohortMatch(StrictModel):
    """Requests carrying every one of these headers always go to the canary (A/B testing)."""

    headers: list[HeaderMatch] = Field(min_length=1, max_length=8)


class SessionAffinity(StrictModel):
    """The canary's responses set a cookie; requests carrying it keep going to the canary while it runs
    (one user keeps one variant). The cookie's value names the canary's artifact: a later canary does
    not inherit the users of an earlier one."""

    cookieName: str = Field(
        "kondense-canary",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Cookie name.",
    )
    maxAge: int = Field(86400, ge=1, le=7 * 86400, description="Cookie lifetime in seconds (Max-Age).")


COHORTS_NEED_GATEWAY = (
    "match and sessionAffinity need trafficRouting.type gatewayAPI (the replicas router splits traffic by "
    "ready pods behind one Service and cannot route by header or cookie)"
)


class RolloutSpec(SteeringSpec):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.bake) || duration(self.bake) >= duration(has(self.interval) ? self.interval : '30s')",
                f"bake {BAKE_BELOW_INTERVAL}",
                ".bake",
            ),
            cel(
                "!has(self.mirror) || !has(self.mirror.duration)"
                " || duration(self.mirror.duration) >= duration(has(self.interval) ? self.interval : '30s')",
                f"mirror.duration {MIRROR_BELOW_INTERVAL}",
                ".mirror.duration",
            ),
            cel(
                "((!has(self.match) || size(self.match) == 0) && !has(self.sessionAffinity)) || "
                "(has(self.trafficRouting) && self.trafficRouting.type == 'gatewayAPI')",
                COHORTS_NEED_GATEWAY,
            ),
        )
    )

    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 25, 50, 100],
        min_length=1,
        max_length=MAX_ROLLOUT_STEPS,
        description="Canary traffic percent per step: strictly increasing, ending at 100.",
        json_schema_extra=cel_rules(
            cel(_STEPS_INCREASING, "must be strictly increasing"),
            cel("self[size(self) - 1] == 100", "must end at 100"),
        ),
    )
    interval: str = _duration_field("30s", MIN_INTERVAL, MAX_INTERVAL, "One analysis per interval.")
    failureLimit: int = Field(1, ge=0, le=100, description="Failed checks tolerated; one more rolls back.")
    trafficRouting: TrafficRouting = Field(default_factory=TrafficRouting)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    bake: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description="Keep the gates running this long after 100 % (phase Baking, the variant serving as "
        "stable, the previous stable artifact kept): a breach reverts stable to the previous artifact at "
        "once, without replaying the steps. At least one interval, at most 24h.",
        json_schema_extra=cel_rules(
            cel("duration(self) <= duration('86400s')", "must be at most 86400s"),
        ),
    )

    mirror: MirrorSpec | None = Field(
        None,
        description="Mirror first: an optional phase (Mirroring) before the first step in which the canary "
        "answers only copies of live requests (see MirrorSpec).",
    )

    match: list[CohortMatch] = Field(
        default_factory=list,
        max_length=4,
        description="Gateway API only: requests matching any of these go to the canary whatever its weight "
        "(as Flagger's analysis.match), e.g. headers [{name: x-cohort, value: beta}].",
    )
    sessionAffinity: SessionAffinity | None = Field(
        None, description="Gateway API only: a cookie keeps a user on the canary once it answered them."
    )

    @model_validator(mode="after")
    def _cohorts_need_gateway(self) -> RolloutSpec:
        if (self.match or self.sessionAffinity) and self.trafficRouting.type is not RouterType.GATEWAY_API:
            raise ValueError(COHORTS_NEED_GATEWAY)
        return self

    @field_validator("steps")
    @classmethod
    def _steps_shape(cls, steps: list[int]) -> list[int]:
        for before, after in itertools.pairwise(steps):
            if after <= before:
                raise ValueError(f"must be strictly increasing ({before} then {after})")
        if steps[-1] != 100:
            raise ValueError(f"must end at 100 (ends at {steps[-1]})")
        return steps

    @field_validator("interval")
    @classmethod
    def _interval_range(cls, value: str) -> str:
        return _check_duration(value, MIN_INTERVAL, MAX_INTERVAL)

    @model_validator(mode="after")
    def _bake_range(self) -> RolloutSpec:
        if self.bake is not None:
            bake = parse_duration(self.bake)
            if bake > MAX_INTERVAL:
                raise ValueError(
                    f"bake: must be at most {int(MAX_INTERVAL.total_seconds())}s, got {self.bake!r}"
                )
            if bake < parse_duration(self.interval):
                raise ValueError(
                    f"bake: {BAKE_BELOW_INTERVAL} (bake {self.bake!r}, interval {self.interval!r})"
                )
        return self

    @model_validator(mode="after")
    def _mirror_range(self) -> RolloutSpec:
        if self.mirror is not None and parse_duration(self.mirror.duration) < parse_duration(self.interval):
            raise ValueError(
                f"mirror.duration: {MIRROR_BELOW_INTERVAL} (duration {self.mirror.duration!r}, "
                f"interval {self.interval!r})"
            )
        return self

    def bake_seconds(self) -> float | None:
        return parse_duration(self.bake).total_seconds() if self.bake is not None else None

    def interval_seconds(self) -> float:
        return parse_duration(self.interval).total_seconds()


# ---------------------------------------------------------------------------------------------
# spec


_USES_STATIC_INT8 = (
    "self.targets.exists(t, (has(t.technique) && t.technique == 'static-int8') || "
    "(has(t.steps) && t.steps.exists(s, s.technique == 'static-int8')))"
)


class ArtifactsSpec(StrictModel):
    """Where compression Jobs write the variants (must be writable by the Jobs, readable by the servers)."""

    uri: Annotated[
        str,
        Field(
            max_length=2048,
            pattern=r"^(pvc|file)://.+$",
            description="pvc://CLAIM/DIR or file://DIR. Default: a `kondense/` folder beside the base model.",
        ),
        AfterValidator(check_uri),
    ]


LATENCY_RATIO_NEEDS_HISTOGRAM = (
    "a p99 ratio to stable needs the onnxruntime runtime (the test compares two latency histograms; "
    "Triton exports a latency summary)"
)
CONFIDENCE_SHIFT_NEEDS_ONNXRUNTIME = (
    "a confidence-shift gate needs the onnxruntime runtime (kondense's server exports the confidence "
    "histogram; Triton does not)"
)
CONFIDENCE_SHIFT_NOT_FOR_REGRESSION = (
    "a confidence-shift gate needs task classification or embedding (a regression output has no "
    "confidence; the server exports none, and no data is never a pass)"
)


class CompressedModelSpec(NotificationsSpec):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                f"has(self.data.calibration) || !({_USES_STATIC_INT8})",
                "static-int8 needs spec.data.calibration",
                ".data.calibration",
            ),
            cel(
                "has(self.artifacts) || !self.baseModel.uri.startsWith('http')",
                "an http(s) base model needs spec.artifacts (where variants are written)",
                ".artifacts",
            ),
            cel(
                "!has(self.rollout) || !has(self.rollout.analysis) || !has(self.rollout.analysis.accuracyDelta)"
                " || !has(self.serving) || !has(self.serving.runtime) || self.serving.runtime == 'onnxruntime'",
                "live accuracyDelta needs the onnxruntime runtime (its canary shadows the stable model)",
                ".rollout.analysis.accuracyDelta",
            ),
            cel(
                "!has(self.rollout) || !has(self.rollout.analysis) || !has(self.rollout.analysis.p99LatencyMs)"
                " || !has(self.rollout.analysis.p99LatencyMs.maxRatioToStable)"
                " || !has(self.serving) || !has(self.serving.runtime) || self.serving.runtime == 'onnxruntime'",
                LATENCY_RATIO_NEEDS_HISTOGRAM,
                ".rollout.analysis.p99LatencyMs.maxRatioToStable",
            ),
            cel(
                "!has(self.rollout) || !has(self.rollout.mirror) || !has(self.serving)"
                " || !has(self.serving.runtime) || self.serving.runtime == 'onnxruntime'"
                " || (has(self.rollout.trafficRouting) && self.rollout.trafficRouting.type == 'gatewayAPI')",
                MIRROR_NEEDS_GATEWAY_ON_TRITON,
                ".rollout.mirror",
            ),
            cel(
                "!has(self.rollout) || !has(self.rollout.analysis) || !has(self.rollout.analysis.confidenceShift)"
                " || !has(self.serving) || !has(self.serving.runtime) || self.serving.runtime == 'onnxruntime'",
                CONFIDENCE_SHIFT_NEEDS_ONNXRUNTIME,
                ".rollout.analysis.confidenceShift",
            ),
            cel(
                "!has(self.rollout) || !has(self.rollout.analysis) || !has(self.rollout.analysis.confidenceShift)"
                " || !has(self.task) || self.task != 'regression'",
                CONFIDENCE_SHIFT_NOT_FOR_REGRESSION,
                ".rollout.analysis.confidenceShift",
            ),
        )
    )

    baseModel: ModelRef
    artifacts: ArtifactsSpec | None = None
    task: Task = Field(Task.CLASSIFICATION, description="classification, embedding or regression.")
    data: DataSpec
    targets: list[Target] = Field(
        min_length=1,
        max_length=MAX_TARGETS,
        description="Each target becomes one compression Job and one candidate variant.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **cel_rules(
                cel("self.all(t, self.exists_one(u, u.name == t.name))", "target names must be unique")
            ),
        },
    )
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for index, target in enumerate(targets):
            if target.name in seen:
                raise ValueError(
                    f"[{index}].name: duplicate target name {target.name!r} (names must be unique)"
                )
            seen.add(target.name)
        return targets

    @model_validator(mode="after")
    def _artifacts_and_shadow(self) -> CompressedModelSpec:
        if self.artifacts is None and self.baseModel.uri.startswith("http"):
            raise ValueError(
                "artifacts: required when the base model is http(s) (where variants are written)"
            )
        if (
            self.rollout.analysis.accuracyDelta is not None
            and self.serving.runtime is not Runtime.ONNXRUNTIME
        ):
            raise ValueError(
                "rollout.analysis.accuracyDelta: live accuracy delta needs the onnxruntime runtime "
                "(its canary shadows the stable model)"
            )
        latency = self.rollout.analysis.p99LatencyMs
        if (
            latency is not None
            and latency.maxRatioToStable is not None
            and self.serving.runtime is not Runtime.ONNXRUNTIME
        ):
            raise ValueError(
                f"rollout.analysis.p99LatencyMs.maxRatioToStable: {LATENCY_RATIO_NEEDS_HISTOGRAM}"
            )
        if self.rollout.analysis.confidenceShift is not None:
            if self.serving.runtime is not Runtime.ONNXRUNTIME:
                raise ValueError(f"rollout.analysis.confidenceShift: {CONFIDENCE_SHIFT_NEEDS_ONNXRUNTIME}")
            if self.task is Task.REGRESSION:
                raise ValueError(f"rollout.analysis.confidenceShift: {CONFIDENCE_SHIFT_NOT_FOR_REGRESSION}")
        return self

    @model_validator(mode="after")
    def _mirror_router(self) -> CompressedModelSpec:
        if (
            self.rollout.mirror is not None
            and self.serving.runtime is not Runtime.ONNXRUNTIME
            and self.rollout.trafficRouting.type is not RouterType.GATEWAY_API
        ):
            raise ValueError(f"rollout.mirror: {MIRROR_NEEDS_GATEWAY_ON_TRITON}")
        return self

    @model_validator(mode="after")
    def _calibration_present(self) -> CompressedModelSpec:
        if self.data.calibration is None:
            needing = [t.name for t in self.targets if set(t.techniques()) & TECHNIQUES_NEEDING_CALIBRATION]
            if needing:
                raise ValueError(f"data.calibration: required by static-int8 (targets: {', '.join(needing)})")
        return self

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)

    def budget_for(self, target: TargetBase) -> float:
        return (
            target.maxAccuracyDelta
            if target.maxAccuracyDelta is not None
            else self.selection.maxAccuracyDelta
        )


# ---------------------------------------------------------------------------------------------
# status (written by the operator only)


class Phase(StrEnum):
    PENDING = "Pending"
    COMPRESSING = "Compressing"
    EVALUATING = "Evaluating"
    MIRRORING = "Mirroring"  # the canary answers only mirrored copies of live requests (spec.rollout.mirror)
    CANARY = "Canary"
    WAITING_FOR_APPROVAL = "WaitingForApproval"  # a canary held until approved (spec.rollout.approval)
    BAKING = "Baking"  # at 100 %, stable on the variant, gates still running, previous artifact kept
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class VariantPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    REJECTED = "Rejected"  # compressed, but outside the accuracy budget
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    PROMOTED = "Promoted"


class StatusModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VariantStatus(StatusModel):
    name: str
    phase: VariantPhase = VariantPhase.PENDING
    technique: str | None = Field(None, description="Techniques in order, joined by '+'.")
    artifact: ArtifactRef | None = None
    metrics: VariantMetrics | None = None
    hardware: str | None = Field(
        None, max_length=160, description="Where it was evaluated: CPU model, int8 kernel ISA, ORT version."
    )
    job: str | None = None
    reason: str | None = None
    message: str | None = Field(None, max_length=4096)


class Check(StatusModel):
    time: str
    variant: str | None = None
    sli: str
    value: float | None = Field(None, description="Reading; absent when there was no data.")
    threshold: float | None = None
    window: str | None = None
    passed: bool
    held: bool | None = Field(None, description="No verdict: the analysis held (the message says why).")
    message: str | None = None
    # relative gates (p99LatencyRatio, errorRateIncrease): both readings and the test behind the verdict
    canaryValue: float | None = Field(
        None, description="Relative gates: the canary's reading; errorBudgetBurn: the canary's error rate."
    )
    stableValue: float | None = Field(None, description="Relative gates: stable's reading, same window.")
    canarySamples: float | None = Field(None, description="Relative gates: canary requests in the window.")
    stableSamples: float | None = Field(None, description="Relative gates: stable requests in the window.")
    test: str | None = Field(None, description="Relative gates: the statistical test (one-sided).")
    pValue: float | None = Field(None, description="Relative gates: the test's p-value.")
    alpha: float | None = Field(None, description="Relative gates: the significance level in force.")


class MirrorStatus(StatusModel):
    """The canary's mirror phase: it answered only copies of live requests."""

    startedAt: str | None = None
    since: str | None = Field(
        None,
        description="When copies began to flow: the canary's pods serve and stable settled on its mirroring "
        "settings. The duration and the analysis window count from here.",
    )
    samples: float | None = Field(None, description="Mirrored requests the canary answered (last analysis).")
    result: Literal["Passed", "Failed"] | None = None
    finishedAt: str | None = None


class CanaryStatus(StatusModel):
    variant: str | None = None
    step: int = Field(0, ge=0, description="Index into spec.rollout.steps.")
    weight: int = Field(0, ge=0, le=100, description="Canary traffic percent actually achieved.")
    requestedWeight: int = Field(0, ge=0, le=100)
    failedChecks: int = Field(0, ge=0)
    promoting: bool = Field(False, description="Stable is being moved to the canary's artifact.")
    promotingSince: str | None = Field(
        None,
        description="When the final promotion began (with a bake: the standby starts then, and the bake "
        "waits for its pods at most the canary's ready timeout).",
    )
    startedAt: str | None = None
    readyAt: str | None = Field(None, description="When the canary's pods first served the variant.")
    stepStartedAt: str | None = None
    lastAnalysisAt: str | None = None
    scalingSince: str | None = Field(
        None, description="Autoscaling: since when a track has been scaling (the analysis holds meanwhile)."
    )
    p99Ms: float | None = None
    accuracyDelta: float | None = None
    checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)
    mirror: MirrorStatus | None = Field(
        None, description="The mirror phase of this canary (spec.rollout.mirror), while and after it ran."
    )


class StableStatus(StatusModel):
    variant: str | None = Field(None, description="Variant served as stable; absent for the base model.")
    artifact: ArtifactRef | None = None


class BakeStatus(StatusModel):
    """The bake after 100 %: the variant serves as stable while the gates keep running."""

    variant: str | None = None
    artifact: ArtifactRef | None = Field(None, description="The artifact being baked (now stable's).")
    previous: StableStatus | None = Field(
        None,
        description="The stable artifact before the bake: reverted to on a breach, released when it passes.",
    )
    startedAt: str | None = None
    lastAnalysisAt: str | None = None
    lastVerdict: str | None = Field(None, description="Verdict of the last counted analysis.")
    failedChecks: int = Field(0, ge=0)
    result: Literal["Passed", "Reverted"] | None = None
    finishedAt: str | None = None
    checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)
    standbyServing: bool = Field(
        False,
        description="After a revert: the previous artifact's standby pods (kept warm during the bake) "
        "serve the model's Services until the stable Deployment has rolled back to that artifact.",
    )


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class SpecHashes(StatusModel):
    """What the current variants and topology were built from: a spec change restarts from the
    earliest stage whose inputs changed."""

    compression: str | None = None
    rollout: str | None = None
    run: str | None = Field(
        None,
        description="The compression run: names its Jobs and its artifact directory; a new one for "
        "every compression spec (a directory that may be served is never written again).",
    )


class CompressedModelStatus(SteeringStatus):
    phase: Phase = Phase.PENDING
    observedGeneration: int | None = None
    message: str | None = None
    hashes: SpecHashes = Field(default_factory=SpecHashes)
    base: VariantStatus | None = Field(None, description="The base model's own evaluation and artifact.")
    variants: list[VariantStatus] = Field(default_factory=list)
    selectedVariant: str | None = None
    ladder: list[str] = Field(default_factory=list, description="Variants still to try, best first.")
    stable: StableStatus | None = None
    canary: CanaryStatus | None = None
    bake: BakeStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)


# metadata.name: the operator puts it in Service names and label values, so it must be a DNS-1035
# label short enough that every derived child name and label value fits (computed in naming).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME_MESSAGE = (
    f"must be a DNS-1035 label of at most {MODEL_NAME_MAX} characters (lower-case letters, digits and "
    "'-', starting with a letter and ending with a letter or digit): the operator derives Service names "
    "and label values from it"
)
MODEL_NAME_RULE = cel(
    f"!has(self.metadata.name) || (size(self.metadata.name) <= {MODEL_NAME_MAX}"
    f" && self.metadata.name.matches('{DNS1035_LABEL}'))",
    f"metadata.name {MODEL_NAME_MESSAGE}",
    ".metadata.name",
)


def model_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a CompressedModel (None: it can)."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if len(name) > MODEL_NAME_MAX or not re.fullmatch(DNS1035_LABEL, name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        return f"{shown!r} {MODEL_NAME_MESSAGE}"
    return None


def _model_name(value: Any) -> str:
    problem = model_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return str(value)


ModelName = Annotated[
    str,
    PlainValidator(_model_name),
    WithJsonSchema({"type": "string", "maxLength": MODEL_NAME_MAX, "pattern": DNS1035_LABEL}),
]


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: ModelName | None = None
    namespace: str | None = None


class CompressedModel(StrictModel):
    apiVersion: Literal["kondense.dev/v1alpha1"]
    kind: Literal["CompressedModel"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: CompressedModelSpec
    status: CompressedModelStatus | None = None
