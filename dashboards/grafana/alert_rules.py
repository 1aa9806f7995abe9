"""Grafana-managed alert rules on the KPIs, provisioned with the boards (`dashboards build` writes
them to DIR/grafana/provisioning/alerting, `dashboards push` sends them through the HTTP API).

- OpscentreAgencyOnTimeLow: an agency's on-time rate over the last working day (Monday to Friday,
  Asia/Ho_Chi_Minh) below its target, on at least OPSCENTRE_ALERT_KPI_MIN_ITEMS completions.
- OpscentreFullOnlineLow: a province's fully-online share this year so far below the year's
  target, on at least as many dossiers received.
- OpscentreOverdueGrowing: an agency's overdue backlog grown by OPSCENTRE_ALERT_OVERDUE_GROWTH
  dossiers or more over OPSCENTRE_ALERT_OVERDUE_GROWTH_WINDOW_S.
- OpscentreSecurityAlertsHigh: a province's high/critical security alerts in the last hour above
  OPSCENTRE_ALERT_SECURITY_FACTOR times their hourly mean over the previous
  OPSCENTRE_ALERT_SECURITY_BASELINE_DAYS days (and above OPSCENTRE_ALERT_SECURITY_MIN_ALERTS).

Each rule is one ClickHouse query (A, a table: string columns become the alert's labels, one
number its value), a Reduce (B, last, NaN and null dropped) and a Threshold (C). Alert rules get
no browser step (the plugin applies no template variable in them: dashboards/macros.py), so the
queries use server macros only and cover every province at once; `province` and `agency` come
from the query, `alertname` is the rule's title, and the static labels are `severity` and, for
the security rule, `team`: the Alertmanager routing (dashboards/alerts/alertmanager.py) takes
business alerts by `province` and security ones by `team`.

Grafana sends the alerts to the same Alertmanager as Prometheus and the forwarder, through an
Alertmanager data source with handleGrafanaManagedAlerts (datasources.py): one routing tree,
with its inhibitions. (Grafana's Alertmanager contact point would post to /api/v1/alerts in
Grafana 11.6 — grafana/alerting receivers/alertmanager/config.go before its versioned rewrite —
which Alertmanager removed in 0.27; the stack runs 0.34.)

The foundation SDK's alerting builders give the HTTP API's shape (folderUID, ruleGroup, orgID);
`file_groups` adapts it to the provisioning file's (groups with the folder's title).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import alerting, expr
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_models

from opscentre.settings import Settings

from ..alerts.files import duration
from ..config import Config
from ..macros import ALERT_INTERVAL_MS
from . import kpi_sql, sql
from .common import OPERATIONS, SECURITY, TIMEZONE, Folder, clickhouse
from .datasources import CLICKHOUSE_UID
from .i18n import Texts

ALERT_MAX_DATA_POINTS = 43200  # what Grafana's rule editor saves in a query's model

EXPRESSIONS = {"type": "__expr__", "uid": "__expr__"}
KPI_GROUP, KPI_INTERVAL_S = "opscentre-kpi", 300
SECURITY_GROUP, SECURITY_INTERVAL_S = "opscentre-security", 60


@dataclass(frozen=True)
class Rule:
    uid: str
    title: str  # the alertname
    folder: Folder
    group: str
    interval_s: int  # the group's evaluation interval
    sql: str
    comparison: str  # "lt" or "gt", against `threshold`
    threshold: float
    lookback_s: int  # the query's relativeTimeRange
    for_s: int
    severity: str
    summary: str
    summary_en: str
    team: str | None = None


def _local_day_start(day: str) -> str:
    return f"toUInt32(toDateTime({day}, '{TIMEZONE}'))"


def last_working_day() -> tuple[str, str]:
    """[start, end) of the last whole working day (Monday to Friday) before `$__toTime`, in the
    boards' time zone, as SQL expressions of Unix seconds."""
    today = f"toDate(toDateTime({sql.TO}, '{TIMEZONE}'))"
    back = f"multiIf(toDayOfWeek({today}) = 1, 3, toDayOfWeek({today}) = 7, 2, 1)"
    start = _local_day_start(f"({today} - {back})")
    return start, f"({start} + 86400)"


def year_start() -> str:
    return _local_day_start(f"toStartOfYear(toDateTime({sql.TO}, '{TIMEZONE}'))")


