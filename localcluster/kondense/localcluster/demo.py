"""What a person watching ``make demo`` sees: the CompressedModel's status as it changes.

``LiveDisplay`` (a terminal) redraws a rich table of the variants, the canary and the latest Events
from ``status``; ``LogDisplay`` (pipes, CI, tests) prints each new Event and phase once, in order.
Both end with the same summary: the compression results, the outcome and where everything is.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kondense.localcluster.cluster import ClusterError
from kondense.localcluster.scenarios import EXAMPLE_FILES, Outcome

# The digits CompressedModel the demo applies by default (a copy of examples/digits/compressedmodel.yaml,
# kept identical by tests/localcluster/test_layering.py), shipped so `kondense demo` runs anywhere.
EXAMPLE_CR = "digits-compressedmodel.yaml"

PHASE_STYLE = {"Promoted": "bold green", "RolledBack": "bold yellow", "Failed": "bold red", "Canary": "cyan", "Mirroring": "magenta",
               "Succeeded": "green", "Rejected": "yellow", "Running": "cyan"}  # fmt: skip


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def variants_table(status: Mapping[str, Any], title: str = "compression Jobs") -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("variant", "technique", "phase", "size", "Δ accuracy", "p50 ms", "note"):
        table.add_column(column, justify="right" if column in ("size", "Δ accuracy", "p50 ms") else "left")
    rows = [status["base"]] if status.get("base") else []
    for variant in [*rows, *(status.get("variants") or [])]:
        metrics = variant.get("metrics") or {}
        phase = variant.get("phase") or "Pending"
        selected = variant["name"] == status.get("selectedVariant")
        note = variant.get("reason") or ""
        if variant.get("message"):
            note = f"{note}: {variant['message']}" if note else variant["message"]
        table.add_row(
            ("▶ " if selected else "") + variant["name"],
            variant.get("technique") or "",
            Text(phase, style=PHASE_STYLE.get(phase, "")),
            _num(metrics.get("sizeRatio"), ".3f") + ("x" if metrics.get("sizeRatio") is not None else ""),
            _num(metrics.get("accuracyDelta"), ".4f"),
            _num(metrics.get("p50Ms"), ".3f"),
            note[:90],
        )
    return table


def canary_table(status: Mapping[str, Any]) -> Table | None:
    canary = status.get("canary") or {}
    if not canary.get("variant"):
        return None
    table = Table(
        title=f"canary {canary['variant']}: step {canary.get('step', 0) + 1}, weight {canary.get('weight', 0)}% "
        f"(requested {canary.get('requestedWeight', 0)}%), failed checks {canary.get('failedChecks', 0)}"
        + (", promoting" if canary.get("promoting") else ""),
        title_justify="left",
    )
    for column in ("time", "variant", "SLI", "value", "threshold", "result", "window"):
        table.add_column(column)
    for check in (canary.get("checks") or [])[-8:]:
        value = check.get("value")
        result = "pass" if check.get("passed") else ("no data" if value is None else "BREACH")
        table.add_row(
            (check.get("time") or "")[11:19], check.get("variant") or "", check.get("sli") or "",
            _num(value, ".4g"), _num(check.get("threshold"), "g"),
            Text(result, style="green" if check.get("passed") else "bold red"), check.get("window") or "",
        )  # fmt: skip
    return table


def events_table(events: list[Any], limit: int = 8) -> Table:
    table = Table(title="events", title_justify="left", show_header=False, box=None)
    table.add_column("time")
    table.add_column("reason")
    table.add_column("message")
    for event in events[-limit:]:
        style = "yellow" if event.get("type") == "Warning" else ""
        table.add_row(
            _event_time(event), Text(event.get("reason") or "", style=style), event.get("message") or ""
        )
    return table


def _event_time(event: Mapping[str, Any]) -> str:
    stamp = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event["metadata"].get("creationTimestamp")
        or ""
    )
    return str(stamp)[11:19]


class LiveDisplay:
    """A live view for a terminal (rich), refreshed from the CR's status."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.started = time.monotonic()
        self.notes: list[str] = []
        self._live = Live(console=console, refresh_per_second=4, transient=False)
        self._status: Mapping[str, Any] = {}
        self._events: list[Any] = []

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(None, None, None)

    def say(self, message: str) -> None:
        self.notes.append(f"{time.monotonic() - self.started:5.0f}s  {message}")
        self._render()

    def update(self, status: Mapping[str, Any], events: list[Any]) -> None:
        self._status, self._events = status, events
        self._render()

    def _render(self) -> None:
        status = self._status
        phase = status.get("phase") or "Pending"
        header = Text.assemble(
            (self.title, "bold"), "   phase ", (phase, PHASE_STYLE.get(phase, "bold")),
            f"   {time.monotonic() - self.started:.0f}s   ", status.get("message") or "",
        )  # fmt: skip
        parts: list[Any] = [header, variants_table(status)]
        if (canary := canary_table(status)) is not None:
            parts.append(canary)
        parts.append(events_table(self._events))
        if self.notes:
            parts.append(Text("\n".join(self.notes[-4:]), style="magenta"))
        self._live.update(Panel(Group(*parts)))


