"""The generated Alertmanager configuration, on Debian's amtool and Alertmanager (0.25).

amtool checks the file and resolves every route: each severity of each team, replays to nobody,
pipeline alerts to the pipeline team, security alerts to the security team, business alerts to
their agency's team and the IOC duty desk. A real Alertmanager, started by the generated
start.sh, then delivers to a recorder standing in for Telegram and a paging webhook (secrets read
from files) and applies the inhibition rules; a real Prometheus on the generated prometheus.yml
fires an alert that goes the whole way.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from dashboards.alerts import alertmanager, prometheus_rules
from dashboards.alerts.teams import load_teams
from dashboards.config import Config
from opscentre.settings import Settings, SettingsError
from tests.alert_servers import Recorder, start_alertmanager, start_prometheus

ROOT = Path(__file__).resolve().parent.parent
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)")
needs_servers = pytest.mark.skipif(not (shutil.which("prometheus-alertmanager") and shutil.which("prometheus")),
                                   reason="prometheus and prometheus-alertmanager not installed")

# With a user name, the SMTP password comes from a file too: check-config sees every secret field.
SETTINGS = {"alert_smtp_username": "opscentre", "alert_webhook_token_file": "/run/secrets/alertmanager_webhook_token"}


def amtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([AMTOOL, *map(str, args)], check=False, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alertmanager")
    alertmanager.write(out, Config.from_settings(Settings(**SETTINGS)))
    return out / alertmanager.CONFIG_FILE


@needs_amtool
def test_generated_config_passes_amtool_check(generated):
    result = amtool("check-config", generated)
    assert result.returncode == 0, result.stdout + result.stderr
    teams = load_teams()
    assert f"- {1 + 3 * len(teams)} receivers" in result.stdout
    assert "- 2 inhibit rules" in result.stdout


def test_no_secret_is_written_literally(generated):
    config = yaml.safe_load(generated.read_text())
    assert config["global"]["smtp_auth_password_file"] == "/run/secrets/alertmanager_smtp_password"
    assert "smtp_auth_password" not in config["global"]
    for receiver in config["receivers"]:
        for telegram in receiver.get("telegram_configs", []):
            assert telegram["bot_token"] == alertmanager.TELEGRAM_TOKEN_PLACEHOLDER
        for webhook in receiver.get("webhook_configs", []):
            assert webhook["http_config"] == {"authorization": {
                "type": "Bearer", "credentials_file": "/run/secrets/alertmanager_webhook_token"}}
        for email in receiver.get("email_configs", []):
            assert set(email) == {"send_resolved", "to"}


# (labels, receivers in the order Alertmanager resolves them)
ROUTES = [
    # pipeline alerts, by severity
    ({"alertname": "OpscentreWorkerDown", "team": "platform", "severity": "critical", "job": "opscentre-worker"},
     ["platform-critical"]),
    ({"alertname": "OpscentreConsumerLagHigh", "team": "platform", "severity": "warning", "topic": "t"},
     ["platform-warning"]),
    ({"alertname": "OpscentreLatencyBudgetBurn", "team": "platform", "severity": "ticket", "long": "3d"},
     ["platform-ticket"]),
    # security alerts, though they carry a province
    ({"alertname": "SecurityAlertsSurge", "team": "security", "severity": "critical", "province": "01"},
     ["security-critical"]),
    ({"alertname": "SecurityAlertsSurge", "team": "security", "severity": "warning"}, ["security-warning"]),
    # business alerts: the agency's team and the IOC duty desk
    ({"alertname": "DossierOverdue", "province": "01", "agency": "STP", "item_ref": "ab12", "severity": "warning",
      "replayed": "false"}, ["stp-01-warning", "ioc-duty-warning"]),
    ({"alertname": "FeedbackOverdue", "province": "01", "agency": "STP", "item_ref": "cd34", "severity": "critical",
      "replayed": "false"}, ["stp-01-critical", "ioc-duty-critical"]),
    ({"alertname": "DossierOverdue", "province": "01", "agency": "SXD", "item_ref": "ef56", "severity": "warning",
      "replayed": "false"}, ["ioc-duty-warning"]),
    ({"alertname": "DossierOverdue", "province": "48", "agency": "STP", "item_ref": "ab12", "severity": "warning",
      "replayed": "false"}, ["ioc-duty-warning"]),
    ({"alertname": "OnTimeRateLow", "province": "01", "agency": "STP", "severity": "ticket", "team": "stp-01"},
     ["stp-01-ticket", "ioc-duty-ticket"]),
    # replays page nobody, whatever else they carry
    ({"alertname": "DossierOverdue", "province": "01", "agency": "STP", "item_ref": "ab12", "severity": "critical",
      "replayed": "true"}, ["nobody"]),
    ({"alertname": "OpscentreWorkerDown", "team": "platform", "severity": "critical", "replayed": "true"}, ["nobody"]),
    # no route: the pipeline team; an unknown severity goes as a warning
    ({"alertname": "Unheard", "severity": "critical"}, ["platform-critical"]),
    ({"alertname": "Unheard", "team": "nobody-we-know"}, ["platform-warning"]),
    ({"alertname": "DossierOverdue", "province": "01", "agency": "STP", "severity": "info"},
     ["stp-01-warning", "ioc-duty-warning"]),
]


def _team_cases():
    """Every severity of every team of the default file, with labels that reach it."""
    for team in load_teams():
        if team.business:
            labels = {"alertname": "KpiBelowTarget", "province": team.province or "96",
                      "agency": team.agency or "ZZZ"}
        else:
            labels = {"alertname": "Anything", "team": team.name}
        for severity in alertmanager.SEVERITIES:
            expected = [f"{team.name}-{severity}"]
            if team.business and (team.province or team.agency):
                expected.append(f"ioc-duty-{severity}")
            yield {**labels, "severity": severity}, expected


@needs_amtool
@pytest.mark.parametrize("labels, receivers", ROUTES + list(_team_cases()),
                         ids=lambda v: ",".join(v) if isinstance(v, list) else None)
def test_routes(generated, labels, receivers):
    result = amtool("config", "routes", "test", f"--config.file={generated}",
                    f"--verify.receivers={','.join(receivers)}", *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, f"{labels}: {result.stdout.strip()} (expected {receivers})"


@needs_amtool
def test_a_wrong_receiver_fails_the_route_test(generated):
    """The harness itself: amtool exits 1 when the expected receiver is not the one resolved."""
    result = amtool("config", "routes", "test", f"--config.file={generated}", "--verify.receivers=ioc-duty-warning",
                    "replayed=true", "province=01", "alertname=DossierOverdue")
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[0] == "nobody"


def test_readme_paging_table_is_the_routing_tree():
    table = alertmanager.paging_table(Config.from_settings(Settings()), load_teams())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README 'Paging' table differs from the routing tree:\n" + table


@needs_amtool
def test_readme_paging_table_agrees_with_amtool(generated):
    """Each business row of the table, resolved by amtool, reaches the receivers it names."""
    table = alertmanager.paging_table(Config.from_settings(Settings()), load_teams())
    row = next(line for line in table.splitlines() if 'agency="STP"' in line)
    critical = row.split("|")[2].split()[0]
    result = amtool("config", "routes", "test", f"--config.file={generated}", "province=01", "agency=STP",
                    "severity=critical")
    assert result.stdout.split()[0].split(",")[0] == critical


@pytest.mark.parametrize("text, message", [
    ("teams: []", "expected a list under 'teams:'"),
    ("teams:\n- {name: a, email: a@x.vn}\n- {name: a, email: b@x.vn}", "team 'a' is defined twice"),
    ("teams:\n- {name: a}", r"team 1 \(a\): no channel"),
    ("teams:\n- {name: a, email: a@x.vn, provnice: '01'}", "unknown key 'provnice'"),
    ("teams:\n- {name: a, email: a@x.vn, province: '01'}", "set business: true"),
    ("teams:\n- {name: a, business: true, province: 1, email: a@x.vn}", "must be a code"),
    ("teams:\n- {name: A B, email: a@x.vn}", "must be lower-case"),
    ("teams:\n- {name: a, telegram_chat_id: abc}", "telegram_chat_id must be a non-zero integer"),
    ("teams: [", "not YAML"),
])
def test_a_bad_teams_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "teams.yml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message) as error:
        load_teams(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_the_pipeline_team_must_be_a_team_without_business(tmp_path):
    path = tmp_path / "teams.yml"
    path.write_text("teams:\n- {name: ops, email: ops@x.vn}\n- {name: duty, business: true, email: d@x.vn}\n")
    for team, message in (("platform", "no team 'platform'"), ("duty", "is a business team")):
        config = Config.from_settings(Settings(teams_file=str(path), alert_pipeline_team=team))
        with pytest.raises(SettingsError, match=message):
            alertmanager.write(tmp_path / "out", config)
    config = Config.from_settings(Settings(teams_file=str(path), alert_pipeline_team="ops"))
    alertmanager.write(tmp_path / "out", config)
    written = yaml.safe_load((tmp_path / "out" / alertmanager.CONFIG_FILE).read_text())
    assert written["route"]["receiver"] == "ops-warning"
    # No team on Telegram: start.sh starts Alertmanager on the generated file as it is.
    start = (tmp_path / "out" / alertmanager.START_FILE).read_text()
    assert "token_file" not in start and 'exec "$bin" --config.file="$here/alertmanager.yml" "$@"' in start


# -- a real Alertmanager -------------------------------------------------------------------------

TELEGRAM_TOKEN = "123456789:AAHk-test_token-not-real"
WEBHOOK_TOKEN = "webhook-token-from-a-file"


@pytest.fixture
def delivery(tmp_path):
    """Alertmanager on generated files: the platform team on Telegram and a webhook, both recorded."""
    recorder = Recorder()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "telegram").write_text(TELEGRAM_TOKEN + "\n")
    (secrets / "webhook").write_text(WEBHOOK_TOKEN)
    teams = tmp_path / "teams.yml"
    teams.write_text(
        "teams:\n"
        f"- {{name: platform, telegram_chat_id: -1001, webhook_url: '{recorder.url}/page'}}\n"
        f"- {{name: duty, business: true, webhook_url: '{recorder.url}/duty'}}\n")
    settings = Settings(teams_file=str(teams), alert_telegram_api_url=recorder.url,
                        alert_telegram_token_file=str(secrets / "telegram"),
                        alert_webhook_token_file=str(secrets / "webhook"),
                        alert_group_wait_s=0.5, alert_group_interval_s=1.0)
    out = tmp_path / "out"
    alertmanager.write(out, Config.from_settings(settings))
    server = start_alertmanager(out / alertmanager.START_FILE, tmp_path)
    try:
        yield server, recorder, out, tmp_path
    finally:
        server.stop()
        recorder.stop()


def _alert(**labels) -> dict:
    return {"labels": labels, "annotations": {"summary": "Worker worker:9108 không trả lời Prometheus đã 2 phút",
                                              "summary_en": "Worker worker:9108 has not answered",
                                              "runbook_url": "dashboards/runbook.md#opscentreworkerdown"},
            "startsAt": dt.datetime.now(dt.timezone.utc).isoformat()}


@needs_servers
def test_alertmanager_delivers_with_secrets_from_files(delivery):
    server, recorder, out, work = delivery
    assert TELEGRAM_TOKEN not in (out / alertmanager.CONFIG_FILE).read_text()
    assert server.post("/api/v2/alerts", [_alert(alertname="OpscentreWorkerDown", severity="critical",
                                                 team="platform", job="opscentre-worker",
                                                 instance="worker:9108")]) == 200

    (telegram,) = recorder.wait_for(lambda r: r["path"].endswith("/sendMessage"), what="Telegram message")
    assert telegram["path"] == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    message = json.loads(telegram["body"])
    assert message["chat_id"] == "-1001" and message["parse_mode"] == "HTML"
    assert message["text"].startswith("<b>CRITICAL</b> OpscentreWorkerDown")
    assert "Worker worker:9108 không trả lời Prometheus đã 2 phút" in message["text"]
    assert "<i>Worker worker:9108 has not answered</i>" in message["text"]
    assert "dashboards/runbook.md#opscentreworkerdown" in message["text"]

    (page,) = recorder.wait_for(lambda r: r["path"] == "/page", what="webhook post")
    assert page["headers"]["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert json.loads(page["body"])["alerts"][0]["labels"]["alertname"] == "OpscentreWorkerDown"

    # The token lives only in the private copy start.sh made; Alertmanager shows it masked.
    runtime = work / "am-runtime"
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE((runtime / "alertmanager.yml").stat().st_mode) == 0o600
    assert TELEGRAM_TOKEN in (runtime / "alertmanager.yml").read_text()
    status = json.dumps(server.get("/api/v2/status"))
    assert TELEGRAM_TOKEN not in status and WEBHOOK_TOKEN not in status


def _states(server, wanted: int, timeout_s: float = 20.0) -> dict:
    """{alertname/severity/job: (state, receivers)} once every alert's state is decided."""
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = server.get("/api/v2/alerts")
        states = {"/".join(a["labels"].get(k, "") for k in ("alertname", "severity", "job")):
                  (a["status"]["state"], [r["name"] for r in a["receivers"]]) for a in alerts}
        if len(states) == wanted and all(s != "unprocessed" for s, _ in states.values()) \
                and any(s == "suppressed" for s, _ in states.values()):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(0.2)


