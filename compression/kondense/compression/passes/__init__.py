"""Pluggable compression passes: one class per technique with a typed config, registered by name.

A pass turns one ONNX file into another. Heavy imports (torch, onnxruntime) live inside ``run`` so
importing the registry stays cheap. Passes register themselves when their module is imported;
``pass_for`` imports the built-in modules on first use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from kondense.api.artifacts import Trial
from kondense.api.techniques import StrictModel, Task, Technique, params_for
from kondense.compression.data import Dataset
from kondense.compression.evaluation import Reference

BUILTIN_PASS_MODULES = (
    "kondense.compression.passes.quantize",
    "kondense.compression.passes.fp16",
    "kondense.compression.passes.prune",
    "kondense.compression.passes.distill",
    "kondense.compression.passes.low_rank",
    "kondense.compression.passes.weight_only",
)


class ProgressReporter(Protocol):
    """Where passes report long steps (rich progress bars in the CLI, nothing in the Job)."""

    def start(self, description: str, total: int | None = None) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def finish(self) -> None: ...


class SilentProgress:
    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class PassContext:
    """What a pass may use besides its input model.

    ``reference`` holds the *original* base model's eval outputs, so accuracy measured by a pass (the
    int8 tuner) is the end-to-end delta of the whole pipeline, the number the budget is about.
    """

    task: Task
    calibration: Dataset | None
    train: Dataset | None
    reference: Reference
    work_dir: Path
    max_accuracy_delta: float | None = None
    threads: int = 1
    progress: ProgressReporter = field(default_factory=SilentProgress)


@dataclass
class PassResult:
    details: dict[str, Any] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    within_budget: bool | None = None  # None: the pass did not check a budget


class Pass(ABC):
    technique: ClassVar[Technique]
    params: StrictModel  # each pass narrows it to its technique's params model (api.techniques)

    def __init__(self, params: StrictModel) -> None:
        self.params = params

    @abstractmethod
    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        """Read the ONNX model at ``source``, write the compressed one to ``destination``."""


PASSES: dict[Technique, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    PASSES[cls.technique] = cls
    return cls


def _load_builtin_passes() -> None:
    # Importing one pass module directly registers only that pass, so load all of them explicitly.
    for module in BUILTIN_PASS_MODULES:
        importlib.import_module(module)


def pass_for(technique: Technique | str, params: dict[str, Any] | None = None) -> Pass:
    """A configured pass; raises pydantic.ValidationError for bad params, ValueError for unknown names."""
    _load_builtin_passes()
    tech = Technique(technique)
    return PASSES[tech](params_for(tech, params))


def registered_techniques() -> list[Technique]:
    _load_builtin_passes()
    return sorted(PASSES)