def rules(config: Config) -> list[Rule]:
    c = config
    start, end = last_working_day()
    on_time = kpi_sql.named("rule.agency_on_time", f"""SELECT province, agency,
       {sql.share('dossiers_completed_on_time', 'dossiers_completed')} AS on_time_rate
FROM (
{kpi_sql.inputs(["dossiers_completed", "dossiers_completed_on_time"], group_by=["province", "agency"],
                start=start, end=end)}
)
WHERE dossiers_completed >= {c.kpi_min_items}
ORDER BY province, agency""")
    full_online = kpi_sql.named("rule.full_online", f"""SELECT province,
       {sql.share('dossiers_received_full_online', 'dossiers_received')} AS full_online_rate
FROM (
{kpi_sql.inputs(["dossiers_received", "dossiers_received_full_online"], group_by=["province"], start=year_start())}
)
WHERE dossiers_received >= {c.kpi_min_items}
ORDER BY province""")
    window = int(c.overdue_growth_window_s)
    measures = [sql.lifecycle_measure("dossiers_overdue", "now_n")]
    before = [sql.lifecycle_measure("dossiers_overdue", "before_n")]
    columns = ["now_n", "before_n"]
    branches = (sql.instant_branches(measures, columns=columns, group_by=["province", "agency"])
                + sql.instant_branches(before, columns=columns, at=f"({sql.TO} - {window})",
                                       group_by=["province", "agency"]))
    growing = kpi_sql.named("rule.overdue_growing", f"""SELECT province, agency, toFloat64(now_n - before_n) AS growth
FROM (
{sql.summed(branches, columns, ["province", "agency"])}
)
WHERE now_n > before_n
ORDER BY province, agency""")
    hours = c.security_baseline_days * 24
    last_hour = (f"({sql.TO} - 3600)", sql.TO)
    baseline = (f"({sql.TO} - 3600 - {hours * 3600})", f"({sql.TO} - 3600)")
    high = sql.SECURITY.measures["security_alerts_high_or_critical"]
    recent = sql.Measure("recent", high.bucket, high.raw)
    usual = sql.Measure("usual", high.bucket, high.raw)
    branches = (sql.period_branches(sql.SECURITY, [recent], columns=["recent", "usual"], start=last_hour[0],
                                    end=last_hour[1], group_by=["province"])
                + sql.period_branches(sql.SECURITY, [usual], columns=["recent", "usual"], start=baseline[0],
                                      end=baseline[1], group_by=["province"]))
    limit = f"greatest({c.security_min_alerts}, {c.security_factor} * usual / {hours})"
    security = kpi_sql.named("rule.security_high", f"""SELECT province, recent / {limit} AS times_usual_limit
FROM (
{sql.summed(branches, ["recent", "usual"], ["province"])}
)
WHERE recent > 0
ORDER BY province""")
    return [
        Rule("opscentre-agency-on-time", "OpscentreAgencyOnTimeLow", OPERATIONS, KPI_GROUP, KPI_INTERVAL_S, on_time,
             "lt", c.target_on_time, 5 * 86400, 0, "warning",
             "{{ $labels.agency }} ({{ $labels.province }}): tỷ lệ đúng hạn ngày làm việc trước "
             "{{ humanizePercentage $values.B.Value }}, dưới chỉ tiêu " + f"{c.target_on_time:.0%}",
             "{{ $labels.agency }} ({{ $labels.province }}): on-time rate of the last working day "
             "{{ humanizePercentage $values.B.Value }}, below the " + f"{c.target_on_time:.0%} target"),
        Rule("opscentre-full-online", "OpscentreFullOnlineLow", OPERATIONS, KPI_GROUP, KPI_INTERVAL_S, full_online,
             "lt", c.target_full_online, 86400, 0, "ticket",
             "Tỉnh {{ $labels.province }}: tỷ lệ toàn trình từ đầu năm {{ humanizePercentage $values.B.Value }}, "
             "dưới chỉ tiêu " + f"{c.target_full_online:.0%}",
             "Province {{ $labels.province }}: fully-online share this year {{ humanizePercentage $values.B.Value }}, "
             "below the " + f"{c.target_full_online:.0%} target"),
        Rule("opscentre-overdue-growing", "OpscentreOverdueGrowing", OPERATIONS, KPI_GROUP, KPI_INTERVAL_S, growing,
             "gt", c.overdue_growth - 1, window + 3600, 0, "warning",  # growth is whole: > n - 1 is >= n
             "{{ $labels.agency }} ({{ $labels.province }}): thêm {{ $values.B.Value }} hồ sơ quá hạn trong "
             f"{window // 3600} giờ qua",
             "{{ $labels.agency }} ({{ $labels.province }}): {{ $values.B.Value }} more overdue dossiers in the last "
             f"{window // 3600} hours"),
        Rule("opscentre-security-high", "OpscentreSecurityAlertsHigh", SECURITY, SECURITY_GROUP, SECURITY_INTERVAL_S,
             security, "gt", 1.0, 3600 + hours * 3600, 120, "critical",
             "Tỉnh {{ $labels.province }}: cảnh báo ATTT mức cao/nghiêm trọng trong 1 giờ qua gấp "
             "{{ humanize $values.B.Value }} lần ngưỡng thường ngày",
             "Province {{ $labels.province }}: high/critical security alerts in the last hour at "
             "{{ humanize $values.B.Value }} times the usual limit", team=c.security_team),
    ]


