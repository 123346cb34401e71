"""The rollout state machine (pure): ``(spec, status, generation, world, now) -> Decision``.

Everything the operator needs after a restart is in the status it returns; the shell writes that
status *before* it acts (creates Jobs, applies Deployments, posts Events), so a restarted operator
re-derives the same actions and never promotes twice. Serving topology is declarative: see
``topology``, recomputed from the status on every tick.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from kondense.api.artifacts import ArtifactRef, JobResult, VariantMetrics
from kondense.api.intents import Intent, Intents, Request
from kondense.api.resource import (
    MAX_CHECKS,
    Approval,
    BakeStatus,
    CanaryStatus,
    Check,
    CompressedModelSpec,
    CompressedModelStatus,
    Condition,
    MirrorStatus,
    Phase,
    StableStatus,
    VariantPhase,
    VariantStatus,
    Webhook,
    WebhookType,
    parse_duration,
)
from kondense.operator.analysis import (
    INFINITE_READING,
    SLI,
    Analysis,
    Comparison,
    Reading,
    TrackSample,
    Verdict,
    analyse,
)
from kondense.operator.naming import run_id
from kondense.operator.selection import select_variants

BASE = "base"  # the baseline Job: copies + checksums + evaluates the base model for the stable track
TERMINAL = {VariantPhase.SUCCEEDED, VariantPhase.REJECTED, VariantPhase.FAILED}
# phases with a live canary (weights, analysis, rollback): WaitingForApproval is a canary held for approval
CANARY_PHASES = (Phase.CANARY, Phase.WAITING_FOR_APPROVAL)
# phases with a canary that is analysed: Mirroring is a canary answering only mirrored copies (issue 13)
ANALYSED_PHASES = (*CANARY_PHASES, Phase.MIRRORING)
MIN_WINDOW = timedelta(seconds=10)  # shortest PromQL window worth asking for (several scrapes)
# Shortest window of a continuous analysis after a counted check: fresh samples only, so two counted
# failures never share evidence (and several scrapes of a 1-2 s scrape interval).
CONTINUOUS_MIN_WINDOW = timedelta(seconds=4)


class JobState(StrEnum):
    MISSING = "Missing"
    ACTIVE = "Active"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobObservation:
    state: JobState
    reason: str | None = None  # DeadlineExceeded, BackoffLimitExceeded, OOMKilled, BadInput, ...
    message: str | None = None
    result: JobResult | None = None


@dataclass(frozen=True)
class TrackObservation:
    """One serving Deployment as observed."""

    replicas: int  # desired
    ready: int
    updated: int
    sha256: str | None  # artifact its pod template serves
    settled: bool  # the controller observed the latest generation and every pod is updated and ready
    autoscaled: bool = False  # a HorizontalPodAutoscaler owns its replicas (kondense.dev/autoscaled)
    # Ready pods that surely run the current template: readyReplicas counts old pods too while a
    # rollout replaces them, so at least ready - (all pods - updated pods) of the ready ones are new.
    ready_updated: int | None = None  # None: not observed, read as ``ready``


@dataclass(frozen=True)
class World:
    jobs: Mapping[str, JobObservation] = field(default_factory=dict)
    stable: TrackObservation | None = None
    canary: TrackObservation | None = None
    # the standby Deployment (the previous stable artifact kept warm for a bake's instant revert)
    standby: TrackObservation | None = None
    readings: Sequence[Reading] | None = None  # present only when the shell ran an analysis
    due: AnalysisDue | None = None  # which analysis the readings are for (analysis_due)
    intents: Intents = field(default_factory=lambda: Intents(False, ()))  # from the annotations
    webhooks: Mapping[str, WebhookResult] = field(default_factory=dict)  # by name (webhooks_due)
    comparison: Comparison | None = None  # canary and stable over the same window (relative gates)
    # (requested, stable ready, canary ready) -> the canary percent achieved: the traffic router's
    observed_weight: ObservedWeight = field(
        default=lambda requested, stable, canary: ready_ratio(stable, canary)
    )
    # what the shell found that makes the spec impossible to act on (it does not validate, a PVC or
    # HTTPRoute is missing, an image is not allowed, ...): the decision is Invalid, and no children
    problems: Sequence[str] = ()


@dataclass(frozen=True)
class WebhookResult:
    """What one webhook call came to (the shell calls: kondense.operator.webhooks)."""

    name: str
    type: WebhookType
    ok: bool  # answered 2xx
    message: str  # e.g. "answered 503: busy", "timed out after 5s"


ObservedWeight = Callable[[int, int, int], int]


def ready_ratio(stable_ready: int, canary_ready: int) -> int:
    """The canary's share of the ready pods, in percent (what one Service over both tracks gives it)."""
    total = stable_ready + canary_ready
    return round(100 * canary_ready / total) if total else 0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    # the failed checks behind a breach Event (value, threshold, window, SLI), for notifications; not
    # part of the Event's identity (Kubernetes Events carry the message only)
    breaches: tuple[Check, ...] = field(default=(), compare=False)


def _breaches(analysis: Analysis, variant: str) -> tuple[Check, ...]:
    return tuple(
        c.model_copy(update={"variant": c.variant or variant}) for c in analysis.checks if not c.passed
    )


@dataclass
class Decision:
    status: CompressedModelStatus
    create_jobs: list[str] = field(default_factory=list)  # variant names (BASE for the baseline)
    events: list[Event] = field(default_factory=list)
    analysis: Analysis | None = None
    act: bool = True  # False: the spec cannot be acted on (Invalid): no child is created, applied or deleted


# ------------------------------------------------------------------------------------------------
# spec fingerprints: which stage a spec change restarts from


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


PLACEMENT_FIELDS = ("nodeSelector", "tolerations", "affinity")


def compression_hash(spec: CompressedModelSpec) -> str:
    """What a compression run depends on; a change starts a new run (new Jobs, new variants).

    That includes where the Jobs run: int8 accuracy and speed depend on the CPU. With
    ``compression.sameNodesAsServing`` the Jobs take each serving placement field not set under
    ``compression`` (``objects.compression_placement``), so those serving fields count here; without
    it serving placement does not matter. Only inherited fields that place anything are added, so a
    spec that inherits nothing hashes as it did before.
    """
    payload = spec.model_dump(
        mode="json", include={"baseModel", "task", "data", "targets", "artifacts", "compression"}
    )
    own, serving = spec.compression, spec.serving
    if own.sameNodesAsServing:
        inherited = {
            name: serving.model_dump(mode="json", include={name})[name]
            for name in PLACEMENT_FIELDS
            if getattr(own, name) is None and getattr(serving, name)
        }
        if inherited:
            payload["placementFromServing"] = inherited
    return _digest(payload)


UNHASHED_WHEN_UNSET = {"serving": {"workers"}}
"""Fields added after v0.x shipped: left unset they are left out of ``rollout_hash``, so that upgrading
the operator does not roll every model out again."""


def rollout_hash(spec: CompressedModelSpec) -> str:
    # approval and webhooks gate how the canary moves on, not what it serves: changing them restarts nothing
    exclude: dict[str, Any] = {"rollout": {"approval", "webhooks"}}
    unset = {
        section: {name for name in names if getattr(getattr(spec, section), name) is None}
        for section, names in UNHASHED_WHEN_UNSET.items()
    }
    exclude.update({section: names for section, names in unset.items() if names})
    return _digest(spec.model_dump(mode="json", include={"selection", "serving", "rollout"}, exclude=exclude))


# ------------------------------------------------------------------------------------------------
# helpers


