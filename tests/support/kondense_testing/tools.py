"""The command-line tools tests drive for real (installed by ``make tools``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kondense_testing.paths import REPO


def find_tool(name: str) -> str:
    """``.venv/bin/NAME`` (the pinned build ``make tools`` installs), else beside this Python, else PATH;
    fails (never skips) with the command that installs it."""
    for candidate in (REPO / ".venv" / "bin" / name, Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not in .venv/bin nor on PATH: run `make tools` (scripts/install-tools.sh)")
    return found


def kondense(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``kondense`` CLI of this environment, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "kondense.cli", *args], capture_output=True, text=True, timeout=timeout
    )
