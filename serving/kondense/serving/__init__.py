"""The ONNX Runtime model server (Open Inference Protocol v2): ``kondense serve``.

Split like KServe's model server: ``model`` wraps ONNX Runtime and knows nothing of HTTP; ``app`` is
the HTTP layer (Starlette on uvicorn) and knows nothing of ONNX Runtime; ``protocol`` and
``tensors`` are the wire format between them; ``batching`` decides how a request reaches the model;
``shadow`` compares a canary's answers with the stable server's; ``artifact`` checks ``model.onnx``
against ``manifest.json`` before anything is served.

Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready`` (503 until the model loaded and passed
its warm-up), ``GET /v2``, ``GET /v2/models/{name}[/versions/1]`` (``parameters.sha256`` is the
served file's hash), ``GET .../ready``, ``POST .../infer`` (JSON and Triton's binary tensor data),
``GET /metrics``. Errors are ``{"error": "..."}``: 4xx for anything the client can fix.

Metrics (labels ``model`` = ``--name``, ``variant`` = ``--variant``):

* ``kondense_request_duration_seconds`` histogram, 100 µs to 10 s buckets, every inference request;
* ``kondense_requests_total{code}``: inference requests by HTTP status (injected errors included);
* ``kondense_shadow_comparisons_total{result="agree|disagree|error"}``: per sample (batch row);
* ``kondense_shadow_score`` histogram: cosine (embedding) or relative error (regression) per sample;
* ``kondense_shadow_queue_depth``, ``kondense_batch_rows``, ``kondense_model_ready``;
* ``kondense_model_info{sha256}`` = 1: which artifact this process serves;
* mirror first (issue 13): ``kondense_mirrored_requests_total{code}`` and
  ``kondense_mirrored_request_duration_seconds`` count the copies a canary answers (header
  ``kondense-mirrored: 1``; never in ``kondense_requests_total``, never shadowed back), and
  ``kondense_mirror_comparisons_total{canary,result}`` what a stable server with ``--mirror-to``
  compared (``canary`` = ``--mirror-variant``).

PromQL for a canary over a window (sum over all its pods)::

    # p99 latency, seconds
    histogram_quantile(0.99, sum by (le) (
      rate(kondense_request_duration_seconds_bucket{model="M", variant="canary"}[1m])))
    # error rate: 5xx / all
    sum(rate(kondense_requests_total{model="M", variant="canary", code=~"5.."}[1m]))
      / sum(rate(kondense_requests_total{model="M", variant="canary"}[1m]))
    # disagreement ratio (accuracy delta): disagree / compared; errors are not comparisons
    sum(rate(kondense_shadow_comparisons_total{model="M", variant="canary", result="disagree"}[1m]))
      / sum(rate(kondense_shadow_comparisons_total{model="M", variant="canary", result=~"agree|disagree"}[1m]))

An empty or NaN result (no traffic, nothing compared) is "no data", never a pass.
"""
