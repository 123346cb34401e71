"""Helpers shared by the chart, kind and image tests.

Imported by name (`from chart_support import ...`): conftest.py puts this directory on sys.path,
because pytest runs with --import-mode=importlib where test directories are not importable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kondense"

Render = Callable[..., list[dict[str, Any]]]

# Compression Jobs may fetch base models from one host, over https.
MODEL_HOST_EGRESS = [
    {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
]

# Every optional feature on, watching two namespaces (Roles instead of a ClusterRole).
ALL_FEATURES: dict[str, Any] = {
    "watch": {"namespaces": ["team-a", "team-b"]},
    "gatewayAPI": {"enabled": True},
    "networkPolicy": {"enabled": True, "compression": {"egress": MODEL_HOST_EGRESS}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True},
    },
    "prometheusRule": {"enabled": True, "additionalAlertLabels": {"team": "ml-platform"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "ML"}},
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"example.com/owner": "ml"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
    "operator": {"extraEnv": [{"name": "EXTRA", "value": "1"}]},
}


def find_tool(name: str) -> str:
    """A tool on PATH or in .venv/bin; fails (never skips) with the command that installs it."""
    found = shutil.which(name)
    local = REPO / ".venv" / "bin" / name
    if found is None and local.is_file() and os.access(local, os.X_OK):
        found = str(local)
    if found is None:
        pytest.fail(f"`{name}` is not on PATH nor in .venv/bin: run `make tools` (scripts/install-tools.sh)")
    return found


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def helm_template(
    helm: str, tmp_path: Path, values: dict[str, Any] | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = [helm, "template", "kondense", str(CHART), "--namespace", "kondense", "--include-crds", *extra]
    if values is not None:
        values_file = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        cmd += ["--values", str(values_file)]
    return run(cmd)


def parse_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
