"""kmock's KubernetesEmulator with the object semantics of a real API server (see the package docstring).

kmock keeps objects as plain dicts merged on PATCH. Here every write goes through the rules the real API
server applies — identity and versioning metadata, optimistic concurrency, the status subresource, the
three patch types, finalizers, owner-reference garbage collection, custom resource definitions — and every
change is logged with its resourceVersion so watches can resume where they left off. Storage stays kmock's
``ObjectsArray`` (each object with its version history), so kmock-style assertions keep working, and kmock's
DSL still takes precedence for failure injection (``emulator['get', resource(...)] << 500``).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import re
import secrets
import string
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp.web
import attrs
import kmock
import yaml

from kondense.localcluster import (
    discovery,
    namespacepaths,
    openapi,
    patching,
    protobuf,
    selectors,
    structural,
    tables,
    validation,
)

CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = kmock.resource("", "v1", "pods")
JOBS = kmock.resource("batch", "v1", "jobs")

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FOREGROUND_FINALIZER = "foregroundDeletion"
_NAME_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


# How kmock keys its objects (kmock.ObjectsArray): (resource, namespace or None, name).
ArrayKey = tuple[kmock.resource, str | None, str]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    # Never empty: kmock fills empty details with the server-side traceback.
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details=details or {"causes": []}
    )


def _not_found(resource: kmock.resource, name: str | None) -> kmock.KubernetesError:
    what = f"{resource.plural}.{resource.group}" if resource.group else f"{resource.plural}"
    return _error(
        404, "NotFound", f'{what} "{name}" not found', name=name, group=resource.group, kind=resource.plural
    )


@dataclass(frozen=True)
class WatchEvent:
    """One logged change: what a watcher from an older resourceVersion must still be told."""

    revision: int
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]
    previous: dict[str, Any] | None  # the state before, to turn MODIFIED into ADDED/DELETED for selectors


_WATCH_CLOSED = object()  # put into watcher queues when the server shuts down


@attrs.define(kw_only=True)
class KubernetesAPIEmulator(kmock.KubernetesEmulator):
    """A kmock KubernetesEmulator whose writes follow the real API server's rules."""

    bookmark_interval: float = 5.0  # seconds of quiet before a BOOKMARK on watches that allow them
    # Where the kubelet writes container output (``<namespace>_<pod>_<container>.log``): pods/<name>/log
    pod_logs_dir: Path | None = None
    # Refuse custom resources their CRD schema rejects (422), as a real API server does. Off: a cluster
    # where such objects exist anyway (a CRD edited or installed without its schema), for defence tests.
    validate_custom_resources: bool = True
    events_per_resource: int = 10_000  # watch events kept per resource; older resourceVersions get 410 Gone
    versions_per_object: int = 50  # object history kept in ``objects[...].history``
    # kmock matches each request against its whole request log (per reaction), so the log is the cost of
    # every request: keep it short (the demo serves requests for hours; nothing here reads old entries).
    requests_kept: int = 64
    deleted_kept: int = 1_000  # deleted objects whose history stays in ``objects`` (jobs and pods churn)

    _revision: int = attrs.field(default=0, init=False)
    _events: dict[kmock.resource, collections.deque[WatchEvent]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.deque), init=False
    )
    _compacted: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    _watchers: dict[kmock.resource, set[asyncio.Queue[Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False
    )
    _uids: dict[str, ArrayKey] = attrs.field(factory=dict, init=False)
    _crd_schemas: dict[kmock.resource, Mapping[str, Any] | None] = attrs.field(factory=dict, init=False)
    _crd_columns: dict[kmock.resource, list[Any]] = attrs.field(factory=dict, init=False)
    _openapi: dict[tuple[str, str], tuple[bytes, str] | None] = attrs.field(factory=dict, init=False)
    _write_results: dict[kmock.Request, Any] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    # How the write being served treats unknown fields, and the warnings it answers with (set per write)
    _field_validation: str = attrs.field(default="Ignore", init=False)
    _server_side_apply: bool = attrs.field(default=False, init=False)
    _warnings: list[str] = attrs.field(factory=list, init=False)
    _deleted_keys: collections.deque[ArrayKey] = attrs.field(factory=collections.deque, init=False)

    # Which status a created object starts with, per resource (the API server's PrepareForCreate).
    initial_status: ClassVar[dict[kmock.resource, dict[str, Any]]] = {
        PODS: {"phase": "Pending"},
        NAMESPACES: {"phase": "Active"},
    }

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock routes PUT and collection DELETE to no action; our writes are computed in _handle().
        self.fallback[self._has_write_result] << self._serve_write_result
        # The official client asks for /version/, /api/ and /apis/ with a trailing slash; so does kubectl.
        self.fallback["get /version/"] << self._serve_server_version
        self.fallback["get /api/"] << self._serve_api
        self.fallback["get /apis/"] << self._serve_apis
        self.fallback["get /openapi/v3"] << self._serve_openapi_root
        self.fallback["get", re.compile(r"/openapi/v3/(?:api/[^/]+|apis/[^/]+/[^/]+)")] << self._serve_openapi

    # ---- request plumbing ------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 misparses the paths of Namespace objects: they reach it under an alias path and
        # are restored in _handle() (see kondense.localcluster.namespacepaths for the upstream fix).
        if (alias := namespacepaths.rename(raw_request.rel_url)) is not None:
            raw_request = raw_request.clone(rel_url=alias)
        if (readable := protobuf.disarm(raw_request)) is not None:  # typed clients' protobuf bodies
            raw_request = readable
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> Any:
        if (restored := protobuf.restore(namespacepaths.restore(request))) is not request:
            # kmock's views match a request by identity in the handler's request log, where __call__
            # has just appended it (no await in between): log the restored request in its place.
            assert self._requests[-1] is request
            self._requests[-1] = request = restored
        self._trim_request_log()
        resource = request.resource
        if resource is not None and resource.plural is not None and request.method.value in _WRITE_METHODS:
            async with self._lock:
                self._write_results[request] = self._write(request)
        try:
            # Skip KubernetesEmulator._handle (its naive dict-merging writes are replaced by _write above)
            # but keep kmock's dispatch: DSL reactions first, then the fallbacks below.
            return await kmock.RawHandler._handle(self, request)
        finally:
            self._write_results.pop(request, None)

    def _trim_request_log(self) -> None:
        if len(self._requests) > 2 * self.requests_kept:
            del self._requests[: -self.requests_kept]
            for payload in self._payloads:
                del payload._requests[: -self.requests_kept]
            for errors in self._errors:
                del errors[: -self.requests_kept]

    def _has_write_result(self, request: kmock.Request) -> bool:
        return request in self._write_results

    async def _serve_write_result(self, request: kmock.Request) -> Any:
        return self._write_results[request]

    _serve_create = _serve_update = _serve_delete = _serve_write_result

    # ---- discovery -------------------------------------------------------------------------------------

    def _registry(self) -> list[tuple[kmock.resource, kmock.ResourceInfo]]:
        return [(resource, self.resources[resource]) for resource in self.resources]

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        return discovery.server_version()

    def _discovery(self, request: kmock.Request, *, legacy: bool) -> Any:
        wanted = discovery.wants_aggregated(discovery.header(request.headers, "accept"))
        if wanted is None:
            return None
        payload = discovery.aggregated(self._registry(), legacy=legacy, media_type=wanted)
        return _reply(payload, content_type=wanted)

    async def _serve_api(self, request: kmock.Request) -> Any:
        return self._discovery(request, legacy=True) or _reply(discovery.api_versions())

    async def _serve_apis(self, request: kmock.Request) -> Any:
        return self._discovery(request, legacy=False) or _reply(discovery.api_group_list(self._registry()))

    async def _serve_group(self, request: kmock.Request) -> Any:
        group = request.resource.group if request.resource is not None else None
        found = discovery.api_group(self._registry(), group or "")
        if found is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return found

    async def _serve_version(self, request: kmock.Request) -> Any:
        resource = request.resource
        assert resource is not None  # kmock routes /api/<v> and /apis/<g>/<v> here
        found = discovery.api_resource_list(self._registry(), resource.group or "", resource.version or "")
        if found is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return found

    def _openapi_document(self, group: str, version: str) -> tuple[bytes, str] | None:
        if (group, version) not in self._openapi:
            entries = [
                (resource.plural, info, self._crd_schemas.get(resource), resource in self._crd_schemas)
                for resource, info in self._registry()
                if resource.group == group and resource.version == version and resource.plural is not None
            ]
            document = openapi.group_version_document(group, version, entries)
            self._openapi[(group, version)] = None if document is None else openapi.document_bytes(document)
        return self._openapi[(group, version)]

    async def _serve_openapi_root(self, request: kmock.Request) -> Any:
        group_versions = sorted(
            {(resource.group or "", resource.version or "") for resource, _ in self._registry()}
        )
        paths = {}
        for group, version in group_versions:
            found = self._openapi_document(group, version)
            if found is not None:
                path = openapi.api_path(group, version)
                paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={found[1]}"}
        return _reply({"paths": paths})

    async def _serve_openapi(self, request: kmock.Request) -> Any:
        parts = request.url.path.split("/")[3:]  # /openapi/v3/api/v1 or /openapi/v3/apis/<group>/<version>
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        found = self._openapi_document(group, version)
        if found is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return _reply(found[0])

    # ---- reads -----------------------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        resource, info = self._served(request.resource)
        if resource == PODS and request.subresource == "log":
            return await self._serve_log(request)
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"the subresource {request.subresource!r} is not emulated")
        namespace = request.namespace if info.namespaced else None
        assert request.name is not None  # FETCH is a GET with a name
        async with self._lock:
            current = self._current((resource, namespace, request.name))
        if current is None:
            raise _not_found(resource, request.name)
        if self._wants_table(request):
            return _reply(self._table(request, resource, [current], current["metadata"]["resourceVersion"]))
        return _reply(current)

    async def _serve_log(self, request: kmock.Request) -> Any:
        """``pods/<name>/log``: a container's output as the kubelet captured it (``container``,
        ``tailLines``, ``limitBytes``, ``follow`` until the pod ends or goes)."""
        namespace, name = request.namespace, request.name
        assert name is not None
        key: ArrayKey = (PODS, namespace, name)
        async with self._lock:
            pod = self._current(key)
        if pod is None:
            raise _not_found(PODS, name)
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in spec.get("containers") or []]
        every = names + [c.get("name") for c in spec.get("initContainers") or []]
        container = request.params.get("container")
        if not container:
            if len(names) != 1:
                raise _error(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(map(str, names))}]",
                )
            container = names[0]
        if container not in every:
            raise _error(400, "BadRequest", f"container {container} is not valid for pod {name}")
        path = self.pod_logs_dir / f"{namespace}_{name}_{container}.log" if self.pod_logs_dir else None
        if path is None or not path.exists():
            raise _error(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            )
        try:
            tail = int(request.params["tailLines"]) if "tailLines" in request.params else None
            limit = int(request.params["limitBytes"]) if "limitBytes" in request.params else None
        except ValueError as exc:
            raise _error(400, "BadRequest", f"invalid log parameter: {exc}") from exc
        data = path.read_bytes()
        offset = len(data)
        if tail is not None:
            lines = re.findall(rb"[^\n]*\n|[^\n]+$", data)  # \r (progress bars) ends no line
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        if limit is not None:
            data = data[:limit]
        if request.params.get("follow") != "true":
            return _reply(data, content_type="text/plain")
        return _reply(self._follow(key, path, data, offset), content_type="text/plain")

    async def _follow(self, key: ArrayKey, path: Path, first: bytes, offset: int) -> AsyncIterator[bytes]:
        yield first
        while not self._closed:
            await asyncio.sleep(0.2)
            with path.open("rb") as handle:
                handle.seek(offset)
                more = handle.read()
            offset += len(more)
            if more:
                yield more
            async with self._lock:
                pod = self._current(key)
            if pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return

    async def _serve_list(self, request: kmock.Request) -> Any:
        resource, info = self._served(request.resource)
        label_selector, field_selector = self._selectors(request)
        async with self._lock:
            items = [
                obj
                for obj in self._listing(resource, request.namespace if info.namespaced else None)
                if label_selector.matches(obj["metadata"].get("labels")) and field_selector.matches(obj)
            ]
            revision = self._revision
        if self._wants_table(request):
            return _reply(self._table(request, resource, items, str(revision)))
        # The API server may ignore `limit` (documented); it then answers everything with no `continue`.
        return _reply(
            {
                "apiVersion": self._api_version(resource),
                "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(revision)},
                "items": items,
            }
        )

    # kmock declares a stream here; a Response carrying the stream is what kmock renders as well
    async def _serve_watch(self, request: kmock.Request) -> Any:  # type: ignore[override]
        self._served(request.resource)
        # kubectl decodes a watch by its content type (an octet stream it refuses)
        return _reply(self._watch_stream(request))

    async def _watch_stream(self, request: kmock.Request) -> AsyncIterator[Any]:
        resource, _ = self._served(request.resource)
        as_table = self._wants_table(request)
        async for event in self._watch_events(request):
            if as_table and isinstance(event, dict) and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                obj = event["object"]
                event = {
                    "type": event["type"],
                    "object": self._table(request, resource, [obj], obj["metadata"]["resourceVersion"]),
                }
            yield event

    def _wants_table(self, request: kmock.Request) -> bool:
        return tables.wants_table(discovery.header(request.headers, "accept"))

    def _table(
        self, request: kmock.Request, resource: kmock.resource, objects: list[dict[str, Any]], version: str
    ) -> dict[str, Any]:
        assert resource.plural is not None
        return tables.table(
            objects,
            group=resource.group or "",
            plural=resource.plural,
            printer_columns=self._crd_columns.get(resource),
            custom=resource in self._crd_schemas,
            resource_version=version,
            include_object=request.params.get("includeObject") or "Metadata",
        )

    async def _watch_events(self, request: kmock.Request) -> AsyncIterator[Any]:
        resource, info = self._served(request.resource)
        label_selector, field_selector = self._selectors(request)
        namespace = request.namespace if info.namespaced else None
        params = request.params
        since = params.get("resourceVersion") or None
        bookmarks = params.get("allowWatchBookmarks") == "true"
        initial_events = params.get("sendInitialEvents") == "true"
        try:
            timeout = float(params["timeoutSeconds"]) if "timeoutSeconds" in params else None
            since_revision = int(since) if since is not None else 0
        except ValueError as exc:
            raise _error(400, "BadRequest", f"invalid watch parameter: {exc}") from exc

        def visible(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            meta = obj["metadata"]
            return bool(
                (namespace is None or meta.get("namespace") == namespace)
                and (request.name is None or meta.get("name") == request.name)
                and label_selector.matches(meta.get("labels"))
                and field_selector.matches(obj)
            )

        queue: asyncio.Queue[Any] = asyncio.Queue()
        async with self._lock:
            if since_revision and since_revision < self._compacted.get(resource, 0):
                replay: list[WatchEvent] = []
                expired = True
            elif since is None or since_revision == 0 or initial_events:
                # No resourceVersion (or "0"): synthetic ADDED events for the current state, then changes.
                expired = False
                replay = [
                    WatchEvent(int(obj["metadata"]["resourceVersion"]), "ADDED", obj, None)
                    for obj in self._listing(resource, namespace)
                ]
            else:
                expired = False
                replay = [event for event in self._events[resource] if event.revision > since_revision]
            self._watchers[resource].add(queue)
            if self._closed:
                queue.put_nowait(_WATCH_CLOSED)
        try:
            yield b""  # commit the 200 and the headers; the stream stays open until a timeout or a close
            if expired:
                yield {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f"too old resource version: {since_revision} "
                        f"({self._compacted[resource]})",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
                return
            for event in replay:
                if (translated := self._translate(event, visible)) is not None:
                    yield translated
            if initial_events and bookmarks:
                yield self._bookmark(resource, info.kind, initial_events_end=True)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout is not None else None
            while True:
                waits = [self.bookmark_interval] if bookmarks else []
                if deadline is not None:
                    waits.append(deadline - loop.time())
                try:
                    async with asyncio.timeout(max(0.0, min(waits)) if waits else None):
                        item = await queue.get()
                except TimeoutError:
                    if not bookmarks or (deadline is not None and loop.time() >= deadline):
                        return  # timeoutSeconds is over: the server ends the stream, the client reconnects
                    yield self._bookmark(resource, info.kind)
                    continue
                if item is _WATCH_CLOSED:
                    return
                if (translated := self._translate(item, visible)) is not None:
                    yield translated
        finally:
            self._watchers[resource].discard(queue)

    def _translate(self, event: WatchEvent, visible: Any) -> dict[str, Any] | None:
        """The event as this watcher sees it: with a selector, objects enter (ADDED) and leave (DELETED)."""
        now_visible = visible(event.object)
        if event.type == "MODIFIED":
            was_visible = visible(event.previous)
            if now_visible and not was_visible:
                return {"type": "ADDED", "object": event.object}
            if was_visible and not now_visible:
                return {"type": "DELETED", "object": event.object}
        return {"type": event.type, "object": event.object} if now_visible else None

    def _bookmark(
        self, resource: kmock.resource, kind: str | None, *, initial_events_end: bool = False
    ) -> Any:
        metadata: dict[str, Any] = {"resourceVersion": str(self._revision)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": kind, "apiVersion": self._api_version(resource), "metadata": metadata},
        }

    async def close_watches(self) -> None:
        """End every open watch stream, and any opened later (so the HTTP server stops without waiting)."""
        async with self._lock:
            self._closed = True
            for queues in self._watchers.values():
                for queue in queues:
                    queue.put_nowait(_WATCH_CLOSED)

    # ---- the store -------------------------------------------------------------------------------------

    def _served(self, resource: kmock.resource | None) -> tuple[kmock.resource, kmock.ResourceInfo]:
        if resource is None or resource.plural is None or resource not in self.resources:
            raise _error(404, "NotFound", f"the server could not find the requested resource ({resource})")
        return resource, self.resources[resource]

    def _api_version(self, resource: kmock.resource) -> str:
        return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)

    def _selectors(self, request: kmock.Request) -> tuple[selectors.LabelSelector, selectors.FieldSelector]:
        assert request.resource is not None and request.resource.plural is not None
        try:
            return (
                selectors.parse_label_selector(request.params.get("labelSelector")),
                selectors.parse_field_selector(
                    request.params.get("fieldSelector"),
                    group=request.resource.group or "",
                    plural=request.resource.plural,
                ),
            )
        except selectors.SelectorError as exc:
            raise _error(400, "BadRequest", str(exc)) from exc

    def _current(self, key: ArrayKey) -> dict[str, Any] | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _listing(self, resource: kmock.resource, namespace: str | None) -> list[dict[str, Any]]:
        found = [
            (key[1] or "", key[2], obj.raw)
            for key, obj in self._objects.items()
            if key[0] == resource and not obj.deleted and (namespace is None or key[1] == namespace)
        ]
        return [obj for _, _, obj in sorted(found, key=lambda entry: (entry[0], entry[1]))]

    async def snapshot(self) -> list[dict[str, Any]]:
        """Every existing object, in the order they were first created."""
        async with self._lock:
            return [copy.deepcopy(obj.raw) for obj in self._objects.values() if not obj.deleted]

    def _commit(
        self, key: ArrayKey, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        """Store a new version (or the deletion) of an object and tell the watchers, under one revision."""
        resource = key[0]
        if event_type == "DELETED":
            self._objects[key].delete()
            self._uids.pop(obj["metadata"]["uid"], None)
            self._deleted_keys.append(key)
            while len(self._deleted_keys) > self.deleted_kept:
                oldest = self._deleted_keys.popleft()
                if oldest in self._objects and self._objects[oldest].deleted:  # unless created again since
                    del self._objects[oldest]
        elif key in self._objects:
            history = self._objects[key].history
            history.append(obj)
            if len(history) > self.versions_per_object:
                del history[: -self.versions_per_object]
        else:
            self._objects[key] = obj
        if event_type == "ADDED":
            self._uids[obj["metadata"]["uid"]] = key
        event = WatchEvent(self._revision, event_type, obj, previous)
        log = self._events[resource]
        if len(log) >= self.events_per_resource:
            self._compacted[resource] = log.popleft().revision
        log.append(event)
        for queue in self._watchers[resource]:
            queue.put_nowait(event)

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    # ---- writes ----------------------------------------------------------------------------------------

    def _write(self, request: kmock.Request) -> Any:
        mode = request.params.get("fieldValidation") or "Warn"  # the API server's default is Warn
        if mode not in ("Ignore", "Warn", "Strict"):
            raise _error(
                400,
                "BadRequest",
                f'fieldValidation: Unsupported value: "{mode}": supported values: "Ignore", "Strict", "Warn"',
            )
        self._field_validation, self._warnings = mode, []
        try:
            result = self._write_unchecked(request)
        finally:
            self._field_validation, self._server_side_apply = "Ignore", False
        warning = ", ".join(f"299 - {json.dumps(text)}" for text in self._warnings) or None
        if isinstance(result, kmock.Response):
            return _reply(result.payload, status=result.status or 200, warning=warning)
        return _reply(result, warning=warning)

    def _write_unchecked(self, request: kmock.Request) -> Any:
        resource, info = self._served(request.resource)
        namespace = request.namespace if info.namespaced else None
        if info.namespaced and request.namespace is None and request.method.value != "DELETE":
            raise _error(404, "NotFound", f"{resource.plural} is namespaced: use /namespaces/<namespace>/...")
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"the subresource {request.subresource!r} is not emulated")
        dry_run = request.params.get("dryRun") == "All"
        match request.method.value, request.name:
            case "POST", None:
                return kmock.Response(
                    status=201, payload=self._create(resource, namespace, request.data, dry_run)
                )
            case "PUT", str(name):
                return self._replace((resource, namespace, name), request.data, request.subresource, dry_run)
            case "PATCH", str(name):
                content_type = discovery.header(request.headers, "content-type")
                if content_type.split(";")[0].strip().lower() == "application/apply-patch+yaml":
                    return self._server_apply(resource, namespace, name, request, dry_run)
                return self._patch(
                    (resource, namespace, name), request.data, content_type, request.subresource, dry_run
                )
            case "DELETE", str(name):
                return self._delete((resource, namespace, name), self._delete_options(request), dry_run)
            case "DELETE", None:
                return self._delete_collection(resource, namespace, request, dry_run)
        raise _error(405, "MethodNotAllowed", f"{request.method.value} is not allowed on {request.url.path}")

    async def create(self, resource: kmock.resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object without HTTP (e.g. to seed the store), by the same rules as a POST."""
        _, info = self._served(resource)
        namespace = obj.get("metadata", {}).get("namespace") if info.namespaced else None
        async with self._lock:
            return self._create(resource, namespace, obj, dry_run=False)

    def _create(
        self,
        resource: kmock.resource,
        namespace: str | None,
        body: Any,
        dry_run: bool,
        managed_fields: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        _, info = self._served(resource)
        if not isinstance(body, Mapping):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, namespace) and info.namespaced:
            raise _error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _error(
                    422,
                    "Invalid",
                    f"{info.kind}.metadata.name: Required value: name or generateName is required",
                )
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5)
            )
        name = meta["name"]
        if not isinstance(name, str) or len(name) > 253 or _SUBDOMAIN.fullmatch(name) is None:
            cause = validation.Cause(
                "FieldValueInvalid",
                "metadata.name",
                f"Invalid value: {json.dumps(name)}: a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                f"(e.g. 'example.com', regex used for validation is '{_SUBDOMAIN.pattern}')",
            )
            raise self._invalid(resource, str(name), [cause])
        if info.namespaced:
            assert namespace is not None
            if self._current((NAMESPACES, None, namespace)) is None:
                raise _error(
                    404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        key: ArrayKey = (resource, namespace, name)
        if self._current(key) is not None:
            raise _error(
                409,
                "AlreadyExists",
                f'{resource.plural} "{name}" already exists',
                name=name,
                kind=resource.plural,
            )
        obj["apiVersion"] = self._api_version(resource)
        obj["kind"] = info.kind
        if "status" in info.subresources:  # status is written through /status only
            obj.pop("status", None)
            if resource not in self._crd_schemas:  # built-ins start from their zero status, CRs from none
                obj["status"] = copy.deepcopy(self.initial_status.get(resource, {}))
        if resource == CRDS:
            self._check_crd(obj)
            obj["status"] = self._crd_status(obj)
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(transient, None)
        if managed_fields:
            meta["managedFields"] = managed_fields
        obj = self._apply_schema(resource, obj, None)
        meta = obj["metadata"]
        self._check_finalizers(meta)
        meta["uid"] = str(uuid.uuid4())
        if resource == JOBS:
            _default_job_selector(obj)
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self._revision)
            return obj
        meta["resourceVersion"] = self._next_revision()
        self._commit(key, "ADDED", obj, None)
        if resource == CRDS:
            self._register_crd(obj)
        return obj

    def _replace(self, key: ArrayKey, body: Any, subresource: str | None, dry_run: bool) -> dict[str, Any]:
        resource, _, name = key
        current = self._current(key)
        if current is None:
            raise _not_found(resource, name)
        if not isinstance(body, Mapping):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise _error(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the URL ({name})",
            )
        if meta.get("resourceVersion") and meta["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise self._conflict(resource, name)
        return self._update(key, current, copy.deepcopy(dict(body)), subresource, dry_run)

    def _patch(
        self, key: ArrayKey, patch: Any, content_type: str, subresource: str | None, dry_run: bool
    ) -> dict[str, Any]:
        resource, _, name = key
        current = self._current(key)
        if current is None:
            raise _not_found(resource, name)
        media_type = content_type.split(";")[0].strip().lower()
        try:
            if media_type == "application/merge-patch+json":
                patched = patching.merge_patch(current, patch)
            elif media_type == "application/json-patch+json":
                patched = patching.json_patch(current, patch)
            elif media_type == "application/strategic-merge-patch+json":
                if resource in self._crd_schemas or not patching.has_strategic_schema(
                    current["apiVersion"], current["kind"]
                ):
                    raise _error(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: "
                        "application/json-patch+json, application/merge-patch+json, "
                        "application/apply-patch+yaml",
                    )
                patched = patching.strategic_merge_patch(
                    current, patch, api_version=current["apiVersion"], kind=current["kind"]
                )
            else:
                raise _error(
                    415,
                    "UnsupportedMediaType",
                    f"patch media type {media_type!r} is not supported by the emulator",
                )
        except patching.PatchError as exc:
            raise _error(422, "Invalid", str(exc)) from exc
        if not isinstance(patched, dict):
            raise _error(422, "Invalid", "the patch did not produce an object")
        wanted_version = (
            (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, Mapping) else None
        )
        if wanted_version and wanted_version != current["metadata"]["resourceVersion"]:
            raise self._conflict(resource, name)
        return self._update(key, current, patched, subresource, dry_run)

    def _server_apply(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        request: kmock.Request,
        dry_run: bool,
    ) -> Any:
        """Server-side apply: the applied configuration merged in, the fields this manager applied last
        time and no longer applies removed, its field set recorded in ``managedFields``. Conflicts with
        other managers are not detected (every apply behaves as ``--force-conflicts``)."""
        self._server_side_apply = True
        body = request.data
        if not isinstance(body, Mapping):
            try:
                body = yaml.safe_load(request.text)
            except yaml.YAMLError as exc:
                raise _error(400, "BadRequest", f"error decoding YAML: {exc}") from exc
        if not isinstance(body, Mapping):
            raise _error(400, "BadRequest", "the applied configuration must be an object")
        manager = request.params.get("fieldManager")
        if not manager:
            raise _error(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                "is required for apply patch",
            )
        applied = copy.deepcopy(dict(body))
        meta = applied.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise _error(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the URL ({name})",
            )
        meta["name"] = name
        fields = _field_paths({k: v for k, v in applied.items() if k not in ("apiVersion", "kind")})
        entry = {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": self._api_version(resource),
            "time": _now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": _fields_v1(fields),
            **({"subresource": request.subresource} if request.subresource else {}),
        }
        key: ArrayKey = (resource, namespace, name)
        current = self._current(key)
        if current is None:
            if request.subresource is not None:
                raise _not_found(resource, name)
            return kmock.Response(
                status=201,
                payload=self._create(resource, namespace, applied, dry_run, managed_fields=[entry]),
            )
        entries = list(current["metadata"].get("managedFields") or [])
        mine = [
            e
            for e in entries
            if e.get("manager") == manager
            and e.get("operation") == "Apply"
            and e.get("subresource") == request.subresource
        ]
        if resource not in self._crd_schemas and patching.has_strategic_schema(
            current["apiVersion"], current["kind"]
        ):
            merged = patching.strategic_merge_patch(
                current, applied, api_version=current["apiVersion"], kind=current["kind"]
            )
        else:
            merged = patching.merge_patch(current, applied)
        merged = copy.deepcopy(merged)  # the patch functions share untouched branches with the stored object
        for previous in mine:  # what this manager applied before and applies no more goes
            for path in sorted(_paths_of_fields_v1(previous.get("fieldsV1") or {}) - fields, key=len):
                if not any(kept[: len(path)] == path for kept in fields):
                    _remove_path(merged, path)
        merged.setdefault("metadata", {})["managedFields"] = [e for e in entries if e not in mine] + [entry]
        return self._update(key, current, merged, request.subresource, dry_run)

    def _conflict(self, resource: kmock.resource, name: str) -> kmock.KubernetesError:
        return _error(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            name=name,
            kind=resource.plural,
        )

    def _update(
        self,
        key: ArrayKey,
        current: dict[str, Any],
        new: dict[str, Any],
        subresource: str | None,
        dry_run: bool,
    ) -> dict[str, Any]:
        resource = key[0]
        info = self.resources[resource]
        new = copy.deepcopy(new)  # patches share unchanged branches with the stored version
        if subresource == "status":  # only status changes through /status
            status = new.get("status")
            new = copy.deepcopy(current)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        elif "status" in info.subresources:  # and never through the main endpoint
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        if resource == CRDS and subresource is None:
            self._check_crd(new)
            new["status"] = self._crd_status(new)
        new["apiVersion"] = current["apiVersion"]
        new["kind"] = current["kind"]
        new = self._apply_schema(resource, new, current)
        meta = new.setdefault("metadata", {})
        for immutable in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if immutable in current["metadata"]:
                meta[immutable] = current["metadata"][immutable]
            else:
                meta.pop(immutable, None)
        meta.pop("selfLink", None)
        if current["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(current["metadata"].get("finalizers") or [])
            if added:
                raise _error(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being "
                    f"deleted, found new finalizers {sorted(added)}",
                )
        self._check_finalizers(meta)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        meta["generation"] = current["metadata"].get("generation", 1)
        if new == current:  # a no-op write keeps the resourceVersion and tells no watcher
            return current
        if _spec_of(new) != _spec_of(current):
            meta["generation"] += 1
        if dry_run:
            return new
        meta["resourceVersion"] = self._next_revision()
        self._commit(key, "MODIFIED", new, current)
        if resource == CRDS:
            self._unregister_crd(current)
            self._register_crd(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key)
        else:
            self._finish_foreground_deletions()
        return new

    def _check_finalizers(self, meta: Mapping[str, Any]) -> None:
        finalizers = meta.get("finalizers") or []
        if not isinstance(finalizers, list) or not all(isinstance(item, str) and item for item in finalizers):
            raise _error(
                422, "Invalid", f"metadata.finalizers must be a list of non-empty strings: {finalizers!r}"
            )

    # ---- deletion and garbage collection ----------------------------------------------------------------

    def _delete_options(self, request: kmock.Request) -> dict[str, Any]:
        options = dict(request.data) if isinstance(request.data, Mapping) else {}
        for param in ("propagationPolicy", "gracePeriodSeconds"):
            if param in request.params:
                options.setdefault(param, request.params[param])
        if options.get("orphanDependents") is True:  # the deprecated spelling of Orphan
            options.setdefault("propagationPolicy", "Orphan")
        return options

    def _delete(self, key: ArrayKey, options: Mapping[str, Any], dry_run: bool) -> Any:
        resource, _, name = key
        current = self._current(key)
        if current is None:
            raise _not_found(resource, name)
        preconditions = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) and preconditions[field] != current["metadata"].get(field):
                raise _error(
                    409,
                    "Conflict",
                    f"Precondition failed: {field}: {preconditions[field]}, "
                    f"object {field}: {current['metadata'].get(field)}",
                    name=name,
                    kind=resource.plural,
                )
        policy = options.get("propagationPolicy") or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise _error(422, "Invalid", f"propagationPolicy: Unsupported value: {policy!r}")
        if dry_run:
            return current
        uid = current["metadata"]["uid"]
        if policy == "Orphan":
            for dependent_key in self._dependents(uid):
                self._drop_owner_reference(dependent_key, uid)
        finalizers = list(current["metadata"].get("finalizers") or [])
        if policy == "Foreground" and _FOREGROUND_FINALIZER not in finalizers and self._dependents(uid):
            finalizers.append(_FOREGROUND_FINALIZER)
        if not finalizers:
            self._remove(key)
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": uid},
            }
        if current["metadata"].get("deletionTimestamp") and finalizers == current["metadata"].get(
            "finalizers"
        ):
            return current  # already being deleted; a repeated DELETE changes nothing
        marked = copy.deepcopy(current)
        marked["metadata"]["finalizers"] = finalizers
        marked["metadata"].setdefault("deletionTimestamp", _now())
        marked["metadata"].setdefault("deletionGracePeriodSeconds", 0)
        marked["metadata"]["resourceVersion"] = self._next_revision()
        self._commit(key, "MODIFIED", marked, current)
        if policy == "Foreground":
            for dependent_key in self._dependents(uid):
                self._delete_if_present(dependent_key, "Foreground")
            self._finish_foreground_deletions()
        return marked

    def _delete_collection(
        self, resource: kmock.resource, namespace: str | None, request: kmock.Request, dry_run: bool
    ) -> Any:
        label_selector, field_selector = self._selectors(request)
        options = self._delete_options(request)
        deleted = []
        for obj in self._listing(resource, namespace):
            if label_selector.matches(obj["metadata"].get("labels")) and field_selector.matches(obj):
                key: ArrayKey = (resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                if self._current(key) is not None:  # garbage collection may have taken it meanwhile
                    self._delete(key, options, dry_run)
                    deleted.append(obj)
        info = self.resources[resource]
        return {
            "apiVersion": self._api_version(resource),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._revision)},
            "items": deleted,
        }

    def _delete_if_present(self, key: ArrayKey, policy: str) -> None:
        if self._current(key) is not None:
            self._delete(key, {"propagationPolicy": policy}, dry_run=False)

    def _remove(self, key: ArrayKey) -> None:
        """Take an object out of the store for good, then collect what it owned or contained."""
        current = self._current(key)
        if current is None:
            return
        final = copy.deepcopy(current)
        final["metadata"]["resourceVersion"] = self._next_revision()
        self._commit(key, "DELETED", final, current)
        resource = key[0]
        if resource == CRDS:
            self._unregister_crd(current, remove_objects=True)
        if resource == NAMESPACES:
            for other_key in [k for k, obj in self._objects.items() if k[1] == key[2] and not obj.deleted]:
                self._delete_if_present(other_key, "Background")
        for dependent_key in self._dependents(current["metadata"]["uid"]):
            dependent = self._current(dependent_key)
            if dependent is not None and not any(
                ref.get("uid") in self._uids for ref in dependent["metadata"].get("ownerReferences") or []
            ):
                self._delete_if_present(dependent_key, "Background")
        self._finish_foreground_deletions()

    def _dependents(self, uid: str) -> list[ArrayKey]:
        return [
            key
            for key, obj in self._objects.items()
            if not obj.deleted
            and any(ref.get("uid") == uid for ref in obj.raw["metadata"].get("ownerReferences") or [])
        ]

    def _drop_owner_reference(self, key: ArrayKey, uid: str) -> None:
        current = self._current(key)
        assert current is not None
        updated = copy.deepcopy(current)
        references = [ref for ref in updated["metadata"]["ownerReferences"] if ref.get("uid") != uid]
        if references:
            updated["metadata"]["ownerReferences"] = references
        else:
            del updated["metadata"]["ownerReferences"]
        updated["metadata"]["resourceVersion"] = self._next_revision()
        self._commit(key, "MODIFIED", updated, current)

    def _finish_foreground_deletions(self) -> None:
        """Release owners deleted in the foreground once their last dependent is gone."""
        for key, obj in list(self._objects.items()):
            if obj.deleted:
                continue
            meta = obj.raw["metadata"]
            if _FOREGROUND_FINALIZER in (meta.get("finalizers") or []) and not self._dependents(meta["uid"]):
                current = obj.raw
                released = copy.deepcopy(current)
                released["metadata"]["finalizers"] = [
                    f for f in meta["finalizers"] if f != _FOREGROUND_FINALIZER
                ]
                if not released["metadata"]["finalizers"]:
                    del released["metadata"]["finalizers"]
                released["metadata"]["resourceVersion"] = self._next_revision()
                self._commit(key, "MODIFIED", released, current)
                if not released["metadata"].get("finalizers"):
                    self._remove(key)

    # ---- custom resource definitions ----------------------------------------------------------------------

    def _check_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        expected = f"{names.get('plural')}.{spec.get('group')}"
        if crd.get("metadata", {}).get("name") != expected:
            raise _error(
                422,
                "Invalid",
                f'metadata.name: Invalid value: must be spec.names.plural+"."+spec.group ({expected})',
            )
        if (
            not names.get("kind")
            or not spec.get("versions")
            or spec.get("scope") not in ("Namespaced", "Cluster")
        ):
            raise _error(
                422, "Invalid", "spec: a CRD needs names.kind, versions and scope (Namespaced or Cluster)"
            )
        if sum(1 for version in spec["versions"] if version.get("storage")) != 1:
            raise _error(
                422,
                "Invalid",
                "spec.versions: Invalid value: must have exactly one version marked as storage version",
            )

    def _crd_status(self, crd: Mapping[str, Any]) -> dict[str, Any]:
        now = _now()
        spec = crd["spec"]
        return {
            "acceptedNames": copy.deepcopy(spec["names"]),
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
            "storedVersions": [version["name"] for version in spec["versions"] if version.get("storage")],
        }

    def _crd_resources(self, crd: Mapping[str, Any]) -> Iterator[tuple[kmock.resource, Mapping[str, Any]]]:
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                yield kmock.resource(spec["group"], version["name"], spec["names"]["plural"]), version

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for resource, version in self._crd_resources(crd):
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec["scope"] == "Namespaced",
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames") or ()),
                categories=set(names.get("categories") or ()),
                subresources=set(version.get("subresources") or {}) & {"status"},
            )
            self._crd_schemas[resource] = (version.get("schema") or {}).get("openAPIV3Schema")
            self._crd_columns[resource] = list(version.get("additionalPrinterColumns") or [])
            self._openapi.pop((spec["group"], version["name"]), None)

    def _unregister_crd(self, crd: Mapping[str, Any], *, remove_objects: bool = False) -> None:
        for resource, _ in self._crd_resources(crd):
            if remove_objects:
                for key in [k for k, obj in self._objects.items() if k[0] == resource and not obj.deleted]:
                    self._remove(key)
                for key in [k for k in self._objects if k[0] == resource]:
                    del self._objects[
                        key
                    ]  # kmock lists a resource in discovery while it holds any object of it
            self.resources.pop(resource, None)
            self._crd_schemas.pop(resource, None)
            self._crd_columns.pop(resource, None)
            self._openapi.pop((resource.group or "", resource.version or ""), None)

    def _apply_schema(
        self, resource: kmock.resource, obj: dict[str, Any], current: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Unknown fields reported (``fieldValidation``) and pruned, defaults set, the schema enforced."""
        custom = resource in self._crd_schemas
        schema = self._crd_schemas.get(resource)
        if self._field_validation != "Ignore":
            unknown = (
                validation.unknown_in_custom(obj, schema) if custom else validation.unknown_in_builtin(obj)
            )
            if unknown and self._field_validation == "Strict":
                raise self._strict_error(resource, unknown)
            self._warnings += [f'unknown field "{path}"' for path in unknown]
        if not custom:
            return obj
        obj = structural.prune_and_default(obj, schema)
        causes = validation.validate_custom(obj, schema) if self.validate_custom_resources else []
        if causes and current is not None:  # ratcheting: what was already invalid may stay so
            before = set(validation.validate_custom(current, schema))
            causes = [cause for cause in causes if cause not in before]
        if causes:
            raise self._invalid(resource, obj["metadata"].get("name", ""), causes)
        return obj

    def _strict_error(self, resource: kmock.resource, unknown: list[str]) -> kmock.KubernetesError:
        kind = self.resources[resource].kind
        if self._server_side_apply:
            lines = [f".{path}: field not declared in schema" for path in unknown]
            detail = lines[0] if len(lines) == 1 else "errors:\n  " + "\n  ".join(lines)
            gvk = f"{self._api_version(resource)}, Kind={kind}"
            return _error(400, "BadRequest", f"failed to create typed patch object ({gvk}): {detail}")
        fields = ", ".join(f'unknown field "{path}"' for path in unknown)
        return _error(
            400,
            "BadRequest",
            f'{kind} in version "{resource.version}" cannot be handled as a {kind}: strict decoding error: {fields}',
        )

    def _invalid(
        self, resource: kmock.resource, name: str, causes: list[validation.Cause]
    ) -> kmock.KubernetesError:
        kind = self.resources[resource].kind
        what = f"{kind}.{resource.group}" if resource.group else str(kind)
        texts = [cause.text() for cause in causes]
        summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
        return _error(
            422,
            "Invalid",
            f'{what} "{name}" is invalid: {summary}',
            name=name,
            group=resource.group,
            kind=kind,
            causes=[{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
        )


def _default_job_selector(job: dict[str, Any]) -> None:
    """The selector the API server gives a Job (unless ``manualSelector``), and its labels on the template:
    what ``kubectl logs job/<name>`` and ``kubectl describe job`` find the Job's pods by."""
    spec = job.get("spec")
    if not isinstance(spec, dict) or spec.get("manualSelector") or spec.get("selector"):
        return
    uid, name = job["metadata"]["uid"], job["metadata"]["name"]
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    labels.update(
        {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
    )


def _reply(
    payload: Any, *, status: int = 200, content_type: str = "application/json", warning: str | None = None
) -> kmock.Response:
    """A response stating its status and every header the emulator varies.

    kmock 0.8 copies the status and headers of a returned ``Response`` onto the reaction that returned
    it, and reactions (the emulator's fallbacks) serve every request: an answer that left one out would
    inherit the previous answer's (a ``text/plain`` log, a 201, a ``Warning``). ``None`` sends no header.
    """
    return kmock.Response(
        status=status, payload=payload, headers={"Content-Type": content_type, "Warning": warning}
    )


def _spec_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but metadata and status: what a change of bumps metadata.generation."""
    return {
        key: value for key, value in obj.items() if key not in ("metadata", "status", "apiVersion", "kind")
    }


FieldPath = tuple[str, ...]


def _field_paths(obj: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    """Every field an applied configuration sets, maps and their members (lists are applied whole)."""
    paths: set[FieldPath] = set()
    for key, value in obj.items():
        paths.add((*prefix, key))
        if isinstance(value, Mapping):
            paths |= _field_paths(value, (*prefix, key))
    return paths


def _fields_v1(paths: set[FieldPath]) -> dict[str, Any]:
    """A field set in the FieldsV1 trie of ``managedFields``: ``{"f:spec": {".": {}, "f:replicas": {}}}``."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    _mark_owned_maps(root)
    return root


def _mark_owned_maps(node: dict[str, Any]) -> None:
    for child in node.values():
        if child:
            child["."] = {}
            _mark_owned_maps({k: v for k, v in child.items() if k != "."})


def _paths_of_fields_v1(trie: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for key, value in trie.items():
        if key.startswith("f:"):
            paths.add((*prefix, key[2:]))
            paths |= _paths_of_fields_v1(value or {}, (*prefix, key[2:]))
    return paths


def _remove_path(obj: dict[str, Any], path: FieldPath) -> None:
    node: Any = obj
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(path[-1], None)
