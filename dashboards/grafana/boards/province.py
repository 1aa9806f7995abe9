"""Tổng quan tỉnh: the province wall. Is the province on target now, which agencies hold it back,
which dossiers have waited longest, and how does the month's scorecard stand? (ClickHouse)

The numbers are those of `opscentre kpi` and `opscentre scorecard` for the board's range and
province (tests/test_board_queries.py compares every stat and table): counts over [from, to),
overdue at `to`; the last-hour, today and this-month panels have ranges of their own. Every
panel links to the agency board; a row of the agency tables opens that agency.
"""

from __future__ import annotations

from opscentre.settings import Settings

from ...config import Config
from .. import kpi_sql, reference
from ..common import (
    OPERATIONS,
    Board,
    dashboard,
    field_property,
    rename_field,
    table_panel,
    timeseries_panel,
    with_options,
    with_rows,
)
from ..i18n import Texts
from ..plugin import Format
from ..thresholds import BUSINESS
from . import shared
from .shared import (
    ONE_PROVINCE,
    PROVINCE_UID,
    query,
    rising_colours,
    stat,
    target_colours,
)

UID = PROVINCE_UID

VI = {
    **shared.VI,
    "Province overview": "Tổng quan tỉnh",
    "The province against its targets: dossiers, payments, citizen feedback and security, now and this month.":
        "Tỉnh so với chỉ tiêu: hồ sơ, thanh toán, phản ánh kiến nghị và an toàn thông tin, hiện tại và trong tháng.",
    "Now": "Hiện tại",
    "Dossiers received": "Hồ sơ tiếp nhận",
    "Dossiers received in the range.": "Số hồ sơ tiếp nhận trong khoảng thời gian.",
    "Dossiers completed": "Hồ sơ đã giải quyết",
    "Dossiers completed in the range.": "Số hồ sơ đã giải quyết trong khoảng thời gian.",
    "Fully online": "Toàn trình",
    "Share of dossiers received fully online, against the year's target.":
        "Tỷ lệ hồ sơ tiếp nhận trực tuyến toàn trình, so với chỉ tiêu của năm.",
    "On-time rate": "Tỷ lệ đúng hạn",
    "Share of completions on or before their due time, against the 95% target.":
        "Tỷ lệ hồ sơ giải quyết đúng hoặc trước hạn, so với chỉ tiêu 95%.",
    "Paid online": "Thanh toán trực tuyến",
    "Share of payments made online.": "Tỷ lệ thanh toán trực tuyến trên tổng số thanh toán.",
    "Overdue open": "Quá hạn chưa giải quyết",
    "Dossiers past their due time and neither completed nor cancelled, now.":
        "Số hồ sơ đã quá hạn mà chưa giải quyết hoặc hủy, tại thời điểm hiện tại.",
    "Feedback on time": "Phản ánh đúng hạn",
    "Share of citizen feedback (1022) resolved on time.": "Tỷ lệ phản ánh kiến nghị (1022) được xử lý đúng hạn.",
    "Security alerts (1 h)": "Cảnh báo ATTT (1 giờ)",
    "High and critical security alerts in the last hour.": "Số cảnh báo an toàn thông tin mức cao và nghiêm trọng trong 1 giờ qua.",
    "Today": "Hôm nay",
    "Dossiers per hour, today and a week ago": "Hồ sơ theo giờ, hôm nay và cùng ngày tuần trước",
    "Received, completed and completed on time per hour today; dashed: the same weekday last week.":
        "Tiếp nhận, giải quyết và giải quyết đúng hạn theo giờ hôm nay; nét đứt: cùng thứ của tuần trước.",
    "dossiers per hour": "hồ sơ mỗi giờ",
    "Received last week": "Tiếp nhận tuần trước",
    "Completed last week": "Giải quyết tuần trước",
    "On time last week": "Đúng hạn tuần trước",
    "Agencies by on-time rate": "Xếp hạng sở, ngành theo tỷ lệ đúng hạn",
    "Agencies of the province, lowest on-time rate first; a row opens the agency's board.":
        "Các sở, ngành của tỉnh, tỷ lệ đúng hạn thấp nhất trước; bấm một dòng để mở bảng của sở, ngành.",
    "Overdue and scorecard": "Quá hạn và bảng điểm",
    "Longest overdue dossiers": "Hồ sơ quá hạn lâu nhất",
    "Dossiers overdue now that have waited longest, by pseudonym (never the dossier number).":
        "Hồ sơ đang quá hạn lâu nhất, theo mã bí danh (không hiển thị số hồ sơ).",
    "Dossier (pseudonym)": "Hồ sơ (bí danh)",
    "Procedure": "Thủ tục",
    "Hours overdue": "Số giờ quá hạn",
    "Due": "Hạn giải quyết",
    "Scorecard this month": "Bảng điểm tháng này",
    "This month so far, by the provincial formula; green: target met.":
        "Từ đầu tháng đến nay, theo cách tính của tỉnh; màu xanh: đạt chỉ tiêu.",
    "Carried over": "Kỳ trước chuyển sang",
    "Late + overdue": "Trễ hạn + quá hạn",
    "Processing on time": "Giải quyết đúng hạn (tỉnh)",
    "Completions on time": "Hoàn thành đúng hạn",
    "Feedback satisfied": "Hài lòng",
}


