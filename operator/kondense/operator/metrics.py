"""The operator's own Prometheus metrics."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from kondense.api.resource import CompressedModelStatus, Phase

ROLLOUTS = Counter("kondense_rollouts_total", "Finished rollouts by result.", ["result"])
CANARY_WEIGHT = Gauge("kondense_canary_weight", "Canary traffic percent achieved.", ["namespace", "name"])
ANALYSIS_CHECKS = Counter("kondense_analysis_checks_total", "Canary analysis checks.", ["sli", "result"])
COMPRESSION_JOBS = Counter("kondense_compression_jobs_total", "Finished compression Jobs.", ["result"])
PHASE = Gauge(
    "kondense_rollout_phase",
    "1 for the current phase of each CompressedModel.",
    ["namespace", "name", "phase"],
)
SIZE_RATIO = Gauge(
    "kondense_variant_size_ratio", "Variant bytes / base bytes.", ["namespace", "name", "variant"]
)
ACCURACY_DELTA = Gauge(
    "kondense_variant_accuracy_delta",
    "Offline accuracy delta of each variant.",
    ["namespace", "name", "variant"],
)
CHILD_REJECTIONS = Counter(
    "kondense_child_rejections_total",
    "Writes of child objects the API server refused with a 4xx, by kind and reason.",
    ["kind", "reason"],
)
RECONCILE_SECONDS = Histogram(
    "kondense_reconcile_duration_seconds",
    "Time of one reconcile of one CompressedModel.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def record_status(namespace: str, name: str, status: CompressedModelStatus) -> None:
    CANARY_WEIGHT.labels(namespace, name).set(status.canary.weight if status.canary else 0)
    for phase in Phase:
        PHASE.labels(namespace, name, phase.value).set(1 if status.phase is phase else 0)
    for v in status.variants:
        if v.metrics and v.metrics.sizeRatio is not None:
            SIZE_RATIO.labels(namespace, name, v.name).set(v.metrics.sizeRatio)
        if v.metrics and v.metrics.accuracyDelta is not None:
            ACCURACY_DELTA.labels(namespace, name, v.name).set(v.metrics.accuracyDelta)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted CompressedModel."""
    with contextlib.suppress(KeyError):
        CANARY_WEIGHT.remove(namespace, name)
    for phase in Phase:
        with contextlib.suppress(KeyError):
            PHASE.remove(namespace, name, phase.value)
