"""``kondense serve --workers N``: several server processes on one port, metrics added up."""

from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kondense.serving.workers import WORKERS_METRIC, merge_expositions

from .conftest import Digits, Server, free_port, running_server, start_server


def _exposition(requests: int, latencies: list[float], ready: bool, start: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("kondense_requests", "Requests.", ["code"], registry=registry)
    counter.labels("200").inc(requests)
    histogram = Histogram(
        "kondense_request_duration_seconds", "Latency.", buckets=(0.001, 0.01), registry=registry
    )
    for latency in latencies:
        histogram.observe(latency)
    Gauge("kondense_model_ready", "Ready.", registry=registry).set(1 if ready else 0)
    Gauge("process_start_time_seconds", "Start.", registry=registry).set(start)
    Gauge("kondense_shadow_queue_depth", "Queue.", registry=registry).set(requests % 7)
    Info("kondense_model", "Artifact.", registry=registry).info({"sha256": "ab"})
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_merged_expositions_add_up_counts_and_keep_what_a_sum_would_break() -> None:
    merged = _samples(
        merge_expositions(
            [_exposition(5, [0.0005, 0.005], True, 200.0), _exposition(3, [0.5], False, 100.0)]
        ).decode()
    )
    assert merged[("kondense_requests_total", (("code", "200"),))] == 8
    bucket = "kondense_request_duration_seconds_bucket"
    assert [merged[(bucket, (("le", le),))] for le in ("0.001", "0.01", "+Inf")] == [1, 2, 3]
    assert merged[("kondense_request_duration_seconds_count", ())] == 3
    assert merged[("kondense_request_duration_seconds_sum", ())] == pytest.approx(0.5055)
    assert merged[("kondense_shadow_queue_depth", ())] == 5 + 3
    assert merged[("kondense_model_ready", ())] == 0  # ready only when every worker is
    assert merged[("process_start_time_seconds", ())] == 100.0
    assert merged[("kondense_model_info", (("sha256", "ab"),))] == 1.0
    assert merged[(WORKERS_METRIC, ())] == 2
    created = [value for (name, _), value in merged.items() if name.endswith("_created")]
    assert created and all(value > 1e9 for value in created)


def _own_requests(directory: Path, index: int) -> float:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(5)
        channel.connect(str(directory / f"{index}.sock"))
        chunks = []
        while chunk := channel.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode()
    return sum(
        float(value)
        for value in re.findall(
            r'^kondense_requests_total\{code="200",[^}]*protocol="rest"[^}]*\} (\S+)$', text, re.M
        )
    )


def _workers_up(server: Server, workers: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if re.search(rf"^{WORKERS_METRIC} {float(workers)}$", server.metrics(), re.M):
            return
        time.sleep(0.2)
    raise AssertionError(f"{workers} workers did not all come up:\n{server.metrics()}")


def test_workers_share_the_ports_and_answer_for_each_other(digits: Digits) -> None:
    grpc_port = free_port()
    with running_server(
        digits.directory, "digits", "--workers", "2", "--grpc-port", str(grpc_port)
    ) as server:
        _workers_up(server, 2)
        (directory,) = Path(tempfile.gettempdir()).glob(f"kondense-workers-{server.process.pid}-*")
        rows = digits.inputs[:60]
        expected = digits.reference(rows)
        for row, want in zip(
            rows, expected, strict=True
        ):  # a connection each: the workers take turns accepting
            answer = httpx.post(
                server.infer_url,
                json={
                    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]
                },
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["outputs"][0]["data"], want, rtol=1e-5, atol=1e-5)
        own = [_own_requests(directory, index) for index in (0, 1)]
        assert sum(own) == len(rows) and all(count > 0 for count in own), own

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for row, want in zip(rows[:10], expected, strict=False):
            tensor = grpcclient.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(row[None])
            result = client.infer("digits", [tensor]).as_numpy("logits")
            np.testing.assert_allclose(result[0], want, rtol=1e-5, atol=1e-5)
        client.close()

        for _ in range(4):  # whichever worker answers the scrape, it answers for both
            metrics = server.metrics()
            assert re.search(
                r'^kondense_requests_total\{code="200",[^}]*protocol="rest"[^}]*\} 60\.0$', metrics, re.M
            )
            assert re.search(
                r'^kondense_requests_total\{code="200",[^}]*protocol="grpc"[^}]*\} 10\.0$', metrics, re.M
            )
            assert re.search(r"^kondense_model_ready\{[^}]*\} 1\.0$", metrics, re.M)
        code, log = server.stop()
    assert code == 0, log
    assert "2 workers (pids" in log
    assert not directory.exists()


def test_a_worker_that_dies_stops_the_server(digits: Digits) -> None:
    server = start_server(digits.directory, "digits", "--workers", "2")
    try:
        _workers_up(server, 2)
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        workers = [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, children
        os.kill(workers[0], signal.SIGKILL)
        server.process.wait(timeout=60)
    finally:
        code, log = server.stop()
    assert code == 1, log
    assert f"exited with code -{signal.SIGKILL.value}" in log and "stopping every worker" in log
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_model_that_does_not_load_stops_every_worker(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeError, match="exited with 1 before it was ready") as failed:
        start_server(tmp_path, "broken", "--workers", "2", "--no-verify")
    assert "failed to load" in str(failed.value)
    assert "stopping every worker" in str(failed.value)


def test_workers_refuse_a_taken_port_and_a_grpc_port_of_0(digits: Digits) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as failed:
            start_server(digits.directory, "digits", "--workers", "2", "--grpc-port", str(port))
        assert f"the gRPC port 127.0.0.1:{port} cannot be opened" in str(failed.value)
        assert "Traceback" not in str(failed.value)
    with pytest.raises(RuntimeError) as failed:
        start_server(digits.directory, "digits", "--workers", "2", "--grpc-port", "0")
    assert "--workers needs a fixed --grpc-port" in str(failed.value)
