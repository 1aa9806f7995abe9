"""The pipeline's Prometheus rules and scrape configuration, as data built from the config.

Alerts are on symptoms a person acts on: a worker or the forwarder down or not scraped at all,
records waiting (in seconds behind, not in records) or the wait growing, the end-to-end latency
objective burning its error budget, a source's rejected share jumping, ClickHouse writes failing,
and overdue detection held up. Every alert carries `severity` (critical pages, warning notifies,
ticket opens a ticket), `team` (the pipeline's team of the teams file), a summary in Vietnamese
(`summary`) and English (`summary_en`), and a `runbook_url` into dashboards/runbook.md.

The latency alerts follow the multi-window, multi-burn-rate recipe of the SRE workbook
("Alerting on SLOs", Google, 2018, table 5-8): a burn rate is the error ratio over a window divided
by the error budget (1 - objective share); both windows of a pair must burn.
"""

from __future__ import annotations

import re
from pathlib import Path

from opscentre.events import EVENT_TYPES, topic_kind

from ..config import DNS_PREFIX, Config
from .files import duration, number, span, write_yaml

RULES_FILE = Path("prometheus/rules/opscentre.rules.yml")
PROMETHEUS_FILE = Path("prometheus/prometheus.yml")

LAG = "opscentre:consumer_lag_seconds:max"
REJECTED_SHARE_WINDOW, REJECTED_BASELINE_WINDOW = 600, 86400
# (long window, short window, burn rate, severity): pages at 14.4x over 1h and 6x over 6h (2% and
# 5% of a 30-day budget), a ticket at 1x over 3 days (10%).
BURN_RATES = (
    (3600, 300, 14.4, "critical"),
    (21600, 1800, 6.0, "critical"),
    (259200, 21600, 1.0, "ticket"),
)


def _error_ratio(window: float) -> str:
    return f"opscentre:end_to_end_errors:ratio_rate{duration(window)}"


def _events(kind: str, window: float) -> str:
    return f"opscentre:events_{kind}:rate{duration(window)}"


def _share(window: float) -> str:
    return f"opscentre:events_rejected_share:ratio_rate{duration(window)}"


def _regex(values) -> str:
    # RE2 inside a PromQL double-quoted string: the regex's backslashes are doubled.
    return "|".join(re.escape(v) for v in sorted(values)).replace("\\", "\\\\")


def recording_rules(c: Config) -> dict[str, list[dict]]:
    worker = f'job="{c.worker_job}"'
    lag = {"record": LAG, "expr": f"max by (job, topic) (opscentre_stream_consumer_lag_seconds{{{worker}}})"}

    # Valid events are counted by event type; the topic an event type travels on is the contract's.
    topics = {"service": c.service_topic, "security": c.security_topic}
    types = {kind: [t for t in EVENT_TYPES if topic_kind(t) == kind] for kind in topics}

    def valid(window: float) -> dict:
        parts = [
            f'label_replace(sum by (job) (rate(opscentre_stream_events_valid_total{{{worker},'
            f'event_type=~"{_regex(types[kind])}"}}[{duration(window)}])), "topic", "{topic}", "", "")'
            for kind, topic in topics.items()
        ]
        return {"record": _events("valid", window), "expr": "\nor\n".join(parts) + "\n"}

    def rejected(window: float) -> dict:
        return {"record": _events("rejected", window),
                "expr": f"sum by (job, topic) (rate(opscentre_stream_events_rejected_total{{{worker}}}"
                        f"[{duration(window)}]))"}

    def share(window: float) -> dict:
        bad, good = _events("rejected", window), _events("valid", window)
        # A topic with rejections but no valid event yet has a share of 1, not none.
        return {"record": _share(window), "expr": f"{bad}\n/\n({bad} + ({good} or {bad} * 0))\n"}

    stream = [lag]
    for window in (REJECTED_SHARE_WINDOW, REJECTED_BASELINE_WINDOW):
        stream += [rejected(window), valid(window), share(window)]

    windows = sorted({w for long, short, _, _ in BURN_RATES for w in (long, short)})
    bucket = (f'opscentre_stream_end_to_end_seconds_bucket{{{worker},le="{c.latency_bucket}"}}')
    count = f"opscentre_stream_end_to_end_seconds_count{{{worker}}}"
    slo = [
        {"record": _error_ratio(w),
         "expr": f"1 - (\n  sum by (job) (rate({bucket}[{duration(w)}]))\n/\n"
                 f"  sum by (job) (rate({count}[{duration(w)}]))\n)\n"}
        for w in windows
    ]
    return {"opscentre-worker": stream, "opscentre-slo": slo}


