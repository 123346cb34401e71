"""Shared fixtures for the compression tests: the digits example is built once per session through
the real ``kondense example digits`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

KONDENSE = [sys.executable, "-m", "kondense.cli"]


def _import_torch_dynamo_without_folder_shadows() -> None:
    """pyproject puts tests/ on sys.path and tests/triton/ has no __init__.py, so ``import triton``
    finds that folder as a namespace package. torch.optim imports torch._dynamo, which then takes it
    for the Triton compiler and fails. Import torch._dynamo once with such folders hidden (torch
    caches the "no triton" answer)."""
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is not None:  # no triton, or a real one
        return
    shadows = [
        p
        for p in sys.path
        if (Path(p) / "triton").is_dir() and not (Path(p) / "triton" / "__init__.py").exists()
    ]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in shadows]
    sys.modules.pop("triton", None)
    try:
        import torch._dynamo  # noqa: F401
        from torch.utils._triton import has_triton_package

        has_triton_package()
    finally:
        sys.path[:] = saved
        sys.modules.pop("triton", None)


_import_torch_dynamo_without_folder_shadows()
KONDENSE_COMPRESS = [sys.executable, "-m", "kondense.compression.job"]


@dataclass(frozen=True)
class Example:
    root: Path
    summary: dict[str, object]

    @property
    def model(self) -> Path:
        return self.root / "model.onnx"

    @property
    def calib(self) -> Path:
        return self.root / "calib.npz"

    @property
    def train(self) -> Path:
        return self.root / "train.npz"

    @property
    def eval(self) -> Path:
        return self.root / "eval.npz"


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Example:
    root = tmp_path_factory.mktemp("digits")
    done = run([*KONDENSE, "example", "digits", "--out", str(root)])
    assert done.returncode == 0, done.stderr
    return Example(root, json.loads(done.stdout.strip().splitlines()[-1]))
