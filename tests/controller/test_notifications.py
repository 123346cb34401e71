"""Notifications against real HTTP receivers on loopback: what is sent where (severity filter, Slack /
Teams / generic bodies, URL from the Secret), and that an outage never blocks: notify returns at once,
the worker retries with backoff and delivers once the receiver is back."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kondense.api.resource import Notification, SecretKeyRef
from kondense.operator.notifications import Notifier
from kondense.operator.rollout import Event
from kondense_testing.receivers import Receiver, receiving

BREACH = Event("Warning", "CheckFailed", "int8: p99LatencyMs=180>50, errorRate=0<=0.01 over 30s")
EVENTS = [
    Event("Normal", "CanaryStarted", "int8 selected"),
    Event("Normal", "CanaryStep", "int8 → 50%"),  # not a notice
    BREACH,
    Event("Warning", "RolledBack", "int8: p99LatencyMs 180 > 50 over 30s"),
    Event("Warning", "Failed", "the base model could not be prepared"),
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def target(name: str, kind: str, severity: str = "info") -> Notification:
    return Notification.model_validate(
        {"name": name, "type": kind, "severity": severity, "secretKeyRef": {"name": "hooks", "key": name}}
    )


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_what_goes_where(receiver: Receiver) -> None:
    secrets = {
        "chat": receiver.url + "/slack",
        "teams": receiver.url + "/teams",
        "ops": receiver.url + "/ops",
    }
    read: list[tuple[str, str, str]] = []

    def read_secret(namespace: str, ref: SecretKeyRef) -> str:
        read.append((namespace, ref.name, ref.key))
        return secrets[ref.key]

    notifier = Notifier(read_secret)
    targets = [
        target("chat", "slack"),
        target("teams", "msteams", "warning"),
        target("ops", "webhook", "error"),
    ]
    assert notifier.notify("ml", "digits", targets, EVENTS) == 4 + 3 + 1
    wait_for(lambda: len(receiver.received) == 8)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for path, body in receiver.received:
        by_path.setdefault(path, []).append(body)
    assert [b["text"] for b in by_path["/slack"]] == [
        "[info] ml/digits: CanaryStarted: int8 selected",
        "[warning] ml/digits: CheckFailed: int8: p99LatencyMs=180>50, errorRate=0<=0.01 over 30s",
        "[warning] ml/digits: RolledBack: int8: p99LatencyMs 180 > 50 over 30s",
        "[error] ml/digits: Failed: the base model could not be prepared",
    ]
    assert len(by_path["/teams"]) == 3 and all("[info]" not in b["text"] for b in by_path["/teams"])
    assert by_path["/ops"] == [
        {"name": "digits", "namespace": "ml", "severity": "error", "reason": "Failed",
         "message": "the base model could not be prepared"}
    ]  # fmt: skip
    assert ("ml", "hooks", "ops") in read


def test_an_outage_never_blocks_and_is_retried_with_backoff() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here yet
    notifier = Notifier(lambda ns, ref: f"http://127.0.0.1:{port}/hook", attempts=6, backoff_seconds=0.2)
    started = time.monotonic()
    assert notifier.notify("ml", "digits", [target("ops", "webhook")], [BREACH]) == 1
    assert time.monotonic() - started < 0.5 and notifier.sent == []  # enqueued only
    time.sleep(0.5)  # a few refused attempts
    late = Receiver(port)  # the receiver comes back
    try:
        wait_for(lambda: late.received)
        assert late.received[0][1]["reason"] == "CheckFailed"
        wait_for(lambda: len(notifier.sent) == 1)
    finally:
        late.close()


def test_an_unreadable_secret_is_retried_then_logged(caplog: pytest.LogCaptureFixture) -> None:
    def read_secret(namespace: str, ref: SecretKeyRef) -> str:
        raise KeyError(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")

    notifier = Notifier(read_secret, attempts=2, backoff_seconds=0.01)
    notifier.notify("ml", "digits", [target("ops", "webhook")], [BREACH])
    wait_for(lambda: "not delivered after 2 attempts" in caplog.text)
    assert "Secret ml/hooks has no key 'ops'" in caplog.text and notifier.sent == []
