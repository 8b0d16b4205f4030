"""The Grafana dashboard queries only what the service exposes.

Every PromQL expression of monitoring/grafana/dashboards/reward-service.json is parsed (promql-parser,
the Rust PromQL parser's Python binding), and every series it selects must be in the `/metrics` of a
running service (the tiny stand-in classifier), with the labels it filters and groups by. A renamed
metric or label would otherwise leave a panel silently empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((ROOT / "monitoring/grafana/dashboards/reward-service.json").read_text())
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
# Series a metric family of each type exposes (prometheus-client's names, _created aside).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label) -> the selector it reads.
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            exprs.append(f"{match[1]}{{{match[2]}!=''}}")
    return exprs


def parse(expr: str) -> promql_parser.Expr:
    """Grafana's variables replaced as Grafana would: intervals by a duration, the rest by a regex."""
    expr = re.sub(r"\$__\w+", "5m", expr)
    return promql_parser.parse(re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr))


def selectors(expr: promql_parser.Expr) -> list[tuple[str, set[str]]]:
    """(series name, labels the query needs on it) for each selector; grouping labels count for
    every selector under the aggregation."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: promql_parser.Expr, grouping: set[str]) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, labels | grouping))
            return
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping = grouping | set(node.modifier.labels)
        for child in children(node):
            visit(child, grouping)

    visit(expr, set())
    return found


def children(node: promql_parser.Expr) -> list[promql_parser.Expr]:
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, (promql_parser.AggregateExpr, promql_parser.ParenExpr, promql_parser.UnaryExpr)):
        return [node.expr]
    if isinstance(node, promql_parser.SubqueryExpr):
        return [node.expr]
    return []


def exposed_series(text: str) -> dict[str, set[str] | None]:
    """Series name -> its label names (None: declared, but no sample yet, as the judge metrics
    without a judge)."""
    series: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = None
        for sample in family.samples:
            series[sample.name] = (series.get(sample.name) or set()) | set(sample.labels)
    return series


@pytest.fixture(scope="module")
def metrics_text(live_service: LiveServer) -> str:
    # One scored request, so that the request and batch series have samples and labels.
    httpx.post(live_service.url + "/score", json={"texts": ["hello there"]}, timeout=30).raise_for_status()
    return httpx.get(live_service.url + "/metrics", timeout=10).text


def test_selector_extraction_finds_series_under_functions_and_aggregations() -> None:
    expr = parse(
        "histogram_quantile(0.99, sum by (le, scorer) "
        '(rate(x_bucket{instance=~"$instance"}[$__rate_interval]))) / on() group_left sum(y_total) > bool 0'
    )
    assert selectors(expr) == [("x_bucket", {"instance", "le", "scorer"}), ("y_total", set())]


def test_every_dashboard_series_is_exposed_by_the_service(metrics_text: str) -> None:
    exposed = exposed_series(metrics_text)
    assert "reward_not_a_metric_total" not in exposed  # the lookup can say no
    used = [s for expr in expressions(DASHBOARD) for s in selectors(parse(expr))]
    assert len(used) > 20
    missing = sorted({name for name, _ in used if name not in exposed})
    assert missing == [], f"the dashboard queries series /metrics does not have: {missing}"
    wrong_labels = {
        name: sorted(labels - exposed[name] - TARGET_LABELS)
        for name, labels in used
        if exposed[name] is not None and labels - exposed[name] - TARGET_LABELS
    }
    assert wrong_labels == {}, f"labels the series do not carry: {wrong_labels}"


def test_dashboard_covers_what_operators_watch() -> None:
    queried = {name for expr in expressions(DASHBOARD) for name, _ in selectors(parse(expr))}
    for series in (
        "reward_requests_total",  # throughput and errors by status
        "reward_items_total",
        "reward_request_latency_seconds_bucket",  # latency percentiles
        "reward_batch_size_bucket",
        "reward_batch_tokens_bucket",
        "reward_queue_depth",
        "reward_batch_queue_wait_seconds_bucket",
        "reward_batch_latency_seconds_bucket",  # device time
        "reward_rejected_items_total",
        "reward_judge_calls_total",
    ):
        assert series in queried, series
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "scorer"} <= set(variables)  # per scorer, on any Prometheus
    for panel in panels(DASHBOARD):
        for target in panel.get("targets", []):
            assert '"$scorer"' in target["expr"], (panel["title"], target["expr"])
            assert target["datasource"]["uid"] == "${datasource}"
