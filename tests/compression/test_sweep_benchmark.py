"""How ``benchmarks/sweep_onnx_wheel.py`` judges an outcome (issue 10: zero tracebacks, one-sentence
refusals naming the user's model). Pure tests on messages; no model runs."""

from __future__ import annotations

from types import ModuleType

from kondense_testing.benchmarks import load_benchmark


def _sweep() -> ModuleType:
    return load_benchmark("sweep_onnx_wheel")


def test_a_refusal_is_one_clean_line() -> None:
    classify = _sweep().classify_message
    assert classify("/models/m.onnx: nothing to quantize: no MatMul/Gemm/Conv/Gather node") is None
    assert classify("first line\nsecond line") == "multi-line"
    assert classify("/out/.x.partial-ab12/intake/intake.onnx: no Conv") == "temporary path"
    assert classify("/out/.x.partial-ab12/work/step-0/out.onnx: no Conv") == "temporary path"
    assert classify("m.onnx: [ONNXRuntimeError] : 1 : FAIL : bad") == "raw ORT text"
    assert classify("m.onnx: element_wise_ops.h:563 void onnxruntime::X::Y() failed") == "raw ORT text"
    assert classify("m.onnx: " + "x" * 2000).startswith("over ")


def test_stored_rows_are_judged_again_and_tracebacks_stay_defects() -> None:
    sweep = _sweep()
    assert (
        sweep.reclassify({"outcome": "defect", "why": "temporary path", "message": "m.onnx: fine"})["outcome"]
        == "refusal"
    )
    crash = {"outcome": "defect", "why": "KeyError (traceback)", "message": "KeyError: 'x'"}
    assert sweep.reclassify(crash) == crash
    assert sweep.fixed_batch([(2, 3), (2, 5), (None, 1)]) == 2
    assert sweep.fixed_batch([(1, 3, 1), (2,), (1, 4)]) == 1  # the shape vector goes in as fixed:
    assert sweep.fixed_batch([(None, 3)]) == 1
