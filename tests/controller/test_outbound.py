"""The allow-list of webhook and notification URLs (KONDENSE_WEBHOOK_ALLOWED_URLS), against real
receivers on loopback: a refused URL is never requested."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from kondense.api.resource import Notification, Webhook
from kondense.operator import webhooks
from kondense.operator.notifications import Notifier
from kondense.operator.outbound import UrlPolicy
from kondense.operator.rollout import Event
from kondense.operator.settings import OperatorSettings
from kondense_testing.receivers import Receiver, receiving

NS = "ml"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


POLICY = UrlPolicy(("https://hooks.example.com/services", "http://gate.test:8080"), "svc.cluster.local")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/services", True),
        ("https://hooks.example.com/services/T0/B1", True),
        ("https://HOOKS.example.com./services/T0", True),  # host case and the root dot do not matter
        ("https://hooks.example.com:443/services/x", True),  # the scheme's port, spelled out
        ("https://hooks.example.com/servicesx", False),  # a path prefix ends at a segment
        ("https://hooks.example.com/other", False),
        ("http://hooks.example.com/services/x", False),  # scheme
        ("https://hooks.example.com:8443/services/x", False),  # port
        ("https://hooks.example.com.evil.net/services", False),  # a string prefix would allow this
        ("https://hooks.example.com@evil.net/services", False),  # userinfo: the host is evil.net
        ("https://hooks.example.com/services/../admin", False),  # dot segments
        ("https://hooks.example.com/services/%2e%2e/admin", False),
        ("http://gate.test:8080/anything", True),
        ("http://gate.test/anything", False),
        ("http://169.254.169.254/latest/meta-data", False),  # the cloud metadata endpoint
        ("http://kubernetes.default.svc/api", False),  # another namespace's Service
        ("http://loadtester.ml.svc:8080/gate", True),  # a Service of the CR's own namespace
        ("https://loadtester.ml.svc.cluster.local/gate", True),
        ("http://loadtester.ml:8080/gate", False),  # not the cluster name: could be a public domain
        ("http://loadtester.payments.svc/gate", False),
        ("http://a.b.ml.svc/gate", False),  # a Service name is one label
        ("ftp://hooks.example.com/services", False),
    ],
)
def test_policy(url: str, allowed: bool) -> None:
    problem = POLICY.problem(url, NS)
    assert (problem is None) is allowed, problem
    if not allowed:
        assert problem is not None and url in problem  # the message names the URL


def test_own_namespace_services_can_be_switched_off() -> None:
    strict = UrlPolicy((), "svc.cluster.local", own_namespace_services=False)
    problem = strict.problem("http://loadtester.ml.svc:8080/gate", NS)
    assert problem is not None and "not allowed either" in problem


def test_an_external_name_service_is_refused_at_call_time() -> None:
    url = "http://alias.ml.svc/gate"
    alias = {"spec": {"type": "ExternalName", "externalName": "metadata.google.internal"}}
    problem = POLICY.check(url, NS, lambda name: alias if name == "alias" else None)
    assert problem is not None and "ExternalName" in problem
    assert POLICY.check(url, NS, lambda name: {"spec": {"type": "ClusterIP"}}) is None
    missing = POLICY.check(url, NS, lambda name: None)
    assert missing is not None and "does not exist" in missing
    looked_up: list[str] = []
    POLICY.check("http://gate.test:8080/x", NS, lambda name: looked_up.append(name))
    assert looked_up == []  # a prefix of the allow-list needs no lookup


def test_settings_take_a_comma_list_of_plain_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KONDENSE_WEBHOOK_ALLOWED_URLS", "https://hooks.example.com/services, http://gate.test:8080"
    )
    settings = OperatorSettings()
    assert settings.webhook_allowed_urls == ["https://hooks.example.com/services", "http://gate.test:8080"]
    assert settings.url_policy().problem("http://gate.test:8080/x", NS) is None
    monkeypatch.delenv("KONDENSE_WEBHOOK_ALLOWED_URLS")
    assert OperatorSettings().webhook_allowed_urls == []  # nothing but the CR's own Services by default
    for bad in ("hooks.example.com", "https://user@hooks.example.com", "https://h.example.com/a?b=1"):
        with pytest.raises(ValidationError):
            OperatorSettings(webhook_allowed_urls=[bad])


def test_a_refused_webhook_is_never_requested_and_fails_with_the_reason(receiver: Receiver) -> None:
    allowed = Webhook.model_validate({"name": "ok", "url": receiver.url + "/ok"})
    other = Webhook.model_validate(
        {"name": "other", "url": receiver.url.replace("127.0.0.1", "localhost") + "/x"}
    )
    policy = UrlPolicy((receiver.url,), "svc.cluster.local")
    results = webhooks.call_all(
        [allowed, other], lambda h: {"name": h.name}, lambda url: policy.check(url, NS, lambda s: None)
    )
    assert results["ok"].ok and [path for path, _ in receiver.received] == ["/ok"]
    assert not results["other"].ok and results["other"].message.startswith("refused: ")
    assert "allow-list" in results["other"].message


def test_the_operator_calls_a_spec_webhook_off_the_list_invalid() -> None:
    from kondense.operator.controller import Controller
    from kondense_testing.builders import digits_spec

    controller = Controller(OperatorSettings(), None, lambda body, event: None)  # type: ignore[arg-type]
    hooks = [
        {"name": "gate", "url": "http://loadtester.ml.svc:8080/gate"},
        {"name": "meta", "url": "http://169.254.169.254/latest"},
    ]
    spec = digits_spec()
    spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(update={
        "webhooks": [Webhook.model_validate(h) for h in hooks]
    })})  # fmt: skip
    problems = controller._preflight(spec, NS, "digits", check_storage=False)
    assert [p for p in problems if "webhooks" in p] == [
        "spec.rollout.webhooks[1].url: "
        + POLICY.problem("http://169.254.169.254/latest", NS).replace(  # type: ignore[union-attr]
            "https://hooks.example.com/services, http://gate.test:8080", "none"
        )
    ]


def test_a_refused_notification_is_not_sent_nor_retried(receiver: Receiver) -> None:
    urls = {
        "allowed": receiver.url + "/hook",
        "elsewhere": receiver.url.replace("127.0.0.1", "localhost") + "/h",
    }
    policy = UrlPolicy((receiver.url,), "svc.cluster.local")
    asked: list[str] = []

    def guard(namespace: str, url: str) -> str | None:
        asked.append(url)
        return policy.check(url, namespace, lambda s: None)

    notifier = Notifier(lambda ns, ref: urls[ref.key], attempts=5, backoff_seconds=0.5, guard=guard)
    targets = [
        Notification.model_validate(
            {"name": key, "type": "webhook", "secretKeyRef": {"name": "hooks", "key": key}}
        )
        for key in urls
    ]
    assert notifier.notify(NS, "digits", targets, [Event("Normal", "Promoted", "int8 is now stable")]) == 2
    notifier.queue.join()
    assert [path for path, _ in receiver.received] == ["/hook"]
    ((notice, why),) = notifier.refused
    assert notice.notification.name == "elsewhere" and "allow-list" in why
    assert sorted(asked) == sorted(urls.values())  # each asked once: a refusal is not retried
