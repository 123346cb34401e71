"""Pipelines that fit the budget: when a variant misses ``maxAccuracyDelta``, back off the most
aggressive step and try again, in a bounded search.

The strength of a step is how far its knob sits from the gentle end, where the step would change
nothing: a prune ``amount`` (gentle end 0), a distillation ``widthMultiplier`` (gentle end 1) or a
low-rank ``rankRatio`` (gentle end 1). The step with the largest strength is backed off (the later
one on a tie: it is the last to act on the model). Each retry halves the distance to the gentle end,
at most ``MAX_RETRIES`` times, and stops at the first variant within budget. Every attempt is a
``Trial`` in the manifest; when none fits, the attempt with the smallest accuracy delta is kept (its
gate says it failed). A pipeline within budget on its first attempt runs no extra trial.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kondense.api.artifacts import Manifest, Trial
from kondense.api.techniques import Technique
from kondense.compression.errors import BadInputError

if TYPE_CHECKING:
    from kondense.compression.pipeline import Step, TargetSpec

MAX_RETRIES = 4
DEFAULT_DISTILL_WIDTH = 0.5  # the distill pass's student width when no student shape is given

# technique -> (parameter, gentle end)
KNOBS: dict[Technique, tuple[str, float]] = {
    Technique.PRUNE: ("amount", 0.0),
    Technique.DISTILL: ("widthMultiplier", 1.0),
    Technique.LOW_RANK: ("rankRatio", 1.0),
}


@dataclasses.dataclass(frozen=True)
class Knob:
    step: int
    technique: Technique
    param: str
    value: float
    gentle: float

    @property
    def strength(self) -> float:
        return abs(self.value - self.gentle)


def knob_of(index: int, step: Step) -> Knob | None:
    """The adjustable strength of one step, or None (no knob, or already at the gentle end)."""
    if step.technique not in KNOBS:
        return None
    param, gentle = KNOBS[step.technique]
    value = step.params.get(param)
    if step.technique is Technique.DISTILL and value is None:
        if step.params.get("hiddenSizes") is not None or step.params.get("keepLayers") is not None:
            return None  # the student's shape is given explicitly: nothing to scale
        value = DEFAULT_DISTILL_WIDTH
    if value is None or float(value) == gentle:
        return None
    return Knob(index, step.technique, param, float(value), gentle)


def strongest_knob(steps: Sequence[Step]) -> Knob | None:
    knobs = [k for i, s in enumerate(steps) if (k := knob_of(i, s)) is not None]
    return max(knobs, key=lambda k: (k.strength, k.step)) if knobs else None


def schedule(knob: Knob, retries: int = MAX_RETRIES) -> list[float]:
    """The values tried after the first attempt: each halves the distance to the gentle end."""
    values, value = [], knob.value
    for _ in range(retries):
        value = knob.gentle + (value - knob.gentle) / 2
        values.append(round(value, 6))
    return values


def with_value(spec: TargetSpec, knob: Knob, value: float) -> TargetSpec:
    steps = list(spec.steps)
    step = steps[knob.step]
    steps[knob.step] = dataclasses.replace(step, params={**step.params, knob.param: value})
    return dataclasses.replace(spec, steps=tuple(steps))


def _within(manifest: Manifest, budget: float) -> bool:
    delta = manifest.metrics.accuracyDelta
    return delta is not None and delta <= budget


def _trial(knob: Knob, value: float, manifest: Manifest | None, budget: float, message: str) -> Trial:
    config = {"step": knob.step, "technique": knob.technique.value, knob.param: value}
    if manifest is None:
        return Trial(config=config, withinBudget=False, message=message)
    return Trial(
        config=config,
        accuracyDelta=manifest.metrics.accuracyDelta,
        sizeRatio=manifest.metrics.sizeRatio,
        p50Ms=manifest.metrics.p50Ms,
        withinBudget=_within(manifest, budget),
        message=message,
    )


def _install(attempt_stage: Path, stage: Path) -> None:
    """Move the chosen attempt's staged files (the model and any external data) into ``stage``."""
    for staged in sorted(attempt_stage.iterdir()):
        shutil.move(staged, stage / staged.name)


def fit_budget(
    spec: TargetSpec,
    budget: float | None,
    attempt: Callable[[TargetSpec, Path], Manifest],
    work: Path,
    stage: Path,
    *,
    retries: int = MAX_RETRIES,
) -> Manifest:
    """Run ``attempt(spec, directory)`` (which stages its files in ``directory/stage``), backing off
    as the module docstring says; the chosen attempt's staged files are moved to ``stage``."""

    def run(candidate: TargetSpec, number: int) -> tuple[Manifest, Path]:
        directory = work / f"attempt-{number}"
        directory.mkdir()
        return attempt(candidate, directory), directory / "stage"

    first, first_stage = run(spec, 0)
    knob = strongest_knob(spec.steps)
    if budget is None or _within(first, budget) or first.metrics.accuracyDelta is None or knob is None:
        _install(first_stage, stage)
        return first

    trials = [_trial(knob, knob.value, first, budget, "backoff: as given")]
    best, best_stage = first, first_stage
    for number, value in enumerate(schedule(knob, retries), start=1):
        try:
            manifest, attempt_stage = run(with_value(spec, knob, value), number)
        except BadInputError as exc:  # e.g. a gentler rank no longer shrinks any layer
            trials.append(_trial(knob, value, None, budget, f"backoff: {exc.problem}"))
            break
        trials.append(_trial(knob, value, manifest, budget, f"backoff {number}/{retries}"))
        delta, best_delta = manifest.metrics.accuracyDelta, best.metrics.accuracyDelta
        if _within(manifest, budget) or (delta is not None and (best_delta is None or delta < best_delta)):
            best, best_stage = manifest, attempt_stage
        if _within(manifest, budget):
            break
    _install(best_stage, stage)
    chosen = best.steps[knob.step].params[knob.param] if best is not first else knob.value
    best.trials = [*best.trials, *trials]
    summary: dict[str, Any] = {
        "step": knob.step,
        "technique": knob.technique.value,
        "param": knob.param,
        "given": knob.value,
        "chosen": chosen,
        "gentleEnd": knob.gentle,
        "maxRetries": retries,
        "trials": len(trials),
        "withinBudget": _within(best, budget),
    }
    best.backoff = summary  # type: ignore[attr-defined]  # extra manifest field
    return best
