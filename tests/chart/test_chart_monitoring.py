"""The chart's alerts and dashboard: valid for Prometheus, firing when they should, on real metric names."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from chart_support import ALL_FEATURES, CHART, Render, one, run

PROMTOOL_TESTS = Path(__file__).parent / "promtool"


def operator_series() -> set[str]:
    """Series names the real operator registers (kondense.operator.metrics, default registry)."""
    from kondense.operator import metrics

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    collectors = [getattr(metrics, n) for n in dir(metrics) if n.isupper()]
    names = set()
    for collector in collectors:
        for family in collector.describe():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    assert "kondense_rollouts_total" in names
    return names


def server_series() -> set[str]:
    """Series names a real kondense ONNX Runtime server exposes (its own metrics module)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from kondense.serving.metrics import ServerMetrics

    metrics = ServerMetrics("digits", "canary")
    metrics.observe_request(200, 0.01)
    metrics.set_model("0" * 64, ready=True)
    text = generate_latest(metrics.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def used_series(text: str) -> set[str]:
    return set(re.findall(r"\bkondense_[a-z0-9_]+\b", text))


def rendered_rules(render: Render) -> dict[str, Any]:
    rule = one(render(ALL_FEATURES), "PrometheusRule")
    return rule["spec"]


def test_rules_pass_promtool_check(render: Render, promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rendered_rules(render)))
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 16 rules found" in result.stdout  # 12 alerts + 4 recording rules


def test_alerts_fire_when_they_should(render: Render, promtool: str, tmp_path: Path) -> None:
    spec = rendered_rules(render)
    (tmp_path / "rules-full.yaml").write_text(yaml.safe_dump(spec))
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # recording rules have none
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    for name in ("alerts_test.yaml", "annotations_test.yaml"):
        shutil.copy(PROMTOOL_TESTS / name, tmp_path / name)
        result = run([promtool, "test", "rules", name], cwd=tmp_path)
        assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
        assert "SUCCESS" in result.stdout


def test_alert_severities_route_pages_and_tickets(render: Render) -> None:
    severities = {
        rule["alert"]: rule["labels"]["severity"]
        for group in rendered_rules(render)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    pages = {a for a, s in severities.items() if s == "critical"}
    tickets = {a for a, s in severities.items() if s == "warning"}
    assert pages == {
        "KondenseCanaryLatencyBreach", "KondenseCanaryAccuracyBreach", "KondenseCanaryErrorRateBreach",
        "KondenseRollback", "KondenseCompressionJobsFailing", "KondenseOperatorAbsent",
        "KondenseErrorBudgetBurn",
    }  # fmt: skip
    assert tickets == {
        "KondenseLatencyDrift", "KondenseShadowDisagreementDrift", "KondenseAnalysisNoData",
        "KondenseErrorBudgetBurnSlow", "KondenseChildRejected",
    }  # fmt: skip


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "files" / "dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every panel query is valid PromQL once Grafana's variables are substituted."""
    substitutions = {"$__rate_interval": "5m", "$__range": "3h", "$namespace": ".*", "$model": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"kondense:dashboard_query_{i}", "expr": expr})
    rule_file = tmp_path / "dashboard.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shows_what_operators_need() -> None:
    board = dashboard()
    titles = {p["title"] for p in board["panels"]}
    assert {
        "Rollout phase", "Canary weight", "p99 latency: stable vs canary", "Live accuracy delta (canary vs stable)",
        "Offline accuracy delta per variant", "Size ratio per variant", "Compression Jobs",
    } <= titles  # fmt: skip
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "model"}
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_alerts_and_dashboard_use_real_metric_names(render: Render) -> None:
    operator = operator_series()
    known = operator | server_series()
    rule_exprs = [str(rule["expr"]) for group in rendered_rules(render)["groups"] for rule in group["rules"]]
    used = used_series("\n".join(rule_exprs + dashboard_exprs()))
    assert used - known == set(), f"unknown metric names {used - known}"
    # Every operator metric and the servers' SLI metrics show up somewhere (dashboard or alerts).
    histogram_parts = {
        "kondense_reconcile_duration_seconds_bucket",
        "kondense_reconcile_duration_seconds_sum",
    }
    server_slis = {
        "kondense_request_duration_seconds_bucket",
        "kondense_requests_total",
        "kondense_shadow_comparisons_total",
    }
    assert (operator - histogram_parts) | server_slis <= used
