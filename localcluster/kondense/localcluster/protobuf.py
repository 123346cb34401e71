"""Request bodies in Kubernetes' protobuf encoding, read as the JSON objects they stand for.

Typed clients of client-go (helm's release storage, ``kubectl create namespace``/``create secret``)
send built-in objects as ``application/vnd.kubernetes.protobuf``: the magic ``k8s\\x00`` and a
``runtime.Unknown`` envelope (``typeMeta``, ``raw``) around the object's generated message. They accept
JSON answers, so only requests need reading. This decodes the messages those clients send to the local
cluster — Secret, ConfigMap, Namespace and DeleteOptions, with ObjectMeta — from the field numbers of
``k8s.io/api/core/v1/generated.proto`` and ``k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto``;
another kind's body stays unread (the API answers 415 Unsupported Media Type, naming it).

The hook is two calls in the emulator: :func:`disarm` before kmock reads the body (binary is not
text), :func:`restore` on the parsed request (its ``data`` becomes the decoded object).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import kmock

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
_ORIGINAL = "X-Kondense-Protobuf-Content-Type"  # what the client sent, while kmock reads bytes


class ProtobufError(ValueError):
    pass


# ---- the wire format ------------------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) in order: varints as ints, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            out.append((number, int.from_bytes(data[pos : pos + 8], "little")))
            pos += 8
        elif wire == 5:
            out.append((number, int.from_bytes(data[pos : pos + 4], "little")))
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


Decoder = Callable[[int | bytes], Any]


def _str(value: int | bytes) -> str:
    assert isinstance(value, bytes)
    return value.decode()


def _int(value: int | bytes) -> int:
    assert isinstance(value, int)
    return value - (1 << 64) if value >= 1 << 63 else value


def _bool(value: int | bytes) -> bool:
    return bool(value)


def _b64(value: int | bytes) -> str:
    assert isinstance(value, bytes)
    return base64.b64encode(value).decode()


def _message(schema: dict[int, tuple[str, Decoder, str]]) -> Callable[[int | bytes], dict[str, Any]]:
    """A decoder for a message: field number -> (JSON name, value decoder, "" | "list" | "map")."""

    def decode(value: int | bytes) -> dict[str, Any]:
        assert isinstance(value, bytes)
        obj: dict[str, Any] = {}
        for number, raw in fields(value):
            if number not in schema:
                continue
            name, decoder, shape = schema[number]
            if shape == "list":
                obj.setdefault(name, []).append(decoder(raw))
            elif shape == "map":
                entry = dict(fields(raw if isinstance(raw, bytes) else b""))
                obj.setdefault(name, {})[_str(entry.get(1, b""))] = decoder(entry.get(2, b""))
            else:
                decoded = decoder(raw)
                if decoded not in ("", None) and not (name == "generation" and decoded == 0):
                    obj[name] = decoded  # gogo-protobuf writes empty strings that JSON omits
        return obj

    return decode


def _time(value: int | bytes) -> str | None:
    seconds = _message({1: ("s", _int, "")})(value).get("s", 0)
    if not seconds:
        return None  # the zero Time: JSON null
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_OWNER = _message({1: ("kind", _str, ""), 3: ("name", _str, ""), 4: ("uid", _str, ""),
                   5: ("apiVersion", _str, ""), 6: ("controller", _bool, ""),
                   7: ("blockOwnerDeletion", _bool, "")})  # fmt: skip
_META = _message({
    1: ("name", _str, ""), 2: ("generateName", _str, ""), 3: ("namespace", _str, ""), 5: ("uid", _str, ""),
    6: ("resourceVersion", _str, ""), 7: ("generation", _int, ""), 8: ("creationTimestamp", _time, ""),
    9: ("deletionTimestamp", _time, ""), 10: ("deletionGracePeriodSeconds", _int, ""),
    11: ("labels", _str, "map"), 12: ("annotations", _str, "map"), 13: ("ownerReferences", _OWNER, "list"),
    14: ("finalizers", _str, "list"),
})  # fmt: skip
KINDS: dict[tuple[str, str], Callable[[int | bytes], dict[str, Any]]] = {
    ("v1", "Secret"): _message({1: ("metadata", _META, ""), 2: ("data", _b64, "map"), 3: ("type", _str, ""),
                                4: ("stringData", _str, "map"), 5: ("immutable", _bool, "")}),
    ("v1", "ConfigMap"): _message({1: ("metadata", _META, ""), 2: ("data", _str, "map"),
                                   3: ("binaryData", _b64, "map"), 4: ("immutable", _bool, "")}),
    ("v1", "Namespace"): _message({1: ("metadata", _META, ""),
                                   2: ("spec", _message({1: ("finalizers", _str, "list")}), "")}),
    ("v1", "DeleteOptions"): _message({
        1: ("gracePeriodSeconds", _int, ""),
        2: ("preconditions", _message({1: ("uid", _str, ""), 2: ("resourceVersion", _str, "")}), ""),
        3: ("orphanDependents", _bool, ""), 4: ("propagationPolicy", _str, ""), 5: ("dryRun", _str, "list"),
    }),
}  # fmt: skip
# DeleteOptions travel as meta.k8s.io/v1 as well
KINDS[("meta.k8s.io/v1", "DeleteOptions")] = KINDS[("v1", "DeleteOptions")]


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object (:class:`ProtobufError` for kinds not read here)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s\\x00 prefix)")
    envelope = dict(fields(body[len(MAGIC) :]))
    raw_type_meta = envelope.get(1, b"")
    type_meta = dict(fields(raw_type_meta if isinstance(raw_type_meta, bytes) else b""))
    api_version, kind = _str(type_meta.get(1, b"")), _str(type_meta.get(2, b""))
    decoder = KINDS.get((api_version, kind))
    if decoder is None:
        raise ProtobufError(
            f"{kind or 'an object'} ({api_version or '?'}) in protobuf is not read here; send JSON"
        )
    obj = decoder(envelope.get(2, b""))
    return {"apiVersion": api_version, "kind": kind, **obj}


# ---- the hook ---------------------------------------------------------------------------------------------


def disarm(raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.BaseRequest | None:
    """A copy of a protobuf request that kmock reads as bytes (None for any other request)."""
    content_type = raw_request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != MEDIA_TYPE:
        return None
    headers = dict(raw_request.headers)
    headers["Content-Type"] = "application/octet-stream; charset=latin-1"  # text() must not fail
    headers[_ORIGINAL] = content_type
    return raw_request.clone(headers=headers)


def restore(request: kmock.Request) -> kmock.Request:
    """The parsed request with its protobuf body as ``data`` (the same request for any other)."""
    original = next((v for k, v in request.headers.items() if k.lower() == _ORIGINAL.lower()), None)
    if original is None:
        return request
    headers = {
        k: v for k, v in request.headers.items() if k.lower() not in ("content-type", _ORIGINAL.lower())
    }
    try:
        data: Any = decode(request.body or b"")
        headers["Content-Type"] = "application/json"
    except ProtobufError as exc:
        data, headers["Content-Type"] = None, original  # answered as a body that is not JSON
        headers["Warning"] = f'299 - "{exc}"'

    return attrs.evolve(request, data=data, headers=headers)
