"""The imperative shell around the rollout core: observe, decide (pure), write status, act."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from kondense.api import intents
from kondense.api.artifacts import JobResult
from kondense.api.resource import (
    CompressedModelSpec,
    CompressedModelStatus,
    Phase,
    VariantPhase,
    model_name_problem,
)
from kondense.api.validation import field_errors, join_path
from kondense.operator import metrics, webhooks
from kondense.operator.analysis import Comparison
from kondense.operator.backends import SERVING_BACKENDS, ServingBackend, ServingContext
from kondense.operator.kube import ChildRejected, KubeClient, StatusConflict, rejection
from kondense.operator.locations import LocationError, claims, variant_location
from kondense.operator.naming import (
    AUTOSCALED_ANNOTATION,
    HASH_LABEL,
    MODEL_LABEL,
    SHA_ANNOTATION,
    TRACK_LABEL,
    VARIANT_LABEL,
    Names,
)
from kondense.operator.notifications import Notifier, kube_secret_reader
from kondense.operator.objects import Owner, compression_job, image_problems
from kondense.operator.providers import MetricProvider, ProviderFactory, read_slis, read_track
from kondense.operator.rejections import Rejection, after_acting, request_refused
from kondense.operator.rollout import (
    AnalysisDue,
    Decision,
    Event,
    JobObservation,
    JobState,
    TrackObservation,
    World,
    analysis_due,
    bake_due,
    bake_window,
    compression_hash,
    continuous_window,
    effective_window,
    is_invalid,
    mirror_window,
    post_rollout_due,
    reconcile,
    topology,
    webhooks_due,
)
from kondense.operator.routers import TRAFFIC_ROUTERS, RouteRefused
from kondense.operator.selection import select_variants
from kondense.operator.settings import OperatorSettings
from kondense.operator.workloads import STANDBY, serving_plan

log = logging.getLogger("kondense.operator")
EventSink = Callable[[dict[str, Any], Event], None]


def _canary_sha(status: CompressedModelStatus) -> str | None:
    canary = status.canary
    variant = next((v for v in status.variants if canary and v.name == canary.variant), None)
    return variant.artifact.sha256 if variant and variant.artifact else None


def job_observation(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobObservation:
    """Job + its pods -> state, reason and the result from the container's termination message."""
    status = job.get("status") or {}
    result, message, oom = None, None, False
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if not terminated:
                continue
            oom = oom or terminated.get("reason") == "OOMKilled"
            text = terminated.get("message")
            if text and result is None:
                try:
                    result = JobResult.model_validate_json(text)
                except ValidationError:
                    message = f"unreadable result in the termination message: {text[:200]!r}"
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions or (status.get("succeeded") or 0) > 0:
        return JobObservation(JobState.SUCCEEDED, None, message, result)
    if "Failed" in conditions:
        reason = "OOMKilled" if oom else conditions["Failed"].get("reason") or "Failed"
        text = (result.message if result else None) or conditions["Failed"].get("message") or message
        return JobObservation(JobState.FAILED, reason, text, result)
    return JobObservation(JobState.ACTIVE)


def translate_rejection(exc: ChildRejected, variant: str | None = None, serving: bool = False) -> Rejection:
    """The core's view of a 4xx: which object, the API's code/reason/message, and what it was for."""
    return Rejection(
        exc.kind, exc.name, exc.code, exc.reason, str(exc), exc.api_message, variant=variant, serving=serving
    )


