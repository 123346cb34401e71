"""A process "kubelet": every Pod in the local API runs as local process groups on the loopback.

What a container runtime and a kubelet do, as far as kondense's pods need it:

* a container's ``command`` + ``args`` run as a process group (commands resolve to the venv's console
  scripts, ``kondense`` and ``kondense-compress``, then ``PATH``); a container without ``command``
  runs its image's entrypoint when the node knows it as a local command
  (:attr:`NodeContext.image_entrypoints`, any registry and tag); a command that
  cannot run here (``tritonserver``, another image's entrypoint) gets ``RunContainerError``/``StartError``
  with the reason, never a hang; init containers run first, in order;
* a pod that mounts its ServiceAccount token (``automountServiceAccountToken`` not false, the
  default) gets in-cluster access as this node provides it: ``KUBECONFIG`` (the local API) and the
  cluster-DNS forward proxy as ``HTTP_PROXY`` (see :attr:`NodeContext.in_cluster_env`), and its
  Service URLs stay as written (the proxy resolves them);
* addresses are rewritten because every pod shares 127.0.0.1 (see :func:`plan_container`): each
  declared ``containerPort`` gets a free host port (``--port N`` and probe ports follow it), Service
  URLs (``http://<svc>.<ns>.svc.cluster.local:<port>``) point at the Service's loopback proxy,
  ``emptyDir`` mounts become per-pod directories, PVC mounts the cluster's ``pvc/<claim>`` directory,
  and the ``terminationMessagePath`` a per-container file; ``subPath`` mounts a directory inside the
  volume (relative, no ``..``), and ``readOnly`` is enforced with Landlock (Linux >= 5.19): a container
  writes only its read-write mounts, its pod's directory (emptyDirs, /tmp) and /dev;
* ``status``: phase, conditions, ``containerStatuses`` with waiting/running/terminated states, exit
  codes, ``terminated.message`` from the termination-message file (``FallbackToLogsOnError``: the log
  tail), restart counts with a back-off, ``OOMKilled`` when the resident memory passes
  ``resources.limits.memory`` (the cgroup's job on a node);
* readiness (and liveness) from ``httpGet`` probes, honouring their period/thresholds;
* deleted pods get SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``.

Not emulated: security contexts (processes run as the current user), CPU limits, images other than the project's, exec/tcp
probes (a container with one is ready once running), ``hostNetwork``/``hostPort``; ``readOnly`` on a
kernel without Landlock ABI 2 (logged once).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from kondense.localcluster.prometheus import free_port

log = logging.getLogger("kondense.localcluster.kubelet")

NODE_NAME = "kondense-local"
POD_IP = "127.0.0.1"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096  # bytes, as the kubelet reads it
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: the last 80 lines / 2048 bytes of the log
FALLBACK_LOG_BYTES = 2048
BACKOFF_START_S = 1.0  # the kubelet starts at 10 s; a local demo has no time for that
BACKOFF_MAX_S = 30.0

ServiceAddress = Callable[[str, str, int], "str | None"]
"""(service, namespace, port) -> "127.0.0.1:<proxy port>", or None when there is no such Service."""
ExtraArgs = Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]
"""(pod, container) -> arguments appended to the container's (fault injection for scenarios)."""


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity ("512Mi", "1.5G", "100m", "2") as a number."""
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(text.strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


# ---- the command line a container runs here (pure) ------------------------------------------------


class NotReadyToStart(Exception):
    """The container cannot start yet (e.g. a Service it names does not exist): retried every sync."""


class CannotRun(Exception):
    """The container can never run on this node (no such command)."""


@dataclass(frozen=True)
class NodeContext:
    """What the rewrites need from the rest of the local cluster."""

    pvc_dir: Path  # PersistentVolumeClaim ``NAME`` is the directory ``pvc_dir/NAME``
    service_address: ServiceAddress
    namespace_exists: Callable[[str], bool]
    service_domain: str = "svc.cluster.local"
    bin_dirs: tuple[str, ...] = field(default_factory=lambda: (str(Path(sys.executable).parent),))
    enforce_read_only: bool = True  # Landlock, where the kernel has it (see ``sandboxed``)
    # what a pod that mounts its ServiceAccount token gets instead of /var/run/secrets/...: e.g.
    # KUBECONFIG and the forward proxy that resolves cluster DNS names (HTTP_PROXY, NO_PROXY)
    in_cluster_env: Mapping[str, str] = field(default_factory=dict)
    # image repository (last two components) -> the command its entrypoint is here, for containers
    # without ``command``
    image_entrypoints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class ContainerLaunch:
    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int]  # containerPort -> host port on 127.0.0.1
    named_ports: dict[str, int]  # port name -> containerPort
    termination_log: Path
    workdir: Path
    writable: tuple[str, ...] = ()  # the only local directories the container may write (readOnly)


def _service_url_pattern(domain: str) -> re.Pattern[str]:
    label = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
    suffix = rf"(?:\.{re.escape(domain)}|\.svc)?"
    return re.compile(rf"(?P<scheme>https?)://(?P<svc>{label})\.(?P<ns>{label}){suffix}:(?P<port>[0-9]+)")


def rewrite_service_urls(text: str, ctx: NodeContext) -> str:
    """``http://<svc>.<ns>[.svc[.cluster.local]]:<port>`` -> the Service's loopback proxy.

    A name in an existing namespace must be an existing Service (else :class:`NotReadyToStart`: a pod
    of the operator may start before the Service it talks to is created); other hosts stay as they are.
    """

    def replace(match: re.Match[str]) -> str:
        svc, ns, port = match.group("svc"), match.group("ns"), int(match.group("port"))
        if not ctx.namespace_exists(ns):
            return match.group(0)
        address = ctx.service_address(svc, ns, port)
        if address is None:
            raise NotReadyToStart(f"waiting for Service {ns}/{svc} (port {port}) named in the arguments")
        return f"{match.group('scheme')}://{address}"

    return _service_url_pattern(ctx.service_domain).sub(replace, text)


def rewrite_path(text: str, mounts: Mapping[str, str], keep: tuple[str, ...] = ()) -> str:
    """A path under a mountPath (alone or as ``--flag=PATH``) -> the same path under the local directory.

    Paths under ``keep`` (the cluster's own directories, e.g. the PVC root) are left alone even when a
    mountPath contains them: with a work directory under /tmp, an ``emptyDir`` at /tmp must not swallow
    the PVC root (a real pod would not have it there)."""
    flag, sep, value = text.partition("=") if text.startswith("-") else ("", "", text)
    if any(value == k or value.startswith(k.rstrip("/") + "/") for k in keep):
        return text
    for mount_path in sorted(mounts, key=len, reverse=True):
        base = mount_path.rstrip("/")
        if value == mount_path or value.startswith(base + "/"):
            return f"{flag}{sep}{mounts[mount_path]}{value[len(base) :]}"
    return text


def rewrite_ports(args: list[str], ports: Mapping[int, int]) -> list[str]:
    """``--port N``, ``--port=N``, ``--<x>-port N``/``=N`` where N is a declared containerPort -> host port."""
    out: list[str] = []
    flag_wants_port = False
    for arg in args:
        if flag_wants_port and arg.isdigit() and int(arg) in ports:
            out.append(str(ports[int(arg)]))
            flag_wants_port = False
            continue
        flag_wants_port = False
        match = re.fullmatch(r"(--?[a-z0-9-]*port)(=([0-9]+))?", arg)
        if match and match.group(3) is not None and int(match.group(3)) in ports:
            out.append(f"{match.group(1)}={ports[int(match.group(3))]}")
            continue
        if match and match.group(2) is None:
            flag_wants_port = True
        out.append(arg)
    return out


@dataclass(frozen=True)
class LocalMount:
    mount_path: str
    local: str
    read_only: bool


def local_mounts(
    pod: Mapping[str, Any], container: Mapping[str, Any], pod_dir: Path, ctx: NodeContext
) -> list[LocalMount]:
    """The container's volumeMounts as local directories (``subPath`` inside its volume; the
    directory is created, as the kubelet does)."""
    volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    out: list[LocalMount] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"]) or {}
        volume_read_only = False
        if "emptyDir" in volume:
            local = pod_dir / "volumes" / mount["name"]
        elif "persistentVolumeClaim" in volume:
            local = ctx.pvc_dir / volume["persistentVolumeClaim"]["claimName"]
            volume_read_only = bool(volume["persistentVolumeClaim"].get("readOnly"))
        elif "hostPath" in volume:
            local = Path(volume["hostPath"]["path"])
        else:
            continue  # configMap/secret/projected volumes: nothing of kondense uses them
        sub_path = mount.get("subPath")
        if sub_path:
            parts = str(sub_path).split("/")
            if sub_path.startswith("/") or ".." in parts:
                raise CannotRun(
                    f"volumeMount {mount['name']} at {mount['mountPath']}: subPath {sub_path!r} must be a "
                    "relative path without '..'"
                )
            local = local / sub_path
        local.mkdir(parents=True, exist_ok=True)
        out.append(
            LocalMount(mount["mountPath"], str(local), bool(mount.get("readOnly")) or volume_read_only)
        )
    return out


def volume_paths(
    pod: Mapping[str, Any], container: Mapping[str, Any], pod_dir: Path, ctx: NodeContext
) -> dict[str, str]:
    """mountPath -> local directory for the container's volumeMounts."""
    return {m.mount_path: m.local for m in local_mounts(pod, container, pod_dir, ctx)}


