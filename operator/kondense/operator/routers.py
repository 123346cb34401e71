"""Traffic routers: how a canary weight becomes traffic (registry, like Flagger's router.Interface)."""

from __future__ import annotations

import math
from typing import Any, Protocol

from kondense.api.resource import RouterType
from kondense.operator.naming import Names


class TrafficRouter(Protocol):
    @property
    def kind(self) -> RouterType: ...

    def split(self, total: int, weight: int) -> tuple[int, int]:
        """(stable replicas, canary replicas) for ``total`` serving replicas at ``weight`` percent."""
        ...

    def objects(self, names: Names, weight: int, route: Any, port: int) -> list[dict[str, Any]]:
        """Extra objects that carry the weight (an HTTPRoute), beyond Deployments and Services."""
        ...


class ReplicaRouter:
    """Stable and canary pods behind one Service: the ready-pod ratio is the weight.

    Works on any cluster (kind included); the granularity is 1/replicas, so the canary gets the
    count closest to the weight, at least one pod while the weight is above 0.
    """

    kind = RouterType.REPLICAS

    def split(self, total: int, weight: int) -> tuple[int, int]:
        if weight <= 0:
            return total, 0
        if weight >= 100:
            return 0, total
        canary = min(max(math.floor(total * weight / 100 + 0.5), 1), total - 1 if total > 1 else 1)
        return total - canary, canary

    def objects(self, names: Names, weight: int, route: Any, port: int) -> list[dict[str, Any]]:
        return []


class GatewayAPIRouter:
    """HTTPRoute backend weights over the stable and canary Services (Gateway API)."""

    kind = RouterType.GATEWAY_API

    def split(self, total: int, weight: int) -> tuple[int, int]:
        if weight <= 0:
            return total, 0
        return total, max(1, math.ceil(total * weight / 100))

    def objects(self, names: Names, weight: int, route: Any, port: int) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {
                    "name": route.name,
                    **({"namespace": route.namespace} if route.namespace else {}),
                },
                "spec": {
                    "rules": [
                        {
                            "backendRefs": [
                                {"name": names.service("stable"), "port": port, "weight": 100 - weight},
                                {"name": names.service("canary"), "port": port, "weight": weight},
                            ]
                        }
                    ]
                },
            }
        ]


TRAFFIC_ROUTERS: dict[RouterType, TrafficRouter] = {
    RouterType.REPLICAS: ReplicaRouter(),
    RouterType.GATEWAY_API: GatewayAPIRouter(),
}
