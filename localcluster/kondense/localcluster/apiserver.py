"""A local Kubernetes API server over real HTTP: kmock's KubernetesEmulator with real object semantics.

``LocalAPIServer`` runs :class:`~kondense.localcluster.emulator.KubernetesAPIEmulator` on
``127.0.0.1:<free port>`` in a background thread with its own event loop, so synchronous code, tests and
``make demo`` can use it, and writes a kubeconfig that both the official ``kubernetes`` client and kopf's
login (``KUBECONFIG`` or ``kubernetes.config.load_kube_config``) accept. The operator runs against it
unmodified::

    with LocalAPIServer() as api:
        api.write_kubeconfig(path)          # then KUBECONFIG=path kopf run ...
        ...
        objects = api.dump()                # every stored object, e.g. for kubernetes-validate

It serves the standard resources kmock bundles (core v1, apps/v1, batch/v1, events, coordination,
apiextensions, ...), the Gateway API HTTPRoute as a CRD, and every CRD created through
``apiextensions.k8s.io/v1``; the namespaces ``default`` and ``kube-system`` exist from the start.

kopf runs against it as against a cluster (``tests/localcluster`` runs ``kopf run --standalone -A`` with
``KUBECONFIG``): it needs no special settings, but two are advisable — progress and diff-base in
annotations (``kopf.AnnotationsProgressStorage``/``AnnotationsDiffBaseStorage``), since a status field
outside the CRD schema is pruned here as on a real cluster, and a short
``settings.watching.server_timeout`` so the watch streams cycle quickly.

Emulated, as the real API server does it:

* create/get/list/replace (PUT)/delete; ``metadata.uid``, ``creationTimestamp``, a cluster-wide
  ``resourceVersion`` that changes on every write (a no-op write changes nothing and notifies no one),
  ``generation`` from 1, bumped only when something other than metadata/status changes;
  ``generateName``; ``dryRun=All``; namespaced objects need an existing namespace.
* errors as ``Status`` bodies: 409 AlreadyExists, 409 Conflict (stale ``resourceVersion`` on PUT or
  merge patch, failed delete preconditions), 404 NotFound, 422 Invalid (no name; new finalizers on an
  object being deleted; a failed JSON-patch ``test``), 415 for strategic merge patches of custom
  resources, 400 for malformed selectors.
* PATCH as merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch (list merge keys and
  strategies from the official OpenAPI schemas).
* the ``status`` subresource wherever discovery declares it (CRDs that declare it; Pods, Deployments,
  Jobs, ...): ``/status`` writes change only ``status``, main-endpoint writes never change it; create
  drops the status (custom resources start without one, built-ins with ``{}``, Pods with
  ``phase: Pending``, Namespaces with ``phase: Active``).
* kmock's DSL keeps precedence for failure injection, e.g.
  ``api.emulator[kmock.action.CREATE, kmock.resource("batch", "v1", "jobs")] << 503`` (as in kmock,
  the write itself still happens: the failure is a lost response).
* ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``) and ``fieldSelector``
  (``metadata.name``/``metadata.namespace`` and the fields the API server indexes per resource, others
  rejected with 400) on list, watch and delete-collection.
* watch: ``resourceVersion`` continuation from a per-resource event log (410 Gone ``ERROR`` event once
  the log has moved past it), synthetic ``ADDED`` events without a resourceVersion, ``timeoutSeconds``,
  ``allowWatchBookmarks`` (a BOOKMARK after ``bookmark_interval`` seconds of quiet), ``sendInitialEvents``,
  and objects entering/leaving a selector seen as ADDED/DELETED.
* finalizers: deletion sets ``deletionTimestamp`` and waits until the finalizers are gone.
* garbage collection by ``ownerReferences[].uid``, recursively: Background (dependents go once every
  owner is gone), Foreground (``foregroundDeletion`` finalizer until the dependents are gone), Orphan;
  deleting a Namespace deletes its objects; deleting a CRD deletes its custom resources.
* CRDs: name/scope/storage-version checks, ``Established`` status, discovery and serving of every served
  version, and structural pruning and defaulting of custom resources by their ``openAPIV3Schema``.

* what real kubectl (v1.35) needs: ``/version`` as v1.35; aggregated discovery (``/api``, ``/apis`` with
  ``Accept: ...;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList``) and the legacy lists, subresources
  without their parent's short names; OpenAPI v3 (``/openapi/v3`` and a document per group version: the
  official schemas for built-ins, the CRD's for custom resources), so ``apply`` validates on the server and
  ``explain`` works; ``as=Table`` answers (a CRD's ``additionalPrinterColumns``, the built-in columns of
  Pods, Deployments, Jobs, Services, Events, ...) for ``get``, also while watching; server-side apply
  (``application/apply-patch+yaml``: merged in, this manager's dropped fields removed, ``managedFields``
  kept); ``pods/<name>/log`` (``tailLines``, ``limitBytes``, ``follow``) from the kubelet's files when
  ``pod_logs_dir`` is given.
* field validation: ``fieldValidation=Strict`` (kubectl's default) refuses unknown fields with 400
  (``strict decoding error: unknown field "spec.foo"``; ``.spec.foo: field not declared in schema`` for
  server-side apply), ``Warn`` (the default) answers with ``Warning`` headers; custom resources are checked
  against their schema (types, enums, bounds, lengths, patterns, required; unchanged invalid fields are
  let through, as with validation ratcheting) and refused with 422 Invalid and one cause per violation.

Not emulated (gaps): authentication/authorization/admission (any token is accepted); CEL rules
(``x-kubernetes-validations``) and string formats; value validation of built-in kinds (only unknown fields
are reported; validate with ``kubernetes-validate`` instead); built-in defaulting (e.g. Deployment
strategy; only a Job's ``selector`` and its pod template labels are set) and controllers (nothing creates ReplicaSets or Pods, nothing sets Job or Deployment status:
tests and the local kubelet do); graceful pod deletion (pods go at once); ``limit``/``continue``
pagination (the full list is returned, which the API allows); server-side apply conflicts between field
managers (every apply forces); ``/openapi/v2`` (kubectl does without it); the ``scale``, ``exec``,
``attach``, ``portforward`` and other subresources (404); conversion between served versions (each
group/version is its own store); namespace termination phase.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import kmock
import yaml

from kondense.localcluster.emulator import NAMESPACES, KubernetesAPIEmulator

__all__ = ["LocalAPIServer"]

KUBECONFIG_NAME = "kondense-local"
# kmock's bundle comes from a cluster with Gateway API installed; we serve HTTPRoute as the CRD it is.
_GATEWAY_GROUP = "gateway.networking.k8s.io"

HTTPROUTE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"httproutes.{_GATEWAY_GROUP}"},
    "spec": {
        "group": _GATEWAY_GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": "HTTPRoute",
            "listKind": "HTTPRouteList",
            "plural": "httproutes",
            "singular": "httproute",
            "categories": ["gateway-api"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                # The upstream schema is thousands of lines; spec and status are kept as written.
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


class LocalAPIServer:
    """The emulated Kubernetes API on a loopback port, served from a background thread.

    ``start()``/``stop()`` or use it as a context manager. ``emulator`` is the kmock handler (its
    ``objects`` and DSL are usable from coroutines run with :meth:`call`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        namespaces: tuple[str, ...] = ("default", "kube-system"),
        bookmark_interval: float = 5.0,
        pod_logs_dir: Path | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._namespaces = namespaces
        self.emulator = KubernetesAPIEmulator(bookmark_interval=bookmark_interval, pod_logs_dir=pod_logs_dir)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._url: str | None = None
        self._failure: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        if self._thread is not None or self._url is not None:
            raise RuntimeError("a LocalAPIServer starts once; make a new one to start again")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="kondense-apiserver", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the local API server did not start within {timeout}s")
        if self._failure is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("the local API server failed to start") from self._failure
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the local API server did not stop within {timeout}s")
        self._thread = None
        self._loop = None
        if self._failure is not None:
            raise RuntimeError("the local API server failed while serving") from self._failure

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # reported to the caller of start()/stop()
            self._failure = exc
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        emulator = self.emulator
        # kmock's bundled discovery data (built-in resources); load_bundled() reads it with
        # importlib.resources.read_binary, deprecated on Python 3.11-3.12 (and restored in 3.13).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*read_binary")
            emulator.resources.load_bundled()
        for resource in [resource for resource in emulator.resources if resource.group == _GATEWAY_GROUP]:
            del emulator.resources[resource]
        for name in self._namespaces:
            await emulator.create(
                NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        await emulator.create(
            kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"), HTTPROUTE_CRD
        )
        async with emulator, kmock.Server(emulator, host=self._host, port=self._port) as server:
            self._url = str(server.url).rstrip("/")
            ready.set()
            await self._stopping.wait()
            await emulator.close_watches()

    # ---- use -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None or self._thread is None:
            raise RuntimeError("the local API server is not running")
        return self._url

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine (e.g. on ``self.emulator``) in the server's event loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the local API server is not running")
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def dump(self) -> list[dict[str, Any]]:
        """Every object in the store (deep copies), in creation order."""
        objects: list[dict[str, Any]] = self.call(self.emulator.snapshot())
        return objects

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": KUBECONFIG_NAME, "cluster": {"server": self.url}}],
            # The emulator accepts any credentials; a token keeps clients that insist on one happy.
            "users": [{"name": KUBECONFIG_NAME, "user": {"token": "kondense-local"}}],
            "contexts": [
                {
                    "name": KUBECONFIG_NAME,
                    "context": {"cluster": KUBECONFIG_NAME, "user": KUBECONFIG_NAME, "namespace": namespace},
                }
            ],
            "current-context": KUBECONFIG_NAME,
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (for ``KUBECONFIG=path``/``load_kube_config(path)``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return path
