"""The Grafana-managed KPI alert rules: the provisioning file `dashboards build` writes (Grafana's
file format, apiVersion 1, checked field by field: Grafana cannot run here), and the routing their
labels get in the generated Alertmanager configuration (amtool 0.25).

Their queries run on ClickHouse 18.16 and chDB, expanded with the server macros only, in
tests/test_board_queries.py (rules_on), against the read side's numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from dashboards.alerts import alertmanager
from dashboards.config import Config
from dashboards.grafana import alert_rules
from dashboards.grafana.boards import BOARDS
from dashboards.grafana.datasources import CLICKHOUSE_UID
from dashboards.grafana.i18n import Texts
from dashboards.grafana.plugin import CLICKHOUSE_PLUGIN_VERSION
from dashboards.grafana.provisioning import build
from dashboards.macros import alert_sql
from opscentre.settings import ALERT_SEVERITIES, Settings

AMTOOL = shutil.which("amtool")
CONFIG = Config.from_settings(Settings())
RULES = alert_rules.rules(CONFIG)
DURATION = re.compile(r"^(\d+[smhd])+$")


@pytest.fixture(scope="module", params=["vi", "en"])
def written(request, tmp_path_factory):
    settings = Settings().with_overrides(dashboard_language=request.param)
    out = tmp_path_factory.mktemp("build")
    build(out, settings)
    return settings, yaml.safe_load((out / "grafana/provisioning/alerting/opscentre.yml").read_text())


def test_the_file_is_grafanas_alerting_provisioning_format(written):
    settings, document = written
    assert set(document) == {"apiVersion", "groups"} and document["apiVersion"] == 1
    texts = Texts(settings.dashboard_language)
    folders = {texts(board.folder.title) for board in BOARDS}
    uids = []
    for group in document["groups"]:
        assert set(group) == {"orgId", "name", "folder", "interval", "rules"}, group.keys()
        assert group["orgId"] == 1 and group["folder"] in folders and DURATION.match(group["interval"])
        for rule in group["rules"]:
            assert set(rule) == {"uid", "title", "condition", "data", "noDataState", "execErrState", "for",
                                 "annotations", "labels", "isPaused"}, rule.keys()
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"]) and rule["title"].startswith("Opscentre")
            uids.append(rule["uid"])
            refs = [item["refId"] for item in rule["data"]]
            assert refs == ["A", "B", "C"] and rule["condition"] == "C"
            query, reduce, threshold = rule["data"]
            assert query["datasourceUid"] == CLICKHOUSE_UID
            assert query["relativeTimeRange"]["from"] > query["relativeTimeRange"]["to"] == 0
            model = query["model"]
            assert {k: model[k] for k in ("refId", "editorType", "format", "queryType", "pluginVersion")} == {
                "refId": "A", "editorType": "sql", "format": 1, "queryType": "table",
                "pluginVersion": CLICKHOUSE_PLUGIN_VERSION}
            assert model["intervalMs"] == 1000 and model["maxDataPoints"] == 43200
            for item, kind in ((reduce, "reduce"), (threshold, "threshold")):
                assert item["datasourceUid"] == "__expr__" and item["model"]["type"] == kind
                assert item["model"]["datasource"] == {"type": "__expr__", "uid": "__expr__"}
                assert item["model"]["refId"] == item["refId"]
            assert reduce["model"]["expression"] == "A" and reduce["model"]["settings"] == {"mode": "dropNN"}
            assert threshold["model"]["expression"] == "B"
            (condition,) = threshold["model"]["conditions"]
            assert condition["evaluator"]["type"] in ("gt", "lt") and len(condition["evaluator"]["params"]) == 1
            assert rule["noDataState"] == "OK" and rule["execErrState"] == "Error" and DURATION.match(rule["for"])
            assert rule["labels"]["severity"] in ALERT_SEVERITIES
            assert set(rule["annotations"]) == {"summary", "summary_en", "runbook_url"}
            assert rule["annotations"]["runbook_url"] == CONFIG.runbook(rule["title"])
    assert sorted(uids) == sorted(rule.uid for rule in RULES)


def test_rule_queries_use_server_macros_only():
    """Grafana applies no template variable to an alert query: alert_sql (strict) refuses any."""
    import datetime as dt

    now = dt.datetime(2026, 10, 22, 2, 0, tzinfo=dt.UTC)
    for rule in RULES:
        expanded = alert_sql(rule.sql, time_from=now - dt.timedelta(seconds=rule.lookback_s), time_to=now)
        assert "$" not in expanded and "toDateTime(1792634400)" in expanded, rule.uid


def test_security_rules_go_to_the_security_team_and_the_others_to_the_province():
    for rule in RULES:
        labels = alert_rules.api_rule(rule, CONFIG)["labels"]
        if rule.folder.uid == "opscentre-security":
            assert labels == {"severity": rule.severity, "team": CONFIG.security_team}
        else:
            assert labels == {"severity": rule.severity}
            assert "province" in rule.sql.split("FROM")[0]  # the province label comes from the query


@pytest.fixture(scope="module")
def routing(tmp_path_factory):
    out = tmp_path_factory.mktemp("alertmanager")
    alertmanager.write(out, CONFIG)
    return out / alertmanager.CONFIG_FILE


def query_labels(rule) -> dict:
    """The labels Grafana gives an alert of the rule: alertname (the title), the rule's labels,
    and the query's text columns (province, agency)."""
    columns = rule.sql.split("\nFROM")[0]
    labels = {"alertname": rule.title, **alert_rules.api_rule(rule, CONFIG)["labels"], "province": "01"}
    if re.search(r"\bagency\b", columns):
        labels["agency"] = "STP"
    return labels


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)")
@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.uid)
def test_the_routing_tree_takes_each_rule_to_its_team(routing, rule):
    labels = query_labels(rule)
    severity = labels["severity"]
    if "team" in labels:
        expected = [f"{labels['team']}-{severity}"]
    elif "agency" in labels:  # teams.yml: the STP of province 01, and the duty desk for every province
        expected = [f"stp-01-{severity}", f"ioc-duty-{severity}"]
    else:
        expected = [f"ioc-duty-{severity}"]
    result = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={routing}",
                             f"--verify.receivers={','.join(expected)}", *(f"{k}={v}" for k, v in labels.items())],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{labels}: {result.stdout.strip()} (expected {expected})"
