"""Accuracy deltas, latency measurement and the Pareto front (pure functions, table-driven)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kondense.api.techniques import Task
from kondense.compression.data import load_npz
from kondense.compression.evaluation import accuracy_delta, measure_latency
from kondense.compression.report import pareto_front


def test_classification_with_labels_is_top1_difference():
    base = np.eye(4)[[0, 1, 2, 3]]  # all correct
    variant = np.eye(4)[[0, 1, 2, 0]]  # one wrong
    result = accuracy_delta(Task.CLASSIFICATION, base, variant, np.array([0, 1, 2, 3]))
    assert result.delta == pytest.approx(0.25)
    assert result.details["agreement"] == pytest.approx(0.75)


def test_classification_without_labels_is_disagreement():
    base = np.eye(3)[[0, 1, 2, 2]]
    variant = np.eye(3)[[0, 1, 1, 2]]
    assert accuracy_delta(Task.CLASSIFICATION, base, variant).delta == pytest.approx(0.25)


def test_embedding_delta_is_one_minus_mean_cosine():
    base = np.array([[1.0, 0.0], [0.0, 1.0]])
    variant = np.array([[1.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2)
    expected = 1 - (1 + 2**-0.5) / 2
    assert accuracy_delta(Task.EMBEDDING, base, variant).delta == pytest.approx(expected)


def test_regression_delta_is_relative_mae():
    base = np.array([[2.0], [-2.0]])
    variant = np.array([[2.5], [-2.0]])
    assert accuracy_delta(Task.REGRESSION, base, variant).delta == pytest.approx(0.25 / 2)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        accuracy_delta(Task.REGRESSION, np.zeros((2, 3)), np.zeros((2, 4)))


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
def test_pareto_front_points_are_not_dominated(points):
    front = pareto_front(points)
    assert front  # never empty
    for i in front:
        s, d = points[i]
        assert not any(s2 <= s and d2 <= d and (s2 < s or d2 < d) for s2, d2 in points)
    for j in set(range(len(points))) - set(front):
        s, d = points[j]
        assert any(s2 <= s and d2 <= d and (s2 < s or d2 < d) for s2, d2 in points)


def test_latency_is_measured_for_both_models(digits):
    result = measure_latency(digits.model, digits.model, load_npz(digits.eval), runs=30, warmup=5)
    assert result.samples == 30
    for value in (result.base_p50, result.variant_p50):
        assert 0 < value <= result.base_p99 * 10
    assert result.base_p50 <= result.base_p99


# --- outputs as real models produce them (issue 10): small models built here, run by ONNX Runtime ---

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kondense.api.artifacts import Gate  # noqa: E402
from kondense.compression.data import validate_for_model  # noqa: E402
from kondense.compression.errors import BadInputError  # noqa: E402
from kondense.compression.evaluation import Reference, evaluate_variant, measure_footprint  # noqa: E402
from kondense.compression.hardware import cpu_info_from_text, hardware_from_record  # noqa: E402
from kondense.compression.model_files import load_model, signature_of  # noqa: E402
from kondense.compression.report import gate_label  # noqa: E402


def save_model(path, nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def linear_model(path, weight, x_shape, out_shape, extra_outputs=()):
    """y = x @ W (plus optional extra outputs) with a dynamic batch axis."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"), *extra_outputs]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    outputs += [
        helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, out_shape) for n in extra_outputs
    ]
    return save_model(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        outputs,
        [numpy_helper.from_array(weight.astype(np.float32), "W")],
    )


def reference_for(model, arrays, task, tmp_path):
    np.savez(tmp_path / "eval.npz", **arrays)
    dataset = validate_for_model(load_npz(tmp_path / "eval.npz"), signature_of(load_model(model)))
    return Reference.compute(model, dataset, task)


def test_multi_output_judges_the_first_and_reports_the_others(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 4))
    head = helper.make_node("Relu", ["y"], ["aux"], name="aux")
    base = linear_model(tmp_path / "base.onnx", weight, ["n", 6], ["n", 4], [head])
    # the variant keeps the judged output and breaks the secondary head
    broken = helper.make_node("Neg", ["y"], ["aux"], name="aux")
    variant = linear_model(tmp_path / "variant.onnx", weight, ["n", 6], ["n", 4], [broken])
    reference = reference_for(
        base, {"x": rng.normal(size=(20, 6)).astype(np.float32)}, Task.REGRESSION, tmp_path
    )
    assert reference.judged == "y" and set(reference.others) == {"aux"}
    result = reference.accuracy_of(variant)
    assert result.delta == pytest.approx(0.0, abs=1e-7)
    assert result.details["judgedOutput"] == "y"
    assert result.details["otherOutputs"]["aux"] > 0.5  # the broken head is visible
    assert reference.accuracy_of(base).details["otherOutputs"]["aux"] == pytest.approx(0.0, abs=1e-7)


