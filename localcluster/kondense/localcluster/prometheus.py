"""A real Prometheus (the Debian/upstream binary) scraping local processes.

Targets come from a file_sd JSON file that is rewritten as pods come and go; each target carries the
labels the cluster's relabeling would give it (``namespace``, ``pod``), so the operator's PromQL is the
same here as on a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import yaml


class PrometheusError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPrometheus:
    def __init__(
        self,
        workdir: Path,
        scrape_interval: str = "1s",
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.port = port or free_port()
        self.binary = binary or shutil.which("prometheus") or "/usr/bin/prometheus"
        self._proc: subprocess.Popen[bytes] | None = None
        self.targets_file = workdir / "targets.json"
        self.log_file = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, targets: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        """[(host:port, labels)] to scrape at /metrics; written atomically (Prometheus watches the file)."""
        groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.workdir, suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(groups, fh)
        os.replace(tmp, self.targets_file)

    def start(self, timeout: float = 60.0) -> str:
        if not Path(self.binary).exists():
            raise PrometheusError(
                f"prometheus not found at {self.binary}: install it (apt-get install prometheus, or `make tools`)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.set_targets([])
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": "pods",
                    "scrape_timeout": self.scrape_interval,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child process
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self._proc.returncode}); see {self.log_file}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout}s; see {self.log_file}")

    def wait_for_targets(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` targets are up (scraped at least once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                body = httpx.get(
                    f"{self.url}/api/v1/query", params={"query": "count(up == 1)"}, timeout=2
                ).json()
                result = body["data"]["result"]
                if result and int(float(result[0]["value"][1])) >= count:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        raise PrometheusError(f"fewer than {count} targets up after {timeout}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
