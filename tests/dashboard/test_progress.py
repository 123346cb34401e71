"""Compression progress from status and Jobs (pure), and as `kubectl kondense status` prints it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from kondense.dashboard.progress import compression_progress, is_compression_job, job_progress
from kondense.plugin.cli import render_status

NOW = datetime(2026, 12, 2, 14, 10, 0, tzinfo=UTC)


def job(variant: str, run: str = "abcdef123456", **status: Any) -> dict[str, Any]:
    labels = {"kondense.dev/model": "digits", "kondense.dev/variant": variant, "kondense.dev/spec-hash": run,
              "app.kubernetes.io/name": "kondense-compression"}  # fmt: skip
    return {"metadata": {"name": f"digits-{variant}-{run[:6]}", "labels": labels}, "status": status}


def compressing() -> dict[str, Any]:
    return {
        "metadata": {"name": "digits", "namespace": "default"},
        "spec": {"rollout": {"steps": [50, 100]}},
        "status": {
            "phase": "Compressing",
            "message": "compressing 3 targets",
            "hashes": {"run": "abcdef123456"},
            "base": {"name": "base", "phase": "Succeeded"},
            "variants": [
                {"name": "int8", "phase": "Succeeded"},
                {"name": "fp16", "phase": "Running"},
                {"name": "bad", "phase": "Failed", "reason": "BadInput"},
            ],
        },
    }


JOBS = [
    job("base", succeeded=1, startTime="2026-12-02T14:00:00Z", completionTime="2026-12-02T14:00:20Z",
        conditions=[{"type": "Complete", "status": "True"}]),
    job("fp16", active=1, startTime="2026-12-02T14:08:30Z"),
    job("bad", failed=2, startTime="2026-12-02T14:01:00Z",
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                     "message": "Job has reached the specified backoff limit",
                     "lastTransitionTime": "2026-12-02T14:02:00Z"}]),
]  # fmt: skip


def test_progress_counts_finished_jobs_of_the_current_run() -> None:
    progress = compression_progress(compressing(), [*JOBS, job("fp16", run="000000aaaaaa", failed=1)], NOW)
    assert progress is not None
    assert (progress.done, progress.total, progress.running, progress.failed) == (3, 4, ["fp16"], ["bad"])
    assert progress.summary() == "compression 3/4 Jobs done, running: fp16, failed: bad"
    states = {j.variant: (j.state, j.seconds) for j in progress.jobs}
    assert states == {"base": ("Succeeded", 20.0), "fp16": ("Running", 90.0), "bad": ("Failed", 60.0)}
    assert "BackoffLimitExceeded: Job has reached" in (job_progress(JOBS[2], NOW).message or "")


def test_no_run_no_progress_and_loadgen_jobs_are_not_compression() -> None:
    assert compression_progress({"status": {"phase": "Pending"}}, [], NOW) is None
    loadgen = {
        "metadata": {"labels": {"kondense.dev/model": "digits", "app.kubernetes.io/name": "kondense-loadgen"}}
    }
    assert not is_compression_job(loadgen, "digits")
    assert is_compression_job(JOBS[0], "digits") and not is_compression_job(JOBS[0], "other")


def test_kubectl_kondense_status_shows_the_progress_and_the_running_jobs() -> None:
    console = Console(width=140, record=True)
    render_status(compressing(), console, JOBS)
    out = console.export_text()
    assert "compression 3/4 Jobs done, running: fp16, failed: bad" in out
    assert "digits-fp16-abcdef" in out and "Running" in out
    assert "digits-bad-abcdef" in out and "BackoffLimitExceeded" in out
    # without the Jobs (no RBAC to list them) the count still comes from status
    console = Console(width=140, record=True)
    render_status(compressing(), console, None)
    assert "compression 3/4 Jobs done" in console.export_text()
