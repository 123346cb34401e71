"""Low-rank factorization: a large MatMul/Gemm weight W (K x N) becomes A (K x r) @ B (r x N) from a
truncated SVD, applied directly to the ONNX graph. Layers where r (K + N) >= K N would not shrink and
are left alone (and reported). An optional fine-tune against the base model runs through torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kondense.api.techniques import LowRankParams, Technique
from kondense.compression.errors import UnsupportedModelError
from kondense.compression.integrity import model_bytes
from kondense.compression.passes import Pass, PassContext, PassResult, register


def factor(weight: np.ndarray, rank_ratio: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(A, B, kept spectral energy) with A @ B the best rank-r approximation of ``weight``."""
    rank = max(1, math.ceil(rank_ratio * min(weight.shape)))
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    energy = float((s[:rank] ** 2).sum() / max((s**2).sum(), 1e-30))
    return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32), energy


def factorize_graph(model: Any, rank_ratio: float, min_dim: int) -> list[dict[str, Any]]:
    """Rewrite eligible MatMul/Gemm nodes in place; returns one record per node considered."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    records: list[dict[str, Any]] = []
    new_nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight_init = (
            inits.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        )
        if weight_init is None or len(weight_init.dims) != 2 or attrs.get("transA", 0):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(weight_init)
        if node.op_type == "Gemm" and attrs.get("transB", 0):
            weight = weight.T  # K x N like MatMul
        k, n = weight.shape
        record: dict[str, Any] = {"node": node.name, "shape": [k, n]}
        rank = max(1, math.ceil(rank_ratio * min(k, n)))
        if min(k, n) < min_dim or rank * (k + n) >= k * n:
            record["factored"] = False
            record["reason"] = "below minDim" if min(k, n) < min_dim else f"rank {rank} would not shrink it"
            records.append(record)
            new_nodes.append(node)
            continue
        a, b, energy = factor(weight, rank_ratio)
        base = node.input[1]
        a_name, b_name, mid = f"{base}__lowrank_a", f"{base}__lowrank_b", f"{node.output[0]}__lowrank"
        graph.initializer.extend([numpy_helper.from_array(a, a_name), numpy_helper.from_array(b, b_name)])
        new_nodes.append(
            helper.make_node("MatMul", [node.input[0], a_name], [mid], name=f"{node.name}/lowrank_a")
        )
        if node.op_type == "MatMul":
            new_nodes.append(
                helper.make_node("MatMul", [mid, b_name], list(node.output), name=f"{node.name}/lowrank_b")
            )
        else:
            gemm_attrs = {key: value for key, value in attrs.items() if key in ("alpha", "beta")}
            new_nodes.append(
                helper.make_node(
                    "Gemm", [mid, b_name, *node.input[2:]], list(node.output), name=node.name, **gemm_attrs
                )
            )
        uses[base] -= 1
        record.update({"factored": True, "rank": int(a.shape[1]), "energyKept": round(energy, 6)})
        records.append(record)
    del graph.node[:]
    graph.node.extend(new_nodes)
    unused = [init for init in graph.initializer if init.name in uses and uses[init.name] == 0]
    for init in unused:
        graph.initializer.remove(init)
    return records


@register
class LowRankPass(Pass):
    technique: ClassVar[Technique] = Technique.LOW_RANK
    params: LowRankParams

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx

        p = self.params
        model = onnx.load(str(source))
        records = factorize_graph(model, p.rankRatio, p.minDim)
        factored = [r for r in records if r.get("factored")]
        if not factored:
            raise UnsupportedModelError(
                str(source),
                f"no MatMul/Gemm weight can be factored at rankRatio={p.rankRatio}, minDim={p.minDim} "
                f"(considered {len(records)})",
            )
        onnx.checker.check_model(model)
        details: dict[str, Any] = {"layers": records, "factoredLayers": len(factored)}
        if p.fineTuneEpochs == 0:
            onnx.save(model, str(destination))
            refuse_if_not_smaller(source, destination, len(factored))
            return PassResult(details)

        from kondense.compression.model_files import signature_of
        from kondense.compression.onnx_torch import build_module, write_back
        from kondense.compression.training import (
            TrainingSettings,
            fine_tune,
            limit_torch_threads,
            require_train,
        )

        limit_torch_threads(context.threads)
        what = "the low-rank fine-tune"
        require_train(context, what)  # before converting: the missing data is the first problem
        module, signature = build_module(model, str(source), traceable=False), signature_of(model)
        settings = TrainingSettings(p.fineTuneEpochs, p.learningRate, p.batchSize)
        losses = fine_tune(module, signature, context, settings, "low-rank: fine-tune", what=what)
        details["fineTuneLoss"] = [round(v, 6) for v in losses]
        write_back(module, model, str(source))  # same graph, trained weights
        onnx.save(model, str(destination))
        refuse_if_not_smaller(source, destination, len(factored))
        return PassResult(details)


def refuse_if_not_smaller(source: Path, destination: Path, factored: int) -> None:
    """Factoring weights whose rank cut saves too little (the A and B factors and the extra nodes
    outweigh it) leaves a variant no smaller than its source: refuse it rather than evaluate it."""
    before, after = model_bytes(source), model_bytes(destination)
    if after >= before:
        raise UnsupportedModelError(
            str(source),
            f"low-rank factored {factored} layer(s) but the model is not smaller ({after} vs {before} bytes); "
            "lower params.rankRatio or use another technique",
        )
