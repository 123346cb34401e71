"""Shadow agreement: comparison rules in process, then a real canary shadowing a real stable server."""

from __future__ import annotations

import gzip
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from kondense.api.artifacts import MODEL_FILE
from kondense.api.techniques import Task
from kondense.serving.shadow import compare_outputs
from kondense_testing.procfs import tree_rss_bytes

from .conftest import Digits, Server, free_port, running_server

THRESHOLDS = {"cosine_threshold": 0.99, "rel_error_threshold": 0.05}


def test_classification_compares_top1_per_sample() -> None:
    canary = {"logits": np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]], np.float32)}
    stable = {"logits": np.array([[0.2, 0.7], [0.1, 0.9], [0.0, 5.0]], np.float32)}
    result = compare_outputs(Task.CLASSIFICATION, canary, stable, **THRESHOLDS)
    assert (result.agree, result.disagree, result.scores) == (2, 1, None)
    labels = compare_outputs(
        Task.CLASSIFICATION, {"label": np.array([1, 2, 3])}, {"label": np.array([1, 0, 3])}, **THRESHOLDS
    )
    assert (labels.agree, labels.disagree) == (2, 1)


def test_embedding_compares_cosine_against_the_threshold() -> None:
    stable = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    canary = np.array([[2.0, 0.01], [0.0, 1.0], [0.0, 0.0]], np.float32)
    result = compare_outputs(Task.EMBEDDING, {"e": canary}, {"e": stable}, **THRESHOLDS)
    assert (result.agree, result.disagree) == (2, 1)
    assert result.scores is not None
    np.testing.assert_allclose(result.scores, [2 / np.hypot(2, 0.01), 0.0, 1.0])


def test_regression_compares_relative_error() -> None:
    stable = np.array([[10.0], [10.0], [0.0]], np.float32)
    canary = np.array([[10.4], [12.0], [0.0]], np.float32)
    result = compare_outputs(Task.REGRESSION, {"y": canary}, {"y": stable}, **THRESHOLDS)
    assert (result.agree, result.disagree) == (2, 1)
    assert result.scores is not None
    np.testing.assert_allclose(result.scores, [0.04, 0.2, 0.0], rtol=1e-5)


def test_different_shapes_disagree_on_every_sample() -> None:
    result = compare_outputs(
        Task.CLASSIFICATION, {"y": np.zeros((4, 10))}, {"y": np.zeros((4, 9))}, **THRESHOLDS
    )
    assert (result.agree, result.disagree) == (0, 4)


def _shadow_counts(server: Server) -> dict[str, float]:
    text = server.metrics()
    counts = {}
    for result in ("agree", "disagree", "error"):
        pattern = (
            rf'^kondense_shadow_comparisons_total{{model="digits",result="{result}",variant="canary"}} (\S+)$'
        )
        match = re.search(pattern, text, re.MULTILINE)
        assert match, f"no {result} series in /metrics"
        counts[result] = float(match.group(1))
    return counts


