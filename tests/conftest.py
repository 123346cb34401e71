"""Markers by location, for `make test-fast` (pytest -m "not slow and not localcluster and not
integration and not e2e"): the unit and in-process tests stay, the ones that start processes, train
models or wait on real time go.

A test is fast unless listed here (or marked in its file): new unit tests land in `make test-fast`
by default. List a file, or one test by its node id, when it starts servers or Jobs, trains, or takes
more than about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# the operator as a process against the local API (subprocesses, fixed waits)
INTEGRATION = ("integration/",)
# real compression runs, model-server processes, Prometheus, kopf operators, the kind cluster
SLOW = (
    "compression/",
    "jobs/",
    "prometheus/",
    "chart/test_chart_kind.py",
    "serving/test_lifecycle.py",
    "serving/test_shadow.py",
    "serving/test_http.py",
    "serving/test_tritonclient.py",
    "loadgen/test_loadgen.py::test_replays_rows_at_the_requested_rate",
    "localcluster/test_kopf_operator.py",
    "localcluster/test_kubelet.py",
    "localcluster/test_services.py",
    "localcluster/test_kubectl_compat.py",
    "api/test_validate_input.py::test_models_and_crd_agree_on_numeric_params",
    "api/test_validate_input.py::test_models_and_crd_agree_on_rollout_and_names",
    "api/test_validate_input.py::test_missing_file_and_stdin",
)


def _where(item: pytest.Item) -> str:
    path = Path(str(item.path)).resolve()
    try:
        relative = path.relative_to(TESTS).as_posix()
    except ValueError:
        return item.nodeid
    return relative + item.nodeid[item.nodeid.index("::") :] if "::" in item.nodeid else relative


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = _where(item)
        if where.startswith(INTEGRATION):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
        if where.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
