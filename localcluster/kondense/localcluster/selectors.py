"""Kubernetes label and field selectors: parsing the query strings and matching objects.

Follows the grammar of ``k8s.io/apimachinery/pkg/labels`` (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x,y)``, ``a``, ``!a``; requirements joined by commas) and of ``pkg/fields`` (``f=v``, ``f==v``,
``f!=v``). Field selectors accept only the fields the real API server indexes for the resource: a
selector the real server rejects must fail here too, or code would pass locally and break on a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# A label key is an optional DNS-subdomain prefix and a name; values are the name alphabet or empty.
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_REQUIREMENT = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(\s*([^()]*)\)\s*$")
_EQUALITY_REQUIREMENT = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_REQUIREMENT = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """A selector string the Kubernetes API server would reject with 400 Bad Request."""


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # one of: =, !=, in, notin, exists, !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":  # like the API server: objects without the key match too
                return not present or labels[self.key] not in self.values
        raise AssertionError(f"unknown operator {self.operator!r}")  # constructed only by the parser


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(requirement.matches(labels or {}) for requirement in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( … )`` of set-based requirements."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parentheses in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"unbalanced parentheses in {text!r}")
    parts.append("".join(current))
    return parts


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    requirements = []
    for part in _split_top_level(text):
        if match := _SET_REQUIREMENT.match(part):
            key, operator, raw_values = match.groups()
            values = frozenset(value.strip() for value in raw_values.split(",") if value.strip())
            if not values or not all(_VALUE_ONLY.match(value) for value in values):
                raise SelectorError(f"invalid values in label selector requirement {part.strip()!r}")
            requirements.append(LabelRequirement(key, operator, values))
        elif match := _EQUALITY_REQUIREMENT.match(part):
            key, operator, value = match.groups()
            requirements.append(LabelRequirement(key, "!=" if operator == "!=" else "=", frozenset({value})))
        elif match := _EXISTS_REQUIREMENT.match(part):
            negation, key = match.groups()
            requirements.append(LabelRequirement(key, "!exists" if negation else "exists"))
        else:
            raise SelectorError(f"unable to parse label selector requirement {part.strip()!r}")
    return LabelSelector(tuple(requirements))


def _path_getter(path: str) -> Callable[[Mapping[str, Any]], str]:
    keys = path.split(".")

    def get(obj: Mapping[str, Any]) -> str:
        value: Any = obj
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        return str(value)

    return get


# Fields selectable on every resource, plus the per-resource extras the API server registers
# (pkg/registry/*/strategy.go GetAttrs / ToSelectableFields), keyed by (group, plural).
_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
_EXTRA_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "pods"): (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    ("", "events"): (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    ("events.k8s.io", "events"): (
        "reason",
        "type",
        "regarding.kind",
        "regarding.name",
        "regarding.namespace",
    ),
    ("", "secrets"): ("type",),
    ("", "namespaces"): ("status.phase",),
    ("", "nodes"): ("spec.unschedulable",),
    ("batch", "jobs"): ("status.successful",),
    ("apps", "replicasets"): ("status.replicas",),
}
_FIELD_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negated: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        actual = _path_getter(self.path)(obj)
        return (actual != self.value) if self.negated else (actual == self.value)


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(requirement.matches(obj) for requirement in self.requirements)


def parse_field_selector(text: str | None, *, group: str, plural: str) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    allowed = _COMMON_FIELDS + _EXTRA_FIELDS.get((group, plural), ())
    requirements = []
    for part in text.split(","):
        match = _FIELD_REQUIREMENT.match(part)
        if not match:
            raise SelectorError(f"invalid field selector requirement {part.strip()!r}")
        path, operator, value = match.groups()
        if path not in allowed:
            raise SelectorError(
                f'field label not supported: "{path}" (selectable fields of {plural}: {", ".join(allowed)})'
            )
        requirements.append(FieldRequirement(path, operator == "!=", value))
    return FieldSelector(tuple(requirements))
