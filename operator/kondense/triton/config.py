"""Generate a Triton `config.pbtxt` (pure). The text is Triton's ModelConfig protobuf text format;
tests parse it with `tritonclient.grpc.model_config_pb2` to prove it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# ONNX Runtime type strings -> Triton data types
TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")


class TritonConfigError(ValueError):
    pass


def quote(text: str) -> str:
    """``text`` as a protobuf text-format string literal that parses back to exactly ``text``.

    Names come from the ONNX graph and the resource; a quote or a newline in one must stay data, never
    become config syntax. Every byte outside printable ASCII, and the quote characters and backslash,
    is written as an octal escape (what protobuf's own CEscape does), so the literal is plain ASCII.
    """
    out = []
    for byte in text.encode("utf-8"):
        if 0x20 <= byte < 0x7F and byte not in (0x22, 0x27, 0x5C):  # not " ' \\
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str  # ONNX Runtime type string, e.g. tensor(float)
    shape: Sequence[int | str | None]  # ints, or a symbolic/None dimension


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int = 8
    preferred_batch_sizes: Sequence[int] = ()
    max_queue_delay_us: int | None = None
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1


def _dims(shape: Sequence[int | str | None]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def _batchable(tensors: Sequence[TensorSpec]) -> bool:
    """Triton batches along a first dimension every input and output leave dynamic."""
    return all(t.shape and not (isinstance(t.shape[0], int) and t.shape[0] > 0) for t in tensors)


def _tensor(t: TensorSpec, batched: bool) -> str:
    if t.type not in TRITON_TYPES:
        raise TritonConfigError(f"tensor {t.name!r}: Triton has no data type for {t.type}")
    dims = _dims(t.shape[1:] if batched else t.shape)
    if not dims:
        dims = [1]  # Triton needs at least one dim; a scalar per batch item is [1]
    listed = ", ".join(map(str, dims))
    return f"  {{\n    name: {quote(t.name)}\n    data_type: {TRITON_TYPES[t.type]}\n    dims: [ {listed} ]\n  }}"


def model_config(
    name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], batching: BatchingSpec
) -> str:
    if not inputs or not outputs:
        raise TritonConfigError(f"model {name!r}: needs at least one input and one output")
    if batching.instance_kind not in INSTANCE_KINDS:
        raise TritonConfigError(
            f"instance kind {batching.instance_kind!r} is not one of {', '.join(INSTANCE_KINDS)}"
        )
    batched = batching.max_batch_size > 0 and _batchable([*inputs, *outputs])
    lines = [
        f"name: {quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {batching.max_batch_size if batched else 0}",
        "input [\n" + ",\n".join(_tensor(t, batched) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t, batched) for t in outputs) + "\n]",
        f"instance_group [\n  {{\n    kind: {batching.instance_kind}\n    count: {batching.instance_count}\n  }}\n]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    if batched and (batching.preferred_batch_sizes or batching.max_queue_delay_us is not None):
        parts = []
        if batching.preferred_batch_sizes:
            parts.append(f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred_batch_sizes))} ]")
        if batching.max_queue_delay_us is not None:
            parts.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}")
        lines.append("dynamic_batching {\n" + "\n".join(parts) + "\n}")
    return "\n".join(lines) + "\n"
