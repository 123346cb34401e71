"""Triton model repositories for the `triton` runtime: config.pbtxt from the ONNX graph's signature."""
