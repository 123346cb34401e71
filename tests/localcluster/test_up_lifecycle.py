"""``kondense up`` as a user runs it: the real ``kondense`` and ``kubectl`` binaries in a shell's shoes.

up (in the background) -> ``export KUBECONFIG`` -> ``kubectl apply`` the digits example -> Promoted ->
``kondense down`` leaves no process it started (by PID) -> ``kondense up`` again: the CompressedModel
is still there, still Promoted, with the same uid -> down.

The cluster up to Promoted is the session's shared ``kondense up`` cluster (``promoted_up``,
tests/conftest.py: the first ``up``, the ``apply`` and the wait for Promoted happen there, with the same
commands); the second test stops it, resumes it and stops it again, after every other test of that
cluster. The CompressedModel is the digits example with the quick profile the demo tests use (two
targets, two 5 s steps): the example as written takes many minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import time

import pytest

from kondense.localcluster.up import alive
from kondense_testing.upcluster import KONDENSE, UpCluster, kubeconfig_env, kubectl, recorded_processes, run

pytestmark = [pytest.mark.localcluster, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_up_apply_promote(promoted_up: UpCluster) -> None:
    assert "dashboard: " in promoted_up.up_output
    KUBECTL, env = kubectl(), promoted_up.env
    assert "already up" in run(promoted_up.up_argv)  # a second `up` while running starts nothing

    assert run([KUBECTL, "get", "cmodel", "digits", "-o", "jsonpath={.status.phase}"], env) == "Promoted"
    header, row = run([KUBECTL, "get", "cmodel", "digits"], env).splitlines()[:2]
    assert header.split()[:4] == ["NAME", "PHASE", "VARIANT", "WEIGHT"] and row.split()[:2] == [
        "digits",
        "Promoted",
    ]
    described = run([KUBECTL, "describe", "cmodel", "digits"], env)
    assert "Events:" in described and "Promoted" in described.split("Events:")[1]
    processes = recorded_processes(promoted_up.workdir)
    assert len(processes) > 3  # the daemon, Prometheus, the operator, compression Jobs, servers


def test_down_then_up_again_resumes(promoted_up_to_stop: UpCluster) -> None:
    cluster = promoted_up_to_stop
    workdir, up, KUBECTL = cluster.workdir, cluster.up_argv, kubectl()
    env = cluster.env
    uid = run([KUBECTL, "get", "cmodel", "digits", "-o", "jsonpath={.metadata.uid}"], env)
    processes = recorded_processes(workdir)

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