def build(texts: Texts, settings: Settings):
    c = Config.from_settings(settings)
    count, share = texts.unit("count"), texts.unit("share")
    where = ONE_PROVINCE
    agency_name = reference.agency_name_sql(settings)
    to_agencies = [shared.to_agency_board(texts)]

    def named(key: str) -> str:
        return f"province.{key}"

    now = [
        stat(texts, texts("Dossiers received"), kpi_sql.count(named("received"), "dossiers_received", where=where),
             unit=count, description=texts("Dossiers received in the range."), links=to_agencies),
        stat(texts, texts("Dossiers completed"), kpi_sql.count(named("completed"), "dossiers_completed", where=where),
             unit=count, description=texts("Dossiers completed in the range."), links=to_agencies),
        stat(texts, texts("Fully online"),
             kpi_sql.ratio(named("full_online_rate"), "dossiers_received_full_online", "dossiers_received",
                           where=where),
             unit=share, decimals=1, colours=target_colours(c.target_full_online), links=to_agencies,
             description=texts("Share of dossiers received fully online, against the year's target.")),
        stat(texts, texts("On-time rate"),
             kpi_sql.ratio(named("on_time_rate"), "dossiers_completed_on_time", "dossiers_completed", where=where),
             unit=share, decimals=1, colours=target_colours(c.target_on_time), links=to_agencies,
             description=texts("Share of completions on or before their due time, against the 95% target.")),
        stat(texts, texts("Paid online"),
             kpi_sql.ratio(named("online_payment_rate"), "payments_online", "payments_total", where=where),
             unit=share, decimals=1, colours=target_colours(c.target_online_payment), links=to_agencies,
             description=texts("Share of payments made online.")),
        stat(texts, texts("Overdue open"),
             kpi_sql.count(named("overdue_open"), "dossiers_overdue_open", where=where), unit=count,
             colours=rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical), links=to_agencies,
             description=texts("Dossiers past their due time and neither completed nor cancelled, now.")),
        stat(texts, texts("Feedback on time"),
             kpi_sql.ratio(named("feedback_on_time_share"), "feedback_resolved_on_time", "feedback_resolved",
                           where=where),
             unit=share, decimals=1, colours=target_colours(c.target_feedback_on_time), links=to_agencies,
             description=texts("Share of citizen feedback (1022) resolved on time.")),
        stat(texts, texts("Security alerts (1 h)"),
             kpi_sql.count(named("security_high_last_hour"), "security_alerts_high_or_critical",
                           security_where=where),
             unit=count, colours=rising_colours(BUSINESS.security_high_warning, BUSINESS.security_high_critical),
             time_from="1h", links=to_agencies,
             description=texts("High and critical security alerts in the last hour.")),
    ]

    hourly_values = {"received": "sum(dossiers_received)", "completed": "sum(dossiers_completed)",
                     "on_time": "sum(dossiers_completed_on_time)"}
    shown = {"received": texts("Received"), "completed": texts("Completed"), "on_time": texts("Completed on time"),
             "received_last_week": texts("Received last week"), "completed_last_week": texts("Completed last week"),
             "on_time_last_week": texts("On time last week")}
    hourly = timeseries_panel(
        texts("Dossiers per hour, today and a week ago"),
        [query(kpi_sql.hourly_with_last_week(named("hourly"), where, hourly_values), Format.TIME_SERIES)],
        unit=count, axis_label=texts("dossiers per hour"), width=14, height=9,
        description=texts("Received, completed and completed on time per hour today; dashed: the same weekday "
                          "last week."),
    ).transformations([rename_field(field, text) for field, text in shown.items()])
    for field in ("received_last_week", "completed_last_week", "on_time_last_week"):
        hourly = hourly.override_by_name(shown[field], [
            field_property("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})])
    hourly = with_options(hourly, links=to_agencies, time_from="now/d")

    agencies = table_panel(
        texts("Agencies by on-time rate"),
        [query(kpi_sql.agencies_ranked(named("agencies"), where, agency_name))],
        columns={"agency": texts("Code"), "agency_name": texts("Agency"), "received": texts("Received"),
                 "completed": texts("Completed"), "on_time_rate": texts("On time"),
                 "overdue_open": texts("Overdue now")},
        units={"received": count, "completed": count, "on_time_rate": share, "overdue_open": count},
        decimals={"on_time_rate": 1},
        colours={"on_time_rate": target_colours(c.target_on_time),
                 "overdue_open": rising_colours(BUSINESS.overdue_open_warning, BUSINESS.overdue_open_critical)},
        data_links=[shared.to_this_agency(texts)], width=10, height=9,
        description=texts("Agencies of the province, lowest on-time rate first; a row opens the agency's board."),
    )
    agencies = with_options(agencies, links=to_agencies)

    overdue = table_panel(
        texts("Longest overdue dossiers"),
        [query(kpi_sql.longest_overdue(named("longest_overdue"), where, agency_name,
                                        reference.procedure_name_sql(settings)))],
        columns={"item_ref": texts("Dossier (pseudonym)"), "agency": texts("Code"), "agency_name": texts("Agency"),
                 "procedure_name": texts("Procedure"), "hours_overdue": texts("Hours overdue"),
                 "due_at": texts("Due")},
        units={"hours_overdue": texts.unit("hours")}, decimals={"hours_overdue": 1},
        colours={"hours_overdue": rising_colours(1, BUSINESS.hours_overdue_critical)},
        data_links=[shared.to_this_agency(texts)], width=10, height=10,
        description=texts("Dossiers overdue now that have waited longest, by pseudonym (never the dossier number)."),
    )
    overdue = with_options(overdue, links=to_agencies)

    scorecard = table_panel(
        texts("Scorecard this month"),
        [query(kpi_sql.scorecard(named("scorecard"), where, agency_name, texts("Whole province")))],
        columns={"agency": texts("Code"), "agency_name": texts("Agency"), "received": texts("Received"),
                 "carried_over": texts("Carried over"), "completed_late": texts("Late + overdue"),
                 "processing_on_time": texts("Processing on time"),
                 "completed_on_time_rate": texts("Completions on time"), "full_online_share": texts("Fully online"),
                 "online_payment_share": texts("Paid online"), "feedback_on_time_share": texts("Feedback on time"),
                 "satisfied_share": texts("Feedback satisfied")},
        units={"received": count, "carried_over": count, "completed_late": count,
               **dict.fromkeys(("processing_on_time", "completed_on_time_rate", "full_online_share",
                                "online_payment_share", "feedback_on_time_share", "satisfied_share"), share)},
        decimals=dict.fromkeys(("processing_on_time", "completed_on_time_rate", "full_online_share",
                                "online_payment_share", "feedback_on_time_share", "satisfied_share"), 1),
        colours={"processing_on_time": target_colours(c.target_processing_on_time),
                 "completed_on_time_rate": target_colours(c.target_on_time),
                 "full_online_share": target_colours(c.target_full_online),
                 "online_payment_share": target_colours(c.target_online_payment),
                 "feedback_on_time_share": target_colours(c.target_feedback_on_time),
                 "satisfied_share": target_colours(c.target_satisfied)},
        data_links=[shared.to_this_agency(texts)], width=14, height=10,
        description=texts("This month so far, by the provincial formula; green: target met."),
    )
    scorecard = with_options(scorecard, links=to_agencies, time_from="now/M")

    board = (
        dashboard(UID, texts("Province overview"), texts, time_from="now/d", tags=["kpi"],
                  description=texts("The province against its targets: dossiers, payments, citizen feedback and "
                                    "security, now and this month."))
        .with_variable(shared.province_variable(texts, settings))
    )
    return with_rows(board, [
        (texts("Now"), now),
        (texts("Today"), [hourly, agencies]),
        (texts("Overdue and scorecard"), [overdue, scorecard]),
    ])


BOARD = Board(uid=UID, folder=OPERATIONS, build=build, catalogue=VI)
