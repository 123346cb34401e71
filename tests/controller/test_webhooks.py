"""The shell's webhook calls against real HTTP receivers on loopback: a 2xx passes, an error answer or
a refused connection fails with the reason, a slow receiver times out; the payload names the model,
variant, step, weight and the latest readings."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from kondense.api.resource import CanaryStatus, CompressedModelStatus, Phase, Webhook, WebhookType
from kondense.operator import webhooks
from kondense.operator.analysis import SLI, Reading
from kondense_testing.receivers import Receiver, receiving

ANSWERS = {"/ok": (200, b"fine"), "/accepted": (202, b""), "/fail": (500, b"database\n down")}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(answers=ANSWERS, default=(200, b"late"), delays={"/slow": 3}) as r:
        yield r


def hook(name: str, url: str, kind: str = "rollout", timeout: str = "2s") -> Webhook:
    return Webhook.model_validate(
        {"name": name, "type": kind, "url": url, "timeout": timeout, "metadata": {"team": "ml"}}
    )


STATUS = CompressedModelStatus(
    phase=Phase.CANARY, canary=CanaryStatus(variant="int8", step=1, weight=50, requestedWeight=50)
)
READINGS = [Reading(SLI.REQUESTS, 420.0), Reading(SLI.P99_LATENCY_MS, 3.5), Reading(SLI.ERROR_RATE, None)]


def test_answers_and_payload(receiver: Receiver) -> None:
    hooks = [
        hook("ok", receiver.url + "/ok"),
        hook("accepted", receiver.url + "/accepted", "confirm-promotion"),
        hook("fail", receiver.url + "/fail"),
    ]
    results = webhooks.call_all(hooks, lambda h: webhooks.payload(h, "ml", "digits", STATUS, READINGS))
    assert {n: (r.ok, r.message) for n, r in results.items()} == {
        "ok": (True, "answered 200"),
        "accepted": (True, "answered 202"),
        "fail": (False, "answered 500: database down"),
    }
    assert results["accepted"].type is WebhookType.CONFIRM_PROMOTION
    bodies = dict(receiver.received)
    assert bodies["/ok"] == {
        "name": "digits",
        "namespace": "ml",
        "type": "rollout",
        "phase": "Canary",
        "variant": "int8",
        "step": 1,
        "weight": 50,
        "readings": {"requests": 420.0, "p99LatencyMs": 3.5, "errorRate": None},
        "metadata": {"team": "ml"},
    }
    assert bodies["/accepted"]["type"] == "confirm-promotion"


def test_a_slow_receiver_times_out_and_a_closed_port_is_unreachable(receiver: Receiver) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    hooks = [hook("slow", receiver.url + "/slow", timeout="1s"), hook("gone", f"http://127.0.0.1:{closed}/x")]
    results = webhooks.call_all(hooks, lambda h: webhooks.payload(h, "ml", "digits", STATUS, None))
    assert (results["slow"].ok, results["slow"].message) == (False, "no answer within 1s (timed out)")
    assert not results["gone"].ok and results["gone"].message.startswith("unreachable: ConnectError")


def test_post_rollout_is_called_off_the_reconcile_path(receiver: Receiver) -> None:
    got: list[dict[str, Any]] = []
    thread = webhooks.call_in_background(
        [hook("tell", receiver.url + "/slow", "post-rollout", timeout="5s")],
        lambda h: webhooks.payload(h, "ml", "digits", STATUS, None),
        lambda results: got.append({n: r.ok for n, r in results.items()}),
    )
    assert thread is not None and thread.is_alive() and got == []  # returned before the answer came
    thread.join(timeout=10)
    assert got == [{"tell": True}]
    assert webhooks.call_in_background([], lambda h: {}, lambda r: None) is None
