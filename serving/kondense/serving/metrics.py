"""Prometheus metrics of one served model (prometheus-client, one registry per server)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily

# Fine enough from 100 µs to 10 s that histogram_quantile(0.99, ...) interpolates within ~25-50 %.
LATENCY_BUCKETS = (
    0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
# Cosine similarities crowd just below 1; relative errors crowd just above 0.
SCORE_BUCKETS = (
    0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 1.0, 2.0, 10.0,
)  # fmt: skip
# Top-1 confidence lies in [1/classes, 1] and crowds near 1 for a trained classifier; an embedding's L2
# norm is 1 when normalised, anything from 0.01 to 1000 when not. One bucket set serves both.
CONFIDENCE_BUCKETS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
    1.0, 1.001, 1.01, 1.05, 1.1, 1.25, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0,
)  # fmt: skip
SHADOW_RESULTS = ("agree", "disagree", "error")
MIRROR_HEADER = "kondense-mirrored"
"""Set to 1 on the copies a stable server mirrors to a canary: counted apart, never shadowed back."""
PROTOCOLS = ("rest", "grpc")
"""Front ends: the ``protocol`` label of request series (sum over it for a track's SLIs)."""


class ServerMetrics:
    """Metric families labelled ``model`` and ``variant``; children are bound once, off the hot path."""

    def __init__(self, model: str, variant: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._labels = {"model": model, "variant": variant}
        duration = Histogram(
            "kondense_request_duration_seconds",
            "Time to answer an inference request (any status), from its arrival in the handler.",
            ["model", "variant", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = {p: duration.labels(**self._labels, protocol=p) for p in PROTOCOLS}
        self._requests = Counter(
            "kondense_requests",
            "Inference requests answered, by HTTP status code (gRPC answers by the HTTP status of the "
            "same refusal over REST: UNAVAILABLE 503, INVALID_ARGUMENT 400, ...).",
            ["model", "variant", "protocol", "code"],
            registry=self.registry,
        )
        self._requests_by_code = {
            (p, "200"): self._requests.labels(**self._labels, protocol=p, code="200") for p in PROTOCOLS
        }
        # mirror first (issue 13): a canary's answers to mirrored copies are counted apart from user
        # requests (kondense_requests_total stays the user-facing count: burn rate, analysis steps)
        self.mirrored_duration = Histogram(
            "kondense_mirrored_request_duration_seconds",
            "Time to answer a mirrored copy of a live request (header kondense-mirrored: 1; the answer is "
            "discarded by the stable server that sent it).",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**self._labels)
        self._mirrored = Counter(
            "kondense_mirrored_requests",
            "Mirrored copies of live requests answered, by HTTP status code (never user requests).",
            ["model", "variant", "code"],
            registry=self.registry,
        )
        self._mirrored_by_code = {"200": self._mirrored.labels(**self._labels, code="200")}
        self._mirror_comparisons = Counter(
            "kondense_mirror_comparisons",
            "Samples this (stable) server mirrored to a canary and compared with its own answers: agree, "
            "disagree, or error (not compared: canary slow, down or the mirror queue full); label canary: "
            "the variant mirrored to.",
            ["model", "variant", "canary", "result"],
            registry=self.registry,
        )
        shadow = Counter(
            "kondense_shadow_comparisons",
            "Samples compared with the stable server: agree, disagree, or error (not compared: stable slow, "
            "down or the shadow queue full).",
            ["model", "variant", "result"],
            registry=self.registry,
        )
        # Create every result series at 0 so ratios over them exist before the first disagreement.
        self.shadow = {result: shadow.labels(**self._labels, result=result) for result in SHADOW_RESULTS}
        self.shadow_score = Histogram(
            "kondense_shadow_score",
            "Per-sample shadow score: cosine similarity (embedding) or relative error (regression).",
            ["model", "variant"],
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        ).labels(**self._labels)
        self.batch_rows = Histogram(
            "kondense_batch_rows",
            "Rows per session call formed by the micro-batcher.",
            ["model", "variant"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        ).labels(**self._labels)
        self._info = Info(
            "kondense_model", "The artifact this server serves.", ["model", "variant"], registry=self.registry
        )
        self._ready = Gauge(
            "kondense_model_ready", "1 once the model loaded and passed its checks.", ["model", "variant"],
            registry=self.registry,
        ).labels(**self._labels)  # fmt: skip
        self._queue_depth = Gauge(
            "kondense_shadow_queue_depth",
            "Shadow comparisons waiting to be sent to the stable server.",
            ["model", "variant"],
            registry=self.registry,
        ).labels(**self._labels)
        self._queue_bytes = Gauge(
            "kondense_shadow_queue_bytes",
            "Bytes (request bodies and outputs) held by the shadow queue; bounded by --shadow-max-queue-bytes.",
            ["model", "variant"],
            registry=self.registry,
        ).labels(**self._labels)

    def confidence(self, measure: str) -> ConfidenceHistogram:
        """The confidence histogram of this server (created once the model's task is known)."""
        return ConfidenceHistogram(self.registry, self._labels, measure)

    def observe_request(self, code: int, seconds: float, protocol: str = "rest") -> None:
        self.request_duration[protocol].observe(seconds)
        key = (protocol, str(code))
        child = self._requests_by_code.get(key)
        if child is None:
            child = self._requests_by_code[key] = self._requests.labels(
                **self._labels, protocol=protocol, code=key[1]
            )
        child.inc()

    def observe_mirrored(self, code: int, seconds: float) -> None:
        self.mirrored_duration.observe(seconds)
        key = str(code)
        child = self._mirrored_by_code.get(key)
        if child is None:
            child = self._mirrored_by_code[key] = self._mirrored.labels(**self._labels, code=key)
        child.inc()

    def mirror_comparisons(self, canary: str) -> dict[str, Counter]:
        """The comparison counters of mirroring to ``canary``, every result created at 0."""
        return {
            result: self._mirror_comparisons.labels(**self._labels, canary=canary, result=result)
            for result in SHADOW_RESULTS
        }

    def set_model(self, sha256: str, ready: bool) -> None:
        self._info.labels(**self._labels).info({"sha256": sha256})
        self._ready.set(1 if ready else 0)

    def track_shadow_queue(self, depth: Callable[[], float], size: Callable[[], float]) -> None:
        self._queue_depth.set_function(depth)
        self._queue_bytes.set_function(size)


class ConfidenceHistogram:
    """``kondense_output_confidence``: a histogram observed many values at a time (one per output row)
    with numpy, exposed through prometheus-client's custom-collector interface (``collect``)."""

    NAME = "kondense_output_confidence"

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str], measure: str) -> None:
        self._labels = [labels["model"], labels["variant"], measure]
        self._bounds = np.asarray(CONFIDENCE_BUCKETS, dtype=np.float64)
        self._counts = np.zeros(len(CONFIDENCE_BUCKETS) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        if values.size == 1:  # one answered row, the common case: no numpy calls
            value = float(values.reshape(-1)[0])
            index = bisect.bisect_left(CONFIDENCE_BUCKETS, value)  # as searchsorted(side="left")
            with self._lock:
                self._counts[index] += 1
                self._sum += value
            return
        bins = np.searchsorted(self._bounds, values, side="left")  # le: a value equal to a bound is in it
        counts = np.bincount(bins, minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        bounds = [*(repr(float(b)) for b in CONFIDENCE_BUCKETS), "+Inf"]
        family = HistogramMetricFamily(
            self.NAME,
            "Per answered row: top-1 confidence (classification; softmax of the first output unless it is "
            "already a probability vector) or L2 norm of the first output (embedding).",
            labels=["model", "variant", "measure"],
        )
        family.add_metric(self._labels, list(zip(bounds, (float(c) for c in cumulative), strict=True)), total)
        yield family
