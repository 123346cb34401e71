"""The confidence histogram a server exports for the drift gate: the rule (pure, known answers) and
real ``kondense serve`` processes observing every answered row, over REST and gRPC."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from kondense.api.techniques import Task
from kondense.serving.confidence import l2_norm, observations, scale_logits, top1_confidence
from kondense.serving.metrics import CONFIDENCE_BUCKETS

from .conftest import Digits, free_port, running_server


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "output", "expected"),
    [
        ("logits", np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), [math.e**2 / (math.e**2 + 2), 1 / 3]),
        ("probabilities read as they are", np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), [0.7, 0.8]),
        ("in [0, 1] but not summing to 1: logits", np.array([[0.5, 0.5, 0.5]]), [1 / 3]),
        ("single logit", np.array([[0.0], [math.log(3.0)]]), [0.5, 0.75]),
        ("single probability", np.array([[0.2], [0.9]]), [0.8, 0.9]),
        ("sequence [N, T, C]: a row per position", np.zeros((2, 3, 4)), [0.25] * 6),
        ("a non-finite row is not observed", np.array([[1.0, np.nan], [0.0, 0.0]]), [0.5]),
        ("labels are not observed", np.array([[3], [1]], dtype=np.int64), []),
        ("float16", np.array([[0.6, 0.4]], dtype=np.float16), [0.6]),
    ],
)
def test_top1_confidence(name: str, output: np.ndarray, expected: list[float]) -> None:
    assert top1_confidence(output) == pytest.approx(expected, abs=1e-3), name


def test_l2_norm_and_tasks() -> None:
    embedding = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    assert l2_norm(embedding) == pytest.approx([5.0, 0.0, 1.0])
    outputs = {"first": embedding, "second": np.ones((3, 2), dtype=np.float32)}
    assert observations(Task.EMBEDDING, "first", outputs) == pytest.approx([5.0, 0.0, 1.0])
    assert observations(Task.CLASSIFICATION, "first", outputs) == pytest.approx(
        softmax(embedding.astype(np.float64)).max(axis=1)
    )
    assert observations(Task.REGRESSION, "first", outputs).size == 0
    assert observations(None, "first", outputs).size == 0
    assert observations(Task.CLASSIFICATION, "absent", outputs).size == 0  # not asked for


@pytest.mark.parametrize("columns", [1, 2, 10, 64, 65, 384, 4096, 4097])
def test_a_lone_row_is_measured_as_in_a_batch(columns: int) -> None:
    """One answered row takes a plain-Python path: the same values as the row inside a batch."""
    rng = np.random.default_rng(columns)
    for row in (
        rng.normal(0, 4, (1, columns)),
        softmax(rng.normal(0, 4, (1, columns))),
        rng.uniform(0, 1, (1, columns)),
        np.full((1, columns), -800.0),
    ):
        for dtype in (np.float32, np.float64):
            output = row.astype(dtype)
            batch = np.vstack([output, output])
            assert top1_confidence(output) == pytest.approx(top1_confidence(batch)[:1], rel=1e-9)
            assert l2_norm(output) == pytest.approx(l2_norm(batch)[:1], rel=1e-9)
    assert top1_confidence(np.array([[np.inf] + [0.0] * (columns - 1)])).size == 0
    for bad in (np.inf, np.nan):
        assert l2_norm(np.array([[bad] + [0.0] * (columns - 1)], dtype=np.float32)).size == 0


@pytest.mark.parametrize("probabilities", [False, True])
def test_scaled_logits_keep_the_argmax_and_lower_the_confidence(probabilities: bool) -> None:
    logits = np.random.default_rng(0).normal(0, 3, (50, 10)).astype(np.float32)
    output = softmax(logits).astype(np.float32) if probabilities else logits
    scaled = scale_logits({"out": output, "other": output}, 0.25, ["out"])
    assert scaled["out"].dtype == output.dtype
    assert (scaled["out"].argmax(axis=1) == output.argmax(axis=1)).all()
    assert (top1_confidence(scaled["out"]) < top1_confidence(output)).all()
    assert scaled["other"] is output  # only the named output
    if probabilities:
        assert scaled["out"].sum(axis=1) == pytest.approx(np.ones(50), abs=1e-5)


# ---- a real server ----------------------------------------------------------------------------------


def confidence_histogram(metrics_text: str) -> tuple[dict[str, str], list[tuple[float, float]], float]:
    """(labels, cumulative buckets, count) of kondense_output_confidence."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "kondense_output_confidence":
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
            count = next(s.value for s in family.samples if s.name.endswith("_count"))
            labels = {k: v for k, v in family.samples[0].labels.items() if k != "le"}
            return labels, buckets, count
    raise AssertionError("no kondense_output_confidence in /metrics")


def expected_buckets(values: np.ndarray) -> list[tuple[float, float]]:
    return [(le, float(np.sum(values <= le))) for le in [*CONFIDENCE_BUCKETS, math.inf]]


def rest_infer(url: str, batch: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                        "data": batch.reshape(-1).tolist()}]}  # fmt: skip
    answer = httpx.post(url, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_every_answered_row_is_observed_over_rest_and_grpc(digits: Digits, scale: float) -> None:
    grpc_port = free_port()
    args = ["--grpc-port", str(grpc_port), "--variant", "canary"]
    if scale != 1.0:
        args += ["--inject-logit-scale", str(scale)]
    with running_server(digits.directory, "digits", *args) as server:
        labels, buckets, count = confidence_histogram(server.metrics())
        assert labels == {"model": "digits", "variant": "canary", "measure": "top1"} and count == 0
        rest_batch, grpc_batch = digits.inputs[:30], digits.inputs[30:50]
        rest_out = rest_infer(server.infer_url, rest_batch)
        tensor = triton.InferInput("input", list(grpc_batch.shape), "FP32")
        tensor.set_data_from_numpy(grpc_batch)
        grpc_out = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port}").infer("digits", [tensor])
        grpc_logits = grpc_out.as_numpy("logits")
        _, buckets, count = confidence_histogram(server.metrics())
    reference = digits.reference(np.concatenate([rest_batch, grpc_batch]))  # unscaled logits
    answered = np.concatenate([rest_out, grpc_logits])
    assert (answered.argmax(axis=1) == reference.argmax(axis=1)).all()  # the argmax never moves
    assert answered == pytest.approx(reference * scale, rel=1e-4, abs=1e-4)
    expected = softmax((reference * scale).astype(np.float64)).max(axis=1)
    assert count == 50
    assert buckets == expected_buckets(expected)


def test_a_regression_model_exports_no_confidence(digits: Digits) -> None:
    with running_server(digits.directory, "digits", "--task", "regression") as server:
        rest_infer(server.infer_url, digits.inputs[:4])
        assert "kondense_output_confidence" not in server.metrics()
