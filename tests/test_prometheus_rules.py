"""The pipeline's Prometheus rules, checked and unit-tested by Debian's promtool (2.42).

dashboards/alerts/tests/prometheus_rules_test.yml holds, for every alert, a case where it fires
(labels and annotations compared) and one where it stays quiet; it is run against rules generated
from the settings' defaults. The harness is tested too: a wrong expectation, and rules with a
wrong threshold, must make promtool fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards.alerts import prometheus_rules
from dashboards.alerts.files import dump
from dashboards.config import Config
from dashboards.grafana import alert_rules
from opscentre.measures import END_TO_END_BUCKETS
from opscentre.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
UNIT_TESTS = ROOT / "dashboards/alerts/tests/prometheus_rules_test.yml"
RUNBOOK = ROOT / "dashboards/runbook.md"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def generate(tmp_path: Path, **settings) -> Path:
    prometheus_rules.write(tmp_path, Config.from_settings(Settings(**settings)))
    return tmp_path


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], check=False, capture_output=True, text=True, timeout=120)


def unit_test_dir(tmp_path: Path, rules_dir: Path, tests_text: str | None = None) -> Path:
    """The unit tests beside the generated rules, where their `rule_files` looks."""
    tmp_path.mkdir(exist_ok=True)
    shutil.copy(rules_dir / prometheus_rules.RULES_FILE, tmp_path / "opscentre.rules.yml")
    (tmp_path / UNIT_TESTS.name).write_text(tests_text or UNIT_TESTS.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path / UNIT_TESTS.name


@needs_promtool
def test_generated_rules_pass_promtool_check(tmp_path):
    out = generate(tmp_path)
    result = promtool("check", "rules", out / prometheus_rules.RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((out / prometheus_rules.RULES_FILE).read_text())
    count = sum(len(g["rules"]) for g in rules["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


@needs_promtool
def test_prometheus_config_passes_promtool_check(tmp_path):
    out = generate(tmp_path)
    result = promtool("check", "config", out / prometheus_rules.PROMETHEUS_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    config = yaml.safe_load((out / prometheus_rules.PROMETHEUS_FILE).read_text())
    # Every replica of the compose services worker and forwarder: a type A lookup of the service name.
    jobs = {job["job_name"]: job["dns_sd_configs"] for job in config["scrape_configs"]}
    assert jobs == {"opscentre-worker": [{"names": ["worker"], "type": "A", "port": 9108}],
                    "opscentre-forwarder": [{"names": ["forwarder"], "type": "A", "port": 9108}]}
    assert all("static_configs" not in job for job in config["scrape_configs"])
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


@needs_promtool
def test_static_and_dns_targets_together_pass_promtool_check(tmp_path):
    out = generate(tmp_path, prometheus_worker_targets="10.0.0.5:9108, dns+worker:9108, dns+worker-b:9108, dns+old:9100",
                   prometheus_alertmanagers="dns+alertmanager:9093")
    result = promtool("check", "config", out / prometheus_rules.PROMETHEUS_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((out / prometheus_rules.PROMETHEUS_FILE).read_text())
    worker = config["scrape_configs"][0]
    assert worker["static_configs"] == [{"targets": ["10.0.0.5:9108"]}]
    assert worker["dns_sd_configs"] == [{"names": ["worker", "worker-b"], "type": "A", "port": 9108},
                                        {"names": ["old"], "type": "A", "port": 9100}]
    assert config["alerting"]["alertmanagers"] == [{"dns_sd_configs": [{"names": ["alertmanager"], "type": "A", "port": 9093}]}]


@needs_promtool
def test_every_alert_fires_and_stays_quiet_as_the_unit_tests_expect(tmp_path):
    result = promtool("test", "rules", unit_test_dir(tmp_path / "unit", generate(tmp_path / "gen")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_every_alert_firing_and_quiet():
    config = Config.from_settings(Settings())
    cases = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    rules = {r["alert"]: r for rules in prometheus_rules.alerting_rules(config).values() for r in rules}
    for name in prometheus_rules.alert_names(config):
        firing = [alert for c in checks if c["alertname"] == name for alert in c["exp_alerts"]]
        quiet = [c for c in checks if c["alertname"] == name and not c["exp_alerts"]]
        assert firing, f"no unit test where {name} fires"
        assert quiet, f"no unit test where {name} stays quiet"
        for alert in firing:
            assert {"severity", "team"} <= set(alert["exp_labels"]), name
            assert set(alert["exp_annotations"]) == {"summary", "summary_en", "runbook_url"}, name
            assert alert["exp_annotations"]["runbook_url"] == config.runbook(name)
        assert rules[name]["labels"]["team"] == "platform"
    severities = {r["labels"]["severity"] for rs in prometheus_rules.alerting_rules(config).values() for r in rs}
    assert severities == {"critical", "warning", "ticket"}


def without_day_long_cases(text: str) -> str:
    """The unit tests without those that evaluate a day or more (two thirds of promtool's time):
    the harness's own tests below expect their failures in the others."""
    unit_s = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

    def seconds(duration) -> float:  # a Prometheus duration: "1d20m", "500ms"
        return sum(int(n) * unit_s[unit] for n, unit in re.findall(r"(\d+)(ms|[smhdwy])", str(duration)))

    doc = yaml.safe_load(text)
    doc["tests"] = [case for case in doc["tests"] if all(seconds(check["eval_time"]) < 86400
                                                         for check in case.get("alert_rule_test", []))]
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@needs_promtool
def test_a_wrong_expectation_fails_the_unit_tests(tmp_path):
    """The harness itself: promtool exits 1 and shows the difference when an expectation is wrong."""
    text = UNIT_TESTS.read_text(encoding="utf-8")
    wrong = text.replace("runbook_url: \"dashboards/runbook.md#opscentreworkerdown\"",
                         "runbook_url: \"dashboards/runbook.md#somewhere-else\"", 1)
    assert wrong != text
    result = promtool("test", "rules", unit_test_dir(tmp_path / "unit", generate(tmp_path / "gen"),
                                                     without_day_long_cases(wrong)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout + result.stderr
    assert "somewhere-else" in result.stdout + result.stderr


@needs_promtool
def test_rules_with_a_wrong_threshold_fail_the_unit_tests(tmp_path):
    """Rules generated with other thresholds than the tests expect must not pass them."""
    rules = generate(tmp_path / "gen", alert_lag_warning_s=180.0, alert_watermark_stall_s=1800.0)
    short = without_day_long_cases(UNIT_TESTS.read_text(encoding="utf-8"))
    result = promtool("test", "rules", unit_test_dir(tmp_path / "unit", rules, short))
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "OpscentreConsumerLagHigh" in output and "OpscentreWatermarkStalled" in output


def test_settings_set_the_thresholds(monkeypatch):
    monkeypatch.setenv("OPSCENTRE_ALERT_LAG_WARNING_S", "90")
    monkeypatch.setenv("OPSCENTRE_LATENCY_OBJECTIVE_S", "3")
    monkeypatch.setenv("OPSCENTRE_LATENCY_OBJECTIVE_SHARE", "0.995")
    monkeypatch.setenv("OPSCENTRE_PROMETHEUS_WORKER_JOB", "ioc-worker")
    monkeypatch.setenv("OPSCENTRE_PROMETHEUS_WORKER_TARGETS", "10.0.0.5:9108, 10.0.0.6:9108")
    monkeypatch.setenv("OPSCENTRE_RUNBOOK_URL", "https://git.ioc.example.gov.vn/opscentre/-/blob/main/dashboards/runbook.md")
    config = Config.from_settings()
    text = dump(prometheus_rules.rule_groups(config))
    assert "opscentre:consumer_lag_seconds:max > 90" in text
    assert 'le="3.0"' in text and "(14.4 * 0.005)" in text
    assert 'up{job="ioc-worker"}' in text and 'job="opscentre-worker"' not in text
    assert "https://git.ioc.example.gov.vn/opscentre/-/blob/main/dashboards/runbook.md#opscentreworkerdown" in text
    scrape = prometheus_rules.prometheus_config(config)["scrape_configs"][0]
    assert scrape == {"job_name": "ioc-worker", "static_configs": [{"targets": ["10.0.0.5:9108", "10.0.0.6:9108"]}]}


@pytest.mark.parametrize("changes, message", [
    ({"latency_objective_s": 4.0}, "must be a bucket of the latency histogram"),
    ({"latency_objective_share": 1.0}, "must be below 1"),
    ({"alert_lag_warning_s": 600.0}, "is below OPSCENTRE_ALERT_LAG_WARNING_S"),
    ({"prometheus_worker_targets": "worker"}, "OPSCENTRE_PROMETHEUS_WORKER_TARGETS: expected \\[dns\\+\\]host:port"),
    ({"prometheus_worker_targets": "dns+worker"}, "OPSCENTRE_PROMETHEUS_WORKER_TARGETS: expected"),
])
def test_unusable_settings_are_refused(changes, message):
    with pytest.raises(SettingsError, match=message):
        Config.from_settings(Settings(**changes))


def test_the_latency_objective_is_a_bucket_of_the_worker_histogram():
    from streams.processor import LATENCY

    assert tuple(LATENCY._upper_bounds[:-1]) == END_TO_END_BUCKETS
    assert Settings().latency_objective_s in END_TO_END_BUCKETS
    assert Config.from_settings(Settings()).latency_bucket == "5.0"


def test_the_runbook_has_a_section_for_every_alert():
    config = Config.from_settings(Settings())
    headings = re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    names = prometheus_rules.alert_names(config) + [rule.title for rule in alert_rules.rules(config)]
    assert sorted(headings) == sorted(names)  # the pipeline's rules and the boards' (Grafana)
    for rules in prometheus_rules.alerting_rules(config).values():
        for rule in rules:
            assert rule["annotations"]["runbook_url"] == "dashboards/runbook.md#" + rule["alert"].lower()


def test_the_readme_lists_every_alert():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paging = readme.split("\n## Paging\n", 1)[1].split("\n## ", 1)[0]
    config = Config.from_settings(Settings())
    for name in prometheus_rules.alert_names(config) + [rule.title for rule in alert_rules.rules(config)]:
        assert f"`{name}`" in paging, name
