"""The load generator against a real `kondense serve` process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from kondense.loadgen.requests import DataError, request_bodies
from kondense_testing.onnx_models import artifact_dir, manifest_digest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    model = artifact_dir(tmp_path / "model")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kondense.cli", "serve", "--model", str(model), "--name", "m", "--host", "127.0.0.1",
         "--port", str(port), "--expected-sha256", manifest_digest(model)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_replays_rows_at_the_requested_rate(server: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = tmp_path / "eval.npz"
    np.savez(data, x=rng.normal(size=(7, 64)).astype(np.float32), labels=rng.integers(0, 10, size=7))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "kondense.cli", "loadgen", "--url", server, "--model", "m",
         "--data", f"file://{data}", "--rps", "40", "--duration", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["codes"] == {"200": summary["sent"]}
    assert 70 <= summary["sent"] <= 82  # 40 rps for 2 s, open loop
    assert elapsed < 30


def test_bodies_and_bad_data() -> None:
    bodies = request_bodies({"x": np.zeros((2, 3), np.float32), "labels": np.array([1, 2])})
    assert bodies[1]["inputs"] == [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 0.0, 0.0]}
    ]
    with pytest.raises(DataError, match="only labels"):
        request_bodies({"labels": np.array([1])})
    with pytest.raises(DataError, match="disagree"):
        request_bodies({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


def test_unreadable_data_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kondense.cli", "loadgen", "--url", "http://127.0.0.1:9", "--model", "m",
         "--data", str(tmp_path / "missing.npz"), "--duration", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "missing.npz" in result.stderr and "Traceback" not in result.stderr
