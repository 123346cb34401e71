"""Compare variants from their manifests: a table and a Pareto plot (size vs accuracy delta,
latency as marker size)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydantic

from kondense.api.artifacts import (
    MANIFEST_FILE,
    ArtifactPathError,
    Gate,
    Manifest,
    artifact_digest,
    artifact_member,
)
from kondense.compression.errors import BadInputError


@dataclass(frozen=True)
class VariantRow:
    directory: str
    name: str
    technique: str
    size_ratio: float
    accuracy_delta: float
    p50_ms: float
    base_p50_ms: float
    p99_ms: float
    gate: str

    @property
    def size_reduction(self) -> float:
        return 1.0 / self.size_ratio if self.size_ratio else float("inf")

    @property
    def speedup(self) -> float:
        return self.base_p50_ms / self.p50_ms if self.p50_ms else float("inf")


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE if directory.is_dir() else directory
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise BadInputError(str(path), f"cannot read manifest: {exc.strerror or exc}") from exc
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise BadInputError(
            str(path), f"not a kondense manifest: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from exc


def verify_artifact(directory: Path, manifest: Manifest) -> None:
    """The files next to a manifest must be the ones it describes: ``artifact.sha256`` is the
    ``artifact_digest`` of the model and every external-data file it lists, as for any loader."""
    try:
        path = artifact_member(directory, manifest.artifact.file)
        members = [artifact_member(directory, name) for name in manifest.artifact.externalData]
    except ArtifactPathError as exc:
        raise BadInputError(str(directory / MANIFEST_FILE), str(exc)) from None
    for member in (path, *members):
        if not member.is_file():
            raise BadInputError(str(member), "a file the manifest lists is missing")
    digest = artifact_digest(path, manifest.artifact.externalData)
    if digest != manifest.artifact.sha256:
        covers = f" and {len(members)} external-data file(s)" if members else ""
        raise BadInputError(
            str(path),
            f"sha256 does not match manifest.json ({manifest.artifact.sha256[:12]}…); checked the model{covers}",
        )


def gate_label(gate: Gate | None) -> str:
    """``pass`` only when a budget was given and met; ``no budget`` when none was given."""
    return "no budget" if gate is None else gate.verdict


def row_of(directory: Path, manifest: Manifest) -> VariantRow:
    m = manifest.metrics
    if m.sizeRatio is None or m.accuracyDelta is None or m.p50Ms is None:
        raise BadInputError(str(directory), "manifest has no evaluation metrics")
    gate = gate_label(manifest.gate)
    return VariantRow(
        directory=str(directory),
        name=manifest.name,
        technique="+".join(step.technique.value for step in manifest.steps),
        size_ratio=m.sizeRatio,
        accuracy_delta=m.accuracyDelta,
        p50_ms=m.p50Ms,
        base_p50_ms=m.baseP50Ms or m.p50Ms,
        p99_ms=m.p99Ms or m.p50Ms,
        gate=gate,
    )


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (size, delta), both minimised."""
    front = []
    for i, (s, d) in enumerate(points):
        dominated = any(
            (s2 <= s and d2 <= d) and (s2 < s or d2 < d) for j, (s2, d2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_pareto(rows: list[VariantRow], path: Path, title: str = "kondense variants") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    slowest = max(max(r.p50_ms, r.base_p50_ms) for r in rows)
    front = set(pareto_front([(r.size_ratio, r.accuracy_delta) for r in rows]))
    base_p50 = max(r.base_p50_ms for r in rows)
    ax.scatter(1.0, 0.0, s=60 + 600 * base_p50 / slowest, marker="s", color="lightgrey", edgecolors="grey")
    ax.annotate(
        f"base {base_p50:.3g} ms",
        (1.0, 0.0),
        fontsize=7,
        xytext=(-8, 10),
        textcoords="offset points",
        ha="right",
    )
    # Stagger labels of points that sit close together so they stay readable.
    offsets = [(6, 4), (6, -14), (6, 14), (6, -26), (6, 24)]
    order = sorted(range(len(rows)), key=lambda i: (rows[i].size_ratio, rows[i].accuracy_delta))
    for rank, i in enumerate(order):
        r = rows[i]
        ax.scatter(
            r.size_ratio,
            r.accuracy_delta * 100,
            s=60 + 600 * r.p50_ms / slowest,
            alpha=0.6,
            edgecolors="black" if i in front else "none",
            linewidths=1.5,
        )
        ax.annotate(f"{r.name} {r.p50_ms:.3g} ms", (r.size_ratio, r.accuracy_delta * 100), fontsize=7,
                    xytext=offsets[rank % len(offsets)], textcoords="offset points")  # fmt: skip
    ordered = sorted(front, key=lambda i: rows[i].size_ratio)
    ax.plot(
        [rows[i].size_ratio for i in ordered], [rows[i].accuracy_delta * 100 for i in ordered], "k--", lw=0.8
    )
    ax.set_xscale("log")
    ax.set_xlabel("size ratio (variant bytes / base bytes, log)")
    ax.set_ylabel("accuracy delta (points, lower is better)")
    ax.set_title(
        f"{title}: size vs accuracy delta (marker size: p50 latency; outlined: Pareto front)", fontsize=10
    )
    ax.margins(x=0.15, y=0.2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
