"""Weight-only quantization (MatMulNBits / GatherBlockQuantized) on a small transformer-like graph
built here, the ReduceL2 opset workaround, and MiniLM once. Real ONNX Runtime throughout; asserts are
relations (smaller, closer, within budget), never kernel-specific numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kondense.api.techniques import Task
from kondense.compression.data import load_npz
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.evaluation import Reference
from kondense.compression.job import hardware_summary
from kondense.compression.passes import PassContext, pass_for
from kondense.compression.passes.quantize import node_sensitivity
from kondense.compression.passes.weight_only import (
    WeightOnlyConfig,
    block_round_trip,
    default_opset,
    quantize_weight_only,
    rank_for_eight_bits,
    upgrade_opset_for_int4,
    weight_elements,
    weight_nodes,
)
from kondense.compression.pipeline import DataFiles, compress_model

VOCAB, WIDTH, SEQ, LAYERS = 96, 64, 12, 3


def tiny_encoder(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Embedding Gather -> LAYERS x (MatMul, Relu, MatMul, residual) -> mean pooling (ReduceMean with an
    ``axes`` attribute) -> L2 normalisation (ReduceL2 with an ``axes`` attribute), as MiniLM's export."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (VOCAB, WIDTH)).astype(np.float32), "embeddings")]
    nodes = [helper.make_node("Gather", ["embeddings", "input_ids"], ["h0"], name="embed")]
    current = "h0"
    for layer in range(LAYERS):
        for which, shape in (("up", (WIDTH, 2 * WIDTH)), ("down", (2 * WIDTH, WIDTH))):
            weight = rng.normal(0, 1 / np.sqrt(shape[0]), shape).astype(np.float32)
            inits.append(numpy_helper.from_array(weight, f"w{layer}{which}"))
        nodes += [
            helper.make_node("MatMul", [current, f"w{layer}up"], [f"u{layer}"], name=f"l{layer}/up"),
            helper.make_node("Relu", [f"u{layer}"], [f"r{layer}"], name=f"l{layer}/relu"),
            helper.make_node("MatMul", [f"r{layer}", f"w{layer}down"], [f"d{layer}"], name=f"l{layer}/down"),
            helper.make_node("Add", [current, f"d{layer}"], [f"h{layer + 1}"], name=f"l{layer}/residual"),
        ]
        current = f"h{layer + 1}"
    # shape arithmetic on a constant int64 vector: a Gather that is not an embedding and must stay
    inits += [
        numpy_helper.from_array(np.array([SEQ, WIDTH], dtype=np.int64), "dims"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
    ]
    nodes += [
        helper.make_node("ReduceMean", [current], ["pooled0"], name="pool", axes=[1], keepdims=0),
        helper.make_node("Gather", ["dims", "one"], ["width"], name="shape/gather"),
        helper.make_node("Unsqueeze", ["width", "axis0"], ["width1"], name="shape/unsqueeze")
        if opset >= 13
        else helper.make_node("Unsqueeze", ["width"], ["width1"], name="shape/unsqueeze", axes=[0]),
        helper.make_node("Concat", ["minus_one", "width1"], ["shape"], name="shape/concat", axis=0),
        helper.make_node("Reshape", ["pooled0", "shape"], ["pooled"], name="shape/reshape"),
        helper.make_node("ReduceL2", ["pooled"], ["norm"], name="norm", axes=[1], keepdims=1),
        helper.make_node("Div", ["pooled", "norm"], ["embedding"], name="normalize"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", SEQ])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("encoder")
    onnx.save(tiny_encoder(), root / "model.onnx")
    ids = np.random.default_rng(1).integers(0, VOCAB, (48, SEQ)).astype(np.int64)
    np.savez(root / "eval.npz", input_ids=ids)
    return root / "model.onnx", root / "eval.npz"


def run_model(model: onnx.ModelProto | Path, ids: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input_ids": ids})[0])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


IDS = np.random.default_rng(2).integers(0, VOCAB, (16, SEQ)).astype(np.int64)


def test_weight_nodes_finds_matmuls_and_embedding_tables():
    nodes = weight_nodes(tiny_encoder(), block_size=32)
    assert len(nodes.matmuls) == 2 * LAYERS and nodes.gathers == ("embed",)
    assert weight_nodes(tiny_encoder(), block_size=128).gathers == ()  # rows narrower than a block


def test_plain_opset_bump_is_invalid_and_the_reduce_rewrite_fixes_it():
    # What ORT's quantizer does for int4 Gather: set the opset import to 21 without converting.
    bumped = tiny_encoder()
    bumped.opset_import[0].version, bumped.ir_version = 21, 10
    with pytest.raises(onnx.checker.ValidationError, match="axes"):
        onnx.checker.check_model(bumped, full_check=True)

    model = tiny_encoder()
    notes = upgrade_opset_for_int4(model)
    assert default_opset(model) == 21 and model.ir_version >= 10
    assert any("2 Reduce node(s)" in note for note in notes)
    onnx.checker.check_model(model, full_check=True)
    for node in model.graph.node:
        if node.op_type in ("ReduceMean", "ReduceL2"):
            assert not any(a.name == "axes" for a in node.attribute) and len(node.input) == 2
    np.testing.assert_allclose(run_model(model, IDS), run_model(tiny_encoder(), IDS), rtol=1e-6, atol=1e-6)
    assert upgrade_opset_for_int4(model) == []  # already opset 21: nothing to do


def test_old_opsets_are_refused_for_int4_embeddings_with_a_way_out():
    model = tiny_encoder(opset=11)
    with pytest.raises(UnsupportedModelError, match="embeddings: int8"):
        upgrade_opset_for_int4(model)


@pytest.mark.parametrize("embeddings", ["none", "int8", "int4"])
def test_quantized_graph_uses_ort_ops_runs_and_stays_close(embeddings):
    base = tiny_encoder()
    nodes = weight_nodes(base, 32)
    model, _ = quantize_weight_only(base, nodes, WeightOnlyConfig(4, 32, False, 0, embeddings))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 2 * LAYERS and "MatMul" not in ops
    gbq = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gbq) == (0 if embeddings == "none" else 1)
    if embeddings == "int8":
        assert helper.get_node_attr_value(gbq[0], "bits") == 8
        assert default_opset(model) == 17  # int8 tables are uint8: no opset change
    if embeddings == "int4":
        assert default_opset(model) == 21
    assert cosine(run_model(model, IDS), run_model(base, IDS)) > 0.95
    assert len(base.graph.node) == len(tiny_encoder().graph.node)  # the source model is left untouched
    assert {n.name: n.op_type for n in model.graph.node}["shape/gather"] == "Gather"  # not a weight


def test_more_bits_and_int8_tables_are_closer_and_fewer_bits_smaller():
    base = tiny_encoder()
    nodes = weight_nodes(base, 32)
    reference = run_model(base, IDS)
    sizes, errors = {}, {}
    for name, config in {
        "int4": WeightOnlyConfig(4, 32, False, 0, "int4"),
        "int4+int8-table": WeightOnlyConfig(4, 32, False, 0, "int8"),
        "int8": WeightOnlyConfig(8, 32, False, 0, "int8"),
    }.items():
        model, _ = quantize_weight_only(base, nodes, config)
        sizes[name] = model.ByteSize()
        errors[name] = 1 - cosine(run_model(model, IDS), reference)
    assert sizes["int4"] < sizes["int4+int8-table"] < sizes["int8"] < base.ByteSize() / 3
    assert errors["int8"] < errors["int4"]


def test_symmetric_blocks_store_no_zero_points():
    base = tiny_encoder()
    nodes = weight_nodes(base, 32)
    symmetric, _ = quantize_weight_only(base, nodes, WeightOnlyConfig(4, 32, True, 0, "int8"))
    asymmetric, _ = quantize_weight_only(base, nodes, WeightOnlyConfig(4, 32, False, 0, "int8"))
    quantized = [n for n in symmetric.graph.node if n.domain == "com.microsoft"]
    assert quantized and all(len(n.input) == 3 for n in quantized)  # no zero-point input
    assert symmetric.ByteSize() < asymmetric.ByteSize()
    assert cosine(run_model(symmetric, IDS), run_model(base, IDS)) > 0.95


def test_eight_bit_nodes_and_excluded_nodes(tmp_path):
    base = tiny_encoder()
    nodes = weight_nodes(base, 32)
    config = WeightOnlyConfig(4, 32, False, 4, "int4", eight_bit=("l0/up", "embed"), exclude=("l2/down",))
    model, _ = quantize_weight_only(base, nodes, config)
    by_name = {n.name: n for n in model.graph.node}
    assert helper.get_node_attr_value(by_name["l0/up_Q8"], "bits") == 8
    assert helper.get_node_attr_value(by_name["l0/up_Q8"], "accuracy_level") == 4
    assert helper.get_node_attr_value(by_name["l1/up_Q4"], "bits") == 4
    assert by_name["l2/down"].op_type == "MatMul"  # kept in float32
    assert helper.get_node_attr_value(by_name["embed_Q8"], "bits") == 8
    assert cosine(run_model(model, IDS), run_model(base, IDS)) > 0.95


def test_nodes_are_raised_by_accuracy_gained_per_byte():
    scored = [
        (0.004, 0.04, "big-sensitive"),  # 0.1 per unit of size
        (0.002, 0.01, "small-sensitive"),  # 0.2 per unit: first
        (0.0, 0.01, "useless"),
        (-0.001, 0.01, "noise"),
        (0.001, 0.01, "small-mild"),  # 0.1, tie with big-sensitive: by name
    ]
    assert rank_for_eight_bits(scored) == [
        "small-sensitive",
        "big-sensitive",
        "small-mild",
        "useless",
        "noise",
    ]


def test_shared_sensitivity_ranks_the_node_whose_blocks_4_bits_ruin_first(tmp_path):
    """The int8 tuner's per-node measurement with weight-only's rounding (4-bit blocks, activations
    float): one layer's weight has an outlier in every block on a feature that is always zero, so 4 bits
    round its real weights away and 8 bits keep them; it ranks first for 8 bits."""
    model = tiny_encoder()
    tables = {i.name: i for i in model.graph.initializer}
    table = numpy_helper.to_array(tables["embeddings"]).copy()
    table[:, 0] = 0.0  # the residual stream's feature 0 is zero into the first layer
    fragile = numpy_helper.to_array(tables["w0up"]).copy()
    fragile[0, :] = 3.0  # ~25x the other weights: sets every block's scale along K
    for name, array in (("embeddings", table), ("w0up", fragile)):
        tables[name].CopyFrom(numpy_helper.from_array(array, name))
    path = tmp_path / "fragile.onnx"
    onnx.save(model, path)
    nodes = weight_nodes(model, 32)
    names = [*nodes.matmuls, *nodes.gathers]
    np.savez(tmp_path / "eval.npz", input_ids=IDS)
    noise = {
        bits: node_sensitivity(
            path,
            names,
            load_npz(tmp_path / "eval.npz"),
            tmp_path,
            ranges=None,
            per_channel=False,
            reduce_range=False,
            activations=False,
            weights=block_round_trip(bits, 32, symmetric=True),
        )
        for bits in (4, 8)
    }
    assert all(noise[4][n] > noise[8][n] > 0 for n in names)  # every node measured; 8 bits closer
    sizes = weight_elements(model, names)
    ranked = rank_for_eight_bits([(noise[4][n] - noise[8][n], sizes[n], n) for n in names])
    assert ranked[0] == "l0/up"
    assert noise[4]["l0/up"] > 10 * max(noise[4][n] for n in nodes.matmuls if n != "l0/up")
    assert not list(tmp_path.glob("node-*.onnx")) and not (tmp_path / "sensitivity.onnx").exists()


def test_pass_refuses_unknown_nodes_and_graphs_without_weights(tmp_path, encoder):
    model_path, eval_path = encoder
    reference = Reference.compute(model_path, load_npz(eval_path), Task.EMBEDDING)
    context = PassContext(Task.EMBEDDING, None, None, reference, tmp_path)
    with pytest.raises(BadInputError, match="no such node"):
        pass_for("weight-only", {"nodesToExclude": ["nope"]}).run(model_path, tmp_path / "o.onnx", context)
    relu = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    with pytest.raises(UnsupportedModelError, match="no MatMul"):
        pass_for("weight-only").run(tmp_path / "relu.onnx", tmp_path / "o.onnx", context)


def test_without_budget_one_trial_and_no_budget_verdict(tmp_path, encoder):
    model_path, eval_path = encoder
    manifest = compress_model(
        model_path,
        {"name": "wo", "technique": "weight-only"},
        DataFiles(evaluation=eval_path),
        tmp_path / "wo",
        task=Task.EMBEDDING,
        latency_runs=10,
    )
    assert len(manifest.trials) == 1 and manifest.steps[0].details["tuned"] is False
    assert manifest.gate is not None and manifest.gate.verdict == "no budget"
    assert '"verdict": "no budget"' in (tmp_path / "wo" / "manifest.json").read_text()
    assert manifest.metrics.sizeRatio is not None and manifest.metrics.sizeRatio < 0.3
    # the evaluation hardware goes to the manifest and, shortened, to the Job's result for status
    hardware = manifest.evaluation["hardware"]  # type: ignore[attr-defined]
    assert hardware["executionProvider"] == "CPUExecutionProvider" and "isa" in hardware
    summary = hardware_summary(manifest)
    assert summary and "ORT" in summary and len(summary) <= 160


def test_tuner_raises_the_most_sensitive_nodes_to_eight_bits_until_within_budget(tmp_path, encoder):
    model_path, eval_path = encoder
    base = onnx.load(str(model_path))
    nodes = weight_nodes(base, 32)
    reference = Reference.compute(model_path, load_npz(eval_path), Task.EMBEDDING)

    def delta(config: WeightOnlyConfig) -> float:
        model, _ = quantize_weight_only(base, nodes, config)
        onnx.save(model, tmp_path / "probe.onnx")
        return reference.accuracy_of(tmp_path / "probe.onnx").delta

    low = delta(WeightOnlyConfig(4, 32, False, 0, "int4"))
    high = delta(WeightOnlyConfig(8, 32, False, 0, "int8"))  # every candidate raised to 8 bits
    assert high < low
    budget = (low + high) / 2  # int4 misses it, all-8-bit meets it: the tuner has to choose
    manifest = compress_model(
        model_path,
        {"name": "tuned", "technique": "weight-only"},
        DataFiles(evaluation=eval_path),
        tmp_path / "tuned",
        task=Task.EMBEDDING,
        max_accuracy_delta=budget,
        latency_runs=10,
    )
    assert manifest.gate is not None and manifest.gate.passed and manifest.gate.verdict == "pass"
    assert manifest.metrics.accuracyDelta is not None and manifest.metrics.accuracyDelta <= budget
    trials = manifest.trials
    assert trials[0].message == "as configured" and not trials[0].withinBudget
    # sensitivity is the int8 tuner's one-pass measurement: no per-node probe trials
    assert not any((t.message or "").startswith("sensitivity") for t in trials)
    candidates = {*nodes.matmuls, *nodes.gathers}
    assert set(manifest.steps[0].details["sensitivityDb"]) <= candidates
    selected = [t for t in trials if getattr(t, "selected", False)]
    assert len(selected) == 1 and selected[0].withinBudget
    raised = selected[0].config["eightBitNodes"]
    assert 1 <= len(raised) <= len(candidates) and set(raised) <= candidates
    # the smallest count that met the budget was chosen: one fewer (if tried) missed it
    tried = {len(t.config["eightBitNodes"]): t for t in trials if (t.message or "").startswith("8-bit")}
    if len(raised) - 1 in tried:
        assert not tried[len(raised) - 1].withinBudget


def test_minilm_weight_only_is_five_times_smaller_and_close(tmp_path):
    """MiniLM once, without tuning (budget-driven tuning on MiniLM is in benchmarks/compression.py)."""
    from kondense.compression.examples import build_minilm

    build_minilm(tmp_path / "minilm", calibration=4, evaluation=24, training=4)
    manifest = compress_model(
        tmp_path / "minilm" / "model.onnx",
        {"name": "wo", "technique": "weight-only", "params": {"tune": False}},
        DataFiles(evaluation=tmp_path / "minilm" / "eval.npz"),
        tmp_path / "wo",
        task=Task.EMBEDDING,
        latency_runs=10,
    )
    evaluation = manifest.evaluation  # type: ignore[attr-defined]
    assert manifest.metrics.sizeRatio is not None and 1 / manifest.metrics.sizeRatio >= 5
    assert evaluation["meanCosine"] > 0.95
    notes = manifest.steps[0].details["notes"]
    assert any("Reduce" in note for note in notes)  # MiniLM's ReduceL2 went through the workaround
    peak, base_peak = manifest.metrics.peakMemoryMB, manifest.metrics.basePeakMemoryMB
    assert peak is not None and base_peak is not None and peak < base_peak


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"bits": 3}, "bits"),
        ({"blockSize": 48}, "blockSize"),
        ({"embeddings": "int2"}, "embeddings"),
        ({"accuracyLevel": 5}, "accuracyLevel"),
        ({"amount": 0.5}, "amount"),  # a prune parameter
    ],
)
def test_validate_and_the_crd_refuse_bad_weight_only_params(params, problem):
    import yaml

    from kondense.api.validation import validate_object
    from kondense_testing.crd_schema import violations
    from kondense_testing.paths import EXAMPLES

    body = yaml.safe_load((EXAMPLES / "minilm" / "compressedmodel.yaml").read_text())
    body["spec"]["targets"].append({"name": "wo", "technique": "weight-only", "params": {"bits": 8}})
    assert validate_object(body)[1] == [] and not violations(body)
    body["spec"]["targets"][-1]["params"] = params
    _, errors = validate_object(body)
    assert errors and problem in str(errors[0])
    assert violations(body)
