"""The kondense dashboard (``kondense dashboard``): server-rendered, read-only HTML pages about the
CompressedModels of any Kubernetes API, with SLI series from Prometheus. ``render`` and ``progress``
are pure; ``data`` reads the cluster and Prometheus; ``server`` serves the pages."""