class LogDisplay:
    """One line per new Event or phase, for logs (and tests, which keep the lines)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console
        self.lines: list[str] = []
        self.started = time.monotonic()
        self._seen: set[str] = set()
        self._phase: str | None = None

    def _print(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s  {text}"
        self.lines.append(line)
        if self.console is not None:
            self.console.print(line, highlight=False, markup=False)

    def say(self, message: str) -> None:
        self._print(f"** {message}")

    def update(self, status: Mapping[str, Any], events: list[Any]) -> None:
        for event in events:
            uid = event["metadata"].get("uid") or event["metadata"]["name"]
            if uid in self._seen:
                continue
            self._seen.add(uid)
            self._print(f"{event.get('type', ''):7} {event.get('reason', '')}: {event.get('message', '')}")
        phase = status.get("phase")
        if phase and phase != self._phase:
            self._phase = phase
            self._print(f"phase {phase}: {status.get('message') or ''}")


def print_summary(console: Console, outcome: Outcome) -> None:
    status = outcome.status
    console.print(variants_table(status, title="compression results"))
    if (canary := canary_table(status)) is not None:
        console.print(canary)
    verdict = "as expected" if outcome.ok else "NOT as expected"
    style = "bold green" if outcome.ok else "bold red"
    console.print(
        Text.assemble(
            (f"scenario {outcome.scenario}: ", "bold"),
            (str(outcome.phase), PHASE_STYLE.get(str(outcome.phase), "")),
            f" (expected {outcome.expected_phase}) in {outcome.seconds:.0f}s: ",
            (verdict, style),
        )
    )
    if status.get("selectedVariant"):
        console.print(f"selected variant: {status['selectedVariant']}; stable serves "
                      f"{(status.get('stable') or {}).get('variant') or 'the base model'}")  # fmt: skip
    for problem in outcome.problems:
        console.print(f"  problem: {problem}", style="red", markup=False)
    if outcome.leftover_processes:
        console.print(f"  processes left running: {outcome.leftover_processes}", style="red")
    workdir = outcome.workdir
    console.print(f"logs:        {workdir / 'logs'}  (operator.log, cluster.log, one file per container)")
    console.print(
        f"Prometheus:  {outcome.prometheus_url}  (stopped with the cluster; data in {workdir / 'prometheus'})"
    )
    console.print(f"objects:     {workdir / 'objects.json'}  (every object in the local API, JSON)")


def ensure_example(cache: Path, console: Console) -> Path:
    """The digits example (model + data), built once with ``kondense example digits`` and reused."""
    if all((cache / name).is_file() for name in EXAMPLE_FILES):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    console.print(f"building the digits example into {cache} (once; about a minute) ...")
    kondense = Path(sys.executable).parent / "kondense"
    result = subprocess.run(
        [str(kondense), "example", "digits", "--out", str(cache)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ClusterError(f"kondense example digits failed ({result.returncode}): {result.stderr[-2000:]}")
    return cache


@contextlib.contextmanager
def example_cr_file() -> Iterator[Path]:
    """The path of the packaged example CompressedModel (a real file for as long as the block runs)."""
    with importlib.resources.as_file(
        importlib.resources.files("kondense.localcluster") / "data" / EXAMPLE_CR
    ) as path:
        yield path