@needs_servers
def test_alertmanager_inhibits_and_drops_replays(delivery):
    server, recorder, _, _ = delivery
    worker = {"team": "platform", "job": "opscentre-worker"}
    server.post("/api/v2/alerts", [
        _alert(alertname="OpscentreWorkerDown", severity="critical", instance="worker:9108", **worker),
        _alert(alertname="OpscentreConsumerLagHigh", severity="warning", topic="opscentre.service-events", **worker),
        _alert(alertname="OpscentreLatencyBudgetBurn", severity="critical", long="1h", short="5m", **worker),
        # another job's lag is not this worker's: only its own critical silences its warning
        _alert(alertname="OpscentreConsumerLagHigh", severity="warning", topic="t", team="platform", job="other"),
        _alert(alertname="OpscentreConsumerLagHigh", severity="critical", topic="t", team="platform", job="other"),
        _alert(alertname="OpscentreWatermarkStalled", severity="warning", partition="0", **worker),
        _alert(alertname="DossierOverdue", severity="warning", province="01", agency="STP", item_ref="x",
               replayed="true"),
    ])
    states = _states(server, wanted=7)
    assert states == {
        "OpscentreWorkerDown/critical/opscentre-worker": ("active", ["platform-critical"]),
        "OpscentreConsumerLagHigh/warning/opscentre-worker": ("suppressed", ["platform-warning"]),
        "OpscentreLatencyBudgetBurn/critical/opscentre-worker": ("suppressed", ["platform-critical"]),
        "OpscentreConsumerLagHigh/warning/other": ("suppressed", ["platform-warning"]),
        "OpscentreConsumerLagHigh/critical/other": ("active", ["platform-critical"]),
        "OpscentreWatermarkStalled/warning/opscentre-worker": ("active", ["platform-warning"]),
        "DossierOverdue/warning/": ("active", ["nobody"]),
    }
    recorder.wait_for(lambda r: r["path"].endswith("/sendMessage") and b"OpscentreWatermarkStalled" in r["body"],
                      what="the watermark warning")
    time.sleep(2)  # a group interval and more: nothing for the replay or the silenced ones
    sent = b"".join(r["body"] for r in recorder.requests)
    assert b"DossierOverdue" not in sent
    assert b"OpscentreLatencyBudgetBurn" not in sent


