"""``kubectl-kondense``: the kubectl plugin (``kubectl kondense status|history|pause|resume|approve|
promote|abort|retry NAME``).

Reads CompressedModels and writes intents (``kondense.api.intents``) as annotations through the same
kubeconfig kubectl uses (``KUBECONFIG``, ``--kubeconfig``, ``--context``); the operator acts on them and
acknowledges each in ``status.intents`` and an Event. Every error is one sentence, never a traceback.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from kondense.api import intents
from kondense.api.resource import GROUP, PLURAL, VERSION

app = typer.Typer(
    name="kubectl kondense",
    help="Watch and steer kondense rollouts (CompressedModels).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the context's).")
]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="Path to the kubeconfig file.")]
Context = Annotated[str | None, typer.Option("--context", help="The kubeconfig context to use.")]
Name = Annotated[str, typer.Argument(help="The CompressedModel's name.")]


class PluginError(Exception):
    """A problem to tell the user in one sentence."""


class Cluster:
    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        import kubernetes

        try:
            self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
            _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise PluginError(f"cannot load the kubeconfig: {exc}") from None
        if context:
            contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            active = next((c for c in contexts if c["name"] == context), active)
        self.namespace = namespace or (active or {}).get("context", {}).get("namespace") or "default"
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self._errors: tuple[type[Exception], ...] = (kubernetes.client.ApiException, *_network_errors())

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._errors as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                raise PluginError(f"{what}: not found in namespace {self.namespace}") from None
            reason = _api_message(exc) if status else str(exc)
            raise PluginError(f"{what}: {reason}") from None

    def get(self, name: str) -> dict[str, Any]:
        return self._call(
            f"compressedmodel {name}",
            self.custom.get_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name,
        )  # fmt: skip

    def annotate(self, name: str, annotations: dict[str, str | None]) -> dict[str, Any]:
        return self._call(
            f"compressedmodel {name}",
            self.custom.patch_namespaced_custom_object,
            GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"annotations": annotations}},
        )  # fmt: skip

    def jobs(self, name: str) -> list[dict[str, Any]] | None:
        """The model's compression Jobs; None when they cannot be listed (e.g. no RBAC for Jobs)."""
        import kubernetes

        from kondense.dashboard.progress import MODEL_LABEL, is_compression_job

        batch = kubernetes.client.BatchV1Api(self.api)
        try:
            found = batch.list_namespaced_job(self.namespace, label_selector=f"{MODEL_LABEL}={name}")
        except self._errors:
            return None
        items = self.api.sanitize_for_serialization(found).get("items", [])
        return [j for j in items if is_compression_job(j, name)]

    def events(self, name: str) -> list[dict[str, Any]]:
        found = self._call("events", self.core.list_namespaced_event, self.namespace)
        items = self.api.sanitize_for_serialization(found).get("items", [])
        mine = [
            e
            for e in items
            if e.get("involvedObject", {}).get("kind") == "CompressedModel"
            and e.get("involvedObject", {}).get("name") == name
        ]
        return sorted(mine, key=_event_time)


def _network_errors() -> tuple[type[Exception], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, OSError)


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def _fmt(value: Any, spec: str = "g", suffix: str = "") -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):{spec}}{suffix}"
    except (TypeError, ValueError):
        return str(value)


