"""Every tunable of the pipeline, read from the environment in one place.

Each setting has a default that suits a single machine; production overrides
them through the environment (see README, "Settings").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from urllib.parse import quote, urlparse


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use."""


def _env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)  # type: ignore[arg-type]
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _share(name: str, default: float) -> float:
    value = _float(name, default)
    if value > 1:
        raise SettingsError(f"{name}: a share between 0 and 1 (0.95 for 95%), got {value}")
    return value


def read_secret_file(path: str) -> str:
    """A secret file's one line: a trailing line break (LF or CRLF) is not part of the secret, as in
    deploy/secrets-env.sh, which reads the same files for the servers."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().rstrip("\n").removesuffix("\r")


def _secret(name: str) -> str | None:
    """OPSCENTRE_<NAME>, or the content of the file OPSCENTRE_<NAME>_FILE names (compose secrets)."""
    value, path = _env(name, None), _env(name + "_FILE", None)
    if path is None:
        return value
    if value is not None:
        raise SettingsError(f"{name} and {name}_FILE are both set: give one")
    try:
        secret = read_secret_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}_FILE: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise SettingsError(f"{name}_FILE: {path} is empty")
    return secret


def _setting(default, minimum: float = 0, share: bool = False, choices: tuple[str, ...] = (), secret: bool = False):
    """A setting read from OPSCENTRE_<NAME> (its field name in capitals), parsed like its default;
    a secret may instead be read from the file OPSCENTRE_<NAME>_FILE names."""
    return field(default=default, metadata={"minimum": minimum, "share": share, "choices": choices, "secret": secret})


# The `severity` label Alertmanager's routing knows (dashboards/alerts/alertmanager.py).
ALERT_SEVERITIES = ("critical", "warning", "ticket")

# Variables of earlier releases: refused with the new name rather than silently ignored.
RENAMED = {"OPSCENTRE_MEMORY_WINDOW_HOURS": "OPSCENTRE_MEMORY_WINDOW_S (seconds)"}


@dataclass(frozen=True)
class Settings:
    kafka: str | None = None
    clickhouse: str | None = None
    # The password of OPSCENTRE_CLICKHOUSE's user, when the URL has none (a secret file in the stack).
    clickhouse_password: str | None = _setting(None, secret=True)
    # A ClickHouse cluster (remote_servers) to shard the tables over by source partition (README, "Deploy").
    clickhouse_cluster: str | None = None
    topic_prefix: str = "opscentre"
    pseudonym_key: str | None = _setting(None, secret=True)
    metrics_addr: str = "127.0.0.1:9108"
    partitions: int = _setting(4, minimum=1)
    consumer_group: str = "opscentre-worker"
    dedup_horizon_s: float = 600.0
    max_future_s: float = 600.0
    # Raw events, minute rows and lifecycle edges are kept this long (whole months, sinks/retention.py);
    # hour rows twice as long; day and month rows, alerts and open items always. 0: keep everything.
    retention_days: int = _setting(400, minimum=0)
    flush_interval_s: float = _setting(1.0, minimum=0.05)
    flush_max_records: int = _setting(2000, minimum=1)
    derive_interval_s: float = _setting(5.0, minimum=0.0)
    fetch_max_wait_s: float = _setting(0.1, minimum=0.01)
    memory_window_s: float = 600.0
    clickhouse_timeout_s: float = _setting(30.0, minimum=1.0)
    stall_warning_s: float = _setting(60.0, minimum=1.0)
    group_session_timeout_s: float = _setting(10.0, minimum=1.0)
    group_rebalance_timeout_s: float = _setting(10.0, minimum=1.0)
    group_heartbeat_s: float = _setting(2.0, minimum=0.1)
    provinces_file: str | None = None
    catalogue_file: str | None = None
    alert_lookahead_s: float = _setting(3600.0, minimum=60.0)
    idle_watermark_s: float = _setting(10.0, minimum=1.0)
    # Scorecard targets (shares, 0-1): on time per Nghị định 61/2018 practice and CONTRACT §2;
    # fully online 70% for provinces in 2025 (Quyết định 942); the others are the operator's.
    target_processing_on_time: float = _setting(0.95, share=True)
    target_on_time: float = _setting(0.95, share=True)
    target_full_online: float = _setting(0.70, share=True)
    target_online_payment: float = _setting(0.50, share=True)
    target_feedback_on_time: float = _setting(0.90, share=True)
    target_satisfied: float = _setting(0.80, share=True)
    # Fully online, national level (the national board): 80% in 2025 (CONTRACT §2).
    target_full_online_national: float = _setting(0.80, share=True)
    data_dir: str = "./var"
    # Grafana boards (dashboards/grafana): the language of their text, the data sources they are
    # provisioned with (the password goes to Grafana as ${OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD},
    # never written out), and the token `dashboards push` authenticates with.
    dashboard_language: str = _setting("vi", choices=("vi", "en"))
    dashboard_province: str = "01"  # the province the boards open on (a code of the province list)
    grafana_clickhouse: str = "clickhouse://grafana@clickhouse:9000/opscentre"
    grafana_clickhouse_password: str | None = _setting(None, secret=True)
    grafana_prometheus: str = "http://prometheus:9090"
    grafana_alertmanager: str = "http://alertmanager:9093"  # where Grafana sends its alert rules' alerts
    grafana_dashboards_path: str = "/var/lib/grafana/dashboards"  # where Grafana reads the board files
    grafana_token: str | None = _setting(None, secret=True)
    # Alerting (dashboards/config.py): thresholds of the pipeline's Prometheus rules ...
    alert_down_for_s: float = _setting(120.0, minimum=1.0)
    alert_lag_warning_s: float = _setting(60.0, minimum=1.0)
    alert_lag_critical_s: float = _setting(300.0, minimum=1.0)
    alert_lag_for_s: float = _setting(300.0, minimum=1.0)
    alert_lag_growth_window_s: float = _setting(900.0, minimum=60.0)
    alert_lag_growth_per_s: float = _setting(0.01, minimum=0.0001)
    latency_objective_s: float = _setting(5.0, minimum=0.1)
    latency_objective_share: float = _setting(0.99, share=True)
    alert_rejected_share_jump: float = _setting(0.05, share=True)
    alert_rejected_min_events: int = _setting(100, minimum=1)
    alert_clickhouse_failing_for_s: float = _setting(60.0, minimum=1.0)
    alert_write_failures: int = _setting(5, minimum=1)
    alert_watermark_stall_s: float = _setting(900.0, minimum=120.0)
    alert_forwarder_failing_for_s: float = _setting(300.0, minimum=1.0)
    alert_post_failures: int = _setting(5, minimum=1)
    runbook_url: str = "dashboards/runbook.md"
    # ... the boards' Grafana-managed rules on the KPIs (dashboards/grafana/alert_rules.py) ...
    alert_kpi_min_items: int = _setting(20, minimum=1)  # completions (received) below which no share is judged
    alert_overdue_growth_window_s: float = _setting(21600.0, minimum=600.0)
    alert_overdue_growth: int = _setting(10, minimum=1)  # overdue dossiers gained over the window
    alert_security_baseline_days: int = _setting(7, minimum=1)
    alert_security_factor: float = _setting(3.0, minimum=1.0)  # times the usual hourly level
    alert_security_min_alerts: int = _setting(20, minimum=1)  # high/critical alerts in the hour, at least
    alert_security_team: str = "security"  # the `team` label of the security rule (a team of the teams file)
    alert_pipeline_team: str = "platform"
    # ... Prometheus's scrape targets (compose service names: dns+ finds every replica) ...
    prometheus_worker_job: str = "opscentre-worker"
    prometheus_forwarder_job: str = "opscentre-forwarder"
    prometheus_worker_targets: str = "dns+worker:9108"
    prometheus_forwarder_targets: str = "dns+forwarder:9108"
    prometheus_alertmanagers: str = "alertmanager:9093"
    prometheus_scrape_interval_s: float = _setting(15.0, minimum=1.0)
    # ... and Alertmanager's routing and receivers; secrets are read from files, never given here.
    teams_file: str | None = None
    alert_group_wait_s: float = _setting(30.0, minimum=0.0)
    alert_group_interval_s: float = _setting(300.0, minimum=1.0)
    alert_repeat_interval_s: float = _setting(14400.0, minimum=60.0)
    alert_smtp_smarthost: str = "localhost:25"
    alert_smtp_from: str = "opscentre@localhost"
    alert_smtp_username: str | None = None
    alert_smtp_password_file: str = "/run/secrets/alertmanager_smtp_password"
    alert_telegram_token_file: str = "/run/secrets/alertmanager_telegram_bot_token"
    alert_telegram_api_url: str = "https://api.telegram.org"
    alert_webhook_token_file: str | None = None
    # The alert forwarder (sinks/alertmanager.py): business alerts from <prefix>.alerts to Alertmanager.
    alertmanager: str | None = None
    alertmanager_timeout_s: float = _setting(5.0, minimum=0.1)
    forwarder_group: str = "opscentre-forwarder"
    forwarder_resend_s: float = _setting(60.0, minimum=1.0)
    forwarder_ends_after_s: float = _setting(900.0, minimum=2.0)
    # One severity per alert type (the routing's: critical pages, warning notifies, ticket waits).
    severity_dossier_overdue: str = _setting("warning", choices=ALERT_SEVERITIES)
    severity_feedback_overdue: str = _setting("warning", choices=ALERT_SEVERITIES)
    business_runbook_url: str | None = None
    alert_dashboard_url: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        for old, new in RENAMED.items():
            if _env(old, None) is not None:
                raise SettingsError(f"{old} is replaced by {new}")
        values = {}
        for setting in fields(cls):
            name = "OPSCENTRE_" + setting.name.upper()
            default, minimum = setting.default, setting.metadata.get("minimum", 0)
            if setting.metadata.get("secret"):
                values[setting.name] = _secret(name)
            elif setting.metadata.get("share"):
                values[setting.name] = _share(name, default)
            elif type(default) is int:
                values[setting.name] = _int(name, default, minimum=int(minimum))
            elif type(default) is float:
                values[setting.name] = _float(name, default, minimum=minimum)
            else:
                values[setting.name] = _env(name, default)
            choices = setting.metadata.get("choices")
            if choices and values[setting.name] not in choices:
                raise SettingsError(f"{name}: one of {', '.join(choices)}, got {values[setting.name]!r}")
        return cls(**values)

    def with_overrides(self, **changes) -> Settings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known})

    # Topic names are part of the public contract (CONTRACT §1).
    @property
    def service_topic(self) -> str:
        return f"{self.topic_prefix}.service-events"

    @property
    def security_topic(self) -> str:
        return f"{self.topic_prefix}.security-events"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letter"

    @property
    def alerts_topic(self) -> str:
        return f"{self.topic_prefix}.alerts"

    @property
    def event_topics(self) -> tuple[str, str]:
        return (self.service_topic, self.security_topic)

    def require_kafka(self) -> str:
        if not self.kafka:
            raise SettingsError("OPSCENTRE_KAFKA is not set (bootstrap servers host:port[,host:port])")
        return self.kafka

    def require_clickhouse(self) -> str:
        """OPSCENTRE_CLICKHOUSE, with OPSCENTRE_CLICKHOUSE_PASSWORD put in when it is given and
        OPSCENTRE_CLICKHOUSE_CLUSTER as `?cluster=NAME` (opscentre.clickhouse reads both from the URL)."""
        if not self.clickhouse:
            raise SettingsError(
                "OPSCENTRE_CLICKHOUSE is not set (clickhouse://user:password@host:9000/db or chdb:///path)"
            )
        url = self._with_password()
        if self.clickhouse_cluster:
            parsed = urlparse(url)
            if parsed.scheme not in ("clickhouse", "tcp"):
                raise SettingsError("OPSCENTRE_CLICKHOUSE_CLUSTER is for ClickHouse servers (clickhouse://), "
                                    f"not {parsed.scheme}://")
            if not set(self.clickhouse_cluster) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"):
                raise SettingsError(f"OPSCENTRE_CLICKHOUSE_CLUSTER: letters, digits and _ only, got {self.clickhouse_cluster!r}")
            url = parsed._replace(query=f"cluster={self.clickhouse_cluster}").geturl()
        return url

    def _with_password(self) -> str:
        if self.clickhouse_password is None:
            return self.clickhouse
        parsed = urlparse(self.clickhouse)
        if parsed.scheme not in ("clickhouse", "tcp"):
            raise SettingsError(f"OPSCENTRE_CLICKHOUSE_PASSWORD is for a server (clickhouse://), not {parsed.scheme}://")
        if parsed.password is not None:
            raise SettingsError("OPSCENTRE_CLICKHOUSE has a password and OPSCENTRE_CLICKHOUSE_PASSWORD is set: give one")
        user = parsed.username or "default"
        host = parsed.netloc.rpartition("@")[2]
        return parsed._replace(netloc=f"{user}:{quote(self.clickhouse_password, safe='')}@{host}").geturl()

    def require_pseudonym_key(self) -> bytes:
        if not self.pseudonym_key:
            raise SettingsError("OPSCENTRE_PSEUDONYM_KEY is not set (secret used to pseudonymise personal identifiers)")
        return self.pseudonym_key.encode()

    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        try:
            return host or "127.0.0.1", int(port)
        except ValueError:
            raise SettingsError(f"OPSCENTRE_METRICS_ADDR: expected host:port, got {self.metrics_addr!r}") from None
