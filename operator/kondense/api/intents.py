"""What a person asks of a rollout (``kubectl kondense pause|resume|approve|promote|abort|retry``).

An intent is written to the CompressedModel itself, as annotations, so it survives an operator restart
and shows in ``kubectl get -o yaml``; the operator acknowledges each one in ``status.intents`` (and an
Event) once acted on. One-shot intents carry a nonce: an intent is pending while its annotation's nonce
differs from the acknowledged one, so the same command given twice is acted on twice, and a replayed
reconcile after a restart never acts on the same nonce again. ``paused`` is a state, not a one-shot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "kondense.dev/"
PAUSED = PREFIX + "paused"
SKIP_ANALYSIS = "skip-analysis"


class Intent(StrEnum):
    APPROVE = "approve"  # let a rollout waiting for approval go on
    PROMOTE = "promote"  # promote the canary now (value "<nonce>" or "skip-analysis:<nonce>")
    ABORT = "abort"  # back to 100 % stable, the canary rolled back, no next variant
    RETRY = "retry"  # start the rollout over after RolledBack / Failed / an abort

    @property
    def annotation(self) -> str:
        return PREFIX + self.value


@dataclass(frozen=True)
class Request:
    intent: Intent
    nonce: str
    skip_analysis: bool = False


@dataclass(frozen=True)
class Intents:
    paused: bool
    requests: tuple[Request, ...]

    def pending(self, acknowledged: Mapping[str, str]) -> list[Request]:
        """Requests not acknowledged yet, in a fixed order (abort first: it wins over the others)."""
        order = [Intent.ABORT, Intent.RETRY, Intent.PROMOTE, Intent.APPROVE]
        out = [r for r in self.requests if acknowledged.get(r.intent.value) != r.nonce]
        return sorted(out, key=lambda r: order.index(r.intent))


def parse(annotations: Mapping[str, str] | None) -> Intents:
    """Intents from an object's annotations; values that are not understood are ignored (an
    annotation typed by hand cannot break reconciling)."""
    annotations = annotations or {}
    paused = str(annotations.get(PAUSED, "")).strip().lower() == "true"
    requests = []
    for intent in Intent:
        raw = annotations.get(intent.annotation)
        if not isinstance(raw, str) or not raw.strip():
            continue
        value = raw.strip()
        skip = False
        if intent is Intent.PROMOTE and value.startswith(SKIP_ANALYSIS + ":"):
            skip, value = True, value.removeprefix(SKIP_ANALYSIS + ":")
        if value:
            requests.append(Request(intent, value, skip))
    return Intents(paused, tuple(requests))


def annotation_value(intent: Intent, nonce: str, *, skip_analysis: bool = False) -> str:
    if skip_analysis and intent is not Intent.PROMOTE:
        raise ValueError("only promote can skip the analysis")
    return f"{SKIP_ANALYSIS}:{nonce}" if skip_analysis else nonce