def test_per_timestep_classification_counts_disagreeing_timesteps(tmp_path):
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(5, 7))
    x = rng.normal(size=(12, 9, 5)).astype(np.float32)  # [N, T, F] -> [N, T, C]
    base = linear_model(tmp_path / "base.onnx", weight, ["n", 9, 5], ["n", 9, 7])
    noisy = weight + rng.normal(scale=0.6, size=weight.shape)
    variant = linear_model(tmp_path / "variant.onnx", noisy, ["n", 9, 5], ["n", 9, 7])
    reference = reference_for(base, {"x": x}, Task.CLASSIFICATION, tmp_path)
    result = reference.accuracy_of(variant)
    expected = float(((x @ weight).argmax(-1) != (x @ noisy).argmax(-1)).mean())
    assert 0 < expected < 1  # the noise flips some timesteps, not all
    assert result.delta == pytest.approx(expected)
    assert result.details["timesteps"] == 9
    assert result.details["sequenceAgreement"] <= 1 - expected + 1e-9


def test_per_timestep_labels_ignore_padding_and_must_fit():
    base = np.eye(3)[[[0, 1, 2], [2, 2, 1]]]  # [N=2, T=3, C=3]
    variant = np.eye(3)[[[0, 1, 1], [2, 0, 1]]]
    labels = np.array([[0, 1, 2], [2, -1, -1]])  # last two timesteps of sample 2 are padding
    result = accuracy_delta(Task.CLASSIFICATION, base, variant, labels)
    assert result.details["baseAccuracy"] == pytest.approx(1.0)
    assert result.details["variantAccuracy"] == pytest.approx(3 / 4)
    assert result.details["ignoredLabels"] == 2
    with pytest.raises(ValueError, match="per timestep"):
        accuracy_delta(Task.CLASSIFICATION, base, variant, np.array([0, 1]))


def test_integer_outputs_are_compared_element_by_element():
    base = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    variant = np.array([[1, 2, 0], [4, 5, 6]], dtype=np.int64)
    assert accuracy_delta(Task.CLASSIFICATION, base, variant).delta == pytest.approx(1 / 6)


def test_dense_map_is_judged_over_the_whole_map(tmp_path):
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(1, 1, 3, 3)).astype(np.float32)

    def conv(path, weight):
        return save_model(
            path,
            [helper.make_node("Conv", ["x", "K"], ["map"], name="conv", pads=[1, 1, 1, 1])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])],
            [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["n", 1, 16, 16])],
            [numpy_helper.from_array(weight, "K")],
        )

    base, variant = conv(tmp_path / "base.onnx", kernel), conv(tmp_path / "variant.onnx", kernel * 1.1)
    x = rng.normal(size=(6, 1, 16, 16)).astype(np.float32)
    reference = reference_for(base, {"x": x}, Task.REGRESSION, tmp_path)
    result = reference.accuracy_of(variant)
    assert result.delta == pytest.approx(0.1, rel=1e-4)  # linear map scaled by 1.1: 10 % relative MAE
    assert result.details["maxSampleRelativeMae"] == pytest.approx(0.1, rel=1e-4)


def recurrent_step(path):
    """out = (x + reshape(h, [1, 4])) * t: x per sample [1, 4], state h [1, 1, 4], scalar t."""
    return save_model(
        path,
        [
            helper.make_node("Reshape", ["h", "shape"], ["h2"], name="reshape"),
            helper.make_node("Add", ["x", "h2"], ["s"], name="add"),
            helper.make_node("Mul", ["s", "t"], ["out"], name="mul"),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 4]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")],
    )


def test_fixed_inputs_go_with_every_sample(tmp_path):
    model = recurrent_step(tmp_path / "rnn.onnx")
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    state = np.full((1, 1, 4), 0.5, dtype=np.float32)
    arrays = {"x": x, "fixed:h": state, "fixed:t": np.array(2.0, dtype=np.float32)}
    reference = reference_for(model, arrays, Task.REGRESSION, tmp_path)
    assert not reference.dataset.batchable and set(reference.dataset.fixed) == {"h", "t"}
    np.testing.assert_allclose(reference.outputs, (x + 0.5) * 2.0)
    assert reference.accuracy_of(model).delta == 0.0
    metrics, _ = evaluate_variant(reference, model, latency_runs=10)  # latency and footprint feed them too
    assert metrics.accuracyDelta == 0.0 and metrics.p50Ms is not None and metrics.loadMs is not None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((5, 4), np.float32), "h": np.zeros((5, 1, 4), np.float32),
          "t": np.zeros(5, np.float32)}, "scalar"),
        ({"x": np.zeros((5, 4), np.float32), "fixed:h": np.zeros((1, 4), np.float32),
          "fixed:t": np.array(1.0, np.float32)}, "fed as stored"),
        ({"x": np.zeros((5, 4), np.float32), "fixed:h": np.zeros((1, 1, 4), np.float32)}, "missing model input"),
        ({"x": np.zeros((5, 4), np.float32), "h": np.zeros((1, 4), np.float32),
          "fixed:t": np.array(1.0, np.float32)}, "fixed:"),
    ],
)  # fmt: skip
def test_unbatched_inputs_given_wrongly_are_refused_with_the_way_to_fix_it(tmp_path, arrays, message):
    model = recurrent_step(tmp_path / "rnn.onnx")
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BadInputError, match=message):
        validate_for_model(load_npz(tmp_path / "bad.npz"), signature_of(load_model(model)))