# -- Prometheus on the generated prometheus.yml, through Alertmanager -----------------------------

@needs_servers
def test_prometheus_fires_to_alertmanager_on_the_generated_files(delivery, tmp_path):
    """A worker reporting ClickHouse down pages the platform team: scrape, rule, route, receiver."""
    server, recorder, _, _ = delivery
    registry = CollectorRegistry()
    Gauge("opscentre_stream_clickhouse_up", "1 while the last write succeeded", registry=registry).set(0)
    metrics, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        worker = f"127.0.0.1:{metrics.server_port}"
        config = Config.from_settings(Settings(
            prometheus_worker_targets=worker, prometheus_forwarder_targets=worker,
            prometheus_alertmanagers=server.url.removeprefix("http://"), prometheus_scrape_interval_s=1.0,
            alert_clickhouse_failing_for_s=1.0))
        prometheus_rules.write(tmp_path / "gen", config)
        prometheus = start_prometheus(tmp_path / "gen" / prometheus_rules.PROMETHEUS_FILE, tmp_path)
        try:
            (page,) = recorder.wait_for(lambda r: r["path"] == "/page", timeout_s=60,
                                        what="the ClickHouse page from Prometheus")
            alert = json.loads(page["body"])["alerts"][0]
            assert alert["labels"] == {"alertname": "OpscentreClickHouseWritesFailing", "severity": "critical",
                                       "team": "platform", "job": "opscentre-worker", "instance": worker}
            assert alert["annotations"]["runbook_url"] == "dashboards/runbook.md#opscentreclickhousewritesfailing"
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            assert {g["name"] for g in groups} == {"opscentre-worker", "opscentre-slo", "opscentre-forwarder"}
            assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups
        finally:
            prometheus.stop()
    finally:
        metrics.shutdown()
