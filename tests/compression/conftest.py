"""Shared fixtures for the compression tests: the digits example is built once per session through
the real ``kondense example digits`` command (``digits_build`` in tests/conftest.py, which the cluster
tests share)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kondense_testing.digits import DigitsBuild

KONDENSE = [sys.executable, "-m", "kondense.cli"]
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
def digits(digits_build: DigitsBuild) -> Example:
    """The session's one build (tests/conftest.py ``digits_build``), shared with the cluster tests."""
    return Example(digits_build.root, digits_build.summary)
