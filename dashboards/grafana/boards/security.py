"""An toàn thông tin: the security operations view. How many alerts, how severe, of which kind,
against which assets, from where, and how many were blocked? (ClickHouse)

Totals are `opscentre kpi`'s security keys; the severity and category views read the security
counter rows (their dimensions); assets and sources are not dimensions of those rows, so they
are read from the raw alerts of the range, at most its last 24 hours (said in the panels).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.common import ReduceDataOptions

from opscentre.events import HIGH_SEVERITY
from opscentre.settings import Settings

from .. import kpi_sql, sql
from ..common import (
    SECURITY,
    Board,
    bar_gauge_panel,
    dashboard,
    rename_field,
    table_panel,
    timeseries_panel,
    with_rows,
)
from ..i18n import Texts
from ..plugin import Format
from ..thresholds import BUSINESS
from . import shared
from .shared import PROVINCES, SECURITY_UID, query, rising_colours, stat

UID = SECURITY_UID
# OCSF severity_id (CONTRACT §1).
SEVERITIES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical", 6: "Fatal"}
RAW_HOURS = 24  # the raw reads of assets and sources cover at most the range's last day

VI = {
    **shared.VI,
    "Information security": "An toàn thông tin",
    "Security alerts from IDS, WAF and EDR sensors: volume, severity, categories, targets and sources.":
        "Cảnh báo an toàn thông tin từ IDS, WAF, EDR: số lượng, mức độ, loại, tài sản bị nhắm tới và nguồn tấn công.",
    "Overview": "Tổng quan",
    "Alerts": "Cảnh báo",
    "Security alerts in the range (sums of count).": "Số cảnh báo an toàn thông tin trong khoảng thời gian.",
    "High or critical": "Cao hoặc nghiêm trọng",
    "Alerts of severity high or above in the range.": "Số cảnh báo từ mức cao trở lên trong khoảng thời gian.",
    "High or critical (1 h)": "Cao hoặc nghiêm trọng (1 giờ)",
    "Alerts of severity high or above in the last hour.": "Số cảnh báo từ mức cao trở lên trong 1 giờ qua.",
    "Blocked": "Đã chặn",
    "Share of alerts whose action was blocked.": "Tỷ lệ cảnh báo đã được chặn.",
    "By severity and category": "Theo mức độ và loại",
    "Alerts by severity": "Cảnh báo theo mức độ",
    "Alerts per interval, by severity.": "Số cảnh báo theo thời gian, theo mức độ.",
    "alerts per interval": "cảnh báo mỗi khoảng",
    "Unknown": "Không rõ",
    "Informational": "Thông tin",
    "Low": "Thấp",
    "Medium": "Trung bình",
    "High": "Cao",
    "Critical": "Nghiêm trọng",
    "Fatal": "Thảm họa",
    "Alerts by category": "Cảnh báo theo loại",
    "Alerts in the range, by category (ECS event.category).": "Số cảnh báo trong khoảng thời gian, theo loại.",
    "Targets and sources": "Tài sản và nguồn",
    "Top targeted assets": "Tài sản bị nhắm tới nhiều nhất",
    "Destination assets with the most alerts, over the range's last 24 hours at most.":
        "Tài sản đích có nhiều cảnh báo nhất, trong tối đa 24 giờ cuối của khoảng thời gian.",
    "Asset": "Tài sản",
    "Last seen": "Lần cuối",
    "Top sources": "Nguồn tấn công nhiều nhất",
    "Source addresses with the most alerts, over the range's last 24 hours at most.":
        "Địa chỉ nguồn có nhiều cảnh báo nhất, trong tối đa 24 giờ cuối của khoảng thời gian.",
    "Source address": "Địa chỉ nguồn",
}


def build(texts: Texts, settings: Settings):
    count, share = texts.unit("count"), texts.unit("share")
    where = PROVINCES
    high = rising_colours(BUSINESS.security_high_warning, BUSINESS.security_high_critical)

    def named(key: str) -> str:
        return f"security.{key}"

    overview = [
        stat(texts, texts("Alerts"), kpi_sql.count(named("alerts"), "security_alerts", security_where=where),
             unit=count, width=6, description=texts("Security alerts in the range (sums of count).")),
        stat(texts, texts("High or critical"),
             kpi_sql.count(named("high_or_critical"), "security_alerts_high_or_critical", security_where=where),
             unit=count, width=6, colours=high, description=texts("Alerts of severity high or above in the range.")),
        stat(texts, texts("High or critical (1 h)"),
             kpi_sql.count(named("high_last_hour"), "security_alerts_high_or_critical", security_where=where),
             unit=count, width=6, colours=high, time_from="1h",
             description=texts("Alerts of severity high or above in the last hour.")),
        stat(texts, texts("Blocked"),
             kpi_sql.ratio(named("blocked_share"), "security_alerts_blocked", "security_alerts",
                           security_where=where),
             unit=share, decimals=1, width=6, description=texts("Share of alerts whose action was blocked.")),
    ]

    severities = timeseries_panel(
        texts("Alerts by severity"),
        [query(kpi_sql.bucket_series(named("by_severity"), "security",
                                     {f"sev_{n}": f"sumIf(alerts, severity = {n})" for n in SEVERITIES}, where),
               Format.TIME_SERIES)],
        unit=count, axis_label=texts("alerts per interval"), stacked=True, width=14,
        description=texts("Alerts per interval, by severity."),
    ).transformations([rename_field(f"sev_{n}", texts(name)) for n, name in SEVERITIES.items()])
    categories = bar_gauge_panel(
        texts("Alerts by category"),
        [query(kpi_sql.named(named("by_category"), sql.period_sum(sql.SECURITY, ["security_alerts"], where=where,
                                                                  group_by=["category"])
                             + "\nORDER BY security_alerts DESC"))],
        unit=count, width=10, description=texts("Alerts in the range, by category (ECS event.category)."),
    ).reduce_options(ReduceDataOptions().values(True).calcs([]).fields("/^security_alerts$/"))

    def top(key: str, column: str, title: str, header: str, description: str):
        raw = (f"{sql.raw_between(f'greatest({sql.FROM}, {sql.TO} - {RAW_HOURS * 3600})', sql.TO, 'security_events')} "
               f"AND {column} != '' AND {where}")
        sql_text = (f"SELECT {column} AS {key}, sum(count) AS alerts, sumIf(count, severity >= {HIGH_SEVERITY}) "
                    f"AS high_or_critical, sumIf(count, action = 'blocked') AS blocked, max(occurred_at) AS last_seen\n"
                    f"FROM security_events FINAL\nWHERE {raw}\nGROUP BY {key}\n"
                    f"ORDER BY alerts DESC, {key}\nLIMIT 10")
        return table_panel(
            title, [query(kpi_sql.named(named(f"top_{key}s"), sql_text))],
            columns={key: header, "alerts": texts("Alerts"), "high_or_critical": texts("High or critical"),
                     "blocked": texts("Blocked"), "last_seen": texts("Last seen")},
            units={"alerts": count, "high_or_critical": count, "blocked": count},
            colours={"high_or_critical": high}, width=12, description=description)

    targets = [
        top("asset", "dst_asset", texts("Top targeted assets"), texts("Asset"),
            texts("Destination assets with the most alerts, over the range's last 24 hours at most.")),
        top("source", "src_ip", texts("Top sources"), texts("Source address"),
            texts("Source addresses with the most alerts, over the range's last 24 hours at most.")),
    ]

    board = (
        dashboard(UID, texts("Information security"), texts, time_from="now-24h", tags=["security"],
                  description=texts("Security alerts from IDS, WAF and EDR sensors: volume, severity, categories, "
                                    "targets and sources."))
        .with_variable(shared.province_variable(texts, settings, include_all=True, multi=True))
    )
    return with_rows(board, [
        (texts("Overview"), overview),
        (texts("By severity and category"), [severities, categories]),
        (texts("Targets and sources"), targets),
    ])


BOARD = Board(uid=UID, folder=SECURITY, build=build, catalogue=VI)
