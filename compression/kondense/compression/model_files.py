"""Reading ONNX model files with clear errors, their input/output signature, and ORT sessions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kondense.compression.errors import BadInputError

if TYPE_CHECKING:
    import onnx
    import onnxruntime


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]  # None: symbolic or unknown dimension

    @property
    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and self.shape[0] is None


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def dynamic_batch(self) -> bool:
        return all(spec.dynamic_batch for spec in self.inputs)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the inputs fix on axis 0 (one number, inputs with a dynamic axis 0 aside),
        or None when none fixes it or they disagree."""
        firsts = {spec.shape[0] for spec in self.inputs if spec.shape and spec.shape[0] is not None}
        if len(firsts) != 1:
            return None
        (first,) = firsts
        return first if first > 0 else None


def load_model(path: str | Path, *, with_weights: bool = True) -> onnx.ModelProto:
    """Parse and check an ONNX file; any problem is a BadInputError naming the file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise BadInputError(str(path), "model file does not exist")
    try:
        model = onnx.load(str(path), load_external_data=with_weights)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise BadInputError(str(path), f"not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise BadInputError(str(path), "ONNX model has an empty graph")
    try:
        onnx.checker.check_model(model if with_weights else str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise BadInputError(str(path), f"invalid ONNX model: {str(exc).splitlines()[0]}") from exc
    return model


def _tensor_spec(value_info: Any) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return TensorSpec(value_info.name, dtype, dims)


def signature_of(model: onnx.ModelProto) -> ModelSignature:
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_spec(v) for v in model.graph.output)
    return ModelSignature(inputs, outputs)


def open_session(path: str | Path, *, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU session with a fixed thread count, so latencies compare like with like."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        from kondense.compression.intake import ort_reason  # intake imports this module

        raise BadInputError(str(path), f"ONNX Runtime cannot load the model: {ort_reason(exc)}") from exc


def run_outputs(session: onnxruntime.InferenceSession, batches: Any, output: str | None = None) -> np.ndarray:
    """Concatenate one output (the first by default) over an iterable of input batches."""
    name = output or session.get_outputs()[0].name
    chunks = [np.asarray(session.run([name], feed)[0]) for feed in batches]
    if all(chunk.ndim == 0 for chunk in chunks):  # a scalar per run (a count, a length): one per feed
        return np.stack(chunks)
    return np.concatenate(chunks, axis=0)
