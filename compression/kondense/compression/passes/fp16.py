"""Float16 conversion with onnxconverter-common; float32 inputs/outputs kept by default so callers
do not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kondense.api.techniques import Fp16Params, Technique
from kondense.compression.passes import Pass, PassContext, PassResult, register


def align_cast_targets(model: Any) -> int:
    """Make ``Cast(to=float)`` nodes agree with the float16 type the converter gave their output.

    onnxconverter-common >= 1.15 retypes such outputs to float16 but leaves ``to=FLOAT``, which ONNX
    Runtime rejects at load time (onnxconverter-common issue #320); 1.14 rewrote the attribute.
    Returns the number of nodes fixed.
    """
    from onnx import TensorProto

    fp16_values = {
        v.name
        for v in [*model.graph.value_info, *model.graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16
    }
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in fp16_values:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                    fixed += 1
    return fixed


@register
class Fp16Pass(Pass):
    technique: ClassVar[Technique] = Technique.FP16
    params: Fp16Params

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import onnx
        from onnxconverter_common import float16

        model = onnx.load(str(source))
        block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(self.params.opBlockList))
        context.progress.start("fp16: converting", total=None)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=self.params.keepIoTypes, op_block_list=block_list
        )
        context.progress.finish()
        casts_fixed = align_cast_targets(converted)
        onnx.save(converted, str(destination))
        kept = sum(1 for node in converted.graph.node if node.op_type in block_list)
        return PassResult(
            {"opsKeptInFloat32": kept, "keepIoTypes": self.params.keepIoTypes, "castsAligned": casts_fixed}
        )
