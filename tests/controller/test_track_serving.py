"""A canary "serves" its variant only when a pod of the *current* template is ready: during a rolling
update the Deployment's readyReplicas still counts the previous variant's pods, and reading those as
the new variant's started its analysis windows before it served ("no data" checks, false rollbacks)."""

from __future__ import annotations

from typing import Any

import pytest

from kondense.api.artifacts import ArtifactRef
from kondense.api.resource import CanaryStatus, CompressedModelStatus, VariantStatus
from kondense.operator.controller import track_observation
from kondense.operator.naming import SHA_ANNOTATION
from kondense.operator.rollout import TrackObservation, World, _canary_serving

NEW = "a" * 64


def deployment(replicas: int, status: dict[str, int]) -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "generation": 2},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": {SHA_ANNOTATION: NEW}}},
        },
        "status": {"observedGeneration": 2, **status},
    }


@pytest.mark.parametrize(
    ("status", "ready_updated"),
    [
        ({"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2}, 0),  # old pods ready, the new one not
        ({"replicas": 3, "updatedReplicas": 1, "readyReplicas": 3}, 1),  # the new one ready too
        ({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}, 2),  # rolled out
        ({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 0}, 0),  # nothing ready
        ({}, 0),  # no status yet
    ],
)
def test_ready_pods_of_the_current_template(status: dict[str, int], ready_updated: int) -> None:
    seen = track_observation(deployment(2, status))
    assert seen is not None and seen.ready_updated == ready_updated


def test_old_ready_pods_are_not_the_new_variant_serving() -> None:
    status = CompressedModelStatus(
        canary=CanaryStatus(variant="fp16"),
        variants=[VariantStatus(name="fp16", artifact=ArtifactRef(sha256=NEW, sizeBytes=1))],
    )
    rolling = TrackObservation(2, 2, 1, NEW, False, ready_updated=0)  # both ready pods are the old variant's
    assert not _canary_serving(status, World(canary=rolling))
    one_new = TrackObservation(2, 2, 1, NEW, False, ready_updated=1)
    assert _canary_serving(status, World(canary=one_new))
    unknown = TrackObservation(2, 1, 2, NEW, False)  # not observed: readyReplicas as before
    assert _canary_serving(status, World(canary=unknown))
