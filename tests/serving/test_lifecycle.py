"""Artifact checks at start-up, graceful shutdown, fault injection and micro-batching."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kondense.api.artifacts import MANIFEST_FILE, MODEL_FILE
from kondense.serving.artifact import ArtifactError, check_artifact
from kondense.serving.batching import DynamicBatcher
from kondense.serving.model import OnnxModel
from kondense_testing.onnx_models import manifest_digest
from kondense_testing.procfs import children

from .conftest import KONDENSE, Digits, expected_digest_args, free_port, running_server, start_server


def _serve_and_fail(model_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        *KONDENSE,
        "serve",
        "--model",
        str(model_dir),
        "--name",
        "m",
        "--port",
        str(free_port()),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_tampered_model_is_refused(digits: Digits, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(digits.directory, tampered)
    model = onnx.load(tampered / MODEL_FILE)
    bias = onnx.numpy_helper.to_array(model.graph.initializer[1]).copy()
    bias[0] += 1.0
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(bias, model.graph.initializer[1].name))
    onnx.save(model, tampered / MODEL_FILE)
    result = _serve_and_fail(tampered, *expected_digest_args(tampered, []))
    assert result.returncode == 2
    assert "has digest" in result.stderr and "says artifact.sha256 is" in result.stderr
    assert "refusing to serve" in result.stderr and "Traceback" not in result.stderr


def test_missing_manifest_is_refused_unless_no_verify(digits: Digits, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(digits.directory / MODEL_FILE, bare / MODEL_FILE)
    result = _serve_and_fail(bare, "--expected-sha256", manifest_digest(digits.directory))
    assert result.returncode == 2
    assert f"{bare / MANIFEST_FILE} is missing" in result.stderr and "--no-verify" in result.stderr
    with running_server(bare, "digits", "--no-verify") as server:
        parameters = httpx.get(f"{server.url}/v2/models/digits").json()["parameters"]
        assert parameters["verified"] is False and len(parameters["sha256"]) == 64


def test_check_artifact_rejects_bad_directories(digits: Digits, tmp_path: Path) -> None:
    expected = manifest_digest(digits.directory)
    with pytest.raises(ArtifactError, match="does not exist or is not a directory"):
        check_artifact(tmp_path / "nope", expected_sha256=expected)
    broken = tmp_path / "broken"
    shutil.copytree(digits.directory, broken)
    (broken / MANIFEST_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match="is not a valid manifest"):
        check_artifact(broken, expected_sha256=expected)
    escaping = tmp_path / "escaping"
    shutil.copytree(digits.directory, escaping)
    manifest = json.loads((digits.directory / MANIFEST_FILE).read_text())
    manifest["artifact"]["file"] = "../digits/model.onnx"
    (escaping / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="points outside"):
        check_artifact(escaping, expected_sha256=expected)
    checked = check_artifact(digits.directory, expected_sha256=expected)
    assert checked.verified and checked.sha256 == manifest["artifact"]["sha256"]


def test_bad_flags_get_clear_errors(digits: Digits) -> None:
    pinned = expected_digest_args(digits.directory, [])
    result = _serve_and_fail(digits.directory, *pinned, "--shadow-of", "stable:8080")
    assert result.returncode == 2 and "is not an http(s) base URL" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--shadow-sample", "1.5", "--shadow-of", "http://x:1")
    assert result.returncode == 2 and "--shadow-sample" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--mirror-variant", "int8")
    assert result.returncode == 2 and "only apply with --mirror-to" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--mirror-to", "canary:8080")
    assert result.returncode == 2 and "--mirror-to 'canary:8080' is not an http(s) base URL" in result.stderr
    both = ["--mirror-to", "http://c:1", "--shadow-of", "http://s:1"]
    result = _serve_and_fail(digits.directory, *pinned, *both)
    assert result.returncode == 2 and "cannot be combined" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--shadow-sample", "0.5")
    assert result.returncode == 2 and "only applies with --shadow-of" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--inject-logit-scale", "0")
    assert result.returncode == 2 and "--inject-logit-scale" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--split-batches", "--max-batch-size", "4")
    assert result.returncode == 2 and "--split-batches applies when the server adapts" in result.stderr
    result = _serve_and_fail(digits.directory, *pinned, "--split-batches", "--threads", "1")
    assert result.returncode == 2 and "--split-batches needs 2 or more --threads" in result.stderr


def test_unloadable_model_exits_non_zero(tmp_path: Path) -> None:
    broken = tmp_path / "garbage"
    broken.mkdir()
    (broken / MODEL_FILE).write_bytes(b"not an onnx model")
    result = _serve_and_fail(broken, "--no-verify")
    assert result.returncode == 1
    assert "model 'm' failed to load: ONNX Runtime cannot load" in result.stderr


def test_sigterm_finishes_in_flight_requests(digits: Digits) -> None:
    server = start_server(digits.directory, "digits", "--inject-latency-ms", "1500")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(httpx.post, server.infer_url, json=body, timeout=30) for _ in range(2)]
        time.sleep(0.5)  # both requests are inside the server now, sleeping
        server.process.send_signal(signal.SIGTERM)
        responses = [future.result() for future in pending]
    code, log = server.stop()
    assert [response.status_code for response in responses] == [200, 200]
    assert all(len(response.json()["outputs"][0]["data"]) == 10 for response in responses)
    # uvicorn re-raises the SIGTERM after its graceful shutdown so the parent sees why it ended
    assert code in (0, -signal.SIGTERM), log
    assert "Finished server process" in log


def test_injected_errors_are_answered_500_and_counted(digits: Digits) -> None:
    with running_server(
        digits.directory, "digits", "--inject-error-rate", "1", "--variant", "canary"
    ) as server:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        responses = [httpx.post(server.infer_url, json=body) for _ in range(5)]
        assert [response.status_code for response in responses] == [500] * 5
        assert "injected error" in responses[0].json()["error"]
        series = 'kondense_requests_total{code="500",model="digits",protocol="rest",variant="canary"} 5.0'
        assert series in server.metrics()


@pytest.mark.parametrize(
    "args",
    [
        ["--max-batch-size", "16", "--max-batch-delay-ms", "20"],
        # rows over the batch size bypass the queue; two batches run side by side
        ["--max-batch-size", "4", "--max-batch-delay-ms", "5", "--inference-workers", "2"],
        ["--inference-workers", "3"],  # no batching, session calls on three threads
    ],
    ids=["batch16", "batch4-workers2", "workers3"],
)
def test_concurrent_requests_each_get_their_own_rows(digits: Digits, args: list[str]) -> None:
    sizes = [1, 2, 3, 1, 5, 1, 4, 2] * 6
    starts = np.cumsum([0, *sizes[:-1]])
    with running_server(digits.directory, "digits", *args) as server:

        def infer(index: int) -> np.ndarray:
            batch = digits.inputs[starts[index] : starts[index] + sizes[index]]
            tensor = {
                "name": "input",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
            response = httpx.post(server.infer_url, json={"inputs": [tensor]}, timeout=30)
            assert response.status_code == 200, response.text
            return np.array(response.json()["outputs"][0]["data"], np.float32).reshape(len(batch), 10)

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(infer, range(len(sizes))))
        bad = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 63}]}
        assert httpx.post(server.infer_url, json=bad).status_code == 400
        calls = re.search(
            r'^kondense_batch_rows_count{model="digits",variant="stable"} (\S+)$', server.metrics(), re.M
        )
    if "--max-batch-size" in args:
        assert calls is not None
        # 48 requests of 1-5 rows from 16 threads: some shared a session call
        assert 1 <= float(calls.group(1)) < len(sizes)
    for index, got in enumerate(results):
        want = digits.reference(digits.inputs[starts[index] : starts[index] + sizes[index]])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # batched GEMMs may round differently


def test_a_lone_client_is_not_held_for_the_batch_delay(digits: Digits) -> None:
    # With a 2 s batching delay, sequential requests would take >= 2 s each if they waited for company.
    with running_server(
        digits.directory, "digits", "--max-batch-size", "8", "--max-batch-delay-ms", "2000"
    ) as server:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            for _ in range(5):
                assert client.post(server.infer_url, json=body).status_code == 200
            assert time.monotonic() - started < 2.0


def test_batching_needs_a_dynamic_batch_dimension(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fixed.onnx")
    with pytest.raises(
        ValueError, match=r"dynamic first \(batch\) dimension on every input; fixed or missing on: x"
    ):
        DynamicBatcher(OnnxModel(tmp_path / "fixed.onnx"), max_batch_size=4, max_delay_s=0.001)


def test_injected_latency_shows_in_the_histogram(digits: Digits) -> None:
    with running_server(digits.directory, "digits", "--inject-latency-ms", "300") as server:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        for _ in range(3):
            assert httpx.post(server.infer_url, json=body).status_code == 200
        metrics = server.metrics()
    below = re.search(r'_bucket{le="0.3",model="digits",protocol="rest",variant="stable"} (\S+)', metrics)
    total = re.search(r'_count{model="digits",protocol="rest",variant="stable"} (\S+)', metrics)
    assert below and total and (float(below.group(1)), float(total.group(1))) == (0.0, 3.0)


def test_serving_module_entry_point_is_kondense_serve() -> None:
    # The serving image runs `python -m kondense.serving`, independent of other areas' commands.
    result = subprocess.run(
        [sys.executable, "-m", "kondense.serving", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--shadow-of" in result.stdout and "--max-batch-size" in result.stdout


def test_decode_workers_never_outlive_the_server(digits: Digits) -> None:
    """The decode worker process ends with the server, even when the server is SIGKILLed (OOM kill)."""
    for how in (signal.SIGTERM, signal.SIGKILL):
        server = start_server(digits.directory, "digits")
        descendants = _descendants(server.process.pid)
        assert descendants, "the server should have started its decode worker"
        server.process.send_signal(how)
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (alive := [pid for pid in descendants if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"left behind after {how.name}: {alive}"
        server.stop()


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        pending += (kids := children(pending.pop()))
        found += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
