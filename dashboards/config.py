"""The one configuration of the boards and alerts: thresholds, targets and names, from Settings.

In the manner of a monitoring mixin's `_config`: the rule, routing and board generators read
their numbers only from here, and here reads them only from `opscentre.settings.Settings`
(environment `OPSCENTRE_<NAME>`, README "Settings"). To add a tunable, add a Settings field and
a field below filled from it in `from_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from opscentre.measures import END_TO_END_BUCKETS
from opscentre.settings import Settings, SettingsError

DNS_PREFIX = "dns+"  # a target resolved to all its addresses (every replica of a compose service)


def _targets(name: str, value: str) -> tuple[str, ...]:
    targets = tuple(part.strip() for part in value.split(",") if part.strip())
    for target in targets:
        host, _, port = target.removeprefix(DNS_PREFIX).rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"OPSCENTRE_{name.upper()}: expected [dns+]host:port[,...], got {value!r}")
    return targets


@dataclass(frozen=True)
class Config:
    # Names the rules match on.
    worker_job: str
    forwarder_job: str
    service_topic: str
    security_topic: str
    pipeline_team: str  # the `team` label of the pipeline's alerts (a team of the teams file)
    runbook_url: str  # the runbook's address; an alert's runbook_url is this + "#" + its name in lower case

    # A worker or forwarder not answering scrapes, or none to scrape.
    down_for_s: float
    # Consumer lag in seconds behind (opscentre_stream_consumer_lag_seconds).
    lag_warning_s: float
    lag_critical_s: float
    lag_for_s: float
    lag_growth_window_s: float
    lag_growth_per_s: float  # seconds of lag gained per second, over the window
    # End-to-end latency objective: this share of records stored within this many seconds.
    latency_objective_s: float
    latency_objective_share: float
    # Dead-lettered share of a topic's items: a jump over its own last day.
    rejected_share_jump: float
    rejected_min_events: int  # items in the 10-minute window, below which no share is judged
    # ClickHouse writes.
    clickhouse_failing_for_s: float
    write_failures: int  # failed writes in 5 minutes
    # Overdue tracking: a service partition's watermark standing still while records arrive.
    watermark_stall_s: float
    # The alert forwarder.
    forwarder_failing_for_s: float
    post_failures: int  # failed posts to Alertmanager in 5 minutes

    # The KPI targets the boards colour by and their Grafana rules alert on (shares, 0-1).
    target_processing_on_time: float
    target_on_time: float
    target_full_online: float  # provinces, this year
    target_full_online_national: float
    target_online_payment: float
    target_feedback_on_time: float
    target_satisfied: float
    # The Grafana rules on the KPIs.
    kpi_min_items: int
    overdue_growth_window_s: float
    overdue_growth: int
    security_baseline_days: int
    security_factor: float
    security_min_alerts: int
    security_team: str

    # Prometheus: host:port, or dns+name:port for every address the name resolves to.
    worker_targets: tuple[str, ...]
    forwarder_targets: tuple[str, ...]
    alertmanagers: tuple[str, ...]
    scrape_interval_s: float

    # Alertmanager.
    teams_file: str | None
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    smtp_smarthost: str
    smtp_from: str
    smtp_username: str | None
    smtp_password_file: str
    telegram_token_file: str
    telegram_api_url: str
    webhook_token_file: str | None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Config:
        s = Settings.from_env() if settings is None else settings
        if s.latency_objective_s not in END_TO_END_BUCKETS:
            bounds = ", ".join(f"{b:g}" for b in END_TO_END_BUCKETS)
            raise SettingsError(
                f"OPSCENTRE_LATENCY_OBJECTIVE_S: must be a bucket of the latency histogram ({bounds}),"
                f" got {s.latency_objective_s:g}")
        if s.latency_objective_share >= 1:
            raise SettingsError("OPSCENTRE_LATENCY_OBJECTIVE_SHARE: must be below 1 (no error budget at 1),"
                                f" got {s.latency_objective_share:g}")
        if s.alert_lag_critical_s < s.alert_lag_warning_s:
            raise SettingsError(f"OPSCENTRE_ALERT_LAG_CRITICAL_S ({s.alert_lag_critical_s:g}) is below"
                                f" OPSCENTRE_ALERT_LAG_WARNING_S ({s.alert_lag_warning_s:g})")
        return cls(
            worker_job=s.prometheus_worker_job,
            forwarder_job=s.prometheus_forwarder_job,
            service_topic=s.service_topic,
            security_topic=s.security_topic,
            pipeline_team=s.alert_pipeline_team,
            runbook_url=s.runbook_url,
            down_for_s=s.alert_down_for_s,
            lag_warning_s=s.alert_lag_warning_s,
            lag_critical_s=s.alert_lag_critical_s,
            lag_for_s=s.alert_lag_for_s,
            lag_growth_window_s=s.alert_lag_growth_window_s,
            lag_growth_per_s=s.alert_lag_growth_per_s,
            latency_objective_s=s.latency_objective_s,
            latency_objective_share=s.latency_objective_share,
            rejected_share_jump=s.alert_rejected_share_jump,
            rejected_min_events=s.alert_rejected_min_events,
            clickhouse_failing_for_s=s.alert_clickhouse_failing_for_s,
            write_failures=s.alert_write_failures,
            watermark_stall_s=s.alert_watermark_stall_s,
            forwarder_failing_for_s=s.alert_forwarder_failing_for_s,
            post_failures=s.alert_post_failures,
            target_processing_on_time=s.target_processing_on_time,
            target_on_time=s.target_on_time,
            target_full_online=s.target_full_online,
            target_full_online_national=s.target_full_online_national,
            target_online_payment=s.target_online_payment,
            target_feedback_on_time=s.target_feedback_on_time,
            target_satisfied=s.target_satisfied,
            kpi_min_items=s.alert_kpi_min_items,
            overdue_growth_window_s=s.alert_overdue_growth_window_s,
            overdue_growth=s.alert_overdue_growth,
            security_baseline_days=s.alert_security_baseline_days,
            security_factor=s.alert_security_factor,
            security_min_alerts=s.alert_security_min_alerts,
            security_team=s.alert_security_team,
            worker_targets=_targets("prometheus_worker_targets", s.prometheus_worker_targets),
            forwarder_targets=_targets("prometheus_forwarder_targets", s.prometheus_forwarder_targets),
            alertmanagers=_targets("prometheus_alertmanagers", s.prometheus_alertmanagers),
            scrape_interval_s=s.prometheus_scrape_interval_s,
            teams_file=s.teams_file,
            group_wait_s=s.alert_group_wait_s,
            group_interval_s=s.alert_group_interval_s,
            repeat_interval_s=s.alert_repeat_interval_s,
            smtp_smarthost=s.alert_smtp_smarthost,
            smtp_from=s.alert_smtp_from,
            smtp_username=s.alert_smtp_username,
            smtp_password_file=s.alert_smtp_password_file,
            telegram_token_file=s.alert_telegram_token_file,
            telegram_api_url=s.alert_telegram_api_url,
            webhook_token_file=s.alert_webhook_token_file,
        )

    @property
    def latency_bucket(self) -> str:
        """The `le` label of the objective's bucket, as the Python client writes it ("5.0")."""
        return floatToGoString(self.latency_objective_s)

    def runbook(self, alertname: str) -> str:
        return f"{self.runbook_url}#{alertname.lower()}"
