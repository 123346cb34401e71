"""Names and labels of everything the operator creates for one CompressedModel."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MODEL_LABEL = "kondense.dev/model"
VARIANT_LABEL = "kondense.dev/variant"
TRACK_LABEL = "kondense.dev/track"
HASH_LABEL = "kondense.dev/spec-hash"  # value: the compression run (see run_id) of a Job
SHA_ANNOTATION = "kondense.dev/artifact-sha256"
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