def render_status(obj: dict[str, Any], console: Console, jobs: list[dict[str, Any]] | None = None) -> None:
    """A CompressedModel readable at a glance: where the rollout is, the compression progress, the
    variants, the last checks. ``jobs``: its compression Jobs when they could be listed."""
    from kondense.dashboard.progress import compression_progress, format_seconds

    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    canary = status.get("canary") or {}
    annotations = meta.get("annotations") or {}
    console.print(
        f"[bold]{meta.get('namespace')}/{meta.get('name')}[/]  phase [bold]{status.get('phase', 'Pending')}[/]"
    )
    if status.get("message"):
        console.print(f"  {status['message']}")
    if canary.get("variant"):
        steps = (obj.get("spec", {}).get("rollout") or {}).get("steps") or []
        step = canary.get("step", 0)
        console.print(
            f"  canary [bold]{canary['variant']}[/]: weight {canary.get('weight', 0)}% "
            f"(requested {canary.get('requestedWeight', 0)}%, step {step + 1}/{len(steps) or '?'}), "
            f"failed checks {canary.get('failedChecks', 0)}"
        )
    if (status.get("stable") or {}).get("artifact"):
        stable = status["stable"]
        console.print(
            f"  stable serves {stable.get('variant') or 'the base model'} "
            f"({(stable['artifact'].get('sha256') or '')[:12]})"
        )
    if intents.parse(annotations).paused:
        state = "acknowledged" if status.get("paused") else "not acknowledged yet"
        console.print(f"  [yellow]paused[/] ({state}; kubectl kondense resume to go on)")
    if status.get("phase") == "WaitingForApproval":
        console.print(f"  [yellow]waiting for approval[/] (kubectl kondense approve {meta.get('name')})")
    acknowledged = status.get("intents") or {}
    if acknowledged:
        console.print("  acknowledged: " + ", ".join(f"{k} {v}" for k, v in sorted(acknowledged.items())))
    progress = compression_progress(obj, jobs or [])
    if progress is not None and (not progress.complete or status.get("phase") in ("Pending", "Compressing")):
        console.print(f"  {progress.summary()}")
        running = [j for j in progress.jobs if j.state in ("Running", "Failed")]
        if running:
            table = Table(title="compression Jobs", title_justify="left")
            for column in ("Job", "variant", "state", "time", "message"):
                table.add_column(column)
            for j in running:
                table.add_row(j.name, j.variant, j.state, format_seconds(j.seconds), (j.message or "")[:60])
            console.print(table)
    table = Table(title="variants", title_justify="left")
    for column in ("variant", "phase", "technique", "size", "p50 ms", "Δ accuracy", "note"):
        table.add_column(column)
    for v in status.get("variants", []):
        metrics = v.get("metrics") or {}
        mark = " *" if v.get("name") == status.get("selectedVariant") else ""
        table.add_row(
            f"{v.get('name')}{mark}",
            str(v.get("phase", "")),
            str(v.get("technique") or ""),
            _fmt(metrics.get("sizeRatio"), ".3f", "x"),
            _fmt(metrics.get("p50Ms"), ".3f"),
            _fmt(metrics.get("accuracyDelta"), ".4f"),
            str(v.get("reason") or v.get("message") or "")[:60],
        )
    console.print(table)
    checks = canary.get("checks") or []
    if checks:
        latest = [c for c in checks if c.get("time") == checks[-1].get("time")]
        table = Table(title=f"last checks ({latest[0].get('time')})", title_justify="left")
        for column in ("sli", "value", "threshold", "window", "result"):
            table.add_column(column)
        for c in latest:
            result = "[green]pass[/]" if c.get("passed") else f"[red]fail[/] {c.get('message') or ''}"
            table.add_row(
                str(c.get("sli")),
                _fmt(c.get("value"), ".4g"),
                _fmt(c.get("threshold")),
                str(c.get("window") or ""),
                result,
            )
        console.print(table)
    conditions = status.get("conditions") or []
    if conditions:
        table = Table(title="conditions", title_justify="left")
        for column in ("type", "status", "reason", "message"):
            table.add_column(column)
        for c in conditions:
            table.add_row(
                str(c.get("type")),
                str(c.get("status")),
                str(c.get("reason") or ""),
                str(c.get("message") or "")[:80],
            )
        console.print(table)


