"""Real models and real server processes for the serving tests.

Models are tiny but real: a digits MLP trained with scikit-learn and written as ONNX, and a
"datatypes" graph whose inputs cover every datatype the server maps. Servers are ``kondense serve``
subprocesses on free ports, always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE, ArtifactRef, Manifest, sha256_file
from kondense.serving.batching import InferenceRunner

KONDENSE = [sys.executable, "-m", "kondense.cli"]


def write_model_dir(directory: Path, model: onnx.ModelProto, task: str, *, manifest: bool = True) -> Path:
    """model.onnx plus a manifest.json holding its real sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    onnx.save(model, path)
    if manifest:
        ref = ArtifactRef(sha256=sha256_file(path), sizeBytes=path.stat().st_size)
        text = Manifest(name=directory.name, task=task, base=ref, artifact=ref).model_dump_json(indent=2)
        (directory / MANIFEST_FILE).write_text(text)
    return directory


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by any ONNX Runtime >= 1.14
    onnx.checker.check_model(model)
    return model


def mlp_model(weights: list[tuple[np.ndarray, np.ndarray]], n_in: int, n_out: int) -> onnx.ModelProto:
    """Gemm/Relu stack with a dynamic batch dimension."""
    nodes, inits = [], []
    current = "input"
    for index, (weight, bias) in enumerate(weights):
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"W{index}"),
            numpy_helper.from_array(bias.astype(np.float32), f"b{index}"),
        ]
        out = "logits" if index == len(weights) - 1 else f"h{index}"
        nodes.append(helper.make_node("Gemm", [current, f"W{index}", f"b{index}"], [out]))
        if index < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"]))
            out = f"{out}_relu"
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    return _model(graph)


