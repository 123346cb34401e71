"""Protobuf request bodies (client-go's typed clients: helm's release Secrets, kubectl create) read as
JSON. The bodies are built here field by field from generated.proto's numbers; tests/integration/
test_up_helm.py has the real helm send them."""

from __future__ import annotations

import base64

import pytest

from kondense.localcluster.protobuf import MAGIC, ProtobufError, decode


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: bytes | int | str) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(raw)) + raw


def entry(number: int, key: str, value: bytes | str) -> bytes:
    return field(number, field(1, key) + field(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return MAGIC + field(1, field(1, api_version) + field(2, kind)) + field(2, raw)


def test_a_helm_release_secret() -> None:
    meta = (
        field(1, "sh.helm.release.v1.kondense.v1") + field(2, "") + field(3, "") + field(8, field(1, 0))
        + entry(11, "owner", "helm") + entry(11, "status", "deployed") + field(14, "kondense.dev/keep")
    )  # fmt: skip
    secret = field(1, meta) + entry(2, "release", b"\x1f\x8b\x00payload") + field(3, "helm.sh/release.v1")
    assert decode(envelope("v1", "Secret", secret)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "sh.helm.release.v1.kondense.v1",
            "labels": {"owner": "helm", "status": "deployed"},
            "finalizers": ["kondense.dev/keep"],
        },
        "data": {"release": base64.b64encode(b"\x1f\x8b\x00payload").decode()},
        "type": "helm.sh/release.v1",
    }


def test_configmap_namespace_and_delete_options() -> None:
    cm = field(1, field(1, "c") + field(6, "42")) + entry(2, "k", "v") + field(4, 1)
    assert decode(envelope("v1", "ConfigMap", cm)) == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "42"},
        "data": {"k": "v"}, "immutable": True,
    }  # fmt: skip
    ns = field(1, field(1, "team") + entry(12, "a", "b"))
    assert decode(envelope("v1", "Namespace", ns))["metadata"] == {"name": "team", "annotations": {"a": "b"}}
    options = field(1, 0) + field(2, field(1, "u-1")) + field(4, "Foreground")
    assert decode(envelope("meta.k8s.io/v1", "DeleteOptions", options)) == {
        "apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
        "preconditions": {"uid": "u-1"}, "propagationPolicy": "Foreground",
    }  # fmt: skip


def test_other_kinds_and_garbage_are_one_clear_error() -> None:
    with pytest.raises(ProtobufError, match=r"Deployment \(apps/v1\) in protobuf is not read here"):
        decode(envelope("apps/v1", "Deployment", b""))
    with pytest.raises(ProtobufError, match="no k8s"):
        decode(b"{}")
    with pytest.raises(ProtobufError, match="truncated"):
        decode(MAGIC + b"\x12\x50abc")
