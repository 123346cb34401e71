"""Magnitude pruning, unstructured or structured, with a recovery fine-tune against the base model.

Unstructured pruning zeroes single weights (``torch.nn.utils.prune``, masks held during the
fine-tune). ONNX stores the zeros densely, so the file does not shrink and dense kernels do not
speed up: the result reports the measured sparsity and says exactly that.

Structured pruning (``torch-pruning``) removes whole channels/neurons and everything that depends on
them, so the exported graph really is smaller and faster. Two limits keep it so on third-party graphs:
layers whose channels reach a Reshape to a constant shape (attention heads) keep them, and kept channel
counts stay multiples of the CPU kernels' block (``CHANNEL_BLOCK``), or the pass says it removes none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kondense.api.techniques import PruneParams, Technique
from kondense.compression.errors import UnsupportedModelError
from kondense.compression.passes import Pass, PassContext, PassResult, register

DENSE_STORAGE_NOTE = (
    "unstructured sparsity is stored densely in ONNX: the file size and dense-kernel latency do not drop; "
    "use structured pruning (structured: true) or a sparse-aware runtime to benefit"
)


def prunable_layers(module: Any) -> list[Any]:
    """Conv/Linear layers in execution order."""
    from torch import nn

    ordered = []
    for _, _, fn in module.program:
        if isinstance(fn, nn.Conv1d | nn.Conv2d | nn.Linear) and fn not in ordered:
            ordered.append(fn)
    return ordered


def onnx_weight_sparsity(path: Path) -> dict[str, float]:
    """Fraction of exact zeros in the 2-D+ float weights of an ONNX file (measured, not assumed)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    zeros = total = 0
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2:
            array = numpy_helper.to_array(init)
            zeros += int((array == 0).sum())
            total += array.size
    return {"weightSparsity": zeros / total if total else 0.0, "weights": total}


def layers_held_by_reshapes(module: Any) -> dict[Any, str]:
    """The Conv/Linear layers whose output channels reach a Reshape with a constant target (found by
    the converter, ``module.fixed_reshapes``), each with that Reshape's location. Removing their
    channels would break the reshape, so structured pruning leaves them (and their groups) whole.
    The walk goes back from the reshape's input through every step that is not such a layer; a
    grouped (depthwise) convolution ties its input channels to its output, so the walk goes on."""
    from torch import nn

    producers = {out: (ins, fn) for ins, outs, fn in getattr(module, "program", []) for out in outs}
    held: dict[Any, str] = {}
    for where, tensor in getattr(module, "fixed_reshapes", []):
        stack, seen = [tensor], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producers:
                continue
            seen.add(name)
            ins, fn = producers[name]
            if isinstance(fn, nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.Linear):
                held.setdefault(fn, where)
                if not (isinstance(fn, nn.Conv1d | nn.Conv2d) and fn.groups > 1):
                    continue
            stack.extend(n for n in ins if n)
    return held


CHANNEL_BLOCK = 8  # channel counts of the CPU kernels' blocks (ORT's NCHWc: 8 with AVX2, 16 with AVX-512)


def out_channels(layer: Any) -> int:
    from torch import nn

    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def kept_channels(channels: int, ratio: float, block: int = CHANNEL_BLOCK) -> int:
    """How many of a layer's ``channels`` survive pruning ``ratio`` of them. A count that is a multiple
    of ``block`` stays one (rounded to the nearest, at least one block): the CPU kernels run whole
    blocks of channels, and a layer cut from 32 to 31 channels leaves ONNX Runtime's blocked (NCHWc)
    convolutions for the generic ones, measured 3x slower for a smaller model. Other counts keep
    ``int(channels * (1 - ratio))``, at least one."""
    if channels % block == 0:
        return min(channels, max(block, round(channels * (1 - ratio) / block) * block))
    return max(1, int(channels * (1 - ratio)))


