"""The Grafana dashboard (ops/grafana/lunas.json) loads, picks its Prometheus from a variable, has
the rows SREs look for, and plots only series Lunas exposes or the alert rules record: a renamed
metric breaks this test, not a panel nobody looks at until the incident."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics_core import Metric

from orchestrator.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "lunas.json"
RULES = sorted((ROOT / "ops" / "alerts").glob("*.yml"))

ROWS = ("Intake & captures", "Rails & breakers", "Provider latency", "Verification & outbox",
        "Reconciliation & feed", "SLO burn", "Unique-code pool")

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created"), "info": ("_info",)}
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                 "unless", "offset", "bool", "inf", "nan"}


def exposed_names() -> set[str]:
    """Every series name Lunas's metrics can produce (api and worker alike), sampled or not."""
    metrics = Metrics()
    families: list[Metric] = [*metrics.registry.collect(), *metrics.state_registry.collect()]
    return {f.name + suffix for f in families for suffix in _SUFFIXES[f.type]}


PROMETHEUS_SERIES = {"up"}
"""Series Prometheus writes itself for every target (LunasTargetDown reads ``up``)."""


def recorded_names() -> set[str]:
    return {rule["record"] for path in RULES
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (inside ``{}`` or ``by (...)``) or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings, incl. label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    found = re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
    return {name for name in found if name.lower() not in _PROMQL_WORDS}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, provider) (rate(lunas_x_bucket{a="b:c"}[5m])))'
    ) == {"lunas_x_bucket"}
    assert metric_names("time() - max by (feed) (lunas_feed_ts) > 1200") == {"lunas_feed_ts"}
    assert metric_names("lunas:ratio_rate1h > (14.4 * 0.005) and lunas:ratio_rate5m > 1") == {
        "lunas:ratio_rate1h", "lunas:ratio_rate5m"}


def test_dashboard_has_a_datasource_variable_and_the_rows_sres_look_for() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    titles = [p["title"] for p in board["panels"] if p["type"] == "row"]
    for wanted in ROWS:
        assert any(t.startswith(wanted) for t in titles), wanted
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_every_series_a_panel_plots_is_one_lunas_exposes_or_records() -> None:
    known = exposed_names() | recorded_names()
    used: set[str] = set()
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} selects no series"
            unknown = names - known
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exposed by Lunas"
            used |= names
    assert "lunas_provider_call_seconds_bucket" in used  # the latency quantiles are there
    assert any(n.startswith("lunas:payment_success_errors:") for n in used)


def test_every_series_a_rule_reads_is_one_lunas_exposes_or_records() -> None:
    known = exposed_names() | recorded_names() | PROMETHEUS_SERIES
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                unknown = metric_names(rule["expr"]) - known
                assert not unknown, f"{rule.get('alert') or rule['record']}: {sorted(unknown)}"
