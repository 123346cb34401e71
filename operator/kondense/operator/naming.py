"""Names and labels of everything the operator creates for one CompressedModel."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MODEL_LABEL = "kondense.dev/model"
VARIANT_LABEL = "kondense.dev/variant"
TRACK_LABEL = "kondense.dev/track"
HASH_LABEL = "kondense.dev/spec-hash"  # value: the compression run (see run_id) of a Job
SHA_ANNOTATION = "kondense.dev/artifact-sha256"
# on a serving Deployment: "true" while a HorizontalPodAutoscaler owns its replicas (never patched then)
AUTOSCALED_ANNOTATION = "kondense.dev/autoscaled"
CANARY_OF_LABEL = "kondense.dev/canary-of"  # on an HTTPRoute: the CompressedModel that may set its weights
MANAGED_BY = {"app.kubernetes.io/managed-by": "kondense", "app.kubernetes.io/part-of": "kondense"}


def dns_label(*parts: str, limit: int = 63) -> str:
    """Join parts with '-', shortened with a stable hash suffix when over the limit."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit:
        return name
    suffix = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{suffix}"


def run_id(compression_hash: str, started: str, generation: int | None) -> str:
    """A new compression run's id (12 hex digits), recorded in status before its Jobs exist: a spec
    that comes back (A -> B -> A) is a new run with new Jobs and a new directory."""
    return hashlib.sha256(f"{compression_hash}/{started}/{generation}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Names:
    model: str

    def job(self, variant: str, spec_hash: str) -> str:
        return dns_label(self.model, variant, spec_hash[:6])

    def deployment(self, track: str) -> str:
        return dns_label(self.model, track, limit=47)  # room for ReplicaSet/pod suffixes

    def service(self, track: str | None = None) -> str:
        return dns_label(self.model, track or "", limit=63)

    def triton_config(self, track: str) -> str:
        return dns_label(self.model, track, "triton")

    def loadgen(self) -> str:
        return dns_label(self.model, "load")

    def labels(self, component: str, **extra: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": f"kondense-{component}",
            "app.kubernetes.io/instance": self.model,
            **MANAGED_BY,
            MODEL_LABEL: self.model,
            **extra,
        }


# ------------------------------------------------------------------------------------------------
# how long a CompressedModel's name may be: every child name and label value derived from it must fit

LABEL_VALUE_MAX = 63
DNS_LABEL_MAX = 63
CR_NAME_MAX = 253  # what the API server allows for any object name


def derived(model: str) -> list[tuple[str, str, int]]:
    """(what, value, limit) for every name and label value the operator derives from ``model``."""
    names = Names(model)
    out: list[tuple[str, str, int]] = [
        ("Job name", names.job("x" * DNS_LABEL_MAX, "0" * 64), DNS_LABEL_MAX),
        ("load-generator Job name", names.loadgen(), DNS_LABEL_MAX),
        ("Service name", names.service(), DNS_LABEL_MAX),
    ]
    for track in ("stable", "canary"):
        out += [
            (f"{track} Deployment name", names.deployment(track), 47),
            (f"{track} Service name", names.service(track), DNS_LABEL_MAX),
            (f"{track} Triton ConfigMap name", names.triton_config(track), DNS_LABEL_MAX),
        ]
    out.append(("standby Deployment name", names.deployment("standby"), 47))  # kept warm in a bake
    out.append(("standby label kondense.dev/model", f"{model}-standby", LABEL_VALUE_MAX))
    for component in ("compression", "server", "loadgen"):
        for key, value in names.labels(component).items():
            out.append((f"label {key}", value, LABEL_VALUE_MAX))
    return out


def name_fits(model: str) -> bool:
    return all(len(value) <= limit for _, value, limit in derived(model))


def max_model_name_length() -> int:
    """The longest CompressedModel name for which every derived name and label value fits."""
    return max(n for n in range(1, CR_NAME_MAX + 1) if name_fits("a" * n))


MODEL_NAME_MAX = max_model_name_length()
