# mypy: disable-error-code="union-attr, index, attr-defined, unused-ignore, arg-type, call-overload"
"""Hostile CompressedModels (issue 11): `kondense validate` answers each with a clear error that names
the field, never a traceback; the real operator process, against the embedded local API server (which,
like a cluster without the CRD's CEL rules, lets them in), reports them on the resource and acts on
none of them: no Job, no Service, no request to a Prometheus the operator does not allow."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kondense.api.resource import DNS1035_LABEL, MODEL_NAME_MAX
from kondense.api.validation import validate_object
from kondense.cli import build_app
from kondense_testing.builders import DIGITS
from kondense_testing.crd_schema import violations

RUNNER = CliRunner()
APP = build_app()


def validate_cli(tmp_path: Path, body: Any, name: str = "cr.yaml") -> tuple[int, str]:
    """`kondense validate FILE` in-process (the same Typer app as the command): exit code, stderr."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    result = RUNNER.invoke(APP, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr if hasattr(result, "stderr") else result.output


def with_name(name: Any) -> dict[str, Any]:
    body = copy.deepcopy(DIGITS)
    body["metadata"]["name"] = name
    return body


HOSTILE_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HOSTILE_SETTINGS
@given(
    name=st.one_of(
        st.text(max_size=300),
        st.text(alphabet="abcxyz0129-.", min_size=1, max_size=80),
        st.from_regex(r"\A[a-z]([-a-z0-9]{0,70}[a-z0-9])?\Z"),
        st.integers(),
        st.lists(st.text(max_size=3), max_size=2),
    )
)
@example(name="1st-digits")
@example(name="digits.v2")
@example(name="a" * (MODEL_NAME_MAX + 1))
@example(name="x" * 253)
@example(name="digits\n")
@example(name="ｄigits")
def test_names(tmp_path_factory: pytest.TempPathFactory, name: Any) -> None:
    ok = isinstance(name, str) and len(name) <= MODEL_NAME_MAX and re.fullmatch(DNS1035_LABEL, name)
    body = with_name(name)
    _, errors = validate_object(body)
    if ok:
        assert errors == []
        assert violations(body) == []
        return
    assert [e.path for e in errors] == ["metadata.name"], errors
    code, err = validate_cli(tmp_path_factory.mktemp("n"), body)
    assert code == 1 and ": metadata.name: " in err
    if isinstance(name, str) and len(name) <= 253:
        assert any(v.path == "metadata.name" for v in violations(body))


def numeric_leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from numeric_leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from numeric_leaves(value, (*path, index))
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path


LEAVES = list(numeric_leaves(DIGITS["spec"], ("spec",)))


def dotted(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def put(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@HOSTILE_SETTINGS
@given(
    leaf=st.sampled_from(LEAVES),
    value=st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -(10**30), 2**63]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**40), max_value=10**40),
    ),
)
def test_nan_infinite_and_huge_numbers(
    tmp_path_factory: pytest.TempPathFactory, leaf: tuple[Any, ...], value: Any
) -> None:
    body = copy.deepcopy(DIGITS)
    put(body, leaf, value)
    model, errors = validate_object(body)
    if not errors:
        assert isinstance(value, int) or math.isfinite(value), f"{dotted(leaf)} accepted {value}"
        assert model is not None
        json.dumps(model.model_dump(mode="json"), allow_nan=False)  # what the operator would write
        return
    # An element of a list may break a rule between elements (steps strictly increasing): that error
    # is the list's, e.g. "spec.rollout.steps: must be strictly increasing (25 then 1)".
    where = [dotted(leaf)] + ([dotted(leaf[:-1])] if isinstance(leaf[-1], int) else [])
    assert any(e.path.startswith(w) for e in errors for w in where), (dotted(leaf), errors)
    code, err = validate_cli(tmp_path_factory.mktemp("v"), body)
    assert code == 1 and any(f": {w}" in err for w in where)


GATES_OFF = [
    {"errorRate": {"max": 1}},
    {"errorRate": {"max": 1.0}, "accuracyDelta": {"max": 1}},
    {"window": "1h", "minRequests": 1, "errorRate": {"max": 1}},
]


@pytest.mark.parametrize("analysis", GATES_OFF)
def test_every_gate_off_is_refused(tmp_path: Path, analysis: dict[str, Any]) -> None:
    body = copy.deepcopy(DIGITS)
    body["spec"]["rollout"]["analysis"] = analysis
    code, err = validate_cli(tmp_path, body)
    assert code == 1
    assert "spec.rollout.analysis.errorRate.max: every analysis gate is off" in err
    assert [v.path for v in violations(body)] == ["spec.rollout.analysis.errorRate.max"]


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://x", "javascript:alert(1)", "http://", "ftp://prom:9090",
     "http://" + "a" * 3000, " http://prom:9090", 42],
)  # fmt: skip
def test_prometheus_urls_that_are_not_http_are_refused(tmp_path: Path, url: Any) -> None:
    body = copy.deepcopy(DIGITS)
    body["spec"]["rollout"]["analysis"]["prometheus"] = {"url": url}
    code, err = validate_cli(tmp_path, body)
    assert code == 1 and ": spec.rollout.analysis.prometheus.url: " in err