def rule_model(rule: Rule, config: Config) -> alerting.Rule:
    """The rule as the SDK builds it (the HTTP API's shape)."""
    query = alerting.Query("A").datasource_uid(CLICKHOUSE_UID).relative_time_range(
        alerting_models.RelativeTimeRange(from_val=rule.lookback_s, to=0)).model(clickhouse(rule.sql).ref_id("A"))
    reduce = alerting.Query("B").datasource_uid(EXPRESSIONS["uid"]).model(
        expr.TypeReduce().ref_id("B").expression("A").reducer("last")
        .settings(expr.ExprTypeReduceSettings().mode("dropNN")))
    threshold = alerting.Query("C").datasource_uid(EXPRESSIONS["uid"]).model(
        expr.TypeThreshold().ref_id("C").expression("B").conditions([
            expr.ExprTypeThresholdConditions().evaluator(
                expr.ExprTypeThresholdConditionsEvaluator().type(rule.comparison).params([rule.threshold]))]))
    labels = {"severity": rule.severity}
    if rule.team:
        labels["team"] = rule.team
    return (
        alerting.Rule(rule.title).uid(rule.uid).org_id(1).folder_uid(rule.folder.uid).rule_group(rule.group)
        .condition("C").queries([query, reduce, threshold]).for_val(duration(rule.for_s))
        .no_data_state("OK").exec_err_state("Error").is_paused(False)
        .labels(labels)
        .annotations({"summary": rule.summary, "summary_en": rule.summary_en,
                      "runbook_url": config.runbook(rule.title)})
    )


def api_rule(rule: Rule, config: Config) -> dict:
    """What `POST /api/v1/provisioning/alert-rules` takes: the SDK's JSON, with what Grafana's
    evaluation reads that the SDK leaves out (the query's interval and data points, the
    expressions' data source)."""
    body = json.loads(json.dumps(rule_model(rule, config).build(), cls=JSONEncoder))
    for item in body["data"]:
        model = item["model"]
        if item["datasourceUid"] == EXPRESSIONS["uid"]:
            model["datasource"] = dict(EXPRESSIONS)
        else:
            model["intervalMs"] = ALERT_INTERVAL_MS
            model["maxDataPoints"] = ALERT_MAX_DATA_POINTS
    return body


_FILE_RULE_KEYS = ("uid", "title", "condition", "data", "noDataState", "execErrState", "for", "annotations", "labels",
                   "isPaused")


def file_groups(settings: Settings) -> list[dict]:
    """The provisioning file's `groups`: per folder and group, its rules (folder by title)."""
    config = Config.from_settings(settings)
    texts = Texts(settings.dashboard_language)
    groups: dict = {}
    for rule in rules(config):
        body = api_rule(rule, config)
        group = groups.setdefault((rule.folder.uid, rule.group), {
            "orgId": 1, "name": rule.group, "folder": texts(rule.folder.title), "interval": duration(rule.interval_s),
            "rules": []})
        group["rules"].append({key: body[key] for key in _FILE_RULE_KEYS if key in body})
    return list(groups.values())


def group_intervals() -> dict[tuple[str, str], int]:
    """(folder uid, group) -> evaluation interval (s)."""
    return {(OPERATIONS.uid, KPI_GROUP): KPI_INTERVAL_S, (SECURITY.uid, SECURITY_GROUP): SECURITY_INTERVAL_S}
