"""kopf wiring: every decorator lives here; the work is in ``controller``."""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from kondense.api.resource import GROUP, PLURAL, VERSION
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


def _reconcile(body: kopf.Body) -> None:
    assert _controller is not None
    _controller.reconcile(dict(body))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, **_: Any) -> None:
    _reconcile(body)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.tick_seconds, sharp=False)
def on_tick(body: kopf.Body, **_: Any) -> None:
    _reconcile(body)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(meta: kopf.Meta, **_: Any) -> None:
    # children go through ownerReferences (garbage collection); only our metric series remain
    metrics.forget(meta.get("namespace", ""), meta.get("name", ""))