def _wait_for_total(server: Server, total: float, timeout: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        counts = _shadow_counts(server)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def _send_batches(server: Server, inputs: np.ndarray, rows: int) -> list[httpx.Response]:
    responses = []
    with httpx.Client(timeout=10) as client:
        for start in range(0, len(inputs), rows):
            batch = inputs[start : start + rows]
            tensor = {
                "name": "input",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
            responses.append(client.post(server.infer_url, json={"inputs": [tensor]}))
    return responses


@pytest.mark.parametrize("task", ["classification", "embedding"])
def test_identical_canary_agrees_on_every_sample(digits_server: Server, digits: Digits, task: str) -> None:
    args = ["--variant", "canary", "--shadow-of", digits_server.url, "--task", task]
    with running_server(digits.directory, "digits", *args) as canary:
        responses = _send_batches(canary, digits.inputs[:60], rows=4)
        assert all(response.status_code == 200 for response in responses)
        counts = _wait_for_total(canary, 60)
        assert counts == {"agree": 60, "disagree": 0, "error": 0}
        scores = re.search(
            r'^kondense_shadow_score_count{model="digits",variant="canary"} (\S+)$', canary.metrics(), re.M
        )
        assert scores and float(scores.group(1)) == (60 if task == "embedding" else 0)


def test_retrained_canary_disagreements_match_offline_agreement(
    digits_server: Server, digits: Digits, digits_retrained: Path
) -> None:
    inputs = digits.inputs[:200]
    canary_session = ort.InferenceSession(
        str(digits_retrained / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    offline_agree = int(
        np.sum(
            np.argmax(canary_session.run(None, {"input": inputs})[0], 1)
            == np.argmax(digits.reference(inputs), 1)
        )
    )
    assert 0 < offline_agree < 200, (
        "the two models should disagree on some digits for this test to mean anything"
    )
    args = ["--variant", "canary", "--shadow-of", digits_server.url]  # task from the manifest
    with running_server(digits_retrained, "digits", *args) as canary:
        _send_batches(canary, inputs, rows=8)
        counts = _wait_for_total(canary, 200)
    assert counts == {"agree": offline_agree, "disagree": 200 - offline_agree, "error": 0}


def test_stable_down_counts_errors_and_clients_never_notice(digits: Digits) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = ["--variant", "canary", "--shadow-of", nowhere, "--shadow-sample", "1"]
    with running_server(digits.directory, "digits", *args) as canary:
        responses = _send_batches(canary, digits.inputs[:20], rows=1)
        assert [response.status_code for response in responses] == [200] * 20
        counts = _wait_for_total(canary, 20)
    assert counts == {"agree": 0, "disagree": 0, "error": 20}


def test_slow_stable_fills_the_bounded_queue_without_delaying_clients(digits: Digits) -> None:
    stable_delay_s = 5.0
    with running_server(
        digits.directory, "digits", "--inject-latency-ms", str(stable_delay_s * 1000)
    ) as slow_stable:
        args = ["--variant", "canary", "--shadow-of", slow_stable.url, "--shadow-timeout-ms", "20000"]
        with running_server(digits.directory, "digits", *args) as canary:
            body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}

            def client_loop(requests: int) -> list[tuple[int, float]]:
                results = []
                with httpx.Client(timeout=30) as client:
                    for _ in range(requests):
                        started = time.monotonic()
                        code = client.post(canary.infer_url, json=body).status_code
                        results.append((code, time.monotonic() - started))
                return results

            with ThreadPoolExecutor(4) as pool:
                results = [item for chunk in pool.map(client_loop, [75] * 4) for item in chunk]
            assert [code for code, _ in results] == [200] * 300
            # Had any answer waited for the stable server it would have taken >= 5 s.
            assert max(seconds for _, seconds in results) < stable_delay_s / 2
            counts = _shadow_counts(canary)
            metrics = canary.metrics()
            depth = re.search(
                r'^kondense_shadow_queue_depth{model="digits",variant="canary"} (\S+)$', metrics, re.M
            )
            assert depth and float(depth.group(1)) <= 128
            # 4 in flight + at most 128 queued; the rest were dropped and counted at once
            assert counts["error"] >= 300 - 128 - 4
            assert counts["agree"] + counts["disagree"] == 0


def test_the_shadow_queue_is_bounded_by_bytes(digits: Digits) -> None:
    """Before: 128 queued gzip bodies, each inflated, took the canary from 108 MB to 1.27 GB of RSS.
    Now the queue holds at most --shadow-max-queue-bytes and drops (and counts) the rest."""
    budget = 4 * 1024 * 1024
    rows = 2000  # ~0.9 MB of JSON per request once inflated, a few kB gzipped
    batch = np.repeat(digits.inputs[:1], rows, axis=0)
    tensor = {"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": batch.ravel().tolist()}
    body = gzip.compress(json.dumps({"inputs": [tensor]}).encode())
    with running_server(digits.directory, "digits", "--inject-latency-ms", "20000") as slow_stable:
        args = [
            "--variant", "canary", "--shadow-of", slow_stable.url, "--shadow-timeout-ms", "60000",
            "--shadow-max-queue-bytes", str(budget),
        ]  # fmt: skip
        with running_server(digits.directory, "digits", *args) as canary:
            with httpx.Client(timeout=30) as client:
                codes = [
                    client.post(
                        canary.infer_url, content=body, headers={"content-encoding": "gzip"}
                    ).status_code
                    for _ in range(60)
                ]
            assert codes == [200] * 60
            metrics = canary.metrics()
            held = re.search(
                r'^kondense_shadow_queue_bytes{model="digits",variant="canary"} (\S+)$', metrics, re.M
            )
            assert held and 0 < float(held.group(1)) <= budget
            counts = _shadow_counts(canary)
            # at most budget / ~1 MB samples are held; every other request's rows were dropped and counted
            assert counts["error"] >= (60 - budget // (900 * 1024)) * rows
            assert tree_rss_bytes(canary.process.pid) < 600 * 1024 * 1024


# ---- mirror first (issue 13): a stable server tees a sample of its live requests to a canary ------


def _series(server: Server, pattern: str) -> float:
    match = re.search(pattern, server.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _mirror_counts(stable: Server, canary: str) -> dict[str, float]:
    return {
        result: _series(
            stable,
            rf'^kondense_mirror_comparisons_total{{canary="{canary}",model="digits",result="{result}",'
            rf'variant="stable"}} (\S+)$',
        )
        for result in ("agree", "disagree", "error")
    }


def test_stable_mirrors_to_a_canary_that_answers_no_user(digits: Digits, digits_retrained: Path) -> None:
    """The canary's answers to the copies are compared by stable (the offline agreement, exactly) and
    counted by the canary apart from user requests: kondense_requests_total never moves."""
    inputs = digits.inputs[:120]
    canary_session = ort.InferenceSession(
        str(digits_retrained / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    offline_agree = int(
        np.sum(
            np.argmax(canary_session.run(None, {"input": inputs})[0], 1)
            == np.argmax(digits.reference(inputs), 1)
        )
    )
    assert 0 < offline_agree < 120
    # the canary shadows (as the operator deploys it): a mirrored copy must never be shadowed back
    nowhere = f"http://127.0.0.1:{free_port()}"
    canary_args = ["--variant", "canary", "--shadow-of", nowhere]
    with running_server(digits_retrained, "digits", *canary_args) as canary:
        args = ["--mirror-to", canary.url, "--mirror-variant", "retrained"]  # task from the manifest
        with running_server(digits.directory, "digits", *args) as stable:
            responses = _send_batches(stable, inputs, rows=4)
            assert [r.status_code for r in responses] == [200] * 30
            deadline = time.monotonic() + 30
            while sum(_mirror_counts(stable, "retrained").values()) < 120 and time.monotonic() < deadline:
                time.sleep(0.1)
            counts = _mirror_counts(stable, "retrained")
            canary_metrics = canary.metrics()
    assert counts == {"agree": offline_agree, "disagree": 120 - offline_agree, "error": 0}
    mirrored = re.search(
        r'^kondense_mirrored_requests_total{code="200",model="digits",variant="canary"} (\S+)$',
        canary_metrics,
        re.M,
    )
    assert mirrored and float(mirrored.group(1)) == 30  # one copy per request (batches of 4 rows)
    answered = re.findall(r"^kondense_requests_total{.*} (\S+)$", canary_metrics, re.M)
    assert answered and all(float(v) == 0 for v in answered)  # no user request was answered
    shadowed = re.findall(r"^kondense_shadow_comparisons_total{.*} (\S+)$", canary_metrics, re.M)
    assert shadowed and all(float(v) == 0 for v in shadowed)  # nothing sent back to stable
    assert re.search(
        r'^kondense_mirrored_request_duration_seconds_count{model="digits",variant="canary"} 30\.0$',
        canary_metrics,
        re.M,
    )


def test_mirror_sample_and_a_canary_that_is_down(digits: Digits) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = ["--mirror-to", nowhere, "--mirror-sample", "1", "--mirror-variant", "gone"]
    with running_server(digits.directory, "digits", *args) as stable:
        responses = _send_batches(stable, digits.inputs[:10], rows=1)
        assert [r.status_code for r in responses] == [200] * 10  # users never notice
        deadline = time.monotonic() + 30
        while _mirror_counts(stable, "gone")["error"] < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _mirror_counts(stable, "gone") == {"agree": 0, "disagree": 0, "error": 10}
    with running_server(digits.directory, "digits", "--mirror-to", nowhere, "--mirror-sample", "0") as stable:
        _send_batches(stable, digits.inputs[:10], rows=1)
        time.sleep(0.5)
        assert _mirror_counts(stable, "canary") == {"agree": 0, "disagree": 0, "error": 0}
