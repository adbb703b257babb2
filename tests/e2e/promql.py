"""The metric names a PromQL expression reads, and the expressions of the shipped Grafana dashboard
and Prometheus rules (dist/), for checking them against a live flanneld's /metrics.

Not a PromQL parser: it removes what cannot be a metric name (strings, label matchers, range and
subquery brackets, grouping clauses, Grafana variables, numbers and durations) and keeps every
identifier left that is neither a function call nor a keyword. Good enough for our own files, and
checked on the tricky cases in tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dist" / "grafana" / "pyflannel-dashboard.json"
RULES = ROOT / "dist" / "prometheus" / "pyflannel-alerts.yml"

KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "atan2", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "inf", "nan",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_LABEL_VALUES = re.compile(r"\blabel_values\s*\(\s*([^,)]*?)\s*,[^)]*\)")  # Grafana: only its 1st arg is a query
_NAME = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (Grafana's ``$var`` and ``label_values(q, label)`` allowed)."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers (their values were strings, now gone)
    text = _LABEL_VALUES.sub(r"\1", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries: [5m], [$__rate_interval], [1h:5m]
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\b\d[\w.]*", " ", text)  # numbers and durations (1e3, 5m, 0.99)
    out = set()
    for m in _NAME.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        out.add(name)
    return out


def dashboard_exprs(path: pathlib.Path = DASHBOARD) -> Iterator[tuple[str, str]]:
    """(where, expression) for every panel target and every query variable of the dashboard."""
    board = json.loads(path.read_text())

    def panels(items: list[dict]) -> Iterator[dict]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else query
            if query:
                yield f"variable {var['name']}", query


def rule_exprs(path: pathlib.Path = RULES) -> Iterator[tuple[str, str]]:
    """(where, expression) for every alerting and recording rule."""
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]