def _alert(c: Config, name: str, expr: str, severity: str, vi: str, en: str, for_s: float = 0,
           labels: dict | None = None) -> dict:
    rule = {"alert": name, "expr": expr}
    if for_s:
        rule["for"] = duration(for_s)
    rule["labels"] = {"severity": severity, "team": c.pipeline_team, **(labels or {})}
    rule["annotations"] = {"summary": vi, "summary_en": en, "runbook_url": c.runbook(name)}
    return rule


def _down(c: Config, component: str, job: str, vi_name: str) -> list[dict]:
    title = component.capitalize()
    return [
        _alert(c, f"Opscentre{title}Down", f'up{{job="{job}"}} == 0', "critical",
               f"{vi_name} {{{{ $labels.instance }}}} không trả lời Prometheus đã {span(c.down_for_s, 'vi')}",
               f"{title} {{{{ $labels.instance }}}} has not answered Prometheus for {span(c.down_for_s, 'en')}",
               for_s=c.down_for_s),
        _alert(c, f"Opscentre{title}Absent", f'absent(up{{job="{job}"}})', "critical",
               f"Prometheus không có {vi_name.lower()} nào để theo dõi (job {job})",
               f"Prometheus has no {component} to scrape (job {job})",
               for_s=c.down_for_s),
    ]


def alerting_rules(c: Config) -> dict[str, list[dict]]:
    worker = f'job="{c.worker_job}"'
    growth = duration(c.lag_growth_window_s)
    lag = [
        _alert(c, "OpscentreConsumerLagHigh", f"{LAG} > {number(threshold)}", severity,
               f"Worker chậm {{{{ $value | humanizeDuration }}}} so với dữ liệu đến trên {{{{ $labels.topic }}}}"
               f" (ngưỡng {span(threshold, 'vi')})",
               f"The workers are {{{{ $value | humanizeDuration }}}} behind on {{{{ $labels.topic }}}}"
               f" (threshold {span(threshold, 'en')})",
               for_s=c.lag_for_s)
        for threshold, severity in ((c.lag_warning_s, "warning"), (c.lag_critical_s, "critical"))
    ]
    lag.append(_alert(
        c, "OpscentreConsumerLagGrowing",
        f"{LAG}\nand\nderiv({LAG}[{growth}]) > {number(c.lag_growth_per_s)}\n"
        f"and\nmin_over_time({LAG}[{growth}]) > 0\n",
        "warning",
        f"Độ trễ trên {{{{ $labels.topic }}}} tăng liên tục {span(c.lag_growth_window_s, 'vi')},"
        f" hiện chậm {{{{ $value | humanizeDuration }}}}",
        f"The lag on {{{{ $labels.topic }}}} has grown for {span(c.lag_growth_window_s, 'en')},"
        f" now {{{{ $value | humanizeDuration }}}} behind",
        for_s=c.lag_for_s))

    budget = 1 - c.latency_objective_share
    objective_vi = f"{c.latency_objective_s:g} giây"
    objective_en = f"{c.latency_objective_s:g} s"
    slo = []
    for long, short, rate, severity in BURN_RATES:
        limit = f"({number(rate)} * {number(budget)})"
        slo.append(_alert(
            c, "OpscentreLatencyBudgetBurn",
            f"{_error_ratio(long)} > {limit}\nand\n{_error_ratio(short)} > {limit}\n",
            severity,
            f"{{{{ $value | humanizePercentage }}}} bản ghi được lưu chậm hơn {objective_vi} trong"
            f" {span(long, 'vi')} qua (mục tiêu: tối đa {number(budget * 100)}%)",
            f"{{{{ $value | humanizePercentage }}}} of records took longer than {objective_en} to be stored"
            f" over the last {span(long, 'en')} (objective: at most {number(budget * 100)}%)",
            labels={"long": duration(long), "short": duration(short)}))

    share, baseline = _share(REJECTED_SHARE_WINDOW), _share(REJECTED_BASELINE_WINDOW)
    bad, good = _events("rejected", REJECTED_SHARE_WINDOW), _events("valid", REJECTED_SHARE_WINDOW)
    rejected = _alert(
        c, "OpscentreRejectedShareJump",
        f"{share}\n> on (job, topic)\n({baseline} + {number(c.rejected_share_jump)})\n"
        f"and on (job, topic)\n({bad} + ({good} or {bad} * 0)) * {REJECTED_SHARE_WINDOW}"
        f" >= {c.rejected_min_events}\n",
        "warning",
        f"{{{{ $value | humanizePercentage }}}} bản ghi trên {{{{ $labels.topic }}}} bị loại trong"
        f" {span(REJECTED_SHARE_WINDOW, 'vi')} qua, cao hơn mức của ngày qua trên {number(c.rejected_share_jump * 100)}"
        " điểm phần trăm",
        f"{{{{ $value | humanizePercentage }}}} of the items on {{{{ $labels.topic }}}} were rejected over the last"
        f" {span(REJECTED_SHARE_WINDOW, 'en')}, over {number(c.rejected_share_jump * 100)} points above its last day",
        for_s=300)

    clickhouse = _alert(
        c, "OpscentreClickHouseWritesFailing",
        f"opscentre_stream_clickhouse_up{{{worker}}} == 0\n"
        f"or\nincrease(opscentre_sink_flush_failures_total{{{worker}}}[5m]) >= {c.write_failures}\n",
        "critical",
        "Worker {{ $labels.instance }} không ghi được vào ClickHouse: số liệu và bảng điều khiển đang đứng",
        "Worker {{ $labels.instance }} cannot write to ClickHouse: KPIs and boards are standing still",
        for_s=c.clickhouse_failing_for_s)

    stall = duration(c.watermark_stall_s)
    watermark = f"opscentre_stream_watermark_seconds{{{worker}}}"
    service_records = f'opscentre_stream_records_total{{{worker},topic="{c.service_topic}"}}'
    stalled = _alert(
        c, "OpscentreWatermarkStalled",
        f"{watermark} - {watermark} offset {stall} <= 0\n"
        f"and on (job, instance)\nsum by (job, instance) (increase({service_records}[{stall}])) > 0\n",
        "warning",
        f"Watermark của phân vùng dịch vụ {{{{ $labels.partition }}}} đứng yên {span(c.watermark_stall_s, 'vi')}"
        " dù vẫn có sự kiện đến: cảnh báo hồ sơ quá hạn bị treo",
        f"The watermark of service partition {{{{ $labels.partition }}}} has not moved for"
        f" {span(c.watermark_stall_s, 'en')} while records arrive: overdue alerts are held up")

    forwarder = _alert(
        c, "OpscentreForwarderPostsFailing",
        f'increase(opscentre_forwarder_post_failures_total{{job="{c.forwarder_job}"}}[5m]) >= {c.post_failures}',
        "critical",
        "Bộ chuyển tiếp {{ $labels.instance }} không gửi được cảnh báo tới Alertmanager:"
        " cảnh báo nghiệp vụ không đến người trực",
        "Forwarder {{ $labels.instance }} cannot post alerts to Alertmanager: business alerts are not delivered",
        for_s=c.forwarder_failing_for_s)

    return {
        "opscentre-worker": _down(c, "worker", c.worker_job, "Worker") + lag + [clickhouse, stalled, rejected],
        "opscentre-slo": slo,
        "opscentre-forwarder": _down(c, "forwarder", c.forwarder_job, "Bộ chuyển tiếp") + [forwarder],
    }


