"""``kondense up`` as a user runs it: the real ``kondense`` and ``kubectl`` binaries in a shell's shoes.

up (in the background) -> ``export KUBECONFIG`` -> ``kubectl apply`` the digits example -> Promoted ->
``kondense down`` leaves no process it started (by PID) -> ``kondense up`` again: the CompressedModel
is still there, still Promoted, with the same uid -> down.

The CompressedModel is the digits example with the quick profile the demo tests use (two targets, two
5 s steps): the example as written takes many minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kondense.localcluster.up import alive
from kondense_testing.upcluster import (
    KONDENSE,
    kubeconfig_env,
    kubectl,
    quick_digits,
    recorded_processes,
    run,
    wait_for_phase,
)

pytestmark = [pytest.mark.localcluster, pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def examples_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where `kondense up` builds the digits example (it copies it to pvc://models/digits)."""
    return tmp_path_factory.mktemp("examples") / "digits"


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "up"
    yield where
    subprocess.run([KONDENSE, "down", "--workdir", str(where)], capture_output=True, timeout=180)


def test_up_apply_promote_down_up_again(tmp_path: Path, workdir: Path, examples_cache: Path) -> None:
    up = [KONDENSE, "up", "--workdir", str(workdir), "--examples-cache", str(examples_cache)]
    out = run(up)
    assert "dashboard: " in out
    KUBECTL = kubectl()
    env = kubeconfig_env(out)
    assert "already up" in run(up)  # a second `up` while running starts nothing

    run([KUBECTL, "apply", "-f", str(quick_digits(tmp_path))], env)
    assert wait_for_phase(env, "digits", {"Promoted", "RolledBack", "Failed"}, 900) == "Promoted"
    uid = run([KUBECTL, "get", "cmodel", "digits", "-o", "jsonpath={.metadata.uid}"], env)
    header, row = run([KUBECTL, "get", "cmodel", "digits"], env).splitlines()[:2]
    assert header.split()[:4] == ["NAME", "PHASE", "VARIANT", "WEIGHT"] and row.split()[:2] == [
        "digits",
        "Promoted",
    ]
    described = run([KUBECTL, "describe", "cmodel", "digits"], env)
    assert "Events:" in described and "Promoted" in described.split("Events:")[1]
    processes = recorded_processes(workdir)
    assert len(processes) > 3  # the daemon, Prometheus, the operator, compression Jobs, servers

    out = run([KONDENSE, "down", "--workdir", str(workdir)], timeout=180)
    assert "stopped" in out
    assert [p for p in processes if alive(p)] == []
    assert "not up" in run([KONDENSE, "down", "--workdir", str(workdir)])

    env = kubeconfig_env(run(up))  # resumes from the same work directory
    assert run([KUBECTL, "get", "cmodel", "digits", "-o", "jsonpath={.status.phase}"], env) == "Promoted"
    assert run([KUBECTL, "get", "cmodel", "digits", "-o", "jsonpath={.metadata.uid}"], env) == uid
    assert (workdir / "prometheus" / "data").is_dir()
    assert run([KUBECTL, "get", "deployments", "-o", "name"], env).strip()  # stable serves again
    run([KUBECTL, "delete", "cmodel", "digits"], env)  # waits for the object; its children follow
    deadline = time.monotonic() + 120
    while run([KUBECTL, "get", "deployments,services,jobs", "-o", "name"], env).strip():
        assert time.monotonic() < deadline, run([KUBECTL, "get", "deployments,services,jobs"], env)
        time.sleep(1)
    processes = recorded_processes(workdir)
    run([KONDENSE, "down", "--workdir", str(workdir)], timeout=180)
    assert [p for p in processes if alive(p)] == []
