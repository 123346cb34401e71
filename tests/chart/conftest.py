"""Fixtures for the chart, kind and image tests: real helm, promtool and prometheus binaries.

The tools come from `make tools` (scripts/install-tools.sh). A missing tool fails the test with
the command that installs it: these checks are what proves the chart, so they never skip.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chart_support import Render, find_tool, helm_template, parse_documents


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return find_tool("prometheus")


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    """`helm template` of the chart (CRDs included) with the given values, as parsed objects."""

    def _render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
        result = helm_template(helm, tmp_path, values, *extra)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return parse_documents(result.stdout)

    return _render
