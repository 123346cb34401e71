"""Open Inference Protocol v2 (KServe v2 / Triton) tensors on the wire, with the binary tensor data
extension Triton clients use by default.

Decoding checks a request against the model's ``TensorSpec`` s and turns it into numpy arrays; every
problem becomes a ``ProtocolError`` whose message names the input and what is wrong with it. Encoding
turns output arrays into a response body. Knows numpy, not HTTP and not ONNX Runtime.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, cast

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kondense.serving.tensors import DATATYPES, TensorSpec, datatype_of
from kondense.serving.validation import (
    RequestError,
    RequestLimits,
    TensorHeader,
    check_finite,
    check_inputs,
    check_outputs,
)

HEADER_LENGTH = "inference-header-content-length"
# Response header naming the track that answered an inference (`stable` or `canary`).
VARIANT_HEADER = "kondense-variant"
_LENGTH_PREFIX = struct.Struct("<I")
_MAX_REPORTED_ERRORS = 5


ProtocolError = RequestError
"""The request does not follow the protocol or does not fit the model (a client error)."""


class _RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class _RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    parameters: dict[str, Any] | None = None


class _InferenceRequest(BaseModel):
    # Unknown top-level fields are tolerated (newer clients); tensors are strict (typos are errors).
    model_config = ConfigDict(strict=True)

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_RequestInput] = Field(min_length=1)
    outputs: list[_RequestOutput] | None = None


@dataclass(slots=True)
class DecodedRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    """Requested output names in request order; ``None`` means every output."""
    binary_outputs: frozenset[str]


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ProtocolError(f"header Inference-Header-Content-Length: {value!r} is not an integer") from None
    if not 0 < length <= body_length:
        raise ProtocolError(
            f"header Inference-Header-Content-Length: {length} is outside the body's {body_length} bytes"
        )
    return length


def _describe_validation(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:_MAX_REPORTED_ERRORS]:
        if error["type"] == "json_invalid":
            return f"malformed JSON body: {error['msg'].removeprefix('Invalid JSON: ')}"
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
        problems.append(f"{where.lstrip('.') or 'body'}: {error['msg']}")
    more = exc.error_count() - len(problems)
    return "invalid inference request: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def decode_request(
    body: bytes,
    header_length: int | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    allow_non_finite: bool = False,
    limits: RequestLimits = RequestLimits(),  # noqa: B008 (frozen)
) -> DecodedRequest:
    """Parse and check an inference request body against the model's inputs and outputs.

    Names, datatypes, shapes and the element budget are checked (``validation.check_inputs``) before
    any tensor data is converted.
    """
    header, blob = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    request = _parse(header)
    items: list[dict[str, Any]] = request["inputs"]
    check_inputs([TensorHeader(i["name"], i["datatype"], i["shape"]) for i in items], inputs, limits)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        where = f"input '{item['name']}'"
        size = _binary_size(item.get("parameters"), where)
        chunk = None
        if size is not None:
            if offset + size > len(blob):
                raise ProtocolError(
                    f"{where}: binary_data_size {size} runs past the end of the binary data "
                    f"({len(blob) - offset} bytes left)"
                )
            chunk = blob[offset : offset + size]
            offset += size
        arrays[item["name"]] = _decode_input(item, chunk, allow_non_finite, where)
    if offset != len(blob):
        raise ProtocolError(f"{len(blob) - offset} bytes of binary data are not claimed by any input")

    binary_all = _flag(
        (request.get("parameters") or {}).get("binary_data_output"), "parameters.binary_data_output"
    )
    requested: list[str] | None = None
    binary: set[str] = {spec.name for spec in outputs} if binary_all else set()
    wanted: list[dict[str, Any]] | None = request.get("outputs")
    if wanted is not None:
        requested = [out["name"] for out in wanted]
        check_outputs(requested, outputs)
        for out in wanted:
            params = out.get("parameters") or {}
            if "classification" in params:
                raise ProtocolError(f"output '{out['name']}': the classification extension is not supported")
            if _flag(params.get("binary_data"), f"output '{out['name']}' parameters.binary_data"):
                binary.add(out["name"])
    return DecodedRequest(request.get("id"), arrays, requested, frozenset(binary))


def _parse(header: bytes) -> dict[str, Any]:
    """The request's JSON as plain values in the shape of ``_InferenceRequest`` (optional fields may
    be missing). A well-formed request is read by orjson and checked in Python (several times cheaper
    than through pydantic for a small request); anything else goes through the pydantic model, which
    accepts what orjson does not (NaN, Infinity, integers beyond 64 bits) and names what is wrong."""
    try:
        parsed = orjson.loads(header)
    except orjson.JSONDecodeError:
        parsed = None
    if _well_formed(parsed):
        return cast(dict[str, Any], parsed)
    try:
        return _InferenceRequest.model_validate_json(header).model_dump()
    except ValidationError as exc:
        raise ProtocolError(_describe_validation(exc)) from None


_INPUT_FIELDS = frozenset(_RequestInput.model_fields)
_OUTPUT_FIELDS = frozenset(_RequestOutput.model_fields)


def _well_formed(parsed: Any) -> bool:
    """Whether ``_InferenceRequest`` accepts ``parsed`` as it is (strict types: no coercion). False
    means "not sure", never "invalid": the pydantic model then decides and names the problem."""
    if type(parsed) is not dict:
        return False
    if not _optional(parsed.get("id"), str) or not _optional(parsed.get("parameters"), dict):
        return False
    items = parsed.get("inputs")
    if type(items) is not list or not items:
        return False
    for item in items:
        if type(item) is not dict or not _INPUT_FIELDS.issuperset(item):
            return False
        shape = item.get("shape")
        if (
            type(item.get("name")) is not str
            or type(item.get("datatype")) is not str
            or type(shape) is not list
        ):
            return False
        for size in shape:
            if type(size) is not int or size < 0:
                return False
        if not _optional(item.get("parameters"), dict) or not _optional(item.get("data"), list):
            return False
    wanted = parsed.get("outputs")
    if wanted is None:
        return True
    if type(wanted) is not list:
        return False
    for out in wanted:
        if type(out) is not dict or not _OUTPUT_FIELDS.issuperset(out):
            return False
        if type(out.get("name")) is not str or not _optional(out.get("parameters"), dict):
            return False
    return True


def _optional(value: Any, kind: type) -> bool:
    return value is None or type(value) is kind


def _decode_input(
    item: dict[str, Any], chunk: bytes | None, allow_non_finite: bool, where: str
) -> np.ndarray:
    shape: list[int] = item["shape"]
    datatype: str = item["datatype"]
    data: list[Any] | None = item.get("data")
    count = math.prod(shape)
    if chunk is not None:
        if data is not None:
            raise ProtocolError(f"{where}: has both 'data' and binary_data_size; give one")
        array = _from_binary(chunk, datatype, shape, count, where)
    elif data is None:
        raise ProtocolError(f"{where}: has no 'data' (and no binary_data_size)")
    else:
        array = _from_json(data, datatype, shape, count, where)
    if not allow_non_finite:
        check_finite(array, datatype, where)
    return array


def _from_json(data: list[Any], datatype: str, shape: list[int], count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        flat = list(_flatten(data, where))
        if len(flat) != count:
            raise ProtocolError(f"{where}: data has {len(flat)} values but shape {shape} needs {count}")
        for index, value in enumerate(flat):
            if not isinstance(value, str):
                raise ProtocolError(f"{where}: BYTES value at flat index {index} is not a string")
        array = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        values = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"{where}: data is not a rectangular (row-major) array of values") from None
    if values.size != count:
        raise ProtocolError(f"{where}: data has {values.size} values but shape {shape} needs {count}")
    target = DATATYPES[datatype]
    if count and not _kind_fits(values.dtype.kind, target.kind):
        raise ProtocolError(
            f"{where}: data must be {_KIND_WORDS[target.kind]} for {datatype}, got {_got(values.dtype.kind)}"
        )
    if count and target.kind in "iu" and values.dtype != target:  # the same dtype holds every value
        info = np.iinfo(target)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise ProtocolError(f"{where}: value {bad} is out of range for {datatype}")
    with np.errstate(over="ignore"):  # overflow to inf is reported by the finite check
        return values.astype(target, copy=False).reshape(shape)


_KIND_WORDS = {"b": "booleans", "i": "integers", "u": "non-negative integers", "f": "numbers"}


def _kind_fits(got: str, want: str) -> bool:
    if want == "b":
        return got == "b"
    if want in "iu":
        return got in "iu"
    return got in "iuf"


def _got(kind: str) -> str:
    return {
        "b": "booleans",
        "f": "non-integer numbers",
        "U": "strings",
        "O": "non-numeric or out-of-range values",
    }.get(kind, f"values of kind {kind!r}")


def _flatten(data: Any, where: str, depth: int = 0) -> Iterator[Any]:
    if depth > 64:
        raise ProtocolError(f"{where}: data is nested deeper than 64 levels")
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value, where, depth + 1)
        else:
            yield value


def _from_binary(chunk: bytes, datatype: str, shape: list[int], count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        items = _split_length_prefixed(chunk, where)
        if len(items) != count:
            raise ProtocolError(
                f"{where}: binary data holds {len(items)} values but shape {shape} needs {count}"
            )
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(
            f"{where}: binary data has {len(chunk)} bytes but shape {shape} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise ProtocolError(f"{where}: BOOL binary data must be bytes 0 or 1")
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _split_length_prefixed(chunk: bytes, where: str) -> list[bytes]:
    items = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise ProtocolError(f"{where}: BYTES binary data ends inside a length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise ProtocolError(f"{where}: BYTES element of {length} bytes runs past the end of its data")
        items.append(chunk[offset : offset + length])
        offset += length
    return items


def _binary_size(parameters: dict[str, Any] | None, where: str) -> int | None:
    if not parameters or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    return size


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProtocolError(f"{where} must be true or false, got {value!r}")
    return value


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: frozenset[str] = frozenset(),
) -> tuple[bytes, int | None]:
    """Response body and, when some outputs travel as binary data, the JSON header's length."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            blob = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [_as_text(value, name) for value in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1)  # a view, or a C-contiguous copy (what orjson takes)
        described.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = described
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            raw = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(_LENGTH_PREFIX.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise ProtocolError(
            f"output '{name}' holds bytes that are not UTF-8; request it as binary_data"
        ) from None


def from_binary(chunk: bytes, datatype: str, shape: Sequence[int], where: str) -> np.ndarray:
    """One tensor from its raw little-endian bytes (BYTES: 4-byte length-prefixed elements), as in
    Triton's binary tensor data and gRPC's ``raw_input_contents``; the shape was checked already."""
    return _from_binary(chunk, datatype, list(shape), math.prod(shape), where)


def to_binary(array: np.ndarray) -> bytes:
    """The raw bytes of an output tensor (``from_binary``'s inverse)."""
    return _to_binary(array, datatype_of(array))


def encode_binary_request(
    request_id: str | None, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
) -> tuple[bytes, int]:
    """A REST inference request carrying every input as binary tensor data (and asking for binary
    outputs): how a request that came in another way (gRPC) is replayed to a REST server."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in inputs.items():
        datatype = datatype_of(array)
        blob = _to_binary(array, datatype)
        described.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    request: dict[str, Any] = {"inputs": described, "parameters": {"binary_data_output": True}}
    if request_id:
        request["id"] = request_id
    if outputs is not None:
        request["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = orjson.dumps(request)
    return b"".join([header, *blobs]), len(header)


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Output arrays of another v2 server's response (JSON or binary outputs)."""
    header, blob = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        parsed = orjson.loads(header)
        described = parsed["outputs"]
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        for entry in described:
            name, datatype, shape = entry["name"], entry["datatype"], [int(d) for d in entry["shape"]]
            where = f"output '{name}'"
            if datatype not in DATATYPES:
                raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
            size = _binary_size(entry.get("parameters"), where)
            if size is None:
                if datatype == "BYTES":
                    arrays[name] = np.array(entry["data"], dtype=object).reshape(shape)
                else:
                    arrays[name] = np.array(entry["data"], dtype=DATATYPES[datatype]).reshape(shape)
            else:
                arrays[name] = _from_binary(
                    blob[offset : offset + size], datatype, shape, math.prod(shape), where
                )
                offset += size
        return arrays
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"unreadable inference response: {exc!r}") from None