def shrink_channels(
    module: Any, example: tuple[Any, ...], ratio: float, where: str, *, block: int = CHANNEL_BLOCK
) -> dict[str, int]:
    """Remove ``ratio`` of the channels/neurons of every prunable layer except the output layer (and
    those feeding a constant-shape Reshape), keeping channel counts at multiples of ``block``."""
    import torch
    import torch_pruning as tp

    layers = prunable_layers(module)
    if len(layers) < 2:
        raise UnsupportedModelError(where, "structured pruning needs at least two Conv/Linear layers")
    held = layers_held_by_reshapes(module)
    if all(layer in held for layer in layers[:-1]):
        where_held = sorted(set(held.values()))
        raise UnsupportedModelError(
            where,
            f"structured pruning has no channel it may remove: every layer feeds a Reshape to a constant "
            f"shape ({'; '.join(where_held[:2])}{' …' if len(where_held) > 2 else ''}), which would no "
            "longer match; use unstructured pruning (structured: false), low-rank or weight-only instead",
        )
    free = [layer for layer in layers[:-1] if layer not in held]
    # torch-pruning keeps int(C * (1 - r)) of a group's C channels: r per layer makes that the
    # rounded count (the layer is the group's root or shares its channel count)
    ratios = {}
    for layer in free:
        channels = out_channels(layer)
        kept = kept_channels(channels, ratio, block)
        ratios[layer] = 0.0 if kept >= channels else 1 - (kept + 0.5) / channels
    if not any(ratios.values()):
        raise UnsupportedModelError(
            where,
            f"removing {ratio:g} of the channels removes none: channel counts stay multiples of {block} "
            "(the CPU kernels' block; a layer cut from 32 to 31 channels ran slower than the whole one) "
            f"and {ratio:g} of these layers' {sorted({out_channels(layer) for layer in free})[:6]} "
            "channels is under half a block; remove a larger share (a larger prune amount, a smaller "
            "distill widthMultiplier)",
        )
    before = sum(p.numel() for p in module.parameters())
    try:
        pruner = tp.pruner.MetaPruner(
            module,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            pruning_ratio_dict=ratios,
            # the output layer keeps the model's output size; layers feeding a constant-shape
            # Reshape keep their channels
            ignored_layers=[layers[-1], *held],
        )
        pruner.step()
    except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        # torch-pruning's dependency graph does not follow every channel coupling of a converted graph
        # (e.g. attention heads split by Reshape/Transpose between MatMuls): its groups then index past
        # a layer's channels. That is a limit of structured pruning on this graph, said in one sentence.
        said = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UnsupportedModelError(
            where,
            "structured pruning could not trace which channels are coupled across this graph (attention "
            f"heads or reshaped activations; torch-pruning: {type(exc).__name__}: {said}); use unstructured "
            "pruning (structured: false), low-rank or weight-only instead",
        ) from exc
    try:
        with torch.no_grad():
            module(*example)
    except RuntimeError as exc:
        from kondense.compression.onnx_torch import StepError

        node, said = (exc.node, exc.said) if isinstance(exc, StepError) else ("a node", str(exc)[:200])
        raise UnsupportedModelError(
            where,
            f"structured pruning removed channels that {node} still expects (torch: {said}); use "
            "unstructured pruning (structured: false), low-rank or weight-only instead",
        ) from exc
    return {"parametersBefore": before, "parametersAfter": sum(p.numel() for p in module.parameters())}


@register
class PrunePass(Pass):
    technique: ClassVar[Technique] = Technique.PRUNE
    params: PruneParams

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx
        import torch
        from torch.nn.utils import prune

        from kondense.compression.model_files import load_model, signature_of
        from kondense.compression.onnx_torch import build_module, export_onnx, write_back
        from kondense.compression.training import (
            TrainingSettings,
            fine_tune,
            limit_torch_threads,
            require_per_sample,
        )

        limit_torch_threads(context.threads)
        p = self.params
        # Structured pruning changes shapes, so the module is traced back to ONNX; unstructured keeps
        # the graph and only its weights change, so they are written back into the same graph.
        model = load_model(source)
        module, signature = build_module(model, str(source), traceable=p.structured), signature_of(model)
        layers = prunable_layers(module)
        if not layers:
            raise UnsupportedModelError(str(source), "no Conv or Linear layer with constant weights to prune")
        data = context.train if context.train is not None else context.reference.dataset
        require_per_sample(data, "prune")
        examples = signature.fixed_batch or 2  # a fixed batch is traced in that batch
        example_np = {name: array[:examples] for name, array in data.inputs.items()}
        example = tuple(torch.from_numpy(example_np[s.name]) for s in signature.inputs)
        details: dict[str, Any] = {"structured": p.structured, "amount": p.amount}

        if p.structured:
            context.progress.start("prune: removing channels", total=None)
            details.update(shrink_channels(module, example, p.amount, str(source)))
            context.progress.finish()
        else:
            prune.global_unstructured(
                [(layer, "weight") for layer in layers], pruning_method=prune.L1Unstructured, amount=p.amount
            )

        if p.fineTuneEpochs > 0:
            settings = TrainingSettings(p.fineTuneEpochs, p.learningRate, p.batchSize)
            losses = fine_tune(
                module, signature, context, settings, "prune: fine-tune", what="the prune fine-tune"
            )
            details["fineTuneLoss"] = [round(v, 6) for v in losses]

        if not p.structured:
            for layer in layers:
                prune.remove(layer, "weight")  # bake the masks into plain weights
            zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
            details["prunedLayerSparsity"] = zeros / sum(layer.weight.numel() for layer in layers)
            write_back(module, model, str(source))
            onnx.save(model, str(destination))
        else:
            export_onnx(module, signature, example_np, destination)
        details.update(onnx_weight_sparsity(destination))
        if not p.structured:
            details["note"] = DENSE_STORAGE_NOTE
        details["parameters"] = int(np.sum([q.numel() for q in module.parameters()]))
        return PassResult(details)