def _iso(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


def _fromiso(ts: object) -> datetime | None:
    if not isinstance(ts, str) or not ts or len(ts) > 64:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_time(ts: object) -> datetime | None:
    """A status timestamp as an aware datetime. Status is written by the operator, but anyone with
    access to the status subresource can edit it: a timestamp without a zone is read as UTC, and
    anything that is not an ISO 8601 timestamp is None (ignored), never an exception."""
    parsed = _fromiso(ts)
    if parsed is not None and parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed


_CANARY_TIMES = ("startedAt", "readyAt", "stepStartedAt", "lastAnalysisAt", "scalingSince")


def _sanitize_times(status: CompressedModelStatus, d: Decision) -> None:
    """Rewrite naive canary timestamps as UTC and drop unreadable ones, each with a warning Event."""
    canary = status.canary
    if canary is None:
        return
    for name in _CANARY_TIMES:
        text = getattr(canary, name)
        if text is None:
            continue
        parsed = _fromiso(text)
        if parsed is not None and parsed.tzinfo is not None:
            continue
        fixed = _iso(parsed.replace(tzinfo=UTC)) if parsed is not None else None
        what = (
            f"has no time zone: read as UTC ({fixed})" if fixed else "is not an ISO 8601 timestamp: ignored"
        )
        setattr(canary, name, fixed)
        d.events.append(Event("Warning", "BadTimestamp", f"status.canary.{name}: {text[:64]!r} {what}"))


def set_condition(
    status: CompressedModelStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> None:
    wanted = "True" if value else "False"
    for i, cond in enumerate(status.conditions):
        if cond.type == type_:
            changed = cond.status != wanted
            status.conditions[i] = Condition(
                type=type_,
                status=wanted,
                reason=reason,
                message=message,
                lastTransitionTime=now if changed else cond.lastTransitionTime,
                observedGeneration=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=wanted,
            reason=reason,
            message=message,
            lastTransitionTime=now,
            observedGeneration=generation,
        )
    )


def technique_label(spec: CompressedModelSpec, name: str) -> str:
    return "+".join(t.value for t in spec.target(name).techniques())


def _variant(status: CompressedModelStatus, name: str) -> VariantStatus:
    for v in status.variants:
        if v.name == name:
            return v
    raise KeyError(name)


def metrics_problem(metrics: VariantMetrics | None) -> str | None:
    """Why a Job's reported metrics cannot be trusted (None: they can). Every number must be finite;
    sizes and latencies are >= 0; accuracyDelta (base minus variant score, lower is better) may be
    below 0 when the variant scores better, but never below -1."""
    if metrics is None:
        return None
    for name, value in metrics.model_dump().items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        floor = -1.0 if name == "accuracyDelta" else 0.0
        if math.isnan(value) or math.isinf(value):
            return f"metrics.{name} is {value} (not a finite number)"
        if value < floor:
            return f"metrics.{name} is {value:g} (must be >= {floor:g})"
    return None


def _apply_job(variant: VariantStatus, obs: JobObservation, budget: float | None) -> Event | None:
    """Fold a finished Job into its variant status; returns the event to post."""
    if obs.state is JobState.SUCCEEDED:
        result = obs.result
        if result is None:
            variant.phase, variant.reason = VariantPhase.FAILED, "UnreadableResult"
            variant.message = obs.message or "the Job succeeded but left no readable result"
        elif result.artifact is None:
            variant.phase, variant.reason = VariantPhase.FAILED, "NoArtifact"
            variant.message = result.message or "the Job reported no artifact"
        elif (problem := metrics_problem(result.metrics)) is not None:
            variant.phase, variant.reason = VariantPhase.FAILED, "InvalidMetrics"
            variant.message = f"the Job's result is unusable: {problem}"
        else:
            variant.artifact, variant.metrics = result.artifact, result.metrics
            variant.hardware = result.hardware
            delta = result.metrics.accuracyDelta if result.metrics else None
            over = budget is not None and (delta is None or delta > budget)
            if result.reason == "BudgetNotMet" or over:
                variant.phase, variant.reason = VariantPhase.REJECTED, "BudgetNotMet"
                shown = "n/a" if delta is None else f"{delta:.4f}"
                variant.message = f"accuracy delta {shown} > budget {budget}"
            else:
                variant.phase, variant.reason, variant.message = VariantPhase.SUCCEEDED, None, result.message
        ok = variant.phase is VariantPhase.SUCCEEDED
        return Event(
            "Normal" if ok else "Warning",
            "VariantCompressed" if ok else "VariantRejected",
            f"{variant.name}: {variant.message or 'compressed'}"
            + (
                f" (size {variant.metrics.sizeRatio:.3f}x of base)"
                if ok and variant.metrics and variant.metrics.sizeRatio
                else ""
            ),
        )
    if obs.state is JobState.FAILED:
        variant.phase = VariantPhase.FAILED
        variant.reason = obs.reason or (obs.result.reason if obs.result else None) or "JobFailed"
        variant.message = (obs.result.message if obs.result and obs.result.message else None) or obs.message
        return Event(
            "Warning", "VariantFailed", f"{variant.name}: {variant.reason}: {variant.message or ''}".strip()
        )
    return None


def _start_canary(status: CompressedModelStatus, spec: CompressedModelSpec, name: str, now: str) -> None:
    history = status.canary.checks if status.canary else []
    status.selectedVariant = name
    status.phase = Phase.CANARY
    weight = spec.rollout.steps[0]
    status.canary = CanaryStatus(
        variant=name,
        step=0,
        weight=0,
        requestedWeight=weight,
        startedAt=now,
        stepStartedAt=now,
        checks=history,
    )
    _variant(status, name).phase = VariantPhase.SUCCEEDED
    if spec.rollout.mirror is not None:  # mirror first: no user traffic until the mirror phase passed
        status.phase = Phase.MIRRORING
        status.canary.requestedWeight = 0
        status.canary.mirror = MirrorStatus(startedAt=now)


def _started_message(spec: CompressedModelSpec, name: str) -> str:
    if spec.rollout.mirror is not None:
        return f"canary {name} mirroring {spec.rollout.mirror.percentage}% of live requests (no user traffic)"
    return f"canary {name} at {spec.rollout.steps[0]}%"


def effective_window(spec: CompressedModelSpec, status: CompressedModelStatus, now: datetime) -> str:
    """The analysis window, shortened to the time the canary has been serving (queries also select
    the canary's own pods, so this only keeps rates from averaging over its warm-up)."""
    window = parse_duration(spec.rollout.analysis.window)
    ready = parse_time(status.canary.readyAt if status.canary else None)
    if ready is not None:
        window = min(window, max(now - ready, MIN_WINDOW))
    return f"{int(window.total_seconds())}s"


def continuous_window(status: CompressedModelStatus, now: datetime) -> str:
    """Window of a continuous analysis: the samples since the last counted check (or since the canary
    began serving), so two counted failures never share evidence; at least CONTINUOUS_MIN_WINDOW."""
    canary = status.canary
    ready = parse_time(canary.readyAt if canary else None)
    last = parse_time(canary.lastAnalysisAt if canary else None)
    since = max(filter(None, [ready, last]), default=now)
    window = max(now - since, CONTINUOUS_MIN_WINDOW)
    return f"{int(window.total_seconds())}s"


def ready_timeout(spec: CompressedModelSpec) -> timedelta:
    """How long canary pods may take to serve before that counts as a failed check."""
    return max(timedelta(seconds=5 * spec.rollout.interval_seconds()), timedelta(minutes=2))


class AnalysisDue(StrEnum):
    """Which analysis the shell should read SLIs for on this tick."""

    NONE = "none"
    INTERVAL = "interval"  # once per interval: a pass advances the step, a breach counts
    CONTINUOUS = "continuous"  # between intervals: only breaches count (ordinary ones, or abort)


def analysis_due(
    spec: CompressedModelSpec, status: CompressedModelStatus, world: World, now: datetime
) -> AnalysisDue:
    """One interval analysis per interval, the clock starting when the canary's pods serve the variant
    (an analysis of pods that are still starting would only ever say "no data"); in between, once the
    canary serves, a continuous analysis on every tick so that breaches are not left standing for an
    interval. A continuous analysis after a counted check waits for CONTINUOUS_MIN_WINDOW of fresh
    samples."""
    canary = status.canary
    if status.phase not in ANALYSED_PHASES or canary is None or canary.promoting:
        return AnalysisDue.NONE
    interval = timedelta(seconds=spec.rollout.interval_seconds())
    ready = parse_time(canary.readyAt) or (now if _canary_serving(status, world) else None)
    if ready is None:  # not serving yet: a check only once it is overdue (it counts as a failure)
        since = parse_time(canary.lastAnalysisAt) or parse_time(canary.startedAt)
        overdue = since is not None and now - since >= max(ready_timeout(spec), interval)
        return AnalysisDue.INTERVAL if overdue else AnalysisDue.NONE
    last_check = parse_time(canary.lastAnalysisAt)
    last = max(filter(None, [last_check, parse_time(canary.stepStartedAt), ready]))
    if now - last >= interval:
        return AnalysisDue.INTERVAL
    if canary.readyAt is None:  # readyAt is recorded by this tick's reconcile; continuous from the next
        return AnalysisDue.NONE
    if last_check is not None and last_check >= ready and now - last_check < CONTINUOUS_MIN_WINDOW:
        return AnalysisDue.NONE
    return AnalysisDue.CONTINUOUS


def _canary_serving(status: CompressedModelStatus, world: World) -> bool:
    canary = status.canary
    if canary is None or canary.variant is None or world.canary is None:
        return False
    variant = next((v for v in status.variants if v.name == canary.variant), None)
    sha = variant.artifact.sha256 if variant and variant.artifact else None
    seen = world.canary
    serving = seen.ready if seen.ready_updated is None else seen.ready_updated
    return serving >= 1 and seen.sha256 == sha


# ------------------------------------------------------------------------------------------------
# the state machine


def reconcile(
    spec: CompressedModelSpec | None,
    current: CompressedModelStatus,
    generation: int | None,
    world: World,
    now: datetime,
) -> Decision:
    """``spec`` is None when the stored spec does not validate (``world.problems`` says why)."""
    if spec is None or world.problems:
        return invalid(current, world.problems or ("spec: does not validate",), generation, now)
    status = current.model_copy(deep=True)
    ts = _iso(now)
    d = Decision(status)
    comp, roll = compression_hash(spec), rollout_hash(spec)
    _sanitize_times(status, d)

    # 1. spec changes restart from the earliest affected stage
    if status.hashes.compression != comp:
        restarted = status.hashes.compression is not None
        status.variants = [
            VariantStatus(name=t.name, technique=technique_label(spec, t.name)) for t in spec.targets
        ]
        status.base = VariantStatus(name=BASE, technique="baseline")
        status.phase, status.selectedVariant, status.ladder, status.canary = Phase.COMPRESSING, None, [], None
        status.hashes.compression, status.hashes.rollout = comp, roll
        status.hashes.run = run_id(comp, ts, generation)  # a new run: new Jobs, a new directory
        status.message = f"compressing {len(spec.targets)} targets"
        d.events.append(
            Event("Normal", "Compressing", ("spec changed: " if restarted else "") + status.message)
        )
    elif status.hashes.rollout != roll:
        status.hashes.rollout = roll
        if status.phase in (
            *ANALYSED_PHASES,
            Phase.PROMOTED,
            Phase.ROLLED_BACK,
            Phase.FAILED,
            Phase.EVALUATING,
        ):
            for v in status.variants:
                if v.phase is VariantPhase.ROLLED_BACK:
                    v.phase = VariantPhase.SUCCEEDED
            status.canary = None
            status.phase = Phase.EVALUATING
            d.events.append(
                Event("Normal", "Redeploying", "serving/rollout settings changed: selecting again")
            )
    status.observedGeneration = generation
    steer(spec, status, world, now, d)  # pause/resume and the one-shot intents (kubectl kondense)

    # 2. compress: the baseline and one Job per target
    if status.phase in (Phase.PENDING, Phase.COMPRESSING):
        status.phase = Phase.COMPRESSING
        assert status.base is not None
        for v in [status.base, *status.variants]:
            obs = world.jobs.get(v.name, JobObservation(JobState.MISSING))
            if v.phase is VariantPhase.PENDING:
                v.phase = VariantPhase.RUNNING
                d.create_jobs.append(v.name)
            elif v.phase is VariantPhase.RUNNING:
                if obs.state is JobState.MISSING:
                    d.create_jobs.append(v.name)  # lost (e.g. deleted by hand): create it again
                elif obs.state in (JobState.SUCCEEDED, JobState.FAILED):
                    budget = None if v.name == BASE else spec.budget_for(spec.target(v.name))
                    event = _apply_job(v, obs, budget)
                    if event:
                        d.events.append(event)
        base = status.base
        if base.phase is VariantPhase.SUCCEEDED and base.artifact and status.stable is None:
            status.stable = StableStatus(variant=None, artifact=base.artifact)
            d.events.append(
                Event("Normal", "Serving", f"stable serves the base model ({base.artifact.sha256[:12]})")
            )
        if all(v.phase in TERMINAL for v in [base, *status.variants]):
            status.phase = Phase.EVALUATING
        done = sum(v.phase in TERMINAL for v in status.variants)
        set_condition(
            status,
            "Compressed",
            status.phase is Phase.EVALUATING,
            "Compressed" if status.phase is Phase.EVALUATING else "Compressing",
            f"{done}/{len(status.variants)} variants done",
            ts,
            generation,
        )

    # 3. select
    if status.phase is Phase.EVALUATING:
        if status.base is not None and status.base.phase is VariantPhase.FAILED and status.stable is None:
            status.phase = Phase.FAILED
            status.message = (
                f"the base model could not be prepared: {status.base.message or status.base.reason}"
            )
            d.events.append(Event("Warning", "Failed", status.message))
        else:
            selection = select_variants(spec, status.variants)
            if selection.best is None:
                status.phase, status.selectedVariant, status.ladder = Phase.FAILED, None, []
                status.message = "no variant within the accuracy budget; stable keeps serving: " + "; ".join(
                    selection.verdicts[v.name] for v in status.variants
                )
                d.events.append(Event("Warning", "NoVariant", status.message))
            elif status.stable is not None and status.stable.variant == selection.best:
                status.phase, status.selectedVariant = Phase.PROMOTED, selection.best
                status.ladder = selection.ladder[1:]
                status.message = f"{selection.best} is already stable"
            elif status.paused:  # a paused rollout starts no canary (no new traffic shift)
                status.message = f"paused: canary {selection.best} starts on resume"
            elif (held := pre_rollout_hold(spec, world, selection.best)) is not None:
                called = all(h.name in world.webhooks for h in _hooks(spec, WebhookType.PRE_ROLLOUT))
                if called and status.message != held:  # (not called yet: the shell calls on the next tick)
                    d.events.append(Event("Warning", "WebhookHalted", held))
                status.message = held if called else f"canary {selection.best}: pre-rollout webhooks first"
            else:
                status.ladder = selection.ladder[1:]
                _start_canary(status, spec, selection.best, ts)
                status.message = _started_message(spec, selection.best)
                d.events.append(
                    Event(
                        "Normal",
                        "CanaryStarted",
                        f"{selection.best} selected ({selection.verdicts[selection.best]}); "
                        f"fallbacks: {', '.join(status.ladder) or 'none'}",
                    )
                )

    # 4. canary: weights, analysis, promotion, rollback
    if status.phase in CANARY_PHASES and status.canary is not None:
        _canary(spec, status, world, now, d)
    elif status.phase is Phase.MIRRORING and status.canary is not None:
        _mirror(spec, status, world, now, d)

    # 5. bake: after 100 %, a breach reverts stable to the previous artifact at once
    if status.phase is Phase.BAKING:
        _bake(spec, status, world, now, d)
    standby_released(status, world)

    # conditions
    ready = status.phase is Phase.PROMOTED
    set_condition(
        status, "Ready", ready, status.phase.value, status.message or status.phase.value, ts, generation
    )
    status.conditions = [c for c in status.conditions if c.type != INVALID]  # valid again
    return d


INVALID = "Invalid"  # the condition a spec the operator cannot act on carries


def is_invalid(status: CompressedModelStatus) -> bool:
    return any(c.type == INVALID and c.status == "True" for c in status.conditions)


def invalid(
    current: CompressedModelStatus, problems: Sequence[str], generation: int | None, now: datetime
) -> Decision:
    """A spec the operator cannot act on: condition Invalid with every problem, phase Failed when
    nothing has run yet (whatever serves keeps serving), no child created, applied or deleted; one
    Warning Event when this changes the status."""
    status = current.model_copy(deep=True)
    d = Decision(status, act=False)
    message = "; ".join(problems)
    set_condition(status, INVALID, True, "InvalidSpec", message, _iso(now), generation)
    if status.phase is Phase.PENDING or status.hashes.compression is None:
        status.phase = Phase.FAILED
    status.message = f"invalid: {message}"
    status.observedGeneration = generation
    if status != current:
        d.events.append(Event("Warning", "Invalid", message))
    return d


def _canary(
    spec: CompressedModelSpec, status: CompressedModelStatus, world: World, now: datetime, d: Decision
) -> None:
    canary = status.canary
    assert canary is not None and canary.variant is not None
    ts = _iso(now)
    variant = _variant(status, canary.variant)
    generation = status.observedGeneration

    if canary.promoting:
        canary.promotingSince = canary.promotingSince or ts  # (a status from before the field)
        stable = world.stable
        target_sha = variant.artifact.sha256 if variant.artifact else None
        if (
            stable is not None
            and stable.settled
            and stable.sha256 == target_sha
            and stable.ready >= stable.replicas > 0
        ):
            if spec.rollout.bake is not None:  # the gates keep running before the promotion is final
                if standby_hold(spec, status, variant, world, now, d):
                    return
                _start_bake(status, variant, ts, d)
                return
            status.phase = Phase.PROMOTED
            variant.phase = VariantPhase.PROMOTED
            status.stable = StableStatus(variant=variant.name, artifact=variant.artifact)
            canary.promoting = False
            status.message = f"{variant.name} promoted"
            d.events.append(
                Event("Normal", "Promoted", f"{variant.name} is now stable ({(target_sha or '')[:12]})")
            )
        return

    # the weight the canary actually gets, as its traffic router observes it
    if world.canary is not None and world.stable is not None:
        canary.weight = world.observed_weight(canary.requestedWeight, world.stable.ready, world.canary.ready)

    if canary.readyAt is None and _canary_serving(status, world):
        canary.readyAt = ts
    holding = _scaling_hold(spec, status, world, now)
    if world.readings is None:
        return
    continuous = world.due is AnalysisDue.CONTINUOUS
    # relative gates at interval analyses only: a test on every tick over overlapping samples would
    # make false rollbacks far likelier than alpha (multiple testing)
    comparison = NO_BASELINE if continuous else stable_comparison(canary, world)
    if continuous:
        analysis = analyse(
            spec.rollout.analysis, world.readings, ts, continuous_window(status, now), comparison
        )
        if not analysis.breached:
            return  # between intervals only a breach counts: passes and no data wait for the interval
    elif canary.readyAt is None:
        waited = int((now - (parse_time(canary.startedAt) or now)).total_seconds())
        readings = [Reading(SLI.REQUESTS, None, f"canary pods not serving {variant.name} after {waited}s")]
        analysis = analyse(spec.rollout.analysis, readings, ts)
    else:
        analysis = analyse(
            spec.rollout.analysis, world.readings, ts, effective_window(spec, status, now), comparison
        )
    if holding is not None and analysis.verdict is not Verdict.ABORT:  # an abort never waits
        _held(status, holding, world, ts)
        return
    if not continuous:
        analysis = webhook_analysis(spec, analysis, world, ts)  # rollout and rollback webhooks
    d.analysis = analysis
    for check in analysis.checks:
        check.variant = variant.name
    canary.checks = (canary.checks + analysis.checks)[-MAX_CHECKS:]
    canary.lastAnalysisAt = ts
    for check in analysis.checks:
        if check.sli == SLI.P99_LATENCY_MS and check.value is not None:
            canary.p99Ms = check.value
        if check.sli == SLI.ACCURACY_DELTA and check.value is not None:
            canary.accuracyDelta = check.value

    if analysis.verdict is Verdict.PASS:
        set_condition(status, "CanaryHealthy", True, "ChecksPassed", _summary(analysis), ts, generation)
        if hold_advance(spec, status, variant, world, d):  # paused, a confirm webhook, or approval
            return
        last = canary.step >= len(spec.rollout.steps) - 1
        _advance(spec, status, variant, ts, d, ("passed every step: " if last else "") + _summary(analysis))
        return

    canary.failedChecks += 1
    reason = _REASONS[analysis.verdict]
    set_condition(status, "CanaryHealthy", False, reason, _summary(analysis), ts, generation)
    limit = spec.rollout.failureLimit
    if analysis.verdict is Verdict.ABORT:
        d.events.append(
            Event(
                "Warning",
                "Aborted",
                f"{variant.name}: {_summary(analysis)}",
                _breaches(analysis, variant.name),
            )
        )
    elif canary.failedChecks <= limit:
        status.message = f"canary {variant.name}: failed check {canary.failedChecks}/{limit} tolerated"
        d.events.append(
            Event(
                "Warning",
                "CheckFailed",
                f"{variant.name}: {_summary(analysis)}",
                _breaches(analysis, variant.name),
            )
        )
        return
    _roll_back(spec, status, variant, analysis, ts, d)


def scaling_problem(spec: CompressedModelSpec, world: World) -> str | None:
    """Why the analysis holds (autoscaling only): a track whose ready pods are not its desired count
    is scaling, and readings over a changing set of pods say little about the variant."""
    if spec.serving.autoscaling is None:
        return None
    for name, track in (("stable", world.stable), ("canary", world.canary)):
        if track is not None and track.replicas > 0 and track.ready != track.replicas:
            return f"{name} is scaling ({track.ready}/{track.replicas} pods ready)"
    return None


def _scaling_hold(
    spec: CompressedModelSpec, status: CompressedModelStatus, world: World, now: datetime
) -> str | None:
    """Why the analysis holds this tick (no step, no verdict but an abort) while a track scales; a track
    scaling for longer than ready_timeout is judged again (a canary whose new pods never become ready
    must still roll back)."""
    canary = status.canary
    assert canary is not None
    problem = scaling_problem(spec, world) if canary.readyAt is not None else None
    since = parse_time(canary.scalingSince)
    if problem is not None and since is not None and now - since >= ready_timeout(spec):
        return None  # scalingSince stays: held long enough, the analysis judges again
    if problem is None:
        canary.scalingSince = None
        return None
    canary.scalingSince = canary.scalingSince or _iso(now)
    status.message = f"canary {canary.variant}: analysis holds: {problem}"
    return problem


def _held(status: CompressedModelStatus, problem: str, world: World, ts: str) -> None:
    """A held analysis: a check saying why at an interval analysis."""
    canary = status.canary
    assert canary is not None
    if world.due is AnalysisDue.INTERVAL:
        check = Check(
            time=ts,
            variant=canary.variant,
            sli="scaling",
            passed=True,
            held=True,
            message=f"analysis held: {problem}",
        )
        canary.checks = [*canary.checks, check][-MAX_CHECKS:]
        canary.lastAnalysisAt = ts  # the interval clock restarts: the next analysis is an interval on


def _advance(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    variant: VariantStatus,
    ts: str,
    d: Decision,
    why: str,
) -> None:
    """One step up, or promotion from the last step (after a passed analysis, an approval or by hand)."""
    canary = status.canary
    assert canary is not None
    steps = spec.rollout.steps
    status.phase = Phase.CANARY
    if canary.step >= len(steps) - 1:
        canary.promoting = True
        canary.promotingSince = ts
        status.message = f"promoting {variant.name}: stable moves to its artifact"
        d.events.append(Event("Normal", "Promoting", f"{variant.name} {why}"))
    else:
        canary.step += 1
        canary.requestedWeight = steps[canary.step]
        canary.stepStartedAt = ts
        status.message = f"canary {variant.name} at {steps[canary.step]}%"
        d.events.append(Event("Normal", "CanaryStep", f"{variant.name} → {steps[canary.step]}%: {why}"))


def stable_comparison(canary: CanaryStatus, world: World) -> Comparison | None:
    """The relative gates' view of this tick: at 100 % stable serves no user traffic, so there is
    nothing to compare with (the absolute gates judge that step alone)."""
    if world.comparison is None:
        return None
    return replace(world.comparison, stable_idle=canary.requestedWeight >= 100)


def _summary(analysis: Analysis) -> str:
    parts = []
    for c in analysis.checks:
        if c.value is None:
            parts.append(f"{c.sli}: {c.message if c.sli.startswith(WEBHOOK_SLI) else 'no data'}")
        else:
            shown = "+Inf" if c.value >= INFINITE_READING else f"{c.value:.4g}"
            parts.append(f"{c.sli}={shown}{'<=' if c.passed else '>'}{c.threshold:g}")
    return ", ".join(parts) + (f" over {analysis.checks[0].window}" if analysis.checks else "")


_REASONS = {Verdict.FAIL: "Breach", Verdict.ABORT: "Abort", Verdict.NO_DATA: "NoData", Verdict.PASS: "Pass"}


def _roll_back(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    variant: VariantStatus,
    analysis: Analysis,
    ts: str,
    d: Decision,
) -> None:
    canary = status.canary
    assert canary is not None
    failed = [c for c in analysis.checks if not c.passed]
    variant.phase = VariantPhase.ROLLED_BACK
    variant.reason = _REASONS[analysis.verdict]
    variant.message = "; ".join(c.message or c.sli for c in failed)
    canary.requestedWeight, canary.weight = 0, 0
    d.events.append(
        Event(
            "Warning", "RolledBack", f"{variant.name}: {variant.message}", _breaches(analysis, variant.name)
        )
    )
    if status.ladder and status.paused:  # the next variant's canary starts on resume (selection)
        status.phase = Phase.EVALUATING
        status.message = (
            f"{variant.name} rolled back ({variant.reason}); paused: {status.ladder[0]} starts on resume"
        )
    elif status.ladder and _hooks(spec, WebhookType.PRE_ROLLOUT):  # selection starts it once they pass
        status.phase = Phase.EVALUATING
        status.message = f"{variant.name} rolled back ({variant.reason}); next: {status.ladder[0]} (pre-rollout webhooks first)"
    elif status.ladder:
        following = status.ladder.pop(0)
        _start_canary(status, spec, following, ts)
        status.message = f"{variant.name} rolled back ({variant.reason}); trying {following}"
        d.events.append(Event("Normal", "CanaryStarted", f"{following} (next on the ladder)"))
    else:
        status.phase = Phase.ROLLED_BACK
        status.message = (
            f"{variant.name} rolled back ({variant.message}); no variant left, stable keeps serving"
        )


# ------------------------------------------------------------------------------------------------
# steering: pause, manual approval and the one-shot intents of `kubectl kondense` (issue 14)
#
# Safety first: pause and approval only ever hold traffic where it is (no step up, no promotion, no new
# canary); analysis keeps running and a breach still rolls back. Explicit commands (approve, promote,
# abort, retry) act even while paused. Each one-shot intent is acknowledged in status.intents with its
# nonce in the same status write as its effect, so a replayed reconcile never acts on it twice.


def steer(
    spec: CompressedModelSpec, status: CompressedModelStatus, world: World, now: datetime, d: Decision
) -> None:
    ts = _iso(now)
    wanted = world.intents
    if wanted.paused != status.paused:
        status.paused = wanted.paused
        where = _where(status)
        d.events.append(
            Event(
                "Normal",
                "Paused",
                f"paused {where}: no step up, no promotion, no new canary; breaches still roll back",
            )
            if wanted.paused
            else Event("Normal", "Resumed", f"resumed {where}")
        )
        if not wanted.paused and (status.message or "").startswith("paused"):
            status.message = f"resumed {where}"
    for request in wanted.pending(status.intents):
        status.intents[request.intent.value] = request.nonce
        _INTENT_HANDLERS[request.intent](spec, status, request, ts, d)


def _where(status: CompressedModelStatus) -> str:
    canary = status.canary
    if status.phase in ANALYSED_PHASES and canary is not None:
        return f"(canary {canary.variant} at {canary.requestedWeight}%, phase {status.phase.value})"
    return f"(phase {status.phase.value})"


def hold_advance(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    variant: VariantStatus,
    world: World,
    d: Decision,
) -> bool:
    """After a passed interval analysis: should the canary stay where it is (paused, or a manual
    approval is needed)? Entering WaitingForApproval posts one Event; staying there posts none."""
    canary = status.canary
    assert canary is not None
    steps = spec.rollout.steps
    last = canary.step >= len(steps) - 1
    what = "promotion" if last else f"the step to {steps[canary.step + 1]}%"
    if status.paused:
        status.message = (
            f"paused: canary {variant.name} held at {canary.requestedWeight}%; {what} waits for resume"
        )
        return True
    gate = WebhookType.CONFIRM_PROMOTION if last else WebhookType.CONFIRM_TRAFFIC_INCREASE
    failed = _failed_hooks(spec, gate, world)
    if failed:
        held = f"canary {variant.name} held at {canary.requestedWeight}%: {what} not confirmed: {failed}"
        if status.message != held:
            d.events.append(Event("Warning", "WebhookHalted", held))
        status.message = held
        return True
    approval = spec.rollout.approval
    if not (approval is Approval.EVERY_STEP or (approval is Approval.PROMOTION and last)):
        return False
    if status.phase is not Phase.WAITING_FOR_APPROVAL:
        status.phase = Phase.WAITING_FOR_APPROVAL
        status.message = (
            f"canary {variant.name} passed at {canary.requestedWeight}%: {what} waits for approval "
            "(kubectl kondense approve)"
        )
        d.events.append(Event("Normal", "WaitingForApproval", status.message))
    return True


def _ignored(status: CompressedModelStatus, request: Request, why: str, d: Decision) -> None:
    d.events.append(Event("Normal", "IntentIgnored", f"{request.intent.value} ({request.nonce}): {why}"))


def _live_canary(status: CompressedModelStatus) -> CanaryStatus | None:
    canary = status.canary
    if status.phase in ANALYSED_PHASES and canary is not None and canary.variant is not None:
        return canary
    return None


def _approve(
    spec: CompressedModelSpec, status: CompressedModelStatus, request: Request, ts: str, d: Decision
) -> None:
    canary = _live_canary(status)
    if status.phase is not Phase.WAITING_FOR_APPROVAL or canary is None or canary.variant is None:
        _ignored(status, request, f"nothing waits for approval (phase {status.phase.value})", d)
        return
    d.events.append(Event("Normal", "Approved", f"{canary.variant} approved ({request.nonce})"))
    _advance(spec, status, _variant(status, canary.variant), ts, d, f"approved ({request.nonce})")


def _promote(
    spec: CompressedModelSpec, status: CompressedModelStatus, request: Request, ts: str, d: Decision
) -> None:
    canary = _live_canary(status)
    if canary is None or canary.variant is None or canary.promoting:
        state = (
            "already promoting" if canary is not None and canary.promoting else f"phase {status.phase.value}"
        )
        _ignored(status, request, f"no canary to promote ({state})", d)
        return
    variant = _variant(status, canary.variant)
    how = "analysis skipped" if request.skip_analysis else "one step now"
    d.events.append(
        Event("Normal", "ManualPromotion", f"{variant.name}: promote by hand, {how} ({request.nonce})")
    )
    if status.phase is Phase.MIRRORING:  # one step now: the end of the mirror phase, the first step
        _end_mirror(spec, status, variant, ts, d, f"promoted by hand, {how} ({request.nonce})")
        if not request.skip_analysis:
            return
    if request.skip_analysis:
        canary.step = len(spec.rollout.steps) - 1
    _advance(spec, status, variant, ts, d, f"promoted by hand, {how} ({request.nonce})")


def _abort(
    spec: CompressedModelSpec, status: CompressedModelStatus, request: Request, ts: str, d: Decision
) -> None:
    canary = _live_canary(status)
    if canary is None or canary.variant is None:
        _ignored(status, request, f"no canary to abort (phase {status.phase.value})", d)
        return
    variant = _variant(status, canary.variant)
    variant.phase, variant.reason = VariantPhase.ROLLED_BACK, "Aborted"
    variant.message = f"aborted by hand ({request.nonce})"
    canary.requestedWeight, canary.weight, canary.promoting = 0, 0, False
    status.phase = Phase.ROLLED_BACK
    serving = status.stable.variant if status.stable and status.stable.variant else "the base model"
    status.message = (
        f"{variant.name} aborted by hand: 100% on stable ({serving}); kubectl kondense retry starts over"
    )
    d.events.append(Event("Warning", "ManualAbort", f"{variant.name}: {status.message} ({request.nonce})"))


def _retry(
    spec: CompressedModelSpec, status: CompressedModelStatus, request: Request, ts: str, d: Decision
) -> None:
    if status.phase not in (Phase.ROLLED_BACK, Phase.FAILED):
        _ignored(
            status,
            request,
            f"only a rolled back or failed rollout is retried (phase {status.phase.value})",
            d,
        )
        return
    again = [v.name for v in status.variants if v.phase is VariantPhase.ROLLED_BACK]
    for v in status.variants:
        if v.phase is VariantPhase.ROLLED_BACK:
            v.phase, v.reason, v.message = VariantPhase.SUCCEEDED, None, None
    status.phase, status.selectedVariant, status.ladder = Phase.EVALUATING, None, []
    status.message = "retrying: selecting again"
    d.events.append(
        Event(
            "Normal",
            "Retrying",
            f"starting the rollout over ({request.nonce}); candidates again: {', '.join(again) or 'none rolled back'}",
        )
    )


# webhooks (as Flagger's analysis.webhooks): the shell calls the ones due and puts the results in World


def _hooks(spec: CompressedModelSpec, *types: WebhookType) -> list[Webhook]:
    return [h for h in spec.rollout.webhooks if h.type in types]


def webhooks_due(spec: CompressedModelSpec, status: CompressedModelStatus, due: AnalysisDue) -> list[Webhook]:
    """The webhooks the shell calls on this tick (post-rollout ones it calls after a promotion or a
    rollback, see post_rollout_due): pre-rollout while a canary waits to start, the rollout, rollback
    and confirm-* ones with each interval analysis."""
    canary = status.canary
    if status.phase is Phase.EVALUATING:
        return [] if status.paused else _hooks(spec, WebhookType.PRE_ROLLOUT)
    if (
        status.phase not in CANARY_PHASES
        or canary is None
        or canary.promoting
        or due is not AnalysisDue.INTERVAL
    ):
        return []
    last = canary.step >= len(spec.rollout.steps) - 1
    confirm = WebhookType.CONFIRM_PROMOTION if last else WebhookType.CONFIRM_TRAFFIC_INCREASE
    return _hooks(spec, WebhookType.ROLLOUT, WebhookType.ROLLBACK, confirm)


def post_rollout_due(
    spec: CompressedModelSpec, before: CompressedModelStatus, after: CompressedModelStatus
) -> list[Webhook]:
    ended = after.phase in (Phase.PROMOTED, Phase.ROLLED_BACK) and before.phase is not after.phase
    return _hooks(spec, WebhookType.POST_ROLLOUT) if ended else []


def _failed_hooks(spec: CompressedModelSpec, kind: WebhookType, world: World) -> str:
    """'; '-joined failures of the webhooks of a kind (a webhook with no result counts as failed)."""
    out = []
    for hook in _hooks(spec, kind):
        result = world.webhooks.get(hook.name)
        if result is None or not result.ok:
            out.append(f"{kind.value} webhook {hook.name}: {result.message if result else 'not called'}")
    return "; ".join(out)


def pre_rollout_hold(spec: CompressedModelSpec, world: World, variant: str) -> str | None:
    failed = _failed_hooks(spec, WebhookType.PRE_ROLLOUT, world)
    return f"canary {variant} not started: {failed}" if failed else None


WEBHOOK_SLI = "webhook"


def webhook_analysis(spec: CompressedModelSpec, analysis: Analysis, world: World, ts: str) -> Analysis:
    """An interval analysis with its rollout and rollback webhooks: a failed rollout webhook is a
    failed check (it counts against failureLimit); a rollback webhook answering 2xx rolls back at once."""
    checks, verdict = list(analysis.checks), analysis.verdict
    window = analysis.checks[0].window if analysis.checks else None
    for hook in _hooks(spec, WebhookType.ROLLOUT):
        result = world.webhooks.get(hook.name)
        if result is None or not result.ok:
            why = result.message if result else "not called"
            checks.append(
                Check(time=ts, sli=f"{WEBHOOK_SLI}/{hook.name}", window=window, passed=False,
                      message=f"rollout webhook {hook.name} ({hook.url}): {why}")
            )  # fmt: skip
            if verdict is Verdict.PASS:
                verdict = Verdict.FAIL
    for hook in _hooks(spec, WebhookType.ROLLBACK):
        result = world.webhooks.get(hook.name)
        if result is not None and result.ok:
            checks.append(
                Check(time=ts, sli=f"{WEBHOOK_SLI}/{hook.name}", window=window, passed=False,
                      message=f"rollback webhook {hook.name} ({hook.url}) {result.message}: roll back")
            )  # fmt: skip
            verdict = Verdict.ABORT
    return Analysis(checks, verdict)


_INTENT_HANDLERS: dict[
    Intent, Callable[[CompressedModelSpec, CompressedModelStatus, Request, str, Decision], None]
] = {
    Intent.APPROVE: _approve,
    Intent.PROMOTE: _promote,
    Intent.ABORT: _abort,
    Intent.RETRY: _retry,
}


# bake and instant revert (issue 13): after 100 % the variant serves as stable while the gates keep
# running; the previous stable artifact is kept in status.bake.previous until the bake passes


# Nothing to compare with during a bake (only the variant serves): the relative gates are not judged.
NO_BASELINE = Comparison(TrackSample(), TrackSample(), stable_idle=True)


def _start_bake(status: CompressedModelStatus, variant: VariantStatus, ts: str, d: Decision) -> None:
    canary = status.canary
    assert canary is not None
    previous = status.stable.model_copy(deep=True) if status.stable is not None else None
    status.phase = Phase.BAKING
    status.stable = StableStatus(variant=variant.name, artifact=variant.artifact)
    status.bake = BakeStatus(variant=variant.name, artifact=variant.artifact, previous=previous, startedAt=ts)
    canary.promoting = False
    was = (previous.variant or "base") if previous else "nothing"
    status.message = f"{variant.name} baking at 100 % (previous stable {was} kept)"
    d.events.append(Event("Normal", "Baking", f"{variant.name} is stable; baking, {was} kept for a revert"))


def bake_due(spec: CompressedModelSpec, status: CompressedModelStatus, now: datetime) -> AnalysisDue:
    """During a bake, like a canary: one interval analysis per interval (from the bake's start), a
    continuous one on every tick in between (after CONTINUOUS_MIN_WINDOW of fresh samples)."""
    bake = status.bake
    if status.phase is not Phase.BAKING or bake is None:
        return AnalysisDue.NONE
    started = parse_time(bake.startedAt) or now
    last = max(filter(None, [parse_time(bake.lastAnalysisAt), started]))
    if now - last >= timedelta(seconds=spec.rollout.interval_seconds()):
        return AnalysisDue.INTERVAL
    if now - last >= CONTINUOUS_MIN_WINDOW:
        return AnalysisDue.CONTINUOUS
    return AnalysisDue.NONE


def bake_window(
    spec: CompressedModelSpec, status: CompressedModelStatus, now: datetime, due: AnalysisDue
) -> str:
    """Interval: the analysis window, cut to the bake (samples of the previous artifact must not
    count); continuous: the samples since the last counted check."""
    bake = status.bake
    started = parse_time(bake.startedAt if bake else None) or now
    if due is AnalysisDue.CONTINUOUS:
        since = max(filter(None, [parse_time(bake.lastAnalysisAt if bake else None), started]))
        return f"{int(max(now - since, CONTINUOUS_MIN_WINDOW).total_seconds())}s"
    window = min(parse_duration(spec.rollout.analysis.window), max(now - started, MIN_WINDOW))
    return f"{int(window.total_seconds())}s"


def _bake(
    spec: CompressedModelSpec, status: CompressedModelStatus, world: World, now: datetime, d: Decision
) -> None:
    bake = status.bake
    if bake is None or bake.variant is None:  # a status edited by hand: nothing to bake
        status.phase = Phase.PROMOTED
        return
    ts = _iso(now)
    variant = _variant(status, bake.variant)
    if world.readings is not None and world.due is not None:
        window = bake_window(spec, status, now, world.due)
        # nothing shadows the stable track: live accuracy is judged during the canary steps only
        gates = spec.rollout.analysis.model_copy(update={"accuracyDelta": None})
        analysis = analyse(gates, world.readings, ts, window, NO_BASELINE)
        if world.due is AnalysisDue.INTERVAL or analysis.breached:
            d.analysis = analysis
            for check in analysis.checks:
                check.variant = variant.name
            bake.checks = (bake.checks + analysis.checks)[-MAX_CHECKS:]
            bake.lastAnalysisAt = ts
            bake.lastVerdict = analysis.verdict.value
            if analysis.breached:
                _revert(status, variant, analysis, ts, d)
                return
            if analysis.verdict is Verdict.NO_DATA:
                bake.failedChecks += 1
                if bake.failedChecks > spec.rollout.failureLimit:
                    _revert(status, variant, analysis, ts, d)
                    return
                d.events.append(
                    Event(
                        "Warning",
                        "CheckFailed",
                        f"{variant.name} (baking): {_summary(analysis)}",
                        _breaches(analysis, variant.name),
                    )
                )
    seconds = spec.rollout.bake_seconds()
    started = parse_time(bake.startedAt) or now
    elapsed = seconds is None or now - started >= timedelta(seconds=seconds)
    if elapsed and (seconds is None or bake.lastVerdict == Verdict.PASS.value):
        _bake_passed(status, variant, ts, d)


def _revert(
    status: CompressedModelStatus, variant: VariantStatus, analysis: Analysis, ts: str, d: Decision
) -> None:
    """Stable back on the previous artifact at once (the topology follows status.stable); no replay."""
    bake = status.bake
    assert bake is not None
    failed = [c for c in analysis.checks if not c.passed]
    status.stable = bake.previous.model_copy(deep=True) if bake.previous else status.stable
    bake.result, bake.finishedAt = "Reverted", ts
    bake.standbyServing = bake.previous is not None  # its warm pods take the traffic (topology)
    variant.phase = VariantPhase.ROLLED_BACK
    variant.reason = "Bake" + _REASONS[analysis.verdict]
    variant.message = "during the bake: " + "; ".join(c.message or c.sli for c in failed)
    back = (bake.previous.variant or "base") if bake.previous else "the previous artifact"
    status.phase = Phase.ROLLED_BACK
    status.message = f"{variant.name} reverted during the bake ({variant.reason}); stable back on {back}"
    set_condition(
        status, "CanaryHealthy", False, variant.reason, _summary(analysis), ts, status.observedGeneration
    )
    d.events.append(
        Event(
            "Warning",
            "Reverted",
            f"{variant.name}: {_summary(analysis)}; stable back on {back}",
            _breaches(analysis, variant.name),
        )
    )


def _bake_passed(status: CompressedModelStatus, variant: VariantStatus, ts: str, d: Decision) -> None:
    bake = status.bake
    assert bake is not None
    released = (bake.previous.variant or "base") if bake.previous else None
    bake.previous = None  # released: nothing pins the old artifact any more
    bake.result, bake.finishedAt = "Passed", ts
    status.phase = Phase.PROMOTED
    variant.phase = VariantPhase.PROMOTED
    status.message = f"{variant.name} promoted (bake passed)"
    sha = variant.artifact.sha256[:12] if variant.artifact else ""
    d.events.append(
        Event("Normal", "Promoted", f"{variant.name} baked and is stable ({sha}); released {released}")
    )


# ------------------------------------------------------------------------------------------------
# desired serving topology


@dataclass(frozen=True)
class Track:
    artifact: ArtifactRef
    variant: str | None  # None: the base model
    replicas: int
    mirror_to: str | None = None  # mirror first: the canary variant this (stable) track copies requests to


@dataclass(frozen=True)
class Topology:
    stable: Track | None
    canary: Track | None  # None: no canary Deployment at all
    weight: int  # requested canary percent (routers turn it into replicas or route weights)
    baking: bool = False  # stable serves a variant under bake: its gates still need load
    mirror: int = 0  # percent of live requests copied to the canary (phase Mirroring); 0: none
    promoting: bool = False  # stable rolls to the canary's artifact at full size
    standby: Track | None = None  # the previous stable artifact kept warm (bake, then a revert)
    serve_standby: bool = False  # the model's Services select the standby's pods, not stable's


ReplicaSplit = Callable[[int, int], tuple[int, int]]
"""How a router turns (total replicas, canary weight) into (stable, canary) pod counts."""


def topology(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    split: ReplicaSplit,
    standby: TrackObservation | None = None,
) -> Topology:
    """What should serve: stable, the canary, and the standby (``standby_topology``; ``standby``: its
    Deployment as observed)."""
    return standby_topology(spec, status, _tracks(spec, status, split), standby)


def _tracks(spec: CompressedModelSpec, status: CompressedModelStatus, split: ReplicaSplit) -> Topology:
    total = spec.serving.replicas
    if status.stable is None or status.stable.artifact is None:
        return Topology(None, None, 0)
    stable = Track(status.stable.artifact, status.stable.variant, total)
    canary_status = status.canary
    mirrored = mirror_topology(spec, status, stable, split)
    if mirrored is not None:
        return mirrored
    if status.phase not in CANARY_PHASES or canary_status is None or canary_status.variant is None:
        return Topology(stable, None, 0, baking=status.phase is Phase.BAKING)
    variant = _variant(status, canary_status.variant)
    if variant.artifact is None:
        return Topology(stable, None, 0)
    weight = canary_status.requestedWeight
    stable_replicas, canary_replicas = split(total, weight)
    if canary_status.promoting:
        # stable rolls to the canary's artifact at full size while the canary keeps serving
        return Topology(
            Track(variant.artifact, variant.name, total),
            Track(variant.artifact, variant.name, canary_replicas),
            weight,
            promoting=True,
        )
    return Topology(
        Track(stable.artifact, stable.variant, stable_replicas),
        Track(variant.artifact, variant.name, canary_replicas),
        weight,
    )


# ------------------------------------------------------------------------------------------------
# mirror first (issue 13): before its first step the canary answers only copies of live requests
# (phase Mirroring, weight 0); its answers are discarded and judged by the same gates. onnxruntime:
# the stable server tees a sample to the canary Service and compares the answers; Triton: the
# HTTPRoute's RequestMirror filter (latency and errors only).


class MirrorStep(StrEnum):
    """What one counted analysis of the mirror phase comes to (``mirror_step``)."""

    WAIT = "wait"  # keep mirroring
    PASS = "pass"  # the phase passed: the first weight step
    FAILED_CHECK = "failedCheck"  # counts against failureLimit (one more rolls back)
    ROLL_BACK = "rollBack"  # at once (a severe breach)


def mirror_step(verdict: Verdict, elapsed: bool, samples: float | None, min_samples: int) -> MirrorStep:
    """The mirror phase's rule (pure). A breach counts at any time (ABORT rolls back at once); no data
    waits until the duration has elapsed, then counts as a failure; a pass before the duration waits;
    a pass after it needs ``min_samples`` mirrored requests over the phase, fewer is no data."""
    if verdict is Verdict.ABORT:
        return MirrorStep.ROLL_BACK
    if verdict is Verdict.FAIL:
        return MirrorStep.FAILED_CHECK
    if not elapsed:
        return MirrorStep.WAIT
    if verdict is Verdict.NO_DATA:
        return MirrorStep.FAILED_CHECK
    if samples is None or samples < min_samples:
        return MirrorStep.FAILED_CHECK
    return MirrorStep.PASS


MIRROR_SAMPLES_SLI = "mirrorSamples"


def mirror_window(spec: CompressedModelSpec, status: CompressedModelStatus, now: datetime) -> str:
    """The whole mirror phase so far: from the canary's first serving (or the phase start) to now,
    at most the mirror duration, at least MIN_WINDOW (minSamples counts over this window)."""
    canary = status.canary
    mirror = canary.mirror if canary else None
    since = parse_time(mirror.since if mirror else None) or parse_time(mirror.startedAt if mirror else None)
    duration = timedelta(seconds=spec.rollout.mirror.duration_seconds() if spec.rollout.mirror else 0)
    window = now - since if since is not None else MIN_WINDOW
    window = max(min(window, duration), MIN_WINDOW)
    return f"{int(window.total_seconds())}s"


def mirror_elapsed(spec: CompressedModelSpec, status: CompressedModelStatus, now: datetime) -> bool:
    """Whether the mirror duration has run since copies began to flow (``status.canary.mirror.since``)."""
    canary = status.canary
    mirror = canary.mirror if canary else None
    if mirror is None or spec.rollout.mirror is None:
        return False
    duration = timedelta(seconds=spec.rollout.mirror.duration_seconds())
    since = parse_time(mirror.since)
    if since is None:  # copies never flowed (pods or stable stuck): bounded, then no data counts
        started = parse_time(mirror.startedAt)
        return started is not None and now - started >= duration + ready_timeout(spec)
    return now - since >= duration


def mirror_topology(
    spec: CompressedModelSpec, status: CompressedModelStatus, stable: Track, split: ReplicaSplit
) -> Topology | None:
    """During Mirroring: stable keeps every replica and all user traffic (weight 0) and copies
    ``percentage`` of it to the canary, which runs the pods its first step will have."""
    canary = status.canary
    if status.phase is not Phase.MIRRORING or canary is None or canary.variant is None:
        return None
    variant = _variant(status, canary.variant)
    if variant.artifact is None:
        return Topology(stable, None, 0)
    percentage = spec.rollout.mirror.percentage if spec.rollout.mirror else 100
    replicas = max(1, split(spec.serving.replicas, spec.rollout.steps[0])[1])
    return Topology(
        replace(stable, mirror_to=variant.name),
        Track(variant.artifact, variant.name, replicas),
        0,
        mirror=percentage,
    )


def _mirror(
    spec: CompressedModelSpec, status: CompressedModelStatus, world: World, now: datetime, d: Decision
) -> None:
    canary = status.canary
    assert canary is not None and canary.variant is not None
    ts = _iso(now)
    variant = _variant(status, canary.variant)
    mirror = spec.rollout.mirror
    if canary.mirror is None:  # a status edited by hand
        canary.mirror = MirrorStatus(startedAt=ts)
    if mirror is None:  # nothing to mirror any more (a spec change restarts the rollout anyway)
        _end_mirror(spec, status, variant, ts, d, "mirroring is off")
        return
    canary.requestedWeight, canary.weight = 0, 0  # no user request reaches the canary
    if canary.readyAt is None and _canary_serving(status, world):
        canary.readyAt = ts
    stable_settled = world.stable is not None and world.stable.settled  # on its mirroring settings
    if canary.mirror.since is None and canary.readyAt is not None and stable_settled:
        canary.mirror.since = ts  # copies flow from here: the duration and the window count from now
    if world.readings is None:
        return
    continuous = world.due is AnalysisDue.CONTINUOUS
    window = continuous_window(status, now) if continuous else mirror_window(spec, status, now)
    if canary.readyAt is None and not continuous:
        waited = int((now - (parse_time(canary.startedAt) or now)).total_seconds())
        readings = [Reading(SLI.REQUESTS, None, f"canary pods not serving {variant.name} after {waited}s")]
        analysis = analyse(spec.rollout.analysis, readings, ts, window)
        elapsed = True  # pods that never serve: the wait is over (counts as a failure)
    else:
        # no stable baseline to compare with: mirrored copies are not stable's user requests' peers in
        # the same window (the relative gates are judged from the first step)
        analysis = analyse(spec.rollout.analysis, world.readings, ts, window, NO_BASELINE)
        elapsed = mirror_elapsed(spec, status, now)
    if continuous and not analysis.breached:
        return  # between intervals only a breach counts
    samples = next((r.value for r in world.readings if r.sli is SLI.REQUESTS), None)
    step = mirror_step(analysis.verdict, elapsed, samples, mirror.minSamples)
    if (
        not continuous and elapsed and analysis.verdict is Verdict.PASS and step is MirrorStep.FAILED_CHECK
    ):  # passed every gate, but too few mirrored requests: no data, never a pass
        shown = "no" if samples is None else f"{samples:.0f}"
        analysis = Analysis(
            [
                *analysis.checks,
                Check(
                    time=ts, sli=MIRROR_SAMPLES_SLI, value=None, threshold=float(mirror.minSamples),
                    window=window, passed=False,
                    message=f"{shown} mirrored requests over the mirror phase, need {mirror.minSamples}: "
                    "no data (counts as a failure)",
                ),
            ],
            Verdict.NO_DATA,
        )  # fmt: skip
    if not continuous:
        canary.mirror.samples = samples
    d.analysis = analysis
    for check in analysis.checks:
        check.variant = variant.name
    canary.checks = (canary.checks + analysis.checks)[-MAX_CHECKS:]
    canary.lastAnalysisAt = ts
    for check in analysis.checks:
        if check.sli == "p99LatencyMs" and check.value is not None:
            canary.p99Ms = check.value
        if check.sli == "accuracyDelta" and check.value is not None:
            canary.accuracyDelta = check.value
    generation = status.observedGeneration
    if step is MirrorStep.WAIT:
        what = "no data yet" if analysis.verdict is Verdict.NO_DATA else "passing"
        status.message = f"canary {variant.name} mirroring ({what}; {_summary(analysis)})"
        return
    if step is MirrorStep.PASS:
        set_condition(status, "CanaryHealthy", True, "MirrorPassed", _summary(analysis), ts, generation)
        if status.paused:
            status.message = (
                f"paused: canary {variant.name} passed mirroring; the first step waits for resume"
            )
            return
        _end_mirror(spec, status, variant, ts, d, f"passed mirroring: {_summary(analysis)}")
        return
    reason = _REASONS[analysis.verdict]
    set_condition(status, "CanaryHealthy", False, reason, _summary(analysis), ts, generation)
    if step is MirrorStep.FAILED_CHECK:
        canary.failedChecks += 1
        if canary.failedChecks <= spec.rollout.failureLimit:
            status.message = (
                f"canary {variant.name} (mirroring): failed check "
                f"{canary.failedChecks}/{spec.rollout.failureLimit} tolerated"
            )
            d.events.append(
                Event("Warning", "CheckFailed", f"{variant.name} (mirroring): {_summary(analysis)}")
            )
            return
    else:
        d.events.append(Event("Warning", "Aborted", f"{variant.name} (mirroring): {_summary(analysis)}"))
    canary.mirror.result, canary.mirror.finishedAt = "Failed", ts
    d.events.append(
        Event(
            "Warning",
            "MirrorFailed",
            f"{variant.name} failed mirroring before any user traffic: {_summary(analysis)}",
        )
    )
    _roll_back(spec, status, variant, analysis, ts, d)
    variant.message = f"during mirroring (no user traffic): {variant.message}"


def _end_mirror(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    variant: VariantStatus,
    ts: str,
    d: Decision,
    why: str,
) -> None:
    """The mirror phase passed: mirroring stops and the canary takes its first weight step."""
    canary = status.canary
    assert canary is not None
    if canary.mirror is not None:
        canary.mirror.result, canary.mirror.finishedAt = "Passed", ts
    steps = spec.rollout.steps
    status.phase = Phase.CANARY
    canary.step = 0
    canary.requestedWeight = steps[0]
    canary.stepStartedAt = ts
    status.message = f"canary {variant.name} at {steps[0]}%"
    d.events.append(Event("Normal", "MirrorPassed", f"{variant.name} {why}"))
    d.events.append(
        Event("Normal", "CanaryStep", f"{variant.name} → {steps[0]}%: first step after mirroring")
    )


# instant revert: from the start of the final promotion (a bake is set) and during the bake the previous
# stable artifact stays warm in a standby Deployment that
# no Service selects; a revert points the Services at its ready pods in the same reconcile (no pod
# has to start), while the stable Deployment rolls back behind them. Once stable is settled on the
# previous artifact again the Services return to it and the standby goes.


def promotion_standby(spec: CompressedModelSpec, status: CompressedModelStatus) -> StableStatus | None:
    """What the standby keeps warm from the start of the final promotion (a bake is set): the stable
    artifact being replaced (status.stable moves to the variant only when the bake starts). Started
    before the stable Deployment rolls, so that its pods are ready when the bake starts."""
    canary = status.canary
    kept = status.stable
    if (
        spec.rollout.bake is None
        or status.phase not in CANARY_PHASES
        or canary is None
        or not canary.promoting
        or canary.variant is None
        or kept is None
        or kept.artifact is None
    ):
        return None
    promoted = _variant(status, canary.variant).artifact
    return kept if promoted is None or promoted.sha256 != kept.artifact.sha256 else None


def standby_problem(status: CompressedModelStatus, world: World) -> str | None:
    """Why the standby cannot take the traffic at once (None: every one of its pods is ready on the
    artifact the promotion replaces)."""
    want = status.stable.artifact.sha256 if status.stable and status.stable.artifact else None
    seen = world.standby
    if seen is None:
        return "no standby Deployment yet"
    if seen.sha256 != want:
        return f"standby pods on {(seen.sha256 or 'nothing')[:12]}, not {(want or 'nothing')[:12]}"
    if not seen.settled or seen.replicas == 0 or seen.ready < seen.replicas:
        return f"{seen.ready}/{seen.replicas} standby pods ready"
    return None


def standby_hold(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    variant: VariantStatus,
    world: World,
    now: datetime,
    d: Decision,
) -> bool:
    """Whether the bake waits for the standby (stable already serves the variant): a revert in the
    bake's first seconds must find it ready. It waits at most ready_timeout from the promotion's start;
    then the bake starts without it (a revert rolls stable back pod by pod), with a Warning."""
    why = standby_problem(status, world) if promotion_standby(spec, status) is not None else None
    if why is None:
        return False
    canary = status.canary
    since = parse_time(canary.promotingSince if canary else None) or now
    limit = ready_timeout(spec)
    if now - since < limit:
        status.message = f"promoting {variant.name}: stable serves it; the bake waits for the standby ({why})"
        return True
    d.events.append(
        Event(
            "Warning",
            "StandbyNotReady",
            f"{variant.name}: the previous artifact's standby is not ready after {int(limit.total_seconds())}s "
            f"({why}): baking without it, a revert rolls stable back pod by pod",
        )
    )
    return False


def standby_topology(
    spec: CompressedModelSpec, status: CompressedModelStatus, topo: Topology, seen: TrackObservation | None
) -> Topology:
    kept = promotion_standby(spec, status)
    if kept is not None and kept.artifact is not None and topo.stable is not None:
        # the final promotion: warm (selected by no Service) before stable rolls to the variant
        return replace(topo, standby=Track(kept.artifact, kept.variant, spec.serving.replicas))
    bake = status.bake
    previous = bake.previous if bake is not None else None
    if bake is None or previous is None or previous.artifact is None or topo.stable is None:
        return topo
    standby = Track(previous.artifact, previous.variant, spec.serving.replicas)
    if status.phase is Phase.BAKING:
        return replace(topo, standby=standby)
    if bake.standbyServing and topo.stable.artifact.sha256 == previous.artifact.sha256:
        # its pods take the traffic only once every one of them is ready on the previous artifact
        ready = seen is not None and seen.settled and seen.sha256 == previous.artifact.sha256
        return replace(topo, standby=standby, serve_standby=ready)
    return topo


def standby_released(status: CompressedModelStatus, world: World) -> None:
    """After a revert, the standby serves until the stable Deployment is observed settled on the
    artifact it reverted to; then the Services go back to stable (and the standby is removed)."""
    bake = status.bake
    if bake is None or not bake.standbyServing:
        return
    seen = world.stable
    want = status.stable.artifact.sha256 if status.stable and status.stable.artifact else None
    if status.phase is Phase.BAKING or (seen is not None and seen.settled and seen.sha256 == want):
        bake.standbyServing = False