def track_observation(deployment: dict[str, Any] | None) -> TrackObservation | None:
    if deployment is None:
        return None
    spec, status, meta = deployment.get("spec") or {}, deployment.get("status") or {}, deployment["metadata"]
    replicas = spec.get("replicas") or 0
    ready, updated = status.get("readyReplicas") or 0, status.get("updatedReplicas") or 0
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    settled = (
        (status.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
        and updated >= replicas
        and ready >= replicas
        and (status.get("replicas") or 0) <= replicas
    )
    autoscaled = ((meta.get("annotations") or {}).get(AUTOSCALED_ANNOTATION)) == "true"
    old_pods = max(0, (status.get("replicas") or 0) - updated)  # pods of earlier templates, ready or not
    return TrackObservation(
        replicas,
        ready,
        updated,
        annotations.get(SHA_ANNOTATION),
        settled,
        autoscaled,
        ready_updated=max(0, min(updated, ready - old_pods)),
    )


def parse_status(raw: Any) -> tuple[CompressedModelStatus, list[str]]:
    """The stored status as the models read it, minus the fields that do not validate (anyone with
    access to the status subresource can write anything there): each bad field is dropped (a missing
    required field drops the object holding it) and its path returned, so one bad value never stops
    every reconcile."""
    data: Any = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    dropped: list[str] = [] if isinstance(raw, dict) or raw is None else ["status"]
    for _ in range(64):
        try:
            return CompressedModelStatus.model_validate(data), dropped
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = tuple(error["loc"])
            if error["type"] == "missing":
                loc = loc[:-1]
            if not loc or not _drop(data, loc):
                break
            dropped.append(join_path(("status", *loc)))
    return CompressedModelStatus(), [*dropped, "status"]


def _drop(data: Any, loc: tuple[int | str, ...]) -> bool:
    node = data
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        del node[last]
        return True
    return False


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


@dataclass
class Controller:
    settings: OperatorSettings
    kube: KubeClient
    post_event: EventSink
    providers: ProviderFactory | None = None
    notifier: Notifier | None = None

    def __post_init__(self) -> None:
        self.metric_providers = self.providers or ProviderFactory(self.settings)
        # the Secret is read when a notice is sent (the client's CoreV1Api, looked up only then)
        self.url_policy = self.settings.url_policy()
        self.notices = self.notifier or Notifier(
            lambda ns, ref: kube_secret_reader(self.kube.core)(ns, ref), guard=self._url_problem
        )
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _url_problem(self, namespace: str, url: str) -> str | None:
        """Why a webhook or notification URL may not be called for a CR of ``namespace`` (outbound)."""
        return self.url_policy.check(url, namespace, lambda svc: self.kube.get("Service", svc, namespace))

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._locks.pop((namespace, name), None)

    # ------------------------------------------------------------------------------------------
    def reconcile(
        self, namespace: str, name: str, now: datetime | None = None
    ) -> CompressedModelStatus | None:
        """Reconcile one CompressedModel from a fresh read of it (never from a watch cache: our own
        last status write may not have reached the cache yet, and acting on an older status would
        repeat a decision). One reconcile per object at a time; None when the object is gone or
        changed under us (the next tick redoes it)."""
        started = time.perf_counter()
        body: dict[str, Any] | None = None
        with self._lock(namespace, name):
            try:
                body = self.kube.get_cmodel(namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return None
                return self._reconcile(body, now or datetime.now(UTC))
            except StatusConflict:
                log.info("%s/%s changed while reconciling; retrying on the next tick", namespace, name)
                return None
            except ApiException as exc:
                if exc.status == 404 and self.kube.get_cmodel(namespace, name) is None:
                    return None  # deleted while we reconciled it
                # a 4xx on a read (e.g. RBAC): on the resource, not only in the log
                rejected = rejection(exc, "request", namespace, name)
                if rejected is None or body is None:
                    raise
                return self._api_refused(body, rejected, now or datetime.now(UTC))
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _reconcile(self, body: dict[str, Any], now: datetime) -> CompressedModelStatus:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = meta.get("generation")
        current, dropped = parse_status(body.get("status"))
        if dropped:
            message = "status fields that do not validate were dropped: " + ", ".join(dropped)[:900]
            log.warning("%s/%s: %s", namespace, name, message)
            self.post_event(body, Event("Warning", "BadStatus", message))
        spec, problems = self._read_spec(body, current)
        if spec is None or problems:  # the core makes it Invalid; nothing acts
            decision = reconcile(spec, current, generation, World(problems=tuple(problems)), now)
            if decision.status != current:
                self._write_status(body, decision.status)
            for event in decision.events:
                self.post_event(body, event)
            return decision.status
        spec_hash = compression_hash(spec)
        new_spec = current.hashes.compression != spec_hash

        owner = Owner(name, namespace, meta["uid"])
        names = Names(name)
        serving = current.stable is not None  # nothing is served before the base model's artifact exists
        backend = SERVING_BACKENDS[spec.serving.runtime]
        router = TRAFFIC_ROUTERS[spec.rollout.trafficRouting.type]
        world = World(
            observed_weight=router.observed_weight,
            jobs={} if new_spec else self._observe_jobs(spec, owner, current.hashes.run or spec_hash),
            stable=track_observation(self.kube.get("Deployment", names.deployment("stable"), namespace))
            if serving
            else None,
            canary=track_observation(self.kube.get("Deployment", names.deployment("canary"), namespace))
            if serving
            else None,
            standby=track_observation(self.kube.get("Deployment", names.deployment(STANDBY), namespace))
            if serving
            else None,
            intents=intents.parse(meta.get("annotations")),
        )
        due = analysis_due(spec, current, world, now)
        if due is not AnalysisDue.NONE:
            mirroring = current.phase is Phase.MIRRORING  # the canary's answers to mirrored copies
            if due is AnalysisDue.CONTINUOUS:
                window = continuous_window(current, now)
            elif mirroring:
                window = mirror_window(spec, current, now)
            else:
                window = effective_window(spec, current, now)
            pods = self._serving_pods(namespace, name, "canary", _canary_sha(current))
            if mirroring:
                variant = current.canary.variant if current.canary else None
                queries = backend.mirror_queries(namespace, name, variant or "", window, pods)
            else:
                queries = backend.queries(namespace, name, "canary", window, pods)
            provider = self.metric_providers.provider(spec.rollout.analysis)  # checked in _preflight
            world = replace(world, readings=read_slis(provider, queries), due=due)
            relative = spec.rollout.analysis.relative_gates() and not mirroring
            if relative and due is AnalysisDue.INTERVAL:
                world = replace(
                    world, comparison=self._compare(backend, provider, current, namespace, name, window)
                )

        hooks = webhooks_due(spec, current, due)
        if hooks:  # pre-rollout for the variant about to start, else the canary's
            starting = (
                select_variants(spec, current.variants).best if current.phase is Phase.EVALUATING else None
            )
            readings = world.readings
            world = replace(
                world,
                webhooks=webhooks.call_all(
                    hooks,
                    lambda h: webhooks.payload(h, namespace, name, current, readings, starting),
                    lambda url: self._url_problem(namespace, url),
                ),
            )

        world = self._bake_readings(spec, current, world, backend, namespace, name, now)
        decision = reconcile(spec, current, generation, world, now)
        status = decision.status
        # the decision is on the resource before anything acts on it (restart safety); a repaired
        # status is written even when unchanged since, so the dropped fields leave the stored one
        if status != current or dropped:
            self._write_status(body, status)

        rejected: list[Rejection] = []
        run = status.hashes.run or spec_hash  # recorded above, before any of its Jobs exists
        for variant in decision.create_jobs:
            job = compression_job(spec, owner, self.settings, run, variant)
            try:
                if self.kube.create(job):
                    log.info("created Job %s/%s", namespace, job["metadata"]["name"])
            except ChildRejected as exc:
                rejected.append(translate_rejection(exc, variant=variant))
        try:
            if new_spec or status.phase in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED):
                self._delete_stale_jobs(namespace, name, run)
        except ChildRejected as exc:
            rejected.append(translate_rejection(exc))

        ctx = ServingContext(spec, owner, self.settings)
        observed = {"stable": world.stable, "canary": world.canary}
        plan = serving_plan(
            ctx, topology(spec, status, router.split, world.standby), backend, router, observed
        )
        for obj in plan.apply:  # in order (a route's weight goes to 0 before the canary scales down)
            if router.owns(obj):  # the router's own objects, in this namespace only
                try:
                    router.apply(self.kube, namespace, name, obj)
                except RouteRefused as exc:  # the opt-in went away since _preflight: the next tick says so
                    log.warning("%s/%s: %s", namespace, name, exc)
                except ChildRejected as exc:
                    rejected.append(translate_rejection(exc))
                continue
            obj["metadata"].setdefault("namespace", namespace)
            try:
                self.kube.apply(obj)
            except ChildRejected as exc:  # the serving topology cannot be what status says
                rejected.append(translate_rejection(exc, serving=True))
        for kind, obj_name in plan.delete:
            try:
                self.kube.delete(kind, obj_name, namespace)
            except ChildRejected as exc:
                rejected.append(translate_rejection(exc))
        status = self._fold_rejections(body, status, rejected, decision.events, now)

        for event in decision.events:
            self.post_event(body, event)
        self.notices.notify(namespace, name, spec.notifications, decision.events)  # enqueued, never blocks
        told = post_rollout_due(spec, current, status)
        webhooks.call_in_background(
            told,
            lambda h: webhooks.payload(h, namespace, name, status, None),
            lambda results: None,
            lambda url: self._url_problem(namespace, url),
        )
        self._record_metrics(namespace, name, current, status, decision)
        return status

    def _write_status(self, body: dict[str, Any], status: CompressedModelStatus) -> None:
        meta = body["metadata"]
        stored = body.get("status") or {}
        written = status.model_dump(mode="json", exclude_none=True)
        patch = merge_patch(stored, written)
        if patch:
            # resourceVersion precondition: a concurrent writer makes this a 409, not a lost update
            version = self.kube.patch_status(
                meta["namespace"], meta["name"], patch, meta.get("resourceVersion")
            )
            # a second write in the same reconcile (a rejected child) builds on this one
            body["status"] = written
            if version:
                meta["resourceVersion"] = version

    # ------------------------------------------------------------------------------------------
    # 4xx from the API server: a condition on the resource and a phase that says so, never a
    # silent retry loop with the error only in the log

    def _fold_rejections(
        self,
        body: dict[str, Any],
        status: CompressedModelStatus,
        rejected: list[Rejection],
        events: list[Event],
        now: datetime,
    ) -> CompressedModelStatus:
        for r in rejected:
            metrics.CHILD_REJECTIONS.labels(kind=r.kind, reason=r.reason or str(r.code)).inc()
        folded = after_acting(status, rejected, body["metadata"].get("generation"), now)
        if folded.status != status:
            self._write_status(body, folded.status)
        for event in folded.events:
            log.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], event.message)
        events.extend(folded.events)
        return folded.status

    def _api_refused(
        self, body: dict[str, Any], exc: ChildRejected, now: datetime
    ) -> CompressedModelStatus | None:
        """A 4xx on a read: reported on the resource (the next tick tries again)."""
        current, _ = parse_status(body.get("status"))
        decision = request_refused(current, translate_rejection(exc), body["metadata"].get("generation"), now)
        if decision.status != current:
            self._write_status(body, decision.status)
        for event in decision.events:
            self.post_event(body, event)
        return decision.status

    # ------------------------------------------------------------------------------------------
    def _read_spec(
        self, body: dict[str, Any], current: CompressedModelStatus
    ) -> tuple[CompressedModelSpec | None, list[str]]:
        """The spec as the models read it, and every problem that makes it impossible to act on (for
        ``World.problems``): a name the API would refuse for children, fields that do not validate,
        then what only the cluster knows (``_preflight``)."""
        meta = body["metadata"]
        bad_name = model_name_problem(meta["name"])
        if bad_name is not None:  # a CRD without the CEL rule (or an older one) let it in
            return None, [f"metadata.name: {bad_name}"]
        try:
            spec = CompressedModelSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            return None, [str(e) for e in field_errors(exc, ("spec",))]
        # storage is checked before a spec is first acted on (a PVC lost later fails the Jobs visibly)
        check_storage = current.hashes.compression != compression_hash(spec) or is_invalid(current)
        return spec, self._preflight(spec, meta["namespace"], meta["name"], check_storage)

    def _preflight(
        self, spec: CompressedModelSpec, namespace: str, name: str, check_storage: bool
    ) -> list[str]:
        """What the models cannot know: missing PVCs, unknown runtime/router implementations."""
        problems = []
        if spec.serving.runtime not in SERVING_BACKENDS:
            problems.append(f"spec.serving.runtime: no backend for {spec.serving.runtime}")
        if spec.rollout.trafficRouting.type not in TRAFFIC_ROUTERS:
            problems.append(
                f"spec.rollout.trafficRouting.type: no router for {spec.rollout.trafficRouting.type}"
            )
        problems += self.metric_providers.problems(spec.rollout.analysis)
        problems += image_problems(spec, self.settings)  # an image not on the allow-list: no children
        for index, hook in enumerate(spec.rollout.webhooks):  # a URL not on the allow-list: no children
            refused = self.url_policy.problem(hook.url, namespace)
            if refused is not None:
                problems.append(f"spec.rollout.webhooks[{index}].url: {refused}")
        if spec.rollout.trafficRouting.type in TRAFFIC_ROUTERS:  # a route that does not opt in: no children
            routing = spec.rollout.trafficRouting
            problems += TRAFFIC_ROUTERS[routing.type].check(self.kube, namespace, name, routing)
        try:
            output = variant_location(spec, namespace, name, "x", "x").uri
        except LocationError as exc:
            return [*problems, f"spec.artifacts: {exc}"]
        if not check_storage:
            return problems
        data = spec.data
        uris: list[str | None] = [spec.baseModel.uri, data.evaluation.uri, output]
        uris += [
            data.calibration.uri if data.calibration else None,
            data.training.uri if data.training else None,
        ]
        for claim in claims(*uris):
            if not self.kube.pvc_exists(namespace, claim):
                problems.append(
                    f"PersistentVolumeClaim {namespace}/{claim} does not exist (used by a pvc:// URI)"
                )
        return problems

    def _observe_jobs(self, spec: CompressedModelSpec, owner: Owner, run: str) -> dict[str, JobObservation]:
        selector = f"{MODEL_LABEL}={owner.name},{HASH_LABEL}={run[:12]}"
        jobs = self.kube.list_jobs(owner.namespace, selector)
        out: dict[str, JobObservation] = {}
        if not jobs:
            return out
        pods = self.kube.list_pods(owner.namespace, selector)
        for job in jobs:
            variant = job["metadata"]["labels"][VARIANT_LABEL]
            uid = job["metadata"].get("uid")
            own_pods = [
                p
                for p in pods
                if (p["metadata"].get("labels") or {}).get("job-name") == job["metadata"]["name"]
                or any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])
            ]
            obs = job_observation(job, own_pods)
            if obs.result is not None and obs.result.artifact is not None:
                # the operator chose the output location; record it as the artifact's URI
                uri = variant_location(spec, owner.namespace, owner.name, run, variant).uri
                obs.result.artifact.uri = uri
            out[variant] = obs
        return out

    def _bake_readings(
        self,
        spec: CompressedModelSpec,
        status: CompressedModelStatus,
        world: World,
        backend: ServingBackend,
        namespace: str,
        name: str,
        now: datetime,
    ) -> World:
        """During a bake, the SLIs of the stable pods serving the baked artifact."""
        due = bake_due(spec, status, now)
        if due is AnalysisDue.NONE or status.bake is None or status.bake.artifact is None:
            return world
        window = bake_window(spec, status, now, due)
        pods = self._serving_pods(namespace, name, "stable", status.bake.artifact.sha256)
        provider = self.metric_providers.provider(spec.rollout.analysis)  # checked in _preflight
        readings = read_slis(provider, backend.queries(namespace, name, "stable", window, pods))
        return replace(world, readings=readings, due=due)

    def _compare(
        self,
        backend: ServingBackend,
        provider: MetricProvider,
        status: CompressedModelStatus,
        namespace: str,
        name: str,
        window: str,
    ) -> Comparison:
        """Both tracks over the same window, each limited to the pods serving its artifact, every
        query evaluated at one instant of the wall clock (a reconcile's ``now`` may be simulated)."""
        stable_sha = status.stable.artifact.sha256 if status.stable and status.stable.artifact else None
        at = time.time()
        sides = {}
        for track, sha in (("canary", _canary_sha(status)), ("stable", stable_sha)):
            pods = self._serving_pods(namespace, name, track, sha)
            sides[track] = read_track(
                provider, backend.comparison_queries(namespace, name, track, window, pods), at
            )
        return Comparison(canary=sides["canary"], stable=sides["stable"])

    def _serving_pods(self, namespace: str, name: str, track: str, sha: str | None) -> list[str]:
        """Pods of a track whose template serves the artifact ``sha`` (not the pods it replaced)."""
        pods = self.kube.list_pods(namespace, f"{MODEL_LABEL}={name},{TRACK_LABEL}={track}")
        return [
            p["metadata"]["name"]
            for p in pods
            if (p["metadata"].get("annotations") or {}).get(SHA_ANNOTATION) == sha
            and not p["metadata"].get("deletionTimestamp")
        ]

    def _delete_stale_jobs(self, namespace: str, name: str, run: str) -> None:
        # `HASH_LABEL,` first: Jobs without the label (the load generator) are not stale compression Jobs
        selector = f"{MODEL_LABEL}={name},{HASH_LABEL},{HASH_LABEL}!={run[:12]}"
        for job in self.kube.list_jobs(namespace, selector):
            self.kube.delete("Job", job["metadata"]["name"], namespace)

    def _record_metrics(
        self,
        namespace: str,
        name: str,
        before: CompressedModelStatus,
        after: CompressedModelStatus,
        decision: Decision,
    ) -> None:
        metrics.record_status(namespace, name, after)
        if before.phase != after.phase:
            if after.phase is Phase.PROMOTED:
                metrics.ROLLOUTS.labels(result="promoted").inc()
            elif after.phase is Phase.ROLLED_BACK:
                metrics.ROLLOUTS.labels(result="rolledback").inc()
            elif after.phase is Phase.FAILED:
                metrics.ROLLOUTS.labels(result="failed").inc()
        before_phases = {v.name: v.phase for v in before.variants}
        for v in after.variants:
            finished = v.phase in (VariantPhase.SUCCEEDED, VariantPhase.FAILED, VariantPhase.REJECTED)
            if finished and before_phases.get(v.name) in (None, VariantPhase.PENDING, VariantPhase.RUNNING):
                metrics.COMPRESSION_JOBS.labels(result=v.phase.value.lower()).inc()
        if decision.analysis is not None:
            for check in decision.analysis.checks:
                result = "pass" if check.passed else ("nodata" if check.value is None else "fail")
                metrics.ANALYSIS_CHECKS.labels(sli=check.sli, result=result).inc()