def test_the_real_command_on_a_file_of_hostile_documents(tmp_path: Path) -> None:
    docs = [with_name("1st.digits"), copy.deepcopy(DIGITS), copy.deepcopy(DIGITS)]
    docs[1]["spec"]["rollout"]["analysis"] = {"errorRate": {"max": 1}}
    docs[2]["spec"]["rollout"]["analysis"]["p99LatencyMs"] = {"max": math.nan}
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [sys.executable, "-m", "kondense.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{path} (document 1): metadata.name: '1st.digits' must be a DNS-1035 label" in result.stderr
    assert (
        f"{path} (document 2): spec.rollout.analysis.errorRate.max: every analysis gate is off"
        in result.stderr
    )
    assert f"{path} (document 3): spec.rollout.analysis.p99LatencyMs.max: " in result.stderr


# ------------------------------------------------------------------------------------------------
# the real operator process against the embedded local API server


class Foreign:
    """A loopback HTTP server standing in for a host a CR names: it counts every request it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                data = b'{"status": "success", "data": {"resultType": "vector", "result": []}}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(240)
def test_the_operator_reports_hostile_crs_and_acts_on_none(tmp_path: Path) -> None:
    from kubernetes import client, config

    from kondense.api.crd import crd
    from kondense.localcluster.apiserver import LocalAPIServer
    from kondense.localcluster.prometheus import free_port

    ns, group, version, plural = "ml", "kondense.dev", "v1alpha1", "compressedmodels"
    foreign = Foreign()
    api = LocalAPIServer(validate_custom_resources=False).start()  # the operator's own checks are under test
    operator = None
    log = tmp_path / "operator.log"
    try:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        config.load_kube_config(str(kubeconfig))
        client.ApiextensionsV1Api().create_custom_resource_definition(crd())
        core, custom = client.CoreV1Api(), client.CustomObjectsApi()
        core.create_namespace({"metadata": {"name": ns}})
        pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "models"}, "spec": pvc})
        env = dict(
            os.environ,
            KUBECONFIG=str(kubeconfig),
            KONDENSE_TICK_SECONDS="0.5",
            KONDENSE_METRICS_PORT=str(free_port()),
            KONDENSE_HEALTH_PORT=str(free_port()),
            KONDENSE_PROMETHEUS_URL="http://prometheus.monitoring:9090",
        )
        operator = subprocess.Popen(
            [sys.executable, "-m", "kondense.cli", "operator", "--namespace", ns],
            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip

        def cr(name: str, analysis: dict[str, Any] | None = None) -> dict[str, Any]:
            body = copy.deepcopy(DIGITS)
            body["metadata"] = {"name": name, "namespace": ns}
            if analysis is not None:
                body["spec"]["rollout"]["analysis"] = analysis
            return body

        hostile = {
            "foreign-prometheus": (
                cr("foreign-prometheus", {"prometheus": {"url": foreign.url}, "errorRate": {"max": 0.01}}),
                f"spec.rollout.analysis.prometheus.url: '{foreign.url}' is not an allowed Prometheus URL",
            ),
            "metadata-host": (
                cr("metadata-host", {"prometheus": {"url": "http://169.254.169.254/latest"}}),
                "spec.rollout.analysis.prometheus.url: 'http://169.254.169.254/latest' is not an allowed",
            ),
            "gates-off": (
                cr("gates-off", {"errorRate": {"max": 1}}),
                "spec.rollout.analysis.errorRate.max: every analysis gate is off",
            ),
            "huge-p99": (
                cr("huge-p99", {"p99LatencyMs": {"max": 1e300}}),
                "spec.rollout.analysis.p99LatencyMs.max: must be <= 600000",
            ),
            "1st.digits": (cr("1st.digits"), "metadata.name: '1st.digits' must be a DNS-1035 label"),
        }
        for body, _ in hostile.values():
            custom.create_namespaced_custom_object(group, version, ns, plural, body)

        deadline = time.monotonic() + 120
        pending = set(hostile)
        while pending and time.monotonic() < deadline:
            assert operator.poll() is None, log.read_text()[-3000:]
            for name in list(pending):
                status = (
                    custom.get_namespaced_custom_object(group, version, ns, plural, name).get("status") or {}
                )
                invalid = [c for c in status.get("conditions", []) if c["type"] == "Invalid"]
                if invalid:
                    assert invalid[0]["status"] == "True"
                    assert hostile[name][1] in invalid[0]["message"], invalid[0]["message"]
                    assert status["phase"] == "Failed"
                    pending.discard(name)
            time.sleep(0.3)
        assert not pending, f"no Invalid condition for {pending}; log:\n{log.read_text()[-3000:]}"
        time.sleep(2)  # a few more ticks: still nothing acted on
        assert client.BatchV1Api().list_namespaced_job(ns).items == []
        assert core.list_namespaced_service(ns).items == []
        assert client.AppsV1Api().list_namespaced_deployment(ns).items == []
        assert foreign.requests == []
        assert "Traceback" not in log.read_text()
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        api.stop()
        foreign.close()