def _run(action: Callable[[], None]) -> None:
    try:
        action()
    except PluginError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def status(
    name: Name,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")] = "table",
) -> None:
    """Compression progress; variants with size, latency and accuracy; canary weight; last checks;
    conditions."""

    def action() -> None:
        if output not in ("table", "json", "yaml"):
            raise PluginError(f"--output {output!r}: use table, json or yaml")
        cluster = Cluster(kubeconfig, context, namespace)
        obj = cluster.get(name)
        if output == "json":
            typer.echo(json.dumps(obj.get("status") or {}, indent=2))
        elif output == "yaml":
            typer.echo(yaml.safe_dump(obj.get("status") or {}, sort_keys=False))
        else:
            render_status(obj, Console(width=140), cluster.jobs(name))

    _run(action)


@app.command()
def history(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Every recorded check and Event of the rollout, oldest first."""

    def action() -> None:
        cluster = Cluster(kubeconfig, context, namespace)
        obj = cluster.get(name)
        rows: list[tuple[str, str, str]] = []
        for c in ((obj.get("status") or {}).get("canary") or {}).get("checks") or []:
            verdict = "pass" if c.get("passed") else f"FAIL {c.get('message') or ''}"
            rows.append(
                (
                    str(c.get("time")),
                    f"check {c.get('variant') or ''}",
                    f"{c.get('sli')}={_fmt(c.get('value'), '.4g')} {verdict}",
                )
            )
        for e in cluster.events(name):
            rows.append(
                (_event_time(e), f"event {e.get('type', '')}", f"{e.get('reason')}: {e.get('message')}")
            )
        table = Table(title=f"history of {cluster.namespace}/{name}", title_justify="left")
        for column in ("time", "what", "detail"):
            table.add_column(column)
        for row in sorted(rows):
            table.add_row(*row)
        Console(width=160).print(table)

    _run(action)


def _request(
    intent: intents.Intent,
    name: str,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
    *,
    skip_analysis: bool = False,
) -> None:
    def action() -> None:
        cluster = Cluster(kubeconfig, context, namespace)
        nonce = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        value = intents.annotation_value(intent, nonce, skip_analysis=skip_analysis)
        cluster.annotate(name, {intent.annotation: value})
        typer.echo(
            f"compressedmodel {cluster.namespace}/{name}: {intent.value} requested ({nonce}); the operator acknowledges it in status.intents"
        )

    _run(action)


def _set_paused(
    name: str, namespace: str | None, kubeconfig: str | None, context: str | None, *, paused: bool
) -> None:
    def action() -> None:
        cluster = Cluster(kubeconfig, context, namespace)
        cluster.annotate(name, {intents.PAUSED: "true" if paused else None})
        typer.echo(f"compressedmodel {cluster.namespace}/{name}: {'paused' if paused else 'resumed'}")

    _run(action)


@app.command()
def pause(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Hold the canary at its current weight: no step, no promotion (rollbacks on breach still happen)."""
    _set_paused(name, namespace, kubeconfig, context, paused=True)


@app.command()
def resume(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Let a paused rollout go on."""
    _set_paused(name, namespace, kubeconfig, context, paused=False)


@app.command()
def approve(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Approve a rollout waiting for approval (phase WaitingForApproval)."""
    _request(intents.Intent.APPROVE, name, namespace, kubeconfig, context)


@app.command()
def promote(
    name: Name,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    skip_analysis: Annotated[
        bool, typer.Option("--skip-analysis", help="Promote now, without the remaining steps' analysis.")
    ] = False,
) -> None:
    """Advance the canary to the next step now (or promote at once with --skip-analysis)."""
    _request(intents.Intent.PROMOTE, name, namespace, kubeconfig, context, skip_analysis=skip_analysis)


@app.command()
def abort(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Send 100 % of the traffic back to stable and stop the rollout (no next variant)."""
    _request(intents.Intent.ABORT, name, namespace, kubeconfig, context)


@app.command()
def retry(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Start the rollout over after it rolled back, failed or was aborted."""
    _request(intents.Intent.RETRY, name, namespace, kubeconfig, context)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
