"""MLServer custom runtime wrapping the same ONNX Runtime session as ``kondense serve`` (benchmark only).

Runs inside ``benchmarks/.venv-mlserver`` (MLServer's pinned dependencies stay out of the project
venv); ``benchmarks/serving.py`` points MLServer at it with ``PYTHONPATH``.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        assert parameters is not None and parameters.uri, "model-settings.json needs parameters.uri"
        extra = parameters.extra or {}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = int(extra.get("threads", 1))
        self._session = ort.InferenceSession(parameters.uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {
            request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs
        }
        results = self._session.run(self._output_names, feed)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._output_names, results, strict=True)
            ],
        )
