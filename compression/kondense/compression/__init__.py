"""The compression engine: passes, accuracy-aware tuning, evaluation, provenance, CLI and Job entrypoint.

Importing this package is cheap; torch and onnxruntime are imported by the code that runs them.
"""
