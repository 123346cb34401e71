"""Choose the variant to roll out and the fallback ladder behind it (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kondense.api.resource import CompressedModelSpec, Prefer, VariantPhase, VariantStatus


@dataclass(frozen=True)
class Selection:
    ladder: list[str]  # passing variants, best first
    verdicts: dict[str, str]  # every variant: why it passed or not

    @property
    def best(self) -> str | None:
        return self.ladder[0] if self.ladder else None


def _delta(v: VariantStatus) -> float | None:
    return v.metrics.accuracyDelta if v.metrics else None


def _size(v: VariantStatus) -> float:
    return v.metrics.sizeRatio if v.metrics and v.metrics.sizeRatio is not None else float("inf")


def _latency(v: VariantStatus) -> float:
    return v.metrics.p50Ms if v.metrics and v.metrics.p50Ms is not None else float("inf")


def _pareto_order(variants: list[VariantStatus]) -> list[VariantStatus]:
    """Non-dominated fronts over (size, p50, accuracy delta), each front smallest first."""
    remaining = list(variants)
    ordered: list[VariantStatus] = []

    def key(v: VariantStatus) -> tuple[float, float, float]:
        delta = _delta(v)
        return (_size(v), _latency(v), delta if delta is not None else float("inf"))

    while remaining:
        front = [
            v
            for v in remaining
            if not any(
                all(a <= b for a, b in zip(key(o), key(v), strict=True)) and key(o) != key(v)
                for o in remaining
            )
        ]
        front.sort(key=lambda v: (key(v), v.name))
        ordered += front
        remaining = [v for v in remaining if v not in front]
    return ordered


def select_variants(spec: CompressedModelSpec, variants: Sequence[VariantStatus]) -> Selection:
    """Variants that compressed and pass their accuracy budget, ordered by ``selection.prefer``."""
    passing: list[VariantStatus] = []
    verdicts: dict[str, str] = {}
    for variant in variants:
        budget = spec.budget_for(spec.target(variant.name)) if _has_target(spec, variant.name) else None
        delta = _delta(variant)
        if variant.phase not in (VariantPhase.SUCCEEDED, VariantPhase.REJECTED):
            verdicts[variant.name] = f"{variant.name}: {variant.phase.value.lower()}" + (
                f" ({variant.reason})" if variant.reason else ""
            )
        elif budget is None or delta is None:
            verdicts[variant.name] = f"{variant.name}: no accuracy delta measured"
        elif delta > budget:
            verdicts[variant.name] = f"{variant.name}: accuracy delta {delta:.4f} > budget {budget:.4f}"
        else:
            verdicts[variant.name] = f"{variant.name}: accuracy delta {delta:.4f} <= budget {budget:.4f}"
            passing.append(variant)
    prefer = spec.selection.prefer
    if prefer is Prefer.SMALLEST:
        passing.sort(key=lambda v: (_size(v), _latency(v), v.name))
    elif prefer is Prefer.FASTEST:
        passing.sort(key=lambda v: (_latency(v), _size(v), v.name))
    else:
        passing = _pareto_order(passing)
    return Selection([v.name for v in passing], verdicts)


def _has_target(spec: CompressedModelSpec, name: str) -> bool:
    return any(t.name == name for t in spec.targets)
