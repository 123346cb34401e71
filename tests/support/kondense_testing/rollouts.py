"""What the pure rollout tests feed the state machine: SLI readings, finished Jobs, and the World the
shell would observe once the Deployments of the current topology settled."""

from __future__ import annotations

from collections.abc import Mapping

from kondense.api.resource import CompressedModelSpec, CompressedModelStatus
from kondense.operator.analysis import SLI, Reading
from kondense.operator.rollout import BASE, JobObservation, JobState, TrackObservation, World, topology
from kondense.operator.routers import ReplicaRouter
from kondense_testing.builders import job_result

GOOD = [
    Reading(SLI.REQUESTS, 500),
    Reading(SLI.P99_LATENCY_MS, 4.0),
    Reading(SLI.ERROR_RATE, 0.0),
    Reading(SLI.ACCURACY_DELTA, 0.001),
]
SLOW = [GOOD[0], Reading(SLI.P99_LATENCY_MS, 180.0), *GOOD[2:]]
DOWN = [Reading(s, None, "Prometheus at http://p:9090 unreachable: ConnectError") for s in SLI]


def finished_jobs() -> dict[str, JobObservation]:
    """The digits example's Jobs, done: int8 and fp16 within the budget, dynamic-int8 over it,
    slim-int8 killed."""
    done = JobState.SUCCEEDED
    return {
        BASE: JobObservation(done, result=job_result(BASE, size=1.0)),
        "int8": JobObservation(done, result=job_result("int8", delta=0.004, size=0.26)),
        "dynamic-int8": JobObservation(done, result=job_result("dynamic-int8", delta=0.05, size=0.27)),
        "fp16": JobObservation(done, result=job_result("fp16", delta=0.0, size=0.5)),
        "slim-int8": JobObservation(JobState.FAILED, reason="OOMKilled", message="exit 137"),
    }


def settled_world(
    spec: CompressedModelSpec,
    status: CompressedModelStatus,
    jobs: Mapping[str, JobObservation],
    stable_sha: str | None = None,
    canary_ready: int | None = None,
) -> World:
    """Every Deployment of the status' topology rolled out: all stable pods ready (serving
    ``stable_sha`` when given), canary pods ready up to ``canary_ready`` (default: all), the standby's
    all ready."""
    topo = topology(spec, status, ReplicaRouter().split)
    stable = canary = None
    if topo.stable:
        n = topo.stable.replicas
        stable = TrackObservation(n, n, n, stable_sha or topo.stable.artifact.sha256, True)
    if topo.canary:
        n = topo.canary.replicas
        ready = n if canary_ready is None else min(canary_ready, n)
        canary = TrackObservation(n, ready, n, topo.canary.artifact.sha256, True)
    standby = None
    if topo.standby:  # the previous stable artifact kept warm (a bake's instant revert)
        n = topo.standby.replicas
        standby = TrackObservation(n, n, n, topo.standby.artifact.sha256, True)
    return World(jobs=jobs, stable=stable, canary=canary, standby=standby)
