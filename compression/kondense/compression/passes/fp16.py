"""Float16 conversion with onnxconverter-common; float32 inputs/outputs kept by default so callers
do not change."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from kondense.api.techniques import Fp16Params, Technique
from kondense.compression.passes import Pass, PassContext, PassResult, register


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
        onnx.save(converted, str(destination))
        kept = sum(1 for node in converted.graph.node if node.op_type in block_list)
        return PassResult({"opsKeptInFloat32": kept, "keepIoTypes": self.params.keepIoTypes})
