"""Calling ``spec.rollout.webhooks`` (the shell's side; the core decides what the answers mean).

One JSON POST per webhook; a 2xx answer passes, anything else, an unreachable URL or a timeout fails,
with the reason in one line (it ends up in ``status.canary.checks`` or ``status.message``). Webhooks due
together are called in parallel, so a reconcile waits at most for the slowest timeout (<= 60 s).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from kondense.api.resource import CompressedModelStatus, Webhook
from kondense.operator.analysis import Reading
from kondense.operator.rollout import WebhookResult

log = logging.getLogger("kondense.operator")
MAX_SHOWN = 200  # characters of a failing answer's body kept in the message


def payload(
    hook: Webhook,
    namespace: str,
    name: str,
    status: CompressedModelStatus,
    readings: Sequence[Reading] | None,
    variant: str | None = None,
) -> dict[str, Any]:
    """What a webhook receives: which model, variant, step and weight, and the latest readings."""
    canary = status.canary
    return {
        "name": name,
        "namespace": namespace,
        "type": hook.type.value,
        "phase": status.phase.value,
        "variant": variant or (canary.variant if canary else None),
        "step": canary.step if canary else None,
        "weight": canary.requestedWeight if canary else 0,
        "readings": {r.sli.value: r.value for r in readings or []},
        "metadata": dict(hook.metadata or {}),
    }


UrlGuard = Callable[[str], str | None]
"""url -> why the operator may not call it (kondense.operator.outbound), None when it may."""


def call(
    hook: Webhook, body: Mapping[str, Any], client: httpx.Client | None = None, guard: UrlGuard | None = None
) -> WebhookResult:
    refused = guard(hook.url) if guard is not None else None
    if refused is not None:  # never sent: counts as a failed call, with the reason
        return WebhookResult(hook.name, hook.type, False, f"refused: {refused}"[:300])
    timeout = hook.timeout_seconds()
    try:
        if client is None:
            with httpx.Client(timeout=timeout, follow_redirects=False) as own:
                response = own.post(hook.url, json=body)
        else:
            response = client.post(hook.url, json=body, timeout=timeout)
    except httpx.TimeoutException:
        return WebhookResult(hook.name, hook.type, False, f"no answer within {hook.timeout} (timed out)")
    except httpx.HTTPError as exc:
        return WebhookResult(hook.name, hook.type, False, f"unreachable: {type(exc).__name__}: {exc}"[:300])
    ok = 200 <= response.status_code < 300
    message = f"answered {response.status_code}"
    if not ok:
        text = " ".join(response.text.split())[:MAX_SHOWN]
        message += f": {text}" if text else ""
    return WebhookResult(hook.name, hook.type, ok, message)


def call_all(
    hooks: Sequence[Webhook], body: Callable[[Webhook], Mapping[str, Any]], guard: UrlGuard | None = None
) -> dict[str, WebhookResult]:
    """Every hook, in parallel; results by webhook name."""
    if not hooks:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(hooks))) as pool:
        results = list(pool.map(lambda h: call(h, body(h), guard=guard), hooks))
    for result in results:
        if not result.ok:
            log.info("webhook %s (%s): %s", result.name, result.type.value, result.message)
    return {r.name: r for r in results}


def call_in_background(
    hooks: Sequence[Webhook],
    body: Callable[[Webhook], Mapping[str, Any]],
    done: Callable[[dict[str, WebhookResult]], None],
    guard: UrlGuard | None = None,
) -> threading.Thread | None:
    """post-rollout webhooks: told after the fact, never holding up the reconcile that decided it."""
    if not hooks:
        return None
    thread = threading.Thread(
        target=lambda: done(call_all(hooks, body, guard)), daemon=True, name="post-rollout"
    )
    thread.start()
    return thread
