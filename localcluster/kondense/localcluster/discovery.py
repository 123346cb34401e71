"""API discovery as the real API server answers it: ``/version``, the legacy lists and aggregated discovery.

kubectl (and client-go) first ask ``/api`` and ``/apis`` for *aggregated* discovery (``Accept:
application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList``): every group, version and resource
in two requests. Older clients walk the legacy documents (``APIVersions``, ``APIGroupList``, one
``APIResourceList`` per group version). Both are built here from the emulator's resource registry.

Subresources are what the real server lists them as: ``pods/status`` in the legacy lists without short
names or categories (a subresource carrying the parent's short names makes kubectl warn that ``cmodel``
"could also match lower priority resource compressedmodels/status"), and nested under their resource in
aggregated discovery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import kmock

# The Kubernetes version this API server speaks (the object semantics, discovery and OpenAPI follow it).
KUBERNETES_VERSION = (1, 35, 0)
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"

# Subresources whose response is another kind than their resource's, and what each accepts.
_SUBRESOURCE_KINDS: dict[str, tuple[str, str, str]] = {
    "scale": ("autoscaling", "v1", "Scale"),
    "eviction": ("policy", "v1", "Eviction"),
    "binding": ("", "v1", "Binding"),
    "token": ("authentication.k8s.io", "v1", "TokenRequest"),
}
_SUBRESOURCE_VERBS: dict[str, list[str]] = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
    "ephemeralcontainers": ["get", "patch", "update"],
    "resize": ["get", "patch", "update"],
    "log": ["get"],
    "eviction": ["create"],
    "binding": ["create"],
    "token": ["create"],
    "finalize": ["update"],
    "exec": ["create", "get"],
    "attach": ["create", "get"],
    "portforward": ["create", "get"],
    "proxy": ["create", "delete", "get", "patch", "update"],
}
_VERSION = re.compile(r"v(?P<major>\d+)(?:(?P<stage>alpha|beta)(?P<minor>\d+))?")

Registry = Iterable[tuple[kmock.resource, kmock.ResourceInfo]]


def server_version() -> dict[str, str]:
    major, minor, patch = KUBERNETES_VERSION
    return {
        "major": str(major),
        "minor": str(minor),
        "emulationMajor": str(major),
        "emulationMinor": str(minor),
        "minCompatibilityMajor": str(major),
        "minCompatibilityMinor": str(minor - 1),
        "gitVersion": f"v{major}.{minor}.{patch}+kondense",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def version_priority(version: str) -> tuple[int, int, int]:
    """Sort key of Kubernetes API versions, highest priority first when sorted: v2, v1, v1beta2, v1alpha1."""
    match = _VERSION.fullmatch(version)
    if match is None:
        return (3, 0, 0)  # not kube-like: last
    stage = {None: 0, "beta": 1, "alpha": 2}[match["stage"]]
    return (stage, -int(match["major"]), -int(match["minor"] or 0))


def wants_aggregated(accept: str) -> str | None:
    """The aggregated discovery media type the client accepts (v2 before v2beta1), if any."""
    types = [part.strip().replace(" ", "") for part in accept.split(",")]
    for wanted in (AGGREGATED_V2, AGGREGATED_V2BETA1):
        if any(t.split(";q=")[0] == wanted for t in types):
            return wanted
    return None


def _group_versions(resources: Registry) -> dict[str, dict[str, list[tuple[str, kmock.ResourceInfo]]]]:
    groups: dict[str, dict[str, list[tuple[str, kmock.ResourceInfo]]]] = {}
    for resource, info in resources:
        if resource.group is None or resource.version is None or resource.plural is None:
            continue
        groups.setdefault(resource.group, {}).setdefault(resource.version, []).append((resource.plural, info))
    return {
        group: {
            version: sorted(versions[version], key=lambda entry: entry[0])
            for version in sorted(versions, key=version_priority)
        }
        for group, versions in sorted(groups.items())
    }


def _kind(info: kmock.ResourceInfo, plural: str) -> str:
    return info.kind if info.kind is not None else plural.capitalize()


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"], "serverAddressByClientCIDRs": []}


def _group_entry(group: str, versions: Iterable[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(resources: Registry) -> dict[str, Any]:
    groups = _group_versions(resources)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_entry(group, versions) for group, versions in groups.items() if group],
    }


def api_group(resources: Registry, group: str) -> dict[str, Any] | None:
    versions = _group_versions(resources).get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_resource_list(resources: Registry, group: str, version: str) -> dict[str, Any] | None:
    entries = _group_versions(resources).get(group, {}).get(version)
    if entries is None:
        return None
    listed: list[dict[str, Any]] = []
    for plural, info in entries:
        kind = _kind(info, plural)
        listed.append(
            {
                "name": plural,
                "singularName": info.singular or plural,
                "namespaced": bool(info.namespaced),
                "kind": kind,
                "verbs": sorted(info.verbs),
                **({"shortNames": sorted(info.shortnames)} if info.shortnames else {}),
                **({"categories": sorted(info.categories)} if info.categories else {}),
            }
        )
        for sub in sorted(info.subresources):
            sub_group, sub_version, sub_kind = _SUBRESOURCE_KINDS.get(sub, (None, None, kind))
            listed.append(
                {
                    "name": f"{plural}/{sub}",
                    "singularName": "",
                    "namespaced": bool(info.namespaced),
                    **({"group": sub_group, "version": sub_version} if sub_group is not None else {}),
                    "kind": sub_kind,
                    "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"]),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": listed,
    }


def _aggregated_resource(group: str, version: str, plural: str, info: kmock.ResourceInfo) -> dict[str, Any]:
    kind = _kind(info, plural)
    entry: dict[str, Any] = {
        "resource": plural,
        "responseKind": {"group": group, "version": version, "kind": kind},
        "scope": "Namespaced" if info.namespaced else "Cluster",
        "singularResource": info.singular or plural,
        "verbs": sorted(info.verbs),
    }
    if info.shortnames:
        entry["shortNames"] = sorted(info.shortnames)
    if info.categories:
        entry["categories"] = sorted(info.categories)
    subresources = []
    for sub in sorted(info.subresources):
        sub_group, sub_version, sub_kind = _SUBRESOURCE_KINDS.get(sub, (group, version, kind))
        subresources.append(
            {
                "subresource": sub,
                "responseKind": {"group": sub_group, "version": sub_version, "kind": sub_kind},
                "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"]),
            }
        )
    if subresources:
        entry["subresources"] = subresources
    return entry


def aggregated(resources: Registry, *, legacy: bool, media_type: str) -> dict[str, Any]:
    """``APIGroupDiscoveryList``: the core group (``/api``, ``legacy``) or every named group (``/apis``)."""
    items = []
    for group, versions in _group_versions(resources).items():
        if (group == "") != legacy:
            continue
        items.append(
            {
                "metadata": {"name": group, "creationTimestamp": None},
                "versions": [
                    {
                        "version": version,
                        "resources": [
                            _aggregated_resource(group, version, plural, info) for plural, info in entries
                        ],
                        "freshness": "Current",
                    }
                    for version, entries in versions.items()
                ],
            }
        )
    api_version = "apidiscovery.k8s.io/v2" if media_type == AGGREGATED_V2 else "apidiscovery.k8s.io/v2beta1"
    return {"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items}


def header(headers: Mapping[str, str], name: str) -> str:
    """A request header, case-insensitively ('' when absent)."""
    return next((value for key, value in headers.items() if key.lower() == name.lower()), "")
