"""Find the repeated layers of a transformer graph and keep a subset of them (ONNX surgery).

Layers are recognised by node names carrying a layer index, as exporters write them
(``/layers.3/...``, ``/encoder/layer.3/...``, ``/h.3/...``, ``/blocks.3/...``). Each layer must read
the residual stream from the previous one and hand exactly one tensor on, which is what makes a
layer droppable: the next kept layer is rewired to read what the last kept one wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kondense.compression.errors import BadInputError, UnsupportedModelError

LAYER_PATTERN = re.compile(r"(?:^|/)(?:layers?|h|blocks?)\.(\d+)/")


@dataclass(frozen=True)
class LayerSpan:
    index: int
    nodes: frozenset[int]  # positions in graph.node
    hidden_input: str  # residual stream entering the layer
    output: str  # the one tensor the layer hands on


def find_layers(model: Any, where: str) -> list[LayerSpan]:
    graph = model.graph
    by_layer: dict[int, set[int]] = {}
    for position, node in enumerate(graph.node):
        match = LAYER_PATTERN.search(node.name)
        if match:
            by_layer.setdefault(int(match.group(1)), set()).add(position)
    indices = sorted(by_layer)
    if len(indices) < 2 or indices != list(range(len(indices))):
        raise UnsupportedModelError(
            where, f"no numbered transformer layers found in node names (found layer indices {indices[:10]})"
        )
    produced_in = {
        out: layer for layer, positions in by_layer.items() for p in positions for out in graph.node[p].output
    }
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, set[int]] = {}
    for position, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, set()).add(position)
    spans = []
    previous_output: str | None = None
    for layer in indices:
        positions = by_layer[layer]
        outputs = sorted(
            {
                out
                for p in positions
                for out in graph.node[p].output
                if out in graph_outputs or consumers.get(out, set()) - positions
            }
        )
        if len(outputs) != 1:
            raise UnsupportedModelError(
                where, f"layer {layer} hands on {len(outputs)} tensors, expected 1: {outputs[:5]}"
            )
        external_inputs = {
            name for p in positions for name in graph.node[p].input if name and produced_in.get(name) != layer
        }
        if previous_output is None:
            # Layer 0's residual input is what it reads from outside that layer 1 does not also read
            # (the attention mask bias, for instance, is read by every layer).
            later = {name for p in by_layer[indices[1]] for name in graph.node[p].input}
            constants = {i.name for i in graph.initializer} | {
                out for node in graph.node if node.op_type == "Constant" for out in node.output
            }
            candidates = sorted(external_inputs - later - constants)
            if len(candidates) != 1:
                raise UnsupportedModelError(
                    where, f"cannot tell layer 0's residual input among {candidates[:5]}"
                )
            hidden = candidates[0]
        else:
            if previous_output not in external_inputs:
                raise UnsupportedModelError(where, f"layer {layer} does not read layer {layer - 1}'s output")
            hidden = previous_output
        spans.append(LayerSpan(layer, frozenset(positions), hidden, outputs[0]))
        previous_output = outputs[0]
    return spans


def keep_layers(model: Any, keep: list[int], where: str) -> dict[str, Any]:
    """Remove every layer not in ``keep`` (in place); returns a summary for the manifest."""
    spans = find_layers(model, where)
    total = len(spans)
    kept = sorted(set(keep))
    if not kept or kept[-1] >= total:
        raise BadInputError("params.keepLayers", f"indices must be within 0..{total - 1}, got {keep}")
    if len(kept) == total:
        raise BadInputError("params.keepLayers", f"keeps all {total} layers; nothing to distill")
    graph = model.graph
    # What each kept layer should read instead of its (possibly dropped) predecessor's output.
    rename: dict[int, tuple[str, str]] = {}
    last_output = spans[0].hidden_input
    for span in spans:
        if span.index in kept:
            if span.hidden_input != last_output:
                rename[span.index] = (span.hidden_input, last_output)
            last_output = span.output
    final_output = spans[-1].output
    dropped = {p for span in spans if span.index not in kept for p in span.nodes}
    layer_of = {p: span.index for span in spans for p in span.nodes}
    for position, node in enumerate(graph.node):
        if position in dropped:
            continue
        layer = layer_of.get(position)
        for i, name in enumerate(node.input):
            if layer is not None and layer in rename and name == rename[layer][0]:
                node.input[i] = rename[layer][1]
            elif layer is None and name == final_output and last_output != final_output:
                node.input[i] = last_output  # the head now reads the last kept layer
    for output in graph.output:
        if output.name == final_output and last_output != final_output:
            raise UnsupportedModelError(
                where, "the last layer's output is a graph output; keep the last layer"
            )
    survivors = [node for position, node in enumerate(graph.node) if position not in dropped]
    # Drop what only the removed layers used (constants, shape arithmetic), until nothing changes.
    needed = {o.name for o in graph.output}
    while True:
        used = needed | {name for node in survivors for name in node.input}
        pruned = [node for node in survivors if any(out in used for out in node.output)]
        if len(pruned) == len(survivors):
            break
        survivors = pruned
    del graph.node[:]
    graph.node.extend(survivors)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    produced = {out for node in graph.node for out in node.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)
    return {"layers": total, "keptLayers": kept}
