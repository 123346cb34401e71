"""Start real `kondense serve` processes for tests."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from kondense.localcluster.prometheus import free_port


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _expected_digest(model_dir: Path, extra: tuple[str, ...]) -> list[str]:
    """The manifest's digest as ``--expected-sha256`` (the operator passes the one it recorded)."""
    from kondense.api.artifacts import MANIFEST_FILE, Manifest

    if "--no-verify" in extra or "--expected-sha256" in extra or not (model_dir / MANIFEST_FILE).is_file():
        return []
    manifest = Manifest.model_validate_json((model_dir / MANIFEST_FILE).read_bytes())
    return ["--expected-sha256", manifest.artifact.sha256]


def start_server(model_dir: Path, name: str, *extra: str, log: Path | None = None) -> ServerProcess:
    port = free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "kondense.cli", "serve", "--model", str(model_dir), "--name", name,
         "--host", "127.0.0.1", "--port", str(port), *_expected_digest(model_dir, extra), *extra],
        stdout=out, stderr=out,
    )  # fmt: skip
    server = ServerProcess(proc, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kondense serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("kondense serve did not become ready in 60 s")
