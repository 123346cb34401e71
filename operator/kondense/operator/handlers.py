"""kopf wiring: every decorator lives here; the work is in ``controller``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from kondense.api import intents
from kondense.api.resource import GROUP, PLURAL, VERSION, Phase
from kondense.operator import metrics
from kondense.operator.controller import Controller
from kondense.operator.kube import KubeClient
from kondense.operator.rollout import Event
from kondense.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
_controller: Controller | None = None
log = logging.getLogger("kondense.operator")


def _post_event(body: dict[str, Any], event: Event) -> None:
    kopf.event(
        cast(kopf.Body, body),  # kopf walks any mapping with metadata
        type=event.type,
        reason=event.reason,
        message=event.message[:1000],
    )


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _controller
    # state lives in annotations and in our own status: the status schema stays fully ours
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kondense.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kondense.dev", key="last-handled-configuration"
    )
    # kopf's own per-handler notes stay in the log; Events carry our transitions (kopf.event)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    _controller = Controller(SETTINGS, KubeClient(), _post_event)
    start_http_server(SETTINGS.metrics_port)
    log.info(
        "kondense operator started (tick %.1fs, metrics :%d)", SETTINGS.tick_seconds, SETTINGS.metrics_port
    )


def _reconcile(namespace: str, name: str) -> None:
    assert _controller is not None
    _last_reconcile[(namespace, name)] = time.monotonic()
    _controller.reconcile(namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(namespace: str | None, name: str, **_: Any) -> None:
    _reconcile(namespace or "default", name)


_last_reconcile: dict[tuple[str, str], float] = {}


def tick_delay(phase: str | None) -> float:
    """How stale a phase may get between reconciles. Job completions wake their owner at once
    (on_job_finished), so Compressing needs only a slow safety net; settled objects only drift repair."""
    if phase in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED):
        return SETTINGS.idle_resync_seconds
    if phase == Phase.COMPRESSING:
        return max(SETTINGS.tick_seconds, 10.0)
    return SETTINGS.tick_seconds


def intent_waiting(annotations: Mapping[str, str] | None, status: Mapping[str, Any]) -> bool:
    """A pause, resume or one-shot intent the status has not acknowledged yet: acted on at the next tick,
    not after a settled object's idle resync (annotation changes do not wake the spec handlers)."""
    wanted = intents.parse(dict(annotations or {}))
    stored = status.get("intents")
    acknowledged: Mapping[str, str] = stored if isinstance(stored, dict) else {}
    return wanted.paused != bool(status.get("paused")) or bool(wanted.pending(acknowledged))


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.tick_seconds, sharp=False)
def on_tick(
    namespace: str | None, name: str, status: kopf.Status, annotations: kopf.Annotations, **_: Any
) -> None:
    namespace = namespace or "default"  # CompressedModels are namespaced; kopf types it optional
    if time.monotonic() - _last_reconcile.get((namespace, name), 0.0) < tick_delay(
        status.get("phase")
    ) - 0.05 and not intent_waiting(annotations, status):
        return
    _reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": "kondense"})
def on_job_finished(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    conditions = {
        c.get("type") for c in (body.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    }
    if not conditions & {"Complete", "Failed"}:
        return
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "CompressedModel":
            _reconcile(namespace or "default", ref["name"])


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(namespace: str | None, name: str, **_: Any) -> None:
    namespace = namespace or "default"
    # children go through ownerReferences (garbage collection); only our bookkeeping remains
    _last_reconcile.pop((namespace, name), None)
    if _controller is not None:
        _controller.forget(namespace, name)
    metrics.forget(namespace, name)