def test_gate_says_pass_only_when_a_budget_was_given_and_met():
    assert Gate(passed=True).verdict == "no budget"
    assert Gate(passed=True, maxAccuracyDelta=0.01).verdict == "pass"
    assert Gate(passed=False, maxAccuracyDelta=0.01).verdict == "FAIL"
    assert gate_label(None) == "no budget"
    stored = Gate.model_validate_json(Gate(passed=False, maxAccuracyDelta=0.1).model_dump_json())
    assert stored.verdict == "FAIL" and stored.model_dump_json().count("verdict") == 1


def test_footprint_metrics_follow_the_weights(tmp_path):
    rng = np.random.default_rng(3)
    small = linear_model(tmp_path / "small.onnx", rng.normal(size=(64, 8)), ["n", 64], ["n", 8])
    # 'big' carries a 64 MiB table that a Gather reads, so loading and running it needs that memory
    table = numpy_helper.from_array(rng.normal(size=(4096, 4096)).astype(np.float32), "T")
    big = save_model(
        tmp_path / "big.onnx",
        [
            helper.make_node("MatMul", ["x", "W"], ["y0"], name="mm"),
            helper.make_node("Gather", ["T", "idx"], ["rows"], name="g"),
            helper.make_node("ReduceSum", ["rows"], ["total"], name="sum", keepdims=0),
            helper.make_node("Add", ["y0", "total"], ["y"], name="add"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [
            numpy_helper.from_array(rng.normal(size=(64, 8)).astype(np.float32), "W"),
            table,
            numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "idx"),
        ],
    )
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(8, 64)).astype(np.float32))
    dataset = load_npz(tmp_path / "eval.npz")
    small_fp, big_fp = measure_footprint([small, big], dataset, rounds=1, runs=2)
    assert small_fp.load_ms > 0 and big_fp.load_ms > 0
    assert small_fp.peak_memory_mb is not None and big_fp.peak_memory_mb is not None
    assert big_fp.peak_memory_mb > small_fp.peak_memory_mb + 32  # the 64 MiB table shows

    metrics, details = evaluate_variant(
        Reference.compute(small, dataset, Task.REGRESSION), small, latency_runs=10
    )
    assert metrics.loadMs and metrics.baseLoadMs and metrics.cpuSecondsPer1k and metrics.baseCpuSecondsPer1k
    assert metrics.peakMemoryMB is not None and metrics.basePeakMemoryMB is not None
    assert details["hardware"]["executionProvider"] == "CPUExecutionProvider"
    assert details["hardware"]["summary"]


INTEL_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: something else
"""
AMD_ZEN2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R32
flags\t\t: fpu sse4_2 avx avx2 fma f16c
"""
ARM_GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


@pytest.mark.parametrize(
    ("text", "model", "kernel", "isa"),
    [
        (INTEL_SPR, "Intel(R) Xeon(R) Platinum 8480+", "amx",
         ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "avx512bf16", "amx-tile",
          "amx-int8", "amx-bf16")),
        (AMD_ZEN2, "AMD EPYC 7R32", "avx2", ("avx2", "fma", "f16c")),
        (ARM_GRAVITON, "arm implementer 0x41 part 0xd0c", "neon-dotprod", ("neon-dotprod",)),
        ("", "unknown", "baseline", ()),
    ],
)  # fmt: skip
def test_hardware_record_from_cpuinfo(text, model, kernel, isa):
    cpu = cpu_info_from_text(text)
    assert (cpu.model, cpu.int8_kernel, cpu.isa) == (model, kernel, isa)


def test_hardware_summary_is_short_and_round_trips():
    from kondense.compression.hardware import Hardware

    hardware = Hardware(cpu_info_from_text(INTEL_SPR), 112, "x86_64", "1.32.0", "CPUExecutionProvider")
    summary = hardware.summary()
    assert (
        summary
        == "Intel(R) Xeon(R) Platinum 8480+ · int8 amx (avx2 avx512vnni avxvnni amx-int8) · ORT 1.32.0 CPU"
    )
    assert hardware_from_record(hardware.record()).summary() == summary
    assert len(Hardware(cpu_info_from_text("model name: " + "x" * 300), 1, "", None, "CPU").summary()) <= 120
