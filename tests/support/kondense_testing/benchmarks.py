"""Load a script of ``benchmarks/`` as a module, for pure tests of its helpers (nothing is measured)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from kondense_testing.paths import REPO


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``kondense_benchmark_<name>`` (registered in ``sys.modules``
    before it runs: its dataclasses look their module up)."""
    module_name = f"kondense_benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader, name
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
