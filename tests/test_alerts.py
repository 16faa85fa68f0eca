"""The alert rules and the dashboard name only metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import pytest
import yaml

from cachesvc.migrations import PROJECT_ROOT
from tests.harness import http_client

DEPLOY = PROJECT_ROOT / "deploy"
METRIC = re.compile(r"\bcachesvc_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def exposed(service, stack, tokens, tmp_path_factory) -> set[str]:
    """Sample names from the live service's /metrics and from the health textfile."""
    with http_client(service, timeout=5) as http:
        http.get("/v1/cache/chapter/k", headers={"Authorization": f"Bearer {tokens(uuid.uuid4())}"})
        text = http.get("/metrics").text
    metrics_file = tmp_path_factory.mktemp("textfile") / "cachesvc.prom"
    env = stack.env() | {"CACHESVC_ADMIN_DATABASE_URL": stack.url("cachesvc_maintainer", direct=True)}
    result = subprocess.run(
        [sys.executable, "-m", "cachesvc", "health", "partitions", "--metrics-file", str(metrics_file)],
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("CACHESVC_")} | env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode in (0, 3), result.stdout + result.stderr
    text += metrics_file.read_text()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {
                "counter": {name, name + "_total"},
                "histogram": {name + "_bucket", name + "_count", name + "_sum"},
            }.get(kind, {name})
    return names


def rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "cachesvc.rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_parse_and_are_complete():
    all_rules = rules()
    assert len(all_rules) >= 10
    names = [r["alert"] for r in all_rules]
    assert len(names) == len(set(names))
    for rule in all_rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]


def test_rules_reference_metrics_that_exist(exposed):
    for rule in rules():
        unknown = set(METRIC.findall(rule["expr"])) - exposed
        assert not unknown, f"{rule['alert']} names unknown metrics {unknown}"


def test_every_alert_has_its_own_runbook_section():
    runbooks = PROJECT_ROOT / "docs" / "runbooks.md"
    headings = [line.lstrip("#").strip() for line in runbooks.read_text().splitlines() if line.startswith("#")]
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in rules():
        assert rule["annotations"]["runbook"] == f"docs/runbooks.md#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, f"{rule['alert']}: docs/runbooks.md has no heading for it"


def test_dashboard_is_valid_and_queries_existing_metrics(exposed):
    dashboard = json.loads((DEPLOY / "grafana" / "cachesvc-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            unknown = set(METRIC.findall(target["expr"])) - exposed
            assert not unknown, f"panel {panel['title']!r} names unknown metrics {unknown}"


def test_a_misspelt_metric_would_be_caught(exposed):
    assert "cachesvc_request_duration_seconds_bucket" in exposed
    assert "cachesvc_requests_duration_seconds_bucket" not in exposed

