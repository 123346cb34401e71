"""`kondense dashboard` as a user runs it: a process that prints its URL once it listens, serves pages
(a banner when the API cannot answer), and refuses bad options in one sentence."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from kondense.localcluster.prometheus import free_port

pytestmark = pytest.mark.slow  # starts a server process
KONDENSE = str(Path(sys.executable).parent / "kondense")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a non-interactive shell


@pytest.mark.parametrize(
    ("stop", "inherited"),
    [(signal.SIGINT, None), (signal.SIGTERM, None), (signal.SIGINT, _ignore_sigint)],
    ids=["ctrl-c", "sigterm", "ctrl-c-though-inherited-ignored"],
)
def test_the_command_serves_and_prints_its_url(stop: signal.Signals, inherited: Any) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [KONDENSE, "dashboard", "--api", nowhere, "--port", "0", "--refresh", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=inherited,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # blocks until the port is bound (or the process ends)
        assert line.startswith("dashboard: http://127.0.0.1:"), line + (
            process.stderr.read() if process.stderr else ""
        )
        url = line.removeprefix("dashboard: ")
        page = httpx.get(f"{url}/", timeout=60)
        assert page.status_code == 200
        assert f"the Kubernetes API at {nowhere} is unreachable" in page.text
        assert 'http-equiv="refresh"' not in page.text  # --refresh 0
    finally:
        process.send_signal(stop)
        try:
            process.wait(timeout=30)
        finally:
            process.kill()  # never left behind, whatever the outcome
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api", "localhost:6443"], "error: --api 'localhost:6443' is not an http(s) URL"),
        (
            ["--api", "http://x", "--kubeconfig", "k"],
            "error: give either --api or --kubeconfig/--context, not both",
        ),
        (["--prometheus", "prometheus:9090"], "error: --prometheus 'prometheus:9090' is not an http(s) URL"),
        (["--port", "70000"], "error: --port 70000 is not a port (0-65535)"),
    ],
)
def test_bad_options_are_one_sentence(args: list[str], message: str) -> None:
    done = subprocess.run([KONDENSE, "dashboard", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == message


def test_a_taken_port_is_one_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [KONDENSE, "dashboard", "--api", "http://127.0.0.1:1", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in done.stderr
