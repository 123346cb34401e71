"""``kondense up`` / ``kondense down`` / ``kondense urls``: the local cluster as a background service.

``kondense up`` starts a daemon (``python -m kondense.localcluster.up``, its own session and process
group, output in ``<workdir>/logs/up.log``) that runs :class:`~kondense.localcluster.cluster.LocalCluster`
until ``kondense down``, and returns once the daemon reports it is ready. The work directory holds::

    up.pid        the daemon: {"pid", "start"} (start = its start time in /proc, against PID reuse)
    up.json       written when ready: kubeconfig, API, Prometheus and dashboard URLs
    children.json the process groups the daemon started (Prometheus, the operator, every container)
    state.json    the API's objects (saved every few seconds when they changed, and on shutdown)
    services.json the Services' loopback addresses (``kondense urls`` prints them)
    kubeconfig, pvc/, pods/, logs/, prometheus/   as for every LocalCluster

``kondense up`` on the same work directory after ``kondense down`` resumes: the objects come back from
``state.json`` (the operator resumes from their status), volumes and Prometheus' data are where they
were, and the API keeps its port when it is free (the kubeconfig stays valid).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kondense.localcluster.cluster import LocalCluster
from kondense.localcluster.store import write_atomically

log = logging.getLogger("kondense.localcluster.up")

DEFAULT_WORKDIR = Path(".kondense/up")
SAVE_EVERY_S = 2.0
STOP_GRACE_S = 60.0  # how long `down` waits for the daemon's own orderly shutdown before SIGKILL
CHILD_GRACE_S = 10.0


class UpError(RuntimeError):
    """A problem to show the user as one line."""


@dataclass(frozen=True)
class Files:
    workdir: Path

    @property
    def pid(self) -> Path:
        return self.workdir / "up.pid"

    @property
    def ready(self) -> Path:
        return self.workdir / "up.json"

    @property
    def children(self) -> Path:
        return self.workdir / "children.json"

    @property
    def state(self) -> Path:
        return self.workdir / "state.json"

    @property
    def services(self) -> Path:
        return self.workdir / "services.json"

    @property
    def ports(self) -> Path:
        return self.workdir / "ports.json"

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / "up.log"


# ---- processes, by PID and start time ---------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The process' start time (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return fields[19]


def alive(record: dict[str, Any]) -> bool:
    """Is the process of ``{"pid", "start"}`` still the one recorded (not a reused PID)?"""
    return start_time(int(record["pid"])) == record.get("start")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def running_daemon(files: Files) -> dict[str, Any] | None:
    record = _read_json(files.pid)
    if isinstance(record, dict) and "pid" in record and alive(record):
        return record
    return None


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_gone(records: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    left = [r for r in records if alive(r)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [r for r in left if alive(r)]
    return left


# ---- the daemon ---------------------------------------------------------------------------------------

DashboardHook = Callable[[LocalCluster, Path], "str | None"]
DASHBOARD_WAIT_S = 60.0
_extra_children: list[subprocess.Popen[bytes]] = []


def start_dashboard(cluster: LocalCluster, workdir: Path) -> str | None:
    """THE DASHBOARD HOOK: ``kondense dashboard`` for this cluster, in its own process group; its URL.

    Reads the cluster through its kubeconfig and Prometheus for the SLI series; listens on the previous
    run's port when it is free. None (and a warning in up.log) when this installation has no
    ``kondense dashboard`` command or it did not come up within a minute: the cluster runs without it.
    """
    files = Files(workdir)
    port = _port_if_free((_read_json(files.ports) or {}).get("dashboard")) or 0
    log_path = cluster.paths.logs / "dashboard.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    argv = [str(Path(sys.executable).parent / "kondense"), "dashboard", "--kubeconfig", str(cluster.paths.kubeconfig),
            "--prometheus", cluster.prometheus.url, "--port", str(port)]  # fmt: skip
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _extra_children.append(proc)
    deadline = time.monotonic() + DASHBOARD_WAIT_S
    while time.monotonic() < deadline:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            for line in fh.read().decode(errors="replace").splitlines():
                if line.startswith("dashboard: http"):
                    return line.removeprefix("dashboard: ").strip()
        if proc.poll() is not None:
            log.warning("no dashboard: `kondense dashboard` exited %s (see %s)", proc.returncode, log_path)
            return None
        time.sleep(0.2)
    log.warning("no dashboard: `kondense dashboard` printed no URL within %.0fs", DASHBOARD_WAIT_S)
    _stop_extra_children()
    return None


def _stop_extra_children() -> None:
    for proc in _extra_children:
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGTERM)
    for proc in _extra_children:
        try:
            proc.wait(CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
    _extra_children.clear()


def _child_records(cluster: LocalCluster, known: dict[int, str]) -> list[dict[str, Any]]:
    """Every child process group the daemon started, with its start time (kept once seen)."""
    me = os.getpid()
    pids = [*cluster.started_pids(), *(p.pid for p in _extra_children)]
    proc = cluster.prometheus._proc
    if proc is not None:
        pids.append(proc.pid)
    for pid in pids:
        if pid in known:
            continue
        start = start_time(pid)
        if start is not None and _parent(pid) == me:  # our own child: not a reused PID
            known[pid] = start
    return [{"pid": pid, "start": start} for pid, start in known.items()]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _service_addresses(cluster: LocalCluster) -> list[dict[str, Any]]:
    return [
        {"namespace": ns, "name": name, "port": port, "url": f"http://{entry.address}"}
        for (ns, name, port), entry in sorted(cluster.network.ports.items())
    ]


def _port_if_free(port: Any) -> int | None:
    import socket

    if not isinstance(port, int):
        return None
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def serve(
    workdir: Path,
    *,
    with_operator: bool,
    api_port: int | None,
    examples: Path | None,
    dashboard: DashboardHook = start_dashboard,
) -> int:
    """The daemon: run the cluster until SIGTERM/SIGINT; returns the exit code."""
    files = Files(workdir)
    write_atomically(files.pid, {"pid": os.getpid(), "start": start_time(os.getpid())})
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    previous = _read_json(files.ports) or {}
    cluster = LocalCluster(
        workdir,
        tick_seconds=0.5,  # the node loop: half the demo's rate, for a cluster that stays up
        api_port=api_port or _port_if_free(previous.get("api")),
        prometheus_port=_port_if_free(previous.get("prometheus")),
        state_file=files.state,
    )
    known: dict[int, str] = {}
    code = 0
    try:
        if examples is not None:
            install_examples(examples, cluster.paths.pvc / "models" / "digits")
        cluster.start(with_operator=with_operator)
        dashboard_url = dashboard(cluster, workdir)
        ports = {"api": int(cluster.api.url.rsplit(":", 1)[1]), "prometheus": cluster.prometheus.port}
        if dashboard_url:
            ports["dashboard"] = int(dashboard_url.rstrip("/").rsplit(":", 1)[1].split("/")[0])
        write_atomically(files.ports, ports)
        ready = {
            "pid": os.getpid(),
            "kubeconfig": str(cluster.paths.kubeconfig),
            "api": cluster.api.url,
            "prometheus": cluster.prometheus.url,
            "dashboard": dashboard_url,
            "operator": with_operator,
        }
        write_atomically(files.children, _child_records(cluster, known))
        write_atomically(files.ready, ready)
        log.info("kondense up: ready %s", ready)
        while not stop.wait(SAVE_EVERY_S):
            cluster.save_state()
            write_atomically(files.children, _child_records(cluster, known))
            write_atomically(files.services, _service_addresses(cluster))
            if with_operator and not cluster.operator_alive() and not stop.is_set():
                log.warning("the operator exited; starting it again (see logs/operator.log)")
                cluster.start_operator()
    except Exception as exc:  # one line for `kondense up` to show; the traceback stays in up.log
        log.exception("kondense up failed")
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        print(f"error: {exc}{cause}", file=sys.stderr, flush=True)
        code = 1
    finally:
        files.ready.unlink(missing_ok=True)
        try:
            _stop_extra_children()
            cluster.stop()
        finally:
            write_atomically(files.children, _child_records(cluster, known))
            files.pid.unlink(missing_ok=True)
    return code


def install_examples(source: Path, target: Path) -> None:
    """The digits example model and data onto the ``models`` claim, once (a resumed cluster keeps its own)."""
    from kondense.localcluster.scenarios import EXAMPLE_FILES

    target.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_FILES:
        if not (target / name).exists():
            shutil.copy2(source / name, target / name)


# ---- the commands -------------------------------------------------------------------------------------


@dataclass
class UpResult:
    already: bool
    ready: dict[str, Any]


def up(
    workdir: Path,
    *,
    with_operator: bool = True,
    api_port: int | None = None,
    examples: Path | None = None,
    timeout: float = 300.0,
) -> UpResult:
    """Start the daemon (unless it runs already) and wait until it is ready."""
    workdir = workdir.resolve()
    files = Files(workdir)
    if (record := running_daemon(files)) is not None:
        ready = _read_json(files.ready)
        if isinstance(ready, dict) and ready.get("pid") == record["pid"]:
            return UpResult(True, ready)
        raise UpError(
            f"kondense up is already starting in {workdir} (PID {record['pid']}); try again shortly"
        )
    if any(alive(r) for r in _read_json(files.children) or [] if isinstance(r, dict)):
        down(workdir)  # processes of a daemon that was killed: stopped before they are started again
    for stale in (files.pid, files.ready):
        stale.unlink(missing_ok=True)
    files.log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "kondense.localcluster.up", "--workdir", str(workdir)]
    if not with_operator:
        argv.append("--no-operator")
    if api_port is not None:
        argv += ["--port", str(api_port)]
    if examples is not None:
        argv += ["--examples", str(examples.resolve())]
    with open(files.log, "ab") as out:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir, close_fds=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = _read_json(files.ready)
        if isinstance(ready, dict) and ready.get("pid") == child.pid:
            return UpResult(False, ready)
        if child.poll() is not None:
            raise UpError(
                f"the local cluster did not start (exit {child.returncode}): {_last_error(files.log)}; "
                f"log: {files.log}"
            )
        time.sleep(0.2)
    _kill_group(child.pid, signal.SIGTERM)
    try:
        child.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _kill_group(child.pid, signal.SIGKILL)
    raise UpError(f"the local cluster was not ready after {timeout:.0f}s; log: {files.log}")


def _last_error(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error: ")


@dataclass
class DownResult:
    was_up: bool
    stopped: int  # processes that were running and are gone now
    left: list[int]  # PIDs still alive (should be empty)


def down(workdir: Path, *, grace: float = STOP_GRACE_S) -> DownResult:
    """Stop the daemon (SIGTERM to its group, SIGKILL after ``grace``) and every process it started."""
    files = Files(workdir.resolve())
    daemon = running_daemon(files)
    children = [r for r in (_read_json(files.children) or []) if isinstance(r, dict) and alive(r)]
    was_running = len(children) + (daemon is not None)
    if daemon is None and not children:
        for stale in (files.pid, files.ready):
            stale.unlink(missing_ok=True)
        return DownResult(False, 0, [])
    if daemon is not None:
        _kill_group(int(daemon["pid"]), signal.SIGTERM)
        if _wait_gone([daemon], grace):
            _kill_group(int(daemon["pid"]), signal.SIGKILL)
            _wait_gone([daemon], 10)
    # what the daemon could not stop (or a daemon killed before it could): the recorded groups
    children = [r for r in (_read_json(files.children) or []) if isinstance(r, dict)]
    running = [r for r in children if alive(r)]
    for record in running:
        _kill_group(int(record["pid"]), signal.SIGTERM)
    for record in _wait_gone(running, CHILD_GRACE_S):
        _kill_group(int(record["pid"]), signal.SIGKILL)
    records = [*([daemon] if daemon else []), *children]
    left = [int(r["pid"]) for r in _wait_gone(records, 10)]
    if not left:
        for stale in (files.pid, files.ready):
            stale.unlink(missing_ok=True)
    return DownResult(True, was_running, left)


def service_urls(workdir: Path) -> list[dict[str, Any]]:
    files = Files(workdir.resolve())
    if running_daemon(files) is None:
        raise UpError(f"the local cluster is not up in {workdir} (start it with `kondense up`)")
    services = _read_json(files.services)
    return [s for s in services or [] if isinstance(s, dict)]


# ---- the daemon's entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kondense.localcluster.up")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--no-operator", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--examples", type=Path)
    args = parser.parse_args(argv)
    # the cluster logs to logs/cluster.log; here only the daemon's own lines and others' warnings
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    return serve(args.workdir, with_operator=not args.no_operator, api_port=args.port, examples=args.examples)


__all__ = ["UpError", "down", "main", "serve", "service_urls", "start_dashboard", "up"]

if __name__ == "__main__":
    sys.exit(main())
