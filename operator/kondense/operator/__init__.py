"""The kondense controller.

Functional core (pure, over the pydantic models): ``selection``, ``analysis``, ``rollout``,
``topology``. Imperative shell: ``handlers`` (kopf), ``kube`` (official Kubernetes client),
``providers`` (Prometheus over httpx). Pluggable registries: ``backends.SERVING_BACKENDS``,
``routers.TRAFFIC_ROUTERS``, ``providers.METRIC_PROVIDERS``.
"""