@dataclass(frozen=True)
class Digits:
    directory: Path
    inputs: np.ndarray
    """Held-out digit images, float32 [n, 64] scaled to 0..1."""

    def reference(self, batch: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(self.directory / MODEL_FILE), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": batch})[0]


def train_digits(hidden: int, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    classifier = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=60, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a short fit is enough for these tests
        classifier.fit(features[:1400], labels[:1400])
    weights = list(zip(classifier.coefs_, classifier.intercepts_, strict=True))
    return weights, features[1400:]


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    weights, held_out = train_digits(hidden=32, seed=0)
    directory = write_model_dir(
        tmp_path_factory.mktemp("models") / "digits", mlp_model(weights, 64, 10), "classification"
    )
    return Digits(directory, held_out)


@pytest.fixture(scope="session")
def digits_retrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A differently trained digits model: a canary that disagrees with ``digits`` on some inputs."""
    weights, _ = train_digits(hidden=8, seed=3)
    return write_model_dir(
        tmp_path_factory.mktemp("models") / "digits-small", mlp_model(weights, 64, 10), "classification"
    )


def datatypes_model() -> onnx.ModelProto:
    """One input per datatype family, each passed through a real op to an output."""
    info = helper.make_tensor_value_info
    inputs = [
        info("x", TensorProto.FLOAT, ["batch", 4]),
        info("ids", TensorProto.INT64, ["batch", 3]),
        info("flag", TensorProto.BOOL, ["batch", 2]),
        info("half", TensorProto.FLOAT16, ["batch", 2]),
        info("pixels", TensorProto.UINT8, ["batch", 2]),
        info("text", TensorProto.STRING, ["batch"]),
    ]
    outputs = [
        info("x_doubled", TensorProto.FLOAT, ["batch", 4]),
        info("ids_next", TensorProto.INT64, ["batch", 3]),
        info("flag_not", TensorProto.BOOL, ["batch", 2]),
        info("half_squared", TensorProto.FLOAT16, ["batch", 2]),
        info("pixels_max", TensorProto.UINT8, ["batch", 1]),
        info("text_lower", TensorProto.STRING, ["batch"]),
    ]
    nodes = [
        helper.make_node("Add", ["x", "x"], ["x_doubled"]),
        helper.make_node("Add", ["ids", "one"], ["ids_next"]),
        helper.make_node("Not", ["flag"], ["flag_not"]),
        helper.make_node("Mul", ["half", "half"], ["half_squared"]),
        helper.make_node("ReduceMax", ["pixels"], ["pixels_max"], axes=[1], keepdims=1),
        helper.make_node(
            "StringNormalizer", ["text"], ["text_lower"], case_change_action="LOWER", locale="C"
        ),
    ]
    inits = [
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
    ]
    return _model(helper.make_graph(nodes, "datatypes", inputs, outputs, inits))


# one input of every datatype of the datatypes model: name -> (datatype, array)
DATATYPE_FEED: dict[str, tuple[str, np.ndarray]] = {
    "x": ("FP32", np.array([[1.5, -2, 0, 4], [7, 8, 9, 10]], np.float32)),
    "ids": ("INT64", np.array([[1, -5, 2**40], [0, 0, -1]], np.int64)),
    "flag": ("BOOL", np.array([[True, False], [False, False]])),
    "half": ("FP16", np.array([[0.5, -3], [2, 1]], np.float16)),
    "pixels": ("UINT8", np.array([[3, 250], [9, 1]], np.uint8)),
    "text": ("BYTES", np.array([b"MiXeD", b"UPPER"], dtype=object)),
}


def assert_datatypes_answer(model_dir: Path, as_numpy: Callable[[str], np.ndarray]) -> None:
    """Every output a client decoded (``as_numpy``) equals what ONNX Runtime computes from DATATYPE_FEED."""
    session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    ort_feed = {name: array for name, (_, array) in DATATYPE_FEED.items()}
    ort_feed["text"] = np.array([value.decode() for value in DATATYPE_FEED["text"][1]], dtype=object)
    for spec, want in zip(session.get_outputs(), session.run(None, ort_feed), strict=True):
        got = as_numpy(spec.name)
        if spec.name == "text_lower":
            got = np.array([value.decode() for value in got], dtype=object)
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="session")
def datatypes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("models") / "datatypes", datatypes_model(), "regression")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    name: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def stop(self, timeout: float = 20) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return self.process.returncode, out


def expected_digest_args(model_dir: Path, args: tuple[str, ...] | list[str]) -> list[str]:
    """``--expected-sha256`` with the manifest's digest, as the operator passes the one it recorded
    (none when the test serves with --no-verify or passes its own)."""
    if "--no-verify" in args or "--expected-sha256" in args or not (model_dir / MANIFEST_FILE).is_file():
        return []
    manifest = Manifest.model_validate_json((model_dir / MANIFEST_FILE).read_bytes())
    return ["--expected-sha256", manifest.artifact.sha256]


def start_server(model_dir: Path, name: str, *args: str) -> Server:
    """Start ``kondense serve`` and wait until it is ready (raises with its log if it exits first)."""
    port = free_port()
    command = [*KONDENSE, "serve", "--model", str(model_dir), "--name", name, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--threads", "1", *expected_digest_args(model_dir, args), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    server = Server(process, port, name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode} before it was ready:\n{out}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("server did not become ready within 60 s")


@contextlib.contextmanager
def running_server(model_dir: Path, name: str, *args: str) -> Iterator[Server]:
    server = start_server(model_dir, name, *args)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def digits_server(digits: Digits) -> Iterator[Server]:
    with running_server(digits.directory, "digits", "--max-body-bytes", "200000") as server:
        yield server


@pytest.fixture(scope="session")
def datatypes_server(datatypes_dir: Path) -> Iterator[Server]:
    with running_server(datatypes_dir, "datatypes") as server:
        yield server


def run_all(runner: InferenceRunner, rows: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Start ``runner``, hand it every row of digits at once (one request each), stop it."""

    async def main() -> list[dict[str, np.ndarray]]:
        await runner.start()
        try:
            return await asyncio.gather(*(runner.run({"input": row}, None) for row in rows))
        finally:
            await runner.stop()

    return asyncio.run(main())
