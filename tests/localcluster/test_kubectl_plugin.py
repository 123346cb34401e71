"""`kubectl kondense` driven by the real kubectl binary (plugin discovery on PATH) against the local API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kondense.api import intents
from kondense.api.crd import crd
from kondense.api.resource import GROUP, PLURAL, VERSION
from kondense_testing.paths import EXAMPLES
from kondense_testing.tools import find_tool

STATUS = {
    "phase": "Canary",
    "message": "canary int8 at 25%",
    "selectedVariant": "int8",
    "variants": [
        {"name": "int8", "phase": "Succeeded", "technique": "static-int8",
         "metrics": {"sizeRatio": 0.266, "p50Ms": 0.021, "accuracyDelta": 0.0}},
        {"name": "fp16", "phase": "Rejected", "technique": "fp16", "reason": "BudgetNotMet",
         "metrics": {"sizeRatio": 0.51, "p50Ms": 0.03, "accuracyDelta": 0.03}},
    ],
    "canary": {
        "variant": "int8", "step": 0, "weight": 25, "requestedWeight": 25, "failedChecks": 1,
        "checks": [
            {"time": "2026-12-02T08:29:04Z", "variant": "int8", "sli": "p99LatencyMs", "value": 99.75,
             "threshold": 50.0, "window": "4s", "passed": False, "message": "p99LatencyMs 99.75 > 50 over 4s"},
            {"time": "2026-12-02T08:29:04Z", "variant": "int8", "sli": "errorRate", "value": 0.0,
             "threshold": 0.01, "window": "4s", "passed": True},
        ],
    },
    "conditions": [{"type": "CanaryHealthy", "status": "False", "reason": "Breach",
                    "message": "p99LatencyMs=99.75>50", "lastTransitionTime": "2026-12-02T08:29:04Z"}],
}  # fmt: skip


@pytest.fixture
def plugin_env(kubeconfig: Path, tmp_path: Path) -> dict[str, str]:
    """kubectl finds plugins on PATH: the console script beside this Python (installed by make setup)."""
    script = Path(sys.executable).parent / "kubectl-kondense"
    assert script.is_file(), "kubectl-kondense is not installed: run `make setup`"
    return {
        "PATH": os.pathsep.join([str(script.parent), os.environ.get("PATH", "")]),
        "KUBECONFIG": str(kubeconfig),
        "HOME": str(tmp_path),
        **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "LANG")},
    }


@pytest.fixture
def model(api_client: kubernetes.client.ApiClient, custom: Any) -> dict[str, Any]:
    kubernetes.client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd())  # type: ignore[arg-type]
    body = yaml.safe_load((EXAMPLES / "digits" / "compressedmodel.yaml").read_text())
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "digits", {"status": STATUS}
    )
    return custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")


def kubectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("kubectl"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_kubectl_lists_and_runs_the_plugin_status(plugin_env: dict[str, str], model: dict[str, Any]) -> None:
    listed = kubectl(plugin_env, "plugin", "list")
    assert "kubectl-kondense" in listed.stdout, listed.stdout + listed.stderr
    shown = kubectl(plugin_env, "kondense", "status", "digits")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "default/digits" in out and "phase Canary" in out
    assert "canary int8: weight 25% (requested 25%, step 1/3), failed checks 1" in out
    assert "int8 *" in out and "0.266x" in out and "BudgetNotMet" in out
    assert "p99LatencyMs" in out and "99.75" in out and "fail" in out
    assert "CanaryHealthy" in out
    as_json = kubectl(plugin_env, "kondense", "status", "digits", "-o", "json")
    assert '"selectedVariant": "int8"' in as_json.stdout


def test_intents_are_written_to_the_resource(
    plugin_env: dict[str, str], model: dict[str, Any], custom: Any
) -> None:
    assert kubectl(plugin_env, "kondense", "pause", "digits").returncode == 0
    assert kubectl(plugin_env, "kondense", "promote", "digits", "--skip-analysis").returncode == 0
    assert kubectl(plugin_env, "kondense", "abort", "digits").returncode == 0
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")
    parsed = intents.parse(obj["metadata"]["annotations"])
    assert parsed.paused
    pending = parsed.pending({})
    assert [r.intent for r in pending] == [intents.Intent.ABORT, intents.Intent.PROMOTE]
    assert pending[1].skip_analysis
    # acknowledged nonces are not pending any more; resume clears the pause
    assert parsed.pending({r.intent.value: r.nonce for r in pending}) == []
    assert kubectl(plugin_env, "kondense", "resume", "digits").returncode == 0
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "digits")
    assert not intents.parse(obj["metadata"]["annotations"]).paused


def test_errors_are_one_sentence(plugin_env: dict[str, str], model: dict[str, Any]) -> None:
    missing = kubectl(plugin_env, "kondense", "status", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: compressedmodel nope: not found in namespace default"
    bad = kubectl(plugin_env, "kondense", "status", "digits", "-o", "xml")
    assert bad.returncode == 1 and "use table, json or yaml" in bad.stderr and "Traceback" not in bad.stderr


def test_intent_parsing_ignores_what_it_does_not_understand() -> None:
    parsed = intents.parse(
        {intents.PAUSED: "yes", "kondense.dev/abort": "  ", "kondense.dev/promote": "skip-analysis:"}
    )
    assert not parsed.paused and parsed.requests == ()
    with pytest.raises(ValueError):
        intents.annotation_value(intents.Intent.ABORT, "n", skip_analysis=True)
