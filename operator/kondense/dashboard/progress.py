"""Progress of the long operations of a CompressedModel (pure): the compression run, from
``status.base``/``status.variants`` and, when the caller can list them, the compression Jobs.

The compression Job reports no progress value of its own (its progress bars are the CLI's, on a
terminal); what a reader can know is how many of the run's Jobs have finished and how long the
running ones have been running. ``kubectl kondense status`` and the dashboard both show this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

VARIANT_LABEL = "kondense.dev/variant"
MODEL_LABEL = "kondense.dev/model"
RUN_LABEL = "kondense.dev/spec-hash"  # the compression run of a Job (kondense.operator.naming.HASH_LABEL)
COMPRESSION_JOB = "kondense-compression"  # app.kubernetes.io/name of compression Jobs (not load generators)


def is_compression_job(job: Mapping[str, Any], model: str) -> bool:
    labels = (job.get("metadata") or {}).get("labels") or {}
    return labels.get(MODEL_LABEL) == model and labels.get("app.kubernetes.io/name") == COMPRESSION_JOB


# a variant in one of these phases has its compression Job behind it
FINISHED = ("Succeeded", "Rejected", "Failed", "RolledBack", "Promoted")


@dataclass(frozen=True)
class JobProgress:
    """One compression Job as its status tells it."""

    name: str
    variant: str
    state: str  # Running, Succeeded, Failed, Pending
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None  # running for, or took
    message: str | None = None  # the Failed condition's reason and message


@dataclass(frozen=True)
class CompressionProgress:
    done: int  # Jobs finished (baseline included)
    total: int  # Jobs of the run: the baseline + one per target
    running: list[str] = field(default_factory=list)  # variants whose Job runs
    failed: list[str] = field(default_factory=list)
    jobs: list[JobProgress] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    def summary(self) -> str:
        text = f"compression {self.done}/{self.total} Jobs done"
        if self.running:
            text += f", running: {', '.join(self.running)}"
        if self.failed:
            text += f", failed: {', '.join(self.failed)}"
        return text


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def job_progress(job: Mapping[str, Any], now: datetime) -> JobProgress:
    """A Job (a dict as the API returns it) -> its state and timing."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    started, finished = status.get("startTime"), status.get("completionTime")
    message = None
    if "Complete" in conditions or (status.get("succeeded") or 0) > 0:
        state = "Succeeded"
    elif "Failed" in conditions:
        state = "Failed"
        failed = conditions["Failed"]
        finished = finished or failed.get("lastTransitionTime")
        message = ": ".join(str(p) for p in (failed.get("reason"), failed.get("message")) if p) or None
    elif (status.get("active") or 0) > 0:
        state = "Running"
    else:
        state = "Pending"
    begin, end = _parse_time(started), _parse_time(finished)
    seconds = None
    if begin is not None:
        seconds = max(0.0, ((end or now) - begin).total_seconds())
    return JobProgress(
        name=str(meta.get("name") or ""),
        variant=str(labels.get(VARIANT_LABEL) or ""),
        state=state,
        started=started,
        finished=finished,
        seconds=seconds,
        message=message,
    )


def compression_progress(
    obj: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]] = (), now: datetime | None = None
) -> CompressionProgress | None:
    """The compression run of ``obj`` (a CompressedModel dict): None before the operator started one.
    ``jobs``: the model's Jobs when the caller could list them; only the current run's are kept."""
    status = obj.get("status") or {}
    variants = [v for v in [status.get("base"), *(status.get("variants") or [])] if isinstance(v, Mapping)]
    if not variants:
        return None
    now = now or datetime.now(UTC)
    run = ((status.get("hashes") or {}).get("run") or "")[:12]
    mine = [
        job_progress(j, now)
        for j in jobs
        if not run or ((j.get("metadata") or {}).get("labels") or {}).get(RUN_LABEL) in (None, run)
    ]
    by_variant = {j.variant: j for j in mine}
    done, running, failed = 0, [], []
    for v in variants:
        name, phase = str(v.get("name")), v.get("phase") or "Pending"
        if phase in FINISHED:
            done += 1
            if phase == "Failed":
                failed.append(name)
        elif phase == "Running" or (name in by_variant and by_variant[name].state == "Running"):
            running.append(name)
    return CompressionProgress(
        done=done,
        total=len(variants),
        running=running,
        failed=failed,
        jobs=sorted(mine, key=lambda j: (j.started or "~", j.name)),
    )


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{(whole % 3600) // 60:02d}m"
