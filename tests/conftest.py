"""Markers by location, for `make test-fast` (pytest -m "not slow and not localcluster and not
integration and not e2e"): the unit and in-process tests stay, the ones that start processes, train
models or wait on real time go.

A test is fast unless listed here (or marked in its file): new unit tests land in `make test-fast`
by default. List a file, or one test by its node id, when it starts servers or Jobs, trains, or takes
more than about a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kondense_testing.digits import DigitsBuild, build_digits

if TYPE_CHECKING:
    from kondense_testing.upcluster import UpCluster

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
    _run_the_shared_cluster_users_together(items)


def _uses(item: pytest.Item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


def _run_the_shared_cluster_users_together(items: list[pytest.Item]) -> None:
    """The tests of the shared ``kondense up`` cluster (``promoted_up``) run one after another where the
    first of them was collected, so the cluster is up only while they run (never a background load on
    other tests); the one that stops it (``promoted_up_to_stop``) runs last of them."""
    users = [item for item in items if _uses(item, "promoted_up")]
    if not users:
        return
    first = items.index(users[0])
    chosen = set(users)
    rest = [item for item in items if item not in chosen]
    users.sort(key=lambda item: _uses(item, "promoted_up_to_stop"))  # stable: collection order otherwise
    items[:] = rest[:first] + users + rest[first:]


# ---- fixtures shared across directories -------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory: pytest.TempPathFactory) -> DigitsBuild:
    """The digits example, built once per session with the real ``kondense example digits`` (seeded:
    every build is the same). Read it, never write into it: a cluster gets a copy (``kondense up
    --examples-cache``, ``install_example``)."""
    return build_digits(tmp_path_factory.mktemp("digits-example"))


@pytest.fixture(scope="session")
def digits_example(digits_build: DigitsBuild) -> Path:
    from kondense.localcluster.scenarios import EXAMPLE_FILES

    assert all((digits_build.root / name).is_file() for name in EXAMPLE_FILES)
    return digits_build.root


@pytest.fixture(scope="session")
def promoted_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    """One ``kondense up`` cluster (the real command, as a user runs it: it builds the digits example
    into a fresh cache itself) with the quick digits example applied and Promoted, shared by the tests
    that need no more than that; ``kondense down`` when the session ends (a no-op once
    ``promoted_up_to_stop``'s test stopped it)."""
    from kondense_testing.upcluster import UpCluster

    root = tmp_path_factory.mktemp("promoted-up")
    cluster = UpCluster(root / "up", root / "examples" / "digits")
    try:
        cluster.start()
        cluster.promote_quick_digits(root)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def promoted_up_to_stop(promoted_up: UpCluster) -> UpCluster:
    """The shared cluster for the one test that stops and resumes it: it runs after every other user
    (``_run_the_shared_cluster_users_together``)."""
    return promoted_up
