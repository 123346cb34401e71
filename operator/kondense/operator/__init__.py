"""The kondense controller.

Functional core (pure, over the pydantic models): ``selection``, ``analysis``, ``statistics``,
``rollout`` (the state machine, Invalid included, and ``topology``), ``rejections`` (what refused
children do to the status). Imperative shell: ``handlers`` (kopf), ``controller`` (observe, decide,
write status, act), ``kube`` (official Kubernetes client), ``providers`` (metric providers; Prometheus
over httpx). Pluggable registries: ``backends.SERVING_BACKENDS``, ``routers.TRAFFIC_ROUTERS``,
``providers.PROVIDERS`` (built and cached by ``providers.ProviderFactory``, keyed by the analysis spec).
The map of the whole: docs/architecture.md.
"""
