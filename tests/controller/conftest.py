"""The ``harness`` fixture: the real controller shell in-process against a fresh local API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kondense_testing.inprocess import Harness, local_api


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with local_api(tmp_path) as h:
        yield h
