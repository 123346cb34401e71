"""Notifications (``spec.notifications``): the rollout's Events told to Slack, Teams or a webhook.

The reconcile only enqueues (never blocks, never fails): one worker thread sends, retrying each notice
with exponential backoff, so an outage of the receiver delays notices but never a rollback. The URL is
read from the Secret named by ``secretKeyRef`` when a notice is sent (never logged).
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from kondense.api.resource import Check, Notification, NotificationType, SecretKeyRef, Severity
from kondense.operator.rollout import Event

if TYPE_CHECKING:
    from kubernetes import client

log = logging.getLogger("kondense.operator")

# which Events are notices, and how severe (the rest, e.g. CanaryStep, stay Events only)
NOTICES: dict[str, Severity] = {
    "CanaryStarted": Severity.INFO,
    "WaitingForApproval": Severity.INFO,
    "Promoted": Severity.INFO,
    "CheckFailed": Severity.WARNING,  # a breach: value, threshold and window are in the message
    "Aborted": Severity.WARNING,
    "RolledBack": Severity.WARNING,
    "MirrorPassed": Severity.INFO,  # mirror first: the first user traffic follows
    "MirrorFailed": Severity.WARNING,
    "Reverted": Severity.WARNING,  # a breach during the bake: stable back on the previous artifact
    "WebhookHalted": Severity.WARNING,
    "ManualAbort": Severity.WARNING,
    "Failed": Severity.ERROR,
    "NoVariant": Severity.ERROR,
    "Rejected": Severity.ERROR,
}
_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}

SecretReader = Callable[[str, SecretKeyRef], str]
"""(namespace, ref) -> the URL; raises with a readable message when it cannot."""
UrlGuard = Callable[[str, str], str | None]
"""(namespace, url) -> why the operator may not POST there (kondense.operator.outbound), None if it may."""


@dataclass(frozen=True)
class Notice:
    namespace: str
    name: str
    notification: Notification
    severity: Severity
    reason: str
    message: str
    breaches: tuple[Check, ...] = ()  # the failed checks behind a breach notice


BREACH_FIELDS = ("variant", "sli", "value", "threshold", "window", "message")


def breach(check: Check) -> dict[str, Any]:
    """One failed check as a notification field set: what was read, against what, over which window."""
    out = {k: getattr(check, k) for k in BREACH_FIELDS}
    for extra in ("canaryValue", "stableValue", "pValue", "alpha"):  # relative gates: the test behind it
        if getattr(check, extra) is not None:
            out[extra] = getattr(check, extra)
    return out


def breach_line(check: Check) -> str:
    if check.value is None:
        return f"{check.sli}: {check.message or 'no data'}"
    limit = f" (limit {check.threshold:g})" if check.threshold is not None else ""
    window = f" over {check.window}" if check.window else ""
    return f"{check.sli} = {check.value:g}{limit}{window}"


def notices(
    namespace: str, name: str, targets: Sequence[Notification], events: Sequence[Event]
) -> list[Notice]:
    out = []
    for event in events:
        severity = NOTICES.get(event.reason)
        if severity is None:
            continue
        for target in targets:
            if _RANK[severity] >= _RANK[target.severity]:
                out.append(
                    Notice(namespace, name, target, severity, event.reason, event.message, event.breaches)
                )
    return out


def body(notice: Notice) -> dict[str, Any]:
    text = f"[{notice.severity.value}] {notice.namespace}/{notice.name}: {notice.reason}: {notice.message}"
    if notice.notification.type is NotificationType.WEBHOOK:
        generic: dict[str, Any] = {
            "name": notice.name,
            "namespace": notice.namespace,
            "severity": notice.severity.value,
            "reason": notice.reason,
            "message": notice.message,
        }
        if notice.breaches:
            generic["breaches"] = [breach(c) for c in notice.breaches]
        return generic
    if notice.breaches:  # one line per breach under the summary
        text += "".join(f"\n• {breach_line(c)}" for c in notice.breaches)
    return {"text": text}  # Slack and Teams incoming webhooks both take a plain text message


def kube_secret_reader(core: client.CoreV1Api) -> SecretReader:
    """Reads ``ref.key`` of a Secret with the official client's CoreV1Api."""

    def read(namespace: str, ref: SecretKeyRef) -> str:
        secret = core.read_namespaced_secret(ref.name, namespace)
        data = secret.data or {}
        if ref.key not in data:
            raise KeyError(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
        return base64.b64decode(data[ref.key]).decode().strip()

    return read


class Notifier:
    def __init__(
        self,
        read_secret: SecretReader,
        *,
        attempts: int = 5,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        capacity: int = 1000,
        guard: UrlGuard | None = None,
    ) -> None:
        self.read_secret = read_secret
        self.guard = guard
        self.refused: list[tuple[Notice, str]] = []  # notices not sent: the URL is not allowed (bounded)
        self.attempts, self.backoff, self.max_backoff = attempts, backoff_seconds, max_backoff_seconds
        self.timeout = timeout_seconds
        self.queue: queue.Queue[Notice] = queue.Queue(maxsize=capacity)
        self.sent: list[Notice] = []  # delivered notices (bounded), for status pages and tests
        self.dropped = 0
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def notify(
        self, namespace: str, name: str, targets: Sequence[Notification], events: Sequence[Event]
    ) -> int:
        """Enqueue the notices of these Events; returns at once (a full queue drops, with a log line)."""
        queued = 0
        for notice in notices(namespace, name, targets, events):
            try:
                self.queue.put_nowait(notice)
                queued += 1
            except queue.Full:
                self.dropped += 1
                log.warning("notification queue full: dropped %s for %s/%s", notice.reason, namespace, name)
        if queued:
            self._ensure_worker()
        return queued

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, daemon=True, name="notifications")
                self._worker.start()

    def _run(self) -> None:
        while True:
            notice = self.queue.get()
            try:
                self._deliver(notice)
            finally:
                self.queue.task_done()

    def _deliver(self, notice: Notice) -> None:
        target = notice.notification
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                url = self.read_secret(notice.namespace, target.secretKeyRef)
                refused = self.guard(notice.namespace, url) if self.guard is not None else None
                if refused is not None:  # a policy answer, not an outage: no retry; the URL is not logged
                    self.refused = [*self.refused[-99:], (notice, refused)]
                    log.warning(
                        "notification %s of %s/%s not sent: the URL in Secret %s (key %s) is not allowed "
                        "(KONDENSE_WEBHOOK_ALLOWED_URLS, or a Service of namespace %s)",
                        target.name, notice.namespace, notice.name, target.secretKeyRef.name,
                        target.secretKeyRef.key, notice.namespace,
                    )  # fmt: skip
                    return
                response = httpx.post(url, json=body(notice), timeout=self.timeout)
                if 200 <= response.status_code < 300:
                    self.sent = [*self.sent[-99:], notice]
                    return
                problem = f"answered {response.status_code}"
            except Exception as exc:  # any failure of one attempt (Secret, network) is retried, then logged
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.warning(
            "notification %s (%s) of %s/%s not delivered after %d attempts: %s",
            target.name, notice.reason, notice.namespace, notice.name, self.attempts, problem,
        )  # fmt: skip
