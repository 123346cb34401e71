"""The ONNX Runtime model wrapper: load a session, describe its tensors, run it.

Knows nothing of HTTP. Bad inputs that only ONNX Runtime can detect raise ``ModelInputError``;
anything else that fails inside the runtime raises ``ModelRuntimeError``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from kondense.serving.tensors import InputRejectedError, TensorSpec

# ONNX Runtime element types -> Open Inference Protocol v2 datatypes.
_ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def available_cpus() -> int:
    """Whole CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota (a pod's
    CPU limit), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    return max(1, cpus)


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc cannot tell)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_limit_bytes() -> int | None:
    """The memory this process may use: its cgroup's limit (a pod's memory limit, cgroup v2 or v1),
    else what it holds plus the machine's available memory; None when neither can be read."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text().strip()
            if text != "max" and int(text) < 1 << 60:  # cgroup v1 says "no limit" with a huge number
                return int(text)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return resident_bytes() + int(line.split()[1]) * 1024
    return None


SPIN_KEY = "session.intra_op.allow_spinning"
SPIN_STOP_KEY = "session.force_spinning_stop"


def spin_config(spin_wait: bool) -> dict[str, str]:
    """ONNX Runtime session config entries for how idle intra-op threads wait.

    False (the default): they sleep. A spinning thread burns the CPU the event loop, the shadow client
    and other pods need (and a pod's CPU quota): on a busy 2-core machine MiniLM through the server was
    3-4x slower with spinning. True: they spin between the parallel sections of a session call (a
    compute-bound transformer has hundreds per call, each costing a thread wake-up without spinning)
    and stop as soon as the last call in flight returns, leaving the CPU to the event loop between
    requests: for CPUs nothing else uses.
    """
    if spin_wait:
        return {SPIN_KEY: "1", SPIN_STOP_KEY: "1"}
    return {SPIN_KEY: "0"}


class ModelLoadError(RuntimeError):
    """The model file cannot be served (unreadable, unsupported tensor types, failed warm-up)."""


class ModelInputError(InputRejectedError):
    """ONNX Runtime rejected the inputs (e.g. a dimension the graph cannot take)."""


class ModelRuntimeError(RuntimeError):
    """ONNX Runtime failed while running valid inputs."""


def _spec(arg: ort.NodeArg, role: str) -> TensorSpec:
    datatype = _ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"{role} '{arg.name}' has type {arg.type}, which the server does not serve "
            "(tensors of bool, integer, float16/32/64 or string only; export classifiers without ZipMap)"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxModel:
    """One ONNX Runtime session on the CPU."""

    def __init__(self, path: str | Path, *, threads: int | None = None, spin_wait: bool = False) -> None:
        """``spin_wait``: intra-op threads spin while a session call is in flight (see ``spin_config``)."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        for key, value in spin_config(spin_wait).items():
            options.add_session_config_entry(key, value)
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unreadable/invalid graphs
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(a, "input") for a in self._session.get_inputs())
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(a, "output") for a in self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]
        self._string_inputs = {spec.name for spec in self.inputs if spec.datatype == "BYTES"}

    def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the session; returns the requested outputs (all when ``outputs`` is None) in order."""
        feed = dict(inputs)
        for name in self._string_inputs:  # ORT string tensors take str, the wire gives bytes or str
            feed[name] = _as_str_array(feed[name], name)
        names = list(outputs) if outputs is not None else self._output_names
        try:
            results = self._session.run(names, feed)
        except InvalidArgument as exc:
            raise ModelInputError(
                str(exc).removeprefix("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ")
            ) from exc
        except Exception as exc:  # ORT's Fail/RuntimeException have no common public base
            raise ModelRuntimeError(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(names, results, strict=True))

    def warm_up(self) -> None:
        """Run once on zeros (dynamic dimensions = 1): proves the graph runs before readiness."""
        sample = {}
        for spec in self.inputs:
            shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
            sample[spec.name] = (
                np.full(shape, "", dtype=object)
                if spec.datatype == "BYTES"
                else np.zeros(shape, dtype=spec.dtype)
            )
        try:
            self.predict(sample)
        except (ModelInputError, ModelRuntimeError) as exc:
            raise ModelLoadError(f"warm-up inference on zeros failed: {exc}") from exc


def _as_str_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "U" or all(isinstance(v, str) for v in array.reshape(-1)):
        return array
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for index, value in enumerate(array.reshape(-1)):
        try:
            flat[index] = value if isinstance(value, str) else bytes(value).decode()
        except UnicodeDecodeError:
            raise ModelInputError(f"input '{name}': value at flat index {index} is not UTF-8 text") from None
    return out
