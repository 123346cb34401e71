"""The local API's objects on disk, so ``kondense up`` resumes where ``kondense down`` left off.

A snapshot is JSON: the cluster-wide revision and every existing object with the resource it is stored
under. :func:`restore` puts the objects back verbatim (uid, creationTimestamp, resourceVersion, status,
ownerReferences), CRDs first so their custom resources are served again, and moves the revision past
the highest one saved, so a client's resourceVersion from before the restart never goes backwards.

What a restart of a real control plane keeps (etcd) is kept; what it loses is lost: watches end, and
pods are started again by the process kubelet (as a node does after a reboot).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import kmock

from kondense.localcluster.emulator import CRDS, NAMESPACES, KubernetesAPIEmulator

FORMAT = 1


class StoreError(RuntimeError):
    pass


async def snapshot(emulator: KubernetesAPIEmulator) -> dict[str, Any]:
    """The store as JSON-able data (taken under the emulator's write lock: one consistent revision)."""
    async with emulator._lock:
        objects = [
            {"resource": [key[0].group or "", key[0].version, key[0].plural], "object": obj.raw}
            for key, obj in emulator._objects.items()
            if not obj.deleted
        ]
        return json.loads(json.dumps({"format": FORMAT, "revision": emulator._revision, "objects": objects}))


def revision(emulator: KubernetesAPIEmulator) -> int:
    """The store's current revision (changes on every write): to save only when something changed."""
    return int(emulator._revision)


async def restore(emulator: KubernetesAPIEmulator, state: dict[str, Any]) -> int:
    """Put a :func:`snapshot`'s objects back; objects that already exist are kept as they are.

    Returns the number of objects restored.
    """
    if state.get("format") != FORMAT or not isinstance(state.get("objects"), list):
        raise StoreError("not a kondense local-cluster snapshot (format 1)")

    def order(entry: dict[str, Any]) -> int:
        resource = kmock.resource(*entry["resource"])
        return 0 if resource == CRDS else 1 if resource == NAMESPACES else 2

    restored = 0
    async with emulator._lock:
        emulator._revision = max(emulator._revision, int(state.get("revision") or 0))
        for entry in sorted(state["objects"], key=order):  # sorted() is stable: creation order within
            resource = kmock.resource(*entry["resource"])
            obj = entry["object"]
            if resource not in emulator.resources:
                continue  # e.g. a resource whose CRD is gone
            namespaced = emulator.resources[resource].namespaced
            meta = obj["metadata"]
            key = (resource, meta.get("namespace") if namespaced else None, meta["name"])
            if emulator._current(key) is not None:
                continue  # created at start (default namespaces, built-in CRDs)
            emulator._commit(key, "ADDED", obj, None)
            if resource == CRDS:
                emulator._register_crd(obj)
            restored += 1
    return restored


def write_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any] | None:
    """The snapshot at ``path``; None when there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StoreError(
            f"{path}: not valid JSON ({exc}); move it away to start with an empty cluster"
        ) from None
    if not isinstance(state, dict):
        raise StoreError(f"{path}: not a kondense local-cluster snapshot")
    return state
