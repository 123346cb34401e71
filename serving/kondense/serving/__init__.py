"""The ONNX Runtime model server (Open Inference Protocol v2).

Split like KServe's model server: ``model`` wraps ONNX Runtime and knows nothing of HTTP; ``app`` is
the HTTP layer and knows nothing of ONNX Runtime; ``protocol`` and ``tensors`` are the wire format
between them.
"""
