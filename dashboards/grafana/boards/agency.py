"""Sở, ngành: one agency of a province (or all of them). Which procedures are late, how long do
they take against their legal limit, is the backlog growing, how do citizens file and pay?
(ClickHouse)

Stats are the agency's row of `opscentre scorecard` for the range (the province's row with All);
procedures come from the raw events of the range (procedures are not a dimension of the counter
rows) and from the lifecycle counts per procedure.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.models.common import LineInterpolation

from opscentre.settings import Settings

from ...config import Config
from .. import kpi_sql, reference, sql
from ..common import (
    OPERATIONS,
    Board,
    bar_gauge_panel,
    clickhouse_variable,
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
from .shared import (
    AGENCIES,
    AGENCY_UID,
    ONE_PROVINCE,
    query,
    rising_colours,
    stat,
    target_colours,
)

UID = AGENCY_UID

VI = {
    **shared.VI,
    "Agency": "Sở, ngành",
    "Agencies": "Sở, ngành",
    "One agency of the province, or all of them: procedures, backlog, channels and payments.":
        "Một sở, ngành của tỉnh, hoặc tất cả: thủ tục, tồn đọng, kênh tiếp nhận và thanh toán.",
    "Overview": "Tổng quan",
    "Dossiers received": "Hồ sơ tiếp nhận",
    "Dossiers received in the range.": "Số hồ sơ tiếp nhận trong khoảng thời gian.",
    "Dossiers completed": "Hồ sơ đã giải quyết",
    "Dossiers completed in the range.": "Số hồ sơ đã giải quyết trong khoảng thời gian.",
    "On-time rate": "Tỷ lệ đúng hạn",
    "Share of completions on or before their due time.": "Tỷ lệ hồ sơ giải quyết đúng hoặc trước hạn.",
    "Processing on time": "Giải quyết đúng hạn (tỉnh)",
    "1 - (completed late + overdue now) / (received + carried over): the provincial formula.":
        "1 - (giải quyết trễ + quá hạn hiện tại) / (tiếp nhận + kỳ trước chuyển sang): cách tính của tỉnh.",
    "Overdue open": "Quá hạn chưa giải quyết",
    "Dossiers past their due time and neither completed nor cancelled, now.":
        "Số hồ sơ đã quá hạn mà chưa giải quyết hoặc hủy, tại thời điểm hiện tại.",
    "Fully online": "Toàn trình",
    "Share of dossiers received fully online.": "Tỷ lệ hồ sơ tiếp nhận trực tuyến toàn trình.",
    "Paid online": "Thanh toán trực tuyến",
    "Share of payments made online.": "Tỷ lệ thanh toán trực tuyến trên tổng số thanh toán.",
    "Paid online (VND)": "Thanh toán trực tuyến (đồng)",
    "Amount paid online in the range, in dong (VND).": "Số tiền thanh toán trực tuyến trong khoảng thời gian, tính bằng đồng.",
    "Procedures": "Thủ tục",
    "Procedures of the agency in the range: on time, overdue now, processing time (p50, p90) against the "
    "legal limit, in hours.":
        "Thủ tục của sở, ngành trong khoảng thời gian: đúng hạn, quá hạn hiện tại, thời gian giải quyết "
        "(p50, p90) so với thời hạn luật định, tính bằng giờ.",
    "Procedure": "Thủ tục",
    "Name": "Tên",
    "Processing p50": "Thời gian p50",
    "Processing p90": "Thời gian p90",
    "Legal limit": "Thời hạn luật định",
    "Backlog": "Tồn đọng",
    "Backlog over time": "Tồn đọng theo thời gian",
    "Dossiers open and overdue at the end of each hour, and now.":
        "Hồ sơ đang giải quyết và quá hạn tại cuối mỗi giờ, và hiện tại.",
    "Open": "Đang giải quyết",
    "Overdue": "Quá hạn",
    "Channels and payments": "Kênh tiếp nhận và thanh toán",
    "Dossiers by channel": "Hồ sơ theo kênh tiếp nhận",
    "Dossiers received in the range, by channel.": "Hồ sơ tiếp nhận trong khoảng thời gian, theo kênh.",
    "Online": "Trực tuyến",
    "In person": "Trực tiếp",
    "Postal": "Bưu chính",
    "Payments": "Thanh toán",
    "Payments per interval, online and at the counter.": "Số lần thanh toán theo thời gian, trực tuyến và tại quầy.",
    "payments": "lượt thanh toán",
    "At the counter": "Tại quầy",
}


def build(texts: Texts, settings: Settings):
    c = Config.from_settings(settings)
    count, share, hours = texts.unit("count"), texts.unit("share"), texts.unit("hours")
    where = f"{ONE_PROVINCE} AND {AGENCIES}"

    def named(key: str) -> str:
        return f"agency.{key}"

    overview = [
        stat(texts, texts("Dossiers received"), kpi_sql.count(named("received"), "dossiers_received", where=where),
             unit=count, description=texts("Dossiers received in the range.")),
        stat(texts, texts("Dossiers completed"), kpi_sql.count(named("completed"), "dossiers_completed", where=where),
             unit=count, description=texts("Dossiers completed in the range.")),
        stat(texts, texts("On-time rate"),
             kpi_sql.ratio(named("on_time_rate"), "dossiers_completed_on_time", "dossiers_completed", where=where),
             unit=share, decimals=1, colours=target_colours(c.target_on_time),
             description=texts("Share of completions on or before their due time.")),
        stat(texts, texts("Processing on time"),
             kpi_sql.value(named("processing_on_time"), kpi_sql.processing_on_time(), kpi_sql.PROCESSING_INPUTS,
                           where=where),
             unit=share, decimals=1, colours=target_colours(c.target_processing_on_time),
             description=texts("1 - (completed late + overdue now) / (received + carried over): the provincial "
                               "formula.")),
        stat(texts, texts("Overdue open"),
             kpi_sql.count(named("overdue_open"), "dossiers_overdue_open", where=where), unit=count,
             colours=rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical),
             description=texts("Dossiers past their due time and neither completed nor cancelled, now.")),
        stat(texts, texts("Fully online"),
             kpi_sql.ratio(named("full_online_rate"), "dossiers_received_full_online", "dossiers_received",
                           where=where),
             unit=share, decimals=1, colours=target_colours(c.target_full_online),
             description=texts("Share of dossiers received fully online.")),
        stat(texts, texts("Paid online"),
             kpi_sql.ratio(named("online_payment_rate"), "payments_online", "payments_total", where=where),
             unit=share, decimals=1, colours=target_colours(c.target_online_payment),
             description=texts("Share of payments made online.")),
        stat(texts, texts("Paid online (VND)"),
             kpi_sql.count(named("payments_online_vnd"), "payments_online_vnd", where=where), unit=count,
             description=texts("Amount paid online in the range, in dong (VND).")),
    ]

    procedures = table_panel(
        texts("Procedures"),
        [query(kpi_sql.procedures(named("procedures"), where, reference.procedure_name_sql(settings)))],
        columns={"procedure_code": texts("Procedure"), "procedure_name": texts("Name"), "received": texts("Received"),
                 "completed": texts("Completed"), "completed_on_time": texts("Completed on time"),
                 "on_time_rate": texts("On time"), "overdue_open": texts("Overdue now"),
                 "processing_p50_h": texts("Processing p50"), "processing_p90_h": texts("Processing p90"),
                 "legal_limit_h": texts("Legal limit")},
        units={"received": count, "completed": count, "completed_on_time": count, "on_time_rate": share,
               "overdue_open": count, "processing_p50_h": hours, "processing_p90_h": hours, "legal_limit_h": hours},
        decimals={"on_time_rate": 1, "processing_p50_h": 1, "processing_p90_h": 1, "legal_limit_h": 1},
        colours={"on_time_rate": target_colours(c.target_on_time),
                 "overdue_open": rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical)},
        width=24, height=10,
        description=texts("Procedures of the agency in the range: on time, overdue now, processing time (p50, p90) "
                          "against the legal limit, in hours."),
    )

    backlog = timeseries_panel(
        texts("Backlog over time"),
        [query(kpi_sql.backlog(named("backlog"), where, {"open": "dossiers_open", "overdue": "dossiers_overdue"}),
               Format.TIME_SERIES)],
        unit=count, axis_label=texts("dossiers"), width=24,
        description=texts("Dossiers open and overdue at the end of each hour, and now."),
    ).line_interpolation(LineInterpolation.STEP_AFTER).transformations([
        rename_field("open", texts("Open")), rename_field("overdue", texts("Overdue"))])

    channels = bar_gauge_panel(
        texts("Dossiers by channel"),
        [query(kpi_sql.named(named("channels"), _channels(where, texts)))],
        unit=count, width=8, description=texts("Dossiers received in the range, by channel."),
    ).reduce_options(ReduceDataOptions().values(True).calcs([]).fields("/^dossiers$/"))
    payments = timeseries_panel(
        texts("Payments"),
        [query(kpi_sql.bucket_series(named("payments"), "service",
                                     {"online": "sum(payments_online)",
                                      "counter": "sum(payments_total) - sum(payments_online)"}, where),
               Format.TIME_SERIES)],
        unit=count, axis_label=texts("payments"), stacked=True, width=16,
        description=texts("Payments per interval, online and at the counter."),
    ).transformations([rename_field("online", texts("Online")), rename_field("counter", texts("At the counter"))])

    agencies = clickhouse_variable(
        "agency", texts("Agency"),
        kpi_sql.named("agency.variable",
                      f"SELECT DISTINCT agency, {reference.agency_name_sql(settings)} AS agency_name FROM service_month "
                      f"FINAL WHERE {ONE_PROVINCE} ORDER BY agency"),
        multi=False)
    board = (
        dashboard(UID, texts("Agencies"), texts, time_from="now-7d", tags=["kpi"],
                  description=texts("One agency of the province, or all of them: procedures, backlog, channels "
                                    "and payments."))
        .with_variable(shared.province_variable(texts, settings))
        .with_variable(agencies)
    )
    return with_rows(board, [
        (texts("Overview"), overview),
        (texts("Procedures"), [procedures]),
        (texts("Backlog"), [backlog]),
        (texts("Channels and payments"), [channels, payments]),
    ])


def _channels(where: str, texts: Texts) -> str:
    shown = {"online": texts("Online"), "in_person": texts("In person"), "postal": texts("Postal")}
    names = "transform(channel, [" + ", ".join(f"'{k}'" for k in shown) + "], [" + \
        ", ".join(f"'{v}'" for v in shown.values()) + "], channel)"
    return (f"SELECT {names} AS channel_name, count() AS dossiers\nFROM service_events FINAL\n"
            f"WHERE {sql.raw_between(kpi_sql.FROM, kpi_sql.TO, 'service_events')} "
            f"AND event_type = 'dossier.received' AND {where}\nGROUP BY channel_name\nORDER BY dossiers DESC")


BOARD = Board(uid=UID, folder=OPERATIONS, build=build, catalogue=VI)