def rule_groups(c: Config) -> dict:
    # Each group holds its recording rules before the alerts that read them: rules of one group run
    # in order, groups run on their own, so an alert reads the value recorded in the same evaluation.
    recorded, alerts = recording_rules(c), alerting_rules(c)
    return {"groups": [{"name": name, "rules": recorded.get(name, []) + rules} for name, rules in alerts.items()]}


def alert_names(c: Config) -> list[str]:
    return list(dict.fromkeys(r["alert"] for rules in alerting_rules(c).values() for r in rules))


def discovery(targets) -> dict:
    """How Prometheus finds targets: `host:port` as static targets; `dns+name:port` by a DNS type A
    lookup at every refresh, which returns the address of each replica of a compose service (they
    share its name), so workers added or removed are scraped without a change here."""
    static = [t for t in targets if not t.startswith(DNS_PREFIX)]
    names_by_port: dict[int, list[str]] = {}
    for target in targets:
        if target.startswith(DNS_PREFIX):
            name, _, port = target.removeprefix(DNS_PREFIX).rpartition(":")
            names_by_port.setdefault(int(port), []).append(name)
    found: dict = {}
    if static:
        found["static_configs"] = [{"targets": static}]
    if names_by_port:
        found["dns_sd_configs"] = [{"names": names, "type": "A", "port": port} for port, names in names_by_port.items()]
    return found


def prometheus_config(c: Config) -> dict:
    interval = duration(c.scrape_interval_s)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES_FILE.relative_to(PROMETHEUS_FILE.parent))],
        "alerting": {"alertmanagers": [discovery(c.alertmanagers)]},
        "scrape_configs": [
            {"job_name": c.worker_job, **discovery(c.worker_targets)},
            {"job_name": c.forwarder_job, **discovery(c.forwarder_targets)},
        ],
    }


def write(out_dir, config: Config) -> list[Path]:
    """prometheus/prometheus.yml and prometheus/rules/opscentre.rules.yml under out_dir."""
    out = Path(out_dir)
    return [write_yaml(out / RULES_FILE, rule_groups(config)),
            write_yaml(out / PROMETHEUS_FILE, prometheus_config(config))]