# ---- readOnly: Landlock lets a process give up writing outside a few directories, no root needed ------

_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # every Linux arch
# WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_{CHAR,DIR,REG,SOCK,FIFO,BLOCK,SYM} | REFER (ABI 2)
_LANDLOCK_WRITES = 2 | 16 | 32 | 64 | 128 | 256 | 512 | 1024 | 2048 | 4096 | 8192
_LANDLOCK_TRUNCATE = 16384  # ABI 3

# Runs as `python -c SANDBOX <writable dirs as JSON> <argv...>`: restrict, then exec the container's
# command (same pid, so signals, exit codes and memory accounting are the container's own).
SANDBOX = f"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def fail(what):
    sys.stderr.write(f"kubelet sandbox: {{what}}: {{os.strerror(ctypes.get_errno())}}\\n")
    sys.exit(128)
class Ruleset(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64)]
class Beneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]
abi = libc.syscall({_LANDLOCK_CREATE_RULESET}, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
handled = {_LANDLOCK_WRITES} | ({_LANDLOCK_TRUNCATE} if abi >= 3 else 0)
ruleset = Ruleset(handled)
fd = libc.syscall({_LANDLOCK_CREATE_RULESET}, ctypes.byref(ruleset), ctypes.c_size_t(8), ctypes.c_uint32(0))
if fd < 0:
    fail("landlock_create_ruleset")
for path in json.loads(sys.argv[1]):
    try:
        parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        continue
    rule = Beneath(handled, parent)
    if libc.syscall({_LANDLOCK_ADD_RULE}, fd, 1, ctypes.byref(rule), 0) != 0:
        fail(f"landlock_add_rule {{path}}")
    os.close(parent)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to restrict oneself unprivileged
    fail("prctl(PR_SET_NO_NEW_PRIVS)")
if libc.syscall({_LANDLOCK_RESTRICT_SELF}, fd, 0) != 0:
    fail("landlock_restrict_self")
os.close(fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def landlock_abi() -> int:
    """The kernel's Landlock ABI (0: none). ABI 2 is needed: before it, no rename between directories."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


def sandboxed(launch: ContainerLaunch) -> list[str]:
    """The argv that runs ``launch`` able to write only ``launch.writable``."""
    import json

    return [sys.executable, "-I", "-S", "-c", SANDBOX, json.dumps(list(launch.writable)), *launch.argv]


def resolve_command(name: str, bin_dirs: tuple[str, ...]) -> str:
    if os.path.isabs(name):
        if os.access(name, os.X_OK):
            return name
        raise CannotRun(f'exec: "{name}": no such file or not executable on this machine')
    for directory in bin_dirs:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise CannotRun(
            f'exec: "{name}": executable file not found in $PATH (the local cluster runs container commands '
            "as local processes and ignores images; only kondense's own commands and installed programs run)"
        )
    return found


def image_entrypoint(image: str, entrypoints: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    """The local command for an image, from ``entrypoints`` keyed by the last two components of the
    image's repository (``ghcr.io/acme/team/app:1.2@sha256:...`` -> ``team/app``); None if not there."""
    reference = image.split("@", 1)[0]
    slash = reference.rfind("/")
    if ":" in reference[slash + 1 :]:
        reference = reference[: reference.rindex(":")]
    return entrypoints.get("/".join(reference.split("/")[-2:]))


def rewrite_port_env(value: str, name: str, ports: Mapping[int, int]) -> str:
    """``*_PORT=<containerPort>`` -> the host port (every pod shares the loopback here)."""
    if name.upper().endswith("PORT") and value.isdigit() and int(value) in ports:
        return str(ports[int(value)])
    return value


def plan_container(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_dir: Path,
    ctx: NodeContext,
    extra_args: list[str] | None = None,
) -> ContainerLaunch:
    """The argv and environment one container runs with on this node (pure but for free ports/dirs)."""
    command = list(container.get("command") or [])
    if not command:
        entrypoint = image_entrypoint(str(container.get("image") or ""), ctx.image_entrypoints)
        if entrypoint is None:
            known = ", ".join(ctx.image_entrypoints) or "none"
            raise CannotRun(
                f"container {container['name']} has no command and its image {container.get('image')!r} is "
                f"none of those this node runs as local commands ({known}): the local cluster runs "
                "processes, not images"
            )
        command = list(entrypoint)
    named_ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")}
    ports = {int(p["containerPort"]): free_port() for p in container.get("ports") or []}
    termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    termination_log = pod_dir / f"{container['name']}.termination-log"
    local = local_mounts(pod, container, pod_dir, ctx)
    mounts = {m.mount_path: m.local for m in local}
    mounts[termination_path] = str(termination_log)
    # what a container may write: its read-write mounts, its pod's own directory (emptyDirs, /tmp,
    # termination logs) and the devices (/dev/null, /dev/shm)
    writable = tuple(dict.fromkeys([*(m.local for m in local if not m.read_only), str(pod_dir), "/dev"]))

    # a pod with in-cluster access resolves Service names through the forward proxy, so its URLs stay
    # as written (an operator compares them, e.g. against its Prometheus allow-list)
    in_cluster = (
        bool(ctx.in_cluster_env) and (pod.get("spec") or {}).get("automountServiceAccountToken") is not False
    )

    def rewrite(text: str) -> str:
        text = text if in_cluster else rewrite_service_urls(text, ctx)
        return rewrite_path(text, mounts, keep=(str(ctx.pvc_dir),))

    args = [rewrite(a) for a in [*command[1:], *(container.get("args") or [])]]
    args = rewrite_ports(args, ports)
    # every pod shares the loopback: kondense's server binds 0.0.0.0 unless told otherwise
    if os.path.basename(command[0]) == "kondense" and args[:1] == ["serve"] and "--host" not in args:
        args += ["--host", POD_IP]
    args += extra_args or []
    argv = [resolve_command(command[0], ctx.bin_dirs), *args]

    tmp = mounts.get("/tmp") or str(pod_dir / "tmp")
    Path(tmp).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.pathsep.join([*ctx.bin_dirs, os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": os.environ.get("HOME", str(pod_dir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TMPDIR": tmp,
        "PYTHONUNBUFFERED": "1",
        "HOSTNAME": pod["metadata"]["name"],
    }
    if in_cluster:
        env.update(ctx.in_cluster_env)
    meta = pod["metadata"]
    fields = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", ""),
              "status.podIP": POD_IP, "spec.nodeName": NODE_NAME}  # fmt: skip
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = rewrite_port_env(rewrite(str(item["value"])), item["name"], ports)
        elif (ref := (item.get("valueFrom") or {}).get("fieldRef")) and ref.get("fieldPath") in fields:
            env[item["name"]] = fields[ref["fieldPath"]]
    return ContainerLaunch(argv, env, ports, named_ports, termination_log, pod_dir, writable)


def read_termination_message(
    container: Mapping[str, Any], launch: ContainerLaunch, log_file: Path, exit_code: int
) -> str:
    try:
        message = launch.termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        message = ""
    policy = container.get("terminationMessagePolicy") or "File"
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        try:
            tail = log_file.read_bytes()[-FALLBACK_LOG_BYTES:].decode(errors="replace")
        except OSError:
            tail = ""
        message = "\n".join(tail.splitlines()[-FALLBACK_LOG_LINES:])
    return message


# ---- runtime state -----------------------------------------------------------------------------------


@dataclass
class Probe:
    spec: Mapping[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0
    passing: bool = False
    pending: concurrent.futures.Future[bool] | None = None


@dataclass
class ContainerRuntime:
    spec: Mapping[str, Any]
    init: bool
    log_file: Path
    launch: ContainerLaunch | None = None
    proc: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    restart_at: float = 0.0
    started_at: str | None = None
    oom_killed: bool = False
    readiness: Probe | None = None
    liveness: Probe | None = None
    done: bool = False  # terminated and will not be restarted

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        if not self.running or self.init:
            return False
        return self.readiness is None or self.readiness.passing

    @property
    def succeeded(self) -> bool:
        return self.done and (self.state.get("terminated") or {}).get("exitCode") == 0


@dataclass
class PodRuntime:
    uid: str
    namespace: str
    name: str
    pod: dict[str, Any]
    directory: Path
    init_containers: list[ContainerRuntime]
    containers: list[ContainerRuntime]
    start_time: str = field(default_factory=now_iso)
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # condition -> (status, time)
    reported: dict[str, Any] | None = None
    terminal: bool = False

    @property
    def restart_policy(self) -> str:
        return str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")

    def all_containers(self) -> list[ContainerRuntime]:
        return [*self.init_containers, *self.containers]


@dataclass
class Terminating:
    proc: subprocess.Popen[bytes]
    deadline: float
    log: IO[bytes] | None


class Kubelet:
    """Runs the pods it is given (``sync``) and reports their status to the API."""

    def __init__(
        self,
        api: Any,  # APIClient (typed loosely: tests pass recorders)
        root: Path,
        logs_dir: Path,
        ctx: NodeContext,
        extra_args: ExtraArgs | None = None,
        probe_timeout_cap_s: float = 2.0,
    ) -> None:
        self.api = api
        self.root = root
        self.logs_dir = logs_dir
        self.ctx = ctx
        self.extra_args = extra_args
        self.pods: dict[str, PodRuntime] = {}
        self.started: list[int] = []  # every process group started (for leak checks)
        self._terminating: list[Terminating] = []
        self._logs: dict[int, IO[bytes]] = {}
        self._probes = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="kubelet-probe"
        )
        self._probe_client = httpx.Client(timeout=probe_timeout_cap_s)
        self._lock = threading.Lock()
        self.sandbox = ctx.enforce_read_only and landlock_abi() >= 2
        if ctx.enforce_read_only and not self.sandbox:
            log.warning("this kernel has no Landlock ABI 2: readOnly volume mounts are not enforced here")

    # -- public --------------------------------------------------------------------------------------
    def sync(self, pods: list[dict[str, Any]]) -> None:
        """Start new pods, drive the running ones, stop the ones gone from the API."""
        with self._lock:
            seen = set()
            for pod in pods:
                meta = pod["metadata"]
                uid = meta["uid"]
                seen.add(uid)
                if meta.get("deletionTimestamp"):
                    continue
                runtime = self.pods.get(uid)
                if runtime is None:
                    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        continue  # finished before this kubelet started (e.g. an earlier run)
                    runtime = self._admit(pod)
                runtime.pod = pod
                if not runtime.terminal:
                    self._drive(runtime)
                    self._report(runtime)
            for uid in [u for u in self.pods if u not in seen]:
                self._stop_pod(self.pods.pop(uid))
            self._reap()

    def host_ports(self, uid: str) -> dict[str, int]:
        """Port name or number (as a string) -> host port, for the pod's running containers."""
        runtime = self.pods.get(uid)
        out: dict[str, int] = {}
        if runtime is None:
            return out
        for c in runtime.containers:
            if c.launch is None or not c.running:
                continue
            for container_port, host_port in c.launch.ports.items():
                out[str(container_port)] = host_port
            for name, container_port in c.launch.named_ports.items():
                out[name] = c.launch.ports[container_port]
        return out

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop every process: SIGTERM, then SIGKILL what is left after ``grace_s``."""
        with self._lock:
            for uid in list(self.pods):
                self._stop_pod(self.pods.pop(uid), grace_s)
            deadline = time.monotonic() + grace_s
            while self._terminating and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            for t in self._terminating:
                _kill_group(t.proc, signal.SIGKILL)
                t.proc.wait()
            self._reap()
            self._probes.shutdown(wait=True, cancel_futures=True)
            self._probe_client.close()

    # -- pod lifecycle ---------------------------------------------------------------------------------
    def _admit(self, pod: dict[str, Any]) -> PodRuntime:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        namespace = meta.get("namespace", "default")
        directory = self.root / f"{namespace}_{meta['name']}_{meta['uid'][:8]}"
        directory.mkdir(parents=True, exist_ok=True)

        def runtimes(key: str, init: bool) -> list[ContainerRuntime]:
            return [
                ContainerRuntime(c, init, self.logs_dir / f"{namespace}_{meta['name']}_{c['name']}.log")
                for c in spec.get(key) or []
            ]

        runtime = PodRuntime(
            meta["uid"], namespace, meta["name"], pod, directory,
            runtimes("initContainers", True), runtimes("containers", False),
        )  # fmt: skip
        self.pods[runtime.uid] = runtime
        log.info("pod %s/%s admitted", namespace, meta["name"])
        return runtime

    def _drive(self, pod: PodRuntime) -> None:
        now = time.monotonic()
        for c in pod.init_containers:
            if c.succeeded:
                continue
            self._drive_container(pod, c, now)
            if not c.succeeded:
                return  # init containers run one at a time, in order (a failed one fails the pod)
        for c in pod.containers:
            self._drive_container(pod, c, now)

    def _drive_container(self, pod: PodRuntime, c: ContainerRuntime, now: float) -> None:
        if c.done:
            return
        if c.proc is None:
            if now >= c.restart_at:
                self._start(pod, c)
            return
        code = c.proc.poll()
        if code is None:
            self._check_memory(c)
            self._run_probes(pod, c, now)
            return
        self._finished(pod, c, code, now)

    def _start(self, pod: PodRuntime, c: ContainerRuntime) -> None:
        extra = self.extra_args(pod.pod, c.spec) if self.extra_args and not c.init else []
        try:
            c.launch = plan_container(pod.pod, c.spec, pod.directory, self.ctx, extra)
        except NotReadyToStart as exc:
            c.state = {"waiting": {"reason": "ContainerCreating", "message": str(exc)}}
            return
        except CannotRun as exc:
            c.launch = None
            self._could_not_start(pod, c, str(exc))
            return
        c.launch.termination_log.unlink(missing_ok=True)
        c.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(c.log_file, "ab")  # noqa: SIM115 - closed when the process is reaped
        try:
            c.proc = subprocess.Popen(
                sandboxed(c.launch) if self.sandbox else c.launch.argv, env=c.launch.env, cwd=c.launch.workdir, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            out.close()
            self._could_not_start(pod, c, f"exec: {exc}")
            return
        self._logs[c.proc.pid] = out
        self.started.append(c.proc.pid)
        c.started_at = now_iso()
        c.oom_killed = False
        c.state = {"running": {"startedAt": c.started_at}}
        started = time.monotonic()
        for key in ("readinessProbe", "livenessProbe"):
            spec = c.spec.get(key)
            probe = Probe(spec, started + float(spec.get("initialDelaySeconds") or 0)) if spec else None
            setattr(c, "readiness" if key == "readinessProbe" else "liveness", probe)
        log.info("pod %s/%s: started %s: %s", pod.namespace, pod.name, c.name, " ".join(c.launch.argv))

    def _could_not_start(self, pod: PodRuntime, c: ContainerRuntime, message: str) -> None:
        terminated = {"exitCode": 128, "reason": "StartError", "message": message[:TERMINATION_MESSAGE_LIMIT],
                      "startedAt": now_iso(), "finishedAt": now_iso()}  # fmt: skip
        if pod.restart_policy == "Never":
            c.state, c.done = {"terminated": terminated}, True
        else:
            c.last_state = {"terminated": terminated}
            self._back_off(c, "RunContainerError", message)

    def _back_off(self, c: ContainerRuntime, reason: str, message: str) -> None:
        delay = min(BACKOFF_START_S * 2**c.restart_count, BACKOFF_MAX_S)
        c.restart_at = time.monotonic() + delay
        c.restart_count += 1
        c.state = {"waiting": {"reason": reason, "message": message[:1024]}}

    def _finished(self, pod: PodRuntime, c: ContainerRuntime, code: int, now: float) -> None:
        assert c.proc is not None and c.launch is not None
        self._close_log(c.proc.pid)
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as runtimes report
        reason = "OOMKilled" if c.oom_killed else ("Completed" if exit_code == 0 else "Error")
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": c.started_at or now_iso(),
            "finishedAt": now_iso(),
            "containerID": f"local://{c.proc.pid}",
        }
        message = read_termination_message(c.spec, c.launch, c.log_file, exit_code)
        if message:
            terminated["message"] = message
        c.proc, c.readiness, c.liveness = None, None, None
        log.info("pod %s/%s: %s exited %d (%s)", pod.namespace, pod.name, c.name, exit_code, reason)
        policy = pod.restart_policy
        restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        if c.init:
            restart = exit_code != 0 and policy != "Never"
        if restart:
            c.last_state = {"terminated": terminated}
            self._back_off(c, "CrashLoopBackOff", f"back-off restarting failed container {c.name}")
        else:
            c.state, c.done = {"terminated": terminated}, True

    def _check_memory(self, c: ContainerRuntime) -> None:
        limit = ((c.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is None or c.proc is None:
            return
        rss = _resident_bytes(c.proc.pid)
        if rss is not None and rss > parse_quantity(limit):
            log.warning("container %s: %d bytes resident > limit %s: OOM-killed", c.name, rss, limit)
            c.oom_killed = True
            _kill_group(c.proc, signal.SIGKILL)

    # -- probes ----------------------------------------------------------------------------------------
    def _run_probes(self, pod: PodRuntime, c: ContainerRuntime, now: float) -> None:
        for probe, liveness in ((c.readiness, False), (c.liveness, True)):
            if probe is None:
                continue
            if probe.pending is not None and probe.pending.done():
                ok = probe.pending.result()
                probe.pending = None
                if ok:
                    probe.successes, probe.failures = probe.successes + 1, 0
                    probe.passing = probe.passing or probe.successes >= int(
                        probe.spec.get("successThreshold") or 1
                    )
                else:
                    probe.failures, probe.successes = probe.failures + 1, 0
                    if probe.failures >= int(probe.spec.get("failureThreshold") or 3):
                        probe.passing = False
                        if liveness and c.proc is not None:
                            log.warning(
                                "pod %s/%s: %s failed its liveness probe: restarting",
                                pod.namespace,
                                pod.name,
                                c.name,
                            )
                            _kill_group(c.proc, signal.SIGKILL)
                            return
            if probe.pending is None and now >= probe.next_at:
                probe.next_at = now + float(probe.spec.get("periodSeconds") or 10)
                url = self._probe_url(c, probe.spec)
                if url is None:  # exec/tcp probes: not emulated, counted as passing
                    probe.passing = True
                    continue
                timeout = float(probe.spec.get("timeoutSeconds") or 1)
                probe.pending = self._probes.submit(self._http_probe, url, timeout)

    def _probe_url(self, c: ContainerRuntime, spec: Mapping[str, Any]) -> str | None:
        get = spec.get("httpGet")
        if get is None or c.launch is None:
            return None
        port = get.get("port")
        container_port = (
            c.launch.named_ports.get(port) if isinstance(port, str) and not port.isdigit() else int(port)
        )
        host_port = c.launch.ports.get(container_port) if container_port is not None else None
        if host_port is None:
            host_port = int(container_port) if container_port is not None else 0
        scheme = (get.get("scheme") or "HTTP").lower()
        return f"{scheme}://{POD_IP}:{host_port}{get.get('path') or '/'}"

    def _http_probe(self, url: str, timeout: float) -> bool:
        try:
            response = self._probe_client.get(url, timeout=timeout)
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400

    # -- status ----------------------------------------------------------------------------------------
    def pod_status(self, pod: PodRuntime) -> dict[str, Any]:
        phase = self._phase(pod)
        pod.terminal = phase in ("Succeeded", "Failed")
        initialized = all(c.succeeded for c in pod.init_containers)
        ready = phase == "Running" and all(c.ready for c in pod.containers)
        conditions = []
        for type_, value in (("PodScheduled", True), ("Initialized", initialized),
                             ("ContainersReady", ready), ("Ready", ready)):  # fmt: skip
            wanted = "True" if value else "False"
            previous = pod.transitions.get(type_)
            if previous is None or previous[0] != wanted:
                pod.transitions[type_] = (wanted, now_iso())
            conditions.append({"type": type_, "status": wanted, "lastProbeTime": None,
                               "lastTransitionTime": pod.transitions[type_][1]})  # fmt: skip
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": pod.start_time,
            "qosClass": _qos(pod.pod),
            "containerStatuses": [self._container_status(c) for c in pod.containers],
        }
        if pod.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in pod.init_containers]
        return status

    def _phase(self, pod: PodRuntime) -> str:
        if any(c.done and not c.succeeded for c in pod.init_containers):
            return "Failed"
        if not all(c.succeeded for c in pod.init_containers):
            return "Pending"
        if all(c.done for c in pod.containers):
            return "Succeeded" if all(c.succeeded for c in pod.containers) else "Failed"
        if any(c.running or c.restart_count > 0 or c.done for c in pod.containers):
            return "Running"
        return "Pending"

    @staticmethod
    def _container_status(c: ContainerRuntime) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": c.name,
            "image": c.spec.get("image") or "",
            "imageID": "",
            "ready": c.ready,
            "restartCount": c.restart_count,
            "started": c.running,
            "state": c.state,
            "lastState": c.last_state,
        }
        if c.proc is not None:
            status["containerID"] = f"local://{c.proc.pid}"
        return status

    def _report(self, pod: PodRuntime) -> None:
        status = self.pod_status(pod)
        if status == pod.reported:
            return
        if self.api.patch_status("Pod", pod.namespace, pod.name, status) is not None:
            pod.reported = status

    # -- stopping --------------------------------------------------------------------------------------
    def _stop_pod(self, pod: PodRuntime, grace_s: float | None = None) -> None:
        grace = grace_s
        if grace is None:
            grace = float((pod.pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
        for c in pod.all_containers():
            if c.proc is not None and c.proc.poll() is None:
                _kill_group(c.proc, signal.SIGTERM)
                self._terminating.append(
                    Terminating(c.proc, time.monotonic() + grace, self._logs.pop(c.proc.pid, None))
                )
            elif c.proc is not None:
                self._close_log(c.proc.pid)
            c.proc = None
        log.info("pod %s/%s stopped (grace %.0fs)", pod.namespace, pod.name, grace)

    def _reap(self) -> None:
        still = []
        for t in self._terminating:
            if t.proc.poll() is not None:
                if t.log:
                    t.log.close()
                continue
            if time.monotonic() >= t.deadline:
                _kill_group(t.proc, signal.SIGKILL)
            still.append(t)
        self._terminating = still

    def _close_log(self, pid: int) -> None:
        handle = self._logs.pop(pid, None)
        if handle is not None:
            handle.close()


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the process group id is the pid


def _resident_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None  # no /proc (macOS) or already gone: memory limits are not enforced


def _qos(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) is not None
        and (r.get("requests") or {}).get(k, (r.get("limits") or {}).get(k)) == (r.get("limits") or {}).get(k)
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"
